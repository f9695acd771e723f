"""``polymodal <verb>``: the command-line entry point. Each verb lives in its own module under ``cli/``."""
from __future__ import annotations

import argparse
import os
import sys

from polymodal import __version__

VERBS = ("quickstart", "train", "eval", "embed", "index", "search", "data")

DESCRIPTION = """\
polymodal: build, train, evaluate and search multimodal (image-text) models.

typical session:
  polymodal quickstart                       # train + evaluate + search on packaged real data, ~5 min on CPU
  polymodal data list                        # datasets available offline
  polymodal train my_run.yaml --set train.epochs=5
  polymodal eval runs/my_run --data pairs.jsonl --json
  polymodal embed runs/my_run --data photos/ --out emb
  polymodal index build emb --out my_index
  polymodal search "a red circle left of a blue square" --index my_index
"""


def build_parser() -> argparse.ArgumentParser:
    from polymodal.cli import data, embed, evaluate, index, quickstart, search, train

    parser = argparse.ArgumentParser(
        prog="polymodal", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--version", action="version", version=f"polymodal {__version__}")
    verbs = parser.add_subparsers(dest="verb", metavar="VERB", required=True)
    for module in (quickstart, train, evaluate, embed, index, search, data):
        module.register(verbs)
    return parser


def main(argv: list[str] | None = None) -> int:
    # Offline by design: never let a from_pretrained call reach for a hub and hang.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (FileNotFoundError, ValueError, KeyError, ImportError) as error:
        # Bad input gets one clear line, not a traceback from deep inside (POLYMODAL_DEBUG=1 shows it).
        if os.environ.get("POLYMODAL_DEBUG"):
            raise
        message = error.args[0] if isinstance(error, KeyError) and error.args else error
        print(f"polymodal {args.verb}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
