"""``polymodal data list`` and ``polymodal data export NAME --to DIR --format jsonl|coco``."""
from __future__ import annotations

import argparse

HELP = """\
Datasets available offline: packaged real data (installed by polymodal[data]) and the generated shapes
world. Any of them can be written to disk in a real format, which every reader of polymodal accepts:

  polymodal data list
  polymodal data export openmoji --to data/emoji --format jsonl      # images/ + pairs.jsonl
  polymodal data export shapes --to data/shapes --format coco --split test --size 500
  polymodal data export easy-vqa --to data/evqa --format vqa --split test    # VQA v2 questions/annotations
"""


def register(verbs: argparse._SubParsersAction) -> None:
    parser = verbs.add_parser("data", help="list and export datasets", description=HELP,
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


def run_list(args: argparse.Namespace) -> int:
    from polymodal.cli.report import print_table
    from polymodal.data.catalog import list_datasets

    rows = [{"name": d.name, "size": d.size, "licence": d.licence, "holds": d.description} for d in list_datasets()]
    print_table("datasets available offline", rows)
    return 0


def run_export(args: argparse.Namespace) -> int:
    from polymodal.cli.pipeline import load_data_spec
    from polymodal.data.catalog import load_questions
    from polymodal.data.export import export_coco, export_jsonl, export_vqa

    if args.format == "vqa":
        images, questions = load_questions(args.name, args.split, args.size)
        path = export_vqa(images, questions, args.to, overwrite=args.overwrite)
        print(f"wrote {len(questions)} questions about {len(images)} images of {images.name} → {path}")
        return 0
    spec: dict[str, object] = {"name": args.name}
    if args.split is not None:
        spec["split"] = args.split
    if args.size is not None:
        spec["size"] = args.size
    dataset = load_data_spec(spec)
    writer = export_jsonl if args.format == "jsonl" else export_coco
    path = writer(dataset, args.to, overwrite=args.overwrite)
    print(f"wrote {len(dataset)} images of {dataset.name} → {path}")
    return 0
