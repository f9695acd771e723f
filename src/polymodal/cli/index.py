"""``polymodal index build EMBEDDINGS --out INDEX [--kind flat|ivf|hnsw]``."""
from __future__ import annotations

import argparse

HELP = """\
Build a FAISS index over image embeddings written by `polymodal embed`.

  flat   exact inner-product search (default; best up to ~1M vectors on CPU)
  ivf    inverted lists trained on the vectors (approximate, faster on large sets; --nlist)
  hnsw   graph search (approximate, fast queries, more memory)

The index directory holds index.faiss, keys.json (row → image key) and meta.json (which checkpoint made
the vectors, so `polymodal search` embeds queries with the same model). Saves are atomic.
"""


def register(verbs: argparse._SubParsersAction) -> None:
    parser = verbs.add_parser("index", help="build a vector index for search", description=HELP,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    build = actions.add_parser("build", help="build an index from `polymodal embed` output", description=HELP,
                               formatter_class=argparse.RawDescriptionHelpFormatter)
    build.add_argument("embeddings", help="directory written by `polymodal embed`")
    build.add_argument("--out", required=True, help="index directory to write")
    build.add_argument("--kind", choices=["flat", "ivf", "hnsw"], default="flat")
    build.add_argument("--nlist", type=int, help="IVF lists (default ~sqrt(N))")
    build.set_defaults(run=run_build)


def run_build(args: argparse.Namespace) -> int:
    from polymodal.index import VectorIndex
    from polymodal.index.embeddings import load_embeddings
    from polymodal.io import output_directory

    out = output_directory(args.out, "--out")
    embeddings = load_embeddings(args.embeddings)
    meta = embeddings.meta
    index = VectorIndex.build(embeddings.vectors.numpy(), embeddings.keys, kind=args.kind, nlist=args.nlist,
                              normalize=True, checkpoint=meta.get("checkpoint"),
                              metadata={"dataset": meta.get("dataset"), "weights_sha256": meta.get("weights_sha256")})
    index.save(out)
    print(f"indexed {len(index)} vectors of dim {index.dim} ({args.kind}) → {out}")
    return 0
