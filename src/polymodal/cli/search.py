"""``polymodal search "text" --index DIR`` or ``polymodal search --image PATH --index DIR``."""
from __future__ import annotations

import argparse

HELP = """\
Search an index built by `polymodal index build` with a text query or an example image. The query is
embedded by the checkpoint recorded in the index (or --checkpoint). Prints rank, score (cosine) and key.

  polymodal search "a red circle left of a blue square" --index runs/x/index
  polymodal search --image query.png --index runs/x/index -k 10 --json
"""


def register(verbs: argparse._SubParsersAction) -> None:
    parser = verbs.add_parser("search", help="text→image or image→image search", description=HELP,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("query", nargs="?", help="text query")
    parser.add_argument("--image", help="image file to search with instead of text")
    parser.add_argument("--index", required=True, help="index directory")
    parser.add_argument("--checkpoint", help="model to embed the query (default: the one recorded in the index)")
    parser.add_argument("-k", type=int, default=5, help="number of results")
    parser.add_argument("--nprobe", type=int, help="IVF index: lists to visit (more: slower, closer to exact)")
    parser.add_argument("--ef", type=int, help="HNSW index: candidates to keep (more: slower, closer to exact)")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--device", default="auto")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from polymodal.cli.common import print_json
    from polymodal.cli.report import print_table
    from polymodal.data.records import open_image_file
    from polymodal.index import VectorIndex
    from polymodal.model_io import load_for_inference, weights_sha256
    from polymodal.tasks.search import search_index

    if (args.query is None) == (args.image is None):
        raise ValueError("give either a text query or --image PATH (not both)")
    index = VectorIndex.load(args.index)
    try:
        if args.nprobe is not None:
            index.nprobe = args.nprobe
        if args.ef is not None:
            index.ef_search = args.ef
    except AttributeError as error:  # the setting belongs to another kind of index
        raise ValueError(f"{args.index}: {error}") from None
    checkpoint = args.checkpoint or index.checkpoint
    if not checkpoint:
        raise ValueError(f"{args.index} records no checkpoint; pass --checkpoint")
    loaded = load_for_inference(checkpoint, args.device)
    recorded = index.metadata.get("weights_sha256")
    if recorded and recorded != weights_sha256(loaded.directory):
        raise ValueError(f"{args.index} was built from embeddings of other weights than {loaded.directory}'s: "
                         "queries would land in another space; embed and index again with this model")
    hits = search_index(index, loaded.model, loaded.tokenizer, loaded.transform,
                        texts=None if args.query is None else [args.query],
                        images=None if args.image is None else [open_image_file(args.image)], k=args.k)[0]
    rows = [{"rank": rank, "score": hit.score, "key": hit.key} for rank, hit in enumerate(hits, start=1)]
    if args.json:
        print_json({"query": args.query or args.image, "results": rows})
    else:
        print_table(f"results for {args.query or args.image!r}", rows)
    return 0
