"""``polymodal embed CHECKPOINT --data SPEC --out DIR``: image embeddings + their keys, for an index."""
from __future__ import annotations

import argparse

HELP = """\
Embed every image of a dataset with a trained model, in batches, with a progress bar. Writes
DIR/embeddings.safetensors ("image_embeddings": (N, D) unit-norm float32), DIR/keys.json (record keys, i.e.
image paths, in row order) and DIR/meta.json (checkpoint, a checksum of its weights, dataset, and checksums of
the other two files, written last: the three files appear as one unit). Build a search index from it with
`polymodal index build DIR --out INDEX`.
"""


def register(verbs: argparse._SubParsersAction) -> None:
    parser = verbs.add_parser("embed", help="embed a dataset's images", description=HELP,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint")
    parser.add_argument("--data", required=True, help="dataset: a path (JSONL/CSV/COCO/folder) or catalog name")
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--skip-bad", action="store_true")
    parser.add_argument("--device", default="auto")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from polymodal.data.catalog import load_data_spec
    from polymodal.index.embeddings import save_embeddings
    from polymodal.io import output_directory
    from polymodal.model_io import load_for_inference, weights_sha256
    from polymodal.tasks.embed import embed_images, require_embedding

    out = output_directory(args.out, "--out")  # before the work: a bad --out fails in a second, not after it
    loaded = load_for_inference(args.checkpoint, args.device)
    require_embedding(loaded.model, "encode_image")  # before reading the data
    dataset = load_data_spec(args.data, args.skip_bad)
    embeddings = embed_images(loaded.model, dataset, loaded.transform, batch_size=args.batch_size)
    save_embeddings(out, embeddings, [record.key for record in dataset.records],
                    {"checkpoint": str(loaded.directory.resolve()), "weights_sha256": weights_sha256(loaded.directory),
                     "dataset": dataset.name})
    print(f"embedded {len(dataset)} images ({dataset.skipped} skipped) → {out}")
    return 0
