"""``polymodal quickstart [--out DIR] [--world real|shapes]``: train, evaluate, index and search in one go."""
from __future__ import annotations

import argparse

HELP = """\
One command that shows the whole pipeline on data that ships with the install (no download):

  --world real (default)   LiT-style: locked EfficientNet-Lite0 (ImageNet) + all-MiniLM-L6-v2 towers; the
                           image side starts as the training-free ConSE bridge (ImageNet class probabilities
                           weight MiniLM embeddings of the class names); residual projections are trained
                           on ~4k emoji image-caption pairs (openmoji). Frozen-tower features are computed
                           once and cached, so training takes seconds.
  --world shapes           a small ViT + Transformer CLIP trained from scratch on the generated shapes world.

Then it evaluates held-out retrieval (R@1/5/10) and zero-shot classification (animal silhouettes,
scikit-image photos) before and after training, builds a FAISS index over the evaluation images, runs
example text→image searches, prints a table and writes to DIR: checkpoints/, metrics.json,
training_curve.png and search_examples.png.
"""


def register(verbs: argparse._SubParsersAction) -> None:
    parser = verbs.add_parser("quickstart", help="train, evaluate and search end to end (CPU, minutes)",
                              description=HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/quickstart", help="output directory (default: runs/quickstart)")
    parser.add_argument("--world", choices=["real", "shapes"], default="real", help="which data and model")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from rich.console import Console

    from polymodal.cli.report import print_table
    from polymodal.recipes.quickstart import results_table, run_quickstart

    console = Console(width=max(Console().width, 110))  # the results table needs ~100 columns
    metrics = run_quickstart(args.out, args.world, progress=not args.no_progress,
                             say=lambda message: console.print(f"[bold]{message}[/]"))
    print_table(f"quickstart ({args.world}) — percent; chance = random ranking", results_table(metrics), console)
    for query, hits in metrics["searches"].items():
        console.print(f"  [bold]{query!r}[/] → " + ", ".join(f"{Path(hit['key']).name} ({hit['score']:.2f})"
                                                           for hit in hits[:3]))
    console.print(f"wrote {args.out}/metrics.json, training_curve.png, search_examples.png, model/, checkpoints/, "
                  "index/")
    return 0
