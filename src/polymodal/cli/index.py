"""``polymodal index build EMBEDDINGS --out INDEX [--kind flat|ivf|hnsw]``."""
from __future__ import annotations

import argparse

HELP = """\
Build a FAISS index over image embeddings written by `polymodal embed`.

  auto   (default) exact up to 10,000 vectors, above that IVF with sqrt(N) lists probing 1% of them (at least
         8): one query under ~2 ms at recall@10 >= 0.95 up to 1M vectors on 2 cores (README "Search at scale")
  flat   exact inner-product search: reads every vector per query (~0.17 ms per 1,000 vectors of 512 floats)
  ivf    inverted lists trained on the vectors (approximate; --nlist; trade recall for speed with
         `polymodal search --nprobe`)
  hnsw   graph search (approximate, fast queries, more memory, slow to build; `search --ef`)

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
    build.add_argument("--kind", choices=["auto", "flat", "ivf", "hnsw"], default="auto")
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
                              normalize=True, checkpoint=meta.get("checkpoint"), progress=True,
                              metadata={"dataset": meta.get("dataset"), "weights_sha256": meta.get("weights_sha256")})
    index.save(out)
    print(f"indexed {len(index)} vectors of dim {index.dim} ({index.kind}) → {out}")
    return 0
