"""``polymodal embed CHECKPOINT --data SPEC --out DIR``: image embeddings + their keys, for an index."""
from __future__ import annotations

import argparse

HELP = """\
Embed every image of a dataset with a trained model, in batches, with a progress bar. Writes
DIR/embeddings.safetensors ("image_embeddings": (N, D) unit-norm float32), DIR/keys.json (record keys, i.e.
image paths, in row order) and DIR/meta.json (checkpoint, dataset). Build a search index from it with
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
    from pathlib import Path

    from safetensors.torch import save_file

    from polymodal.data.catalog import load_data_spec
    from polymodal.io import atomic_path, write_json
    from polymodal.models.saving import load_for_inference
    from polymodal.tasks.embed import embed_images

    loaded = load_for_inference(args.checkpoint, args.device)
    dataset = load_data_spec(args.data, args.skip_bad)
    embeddings = embed_images(loaded.model, dataset, loaded.transform, batch_size=args.batch_size)
    out = Path(args.out)
    with atomic_path(out / "embeddings.safetensors") as tmp:
        save_file({"image_embeddings": embeddings.contiguous()}, str(tmp))
    write_json(out / "keys.json", [record.key for record in dataset.records])
    write_json(out / "meta.json", {"checkpoint": str(loaded.directory.resolve()), "dataset": dataset.name,
                                   "count": len(dataset), "dim": int(embeddings.shape[1])})
    print(f"embedded {len(dataset)} images ({dataset.skipped} skipped) → {out}")
    return 0
