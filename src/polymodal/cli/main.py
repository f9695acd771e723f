"""``polymodal <verb>``: the command-line entry point. Each verb lives in its own module under ``cli/``."""
from __future__ import annotations

import argparse
import logging
import os
import sys

from polymodal import __version__

VERBS = ("quickstart", "train", "eval", "vqa", "caption", "zero-shot", "embed", "index", "search", "serve", "convert",
         "data")

DESCRIPTION = """\
polymodal: build, train, evaluate and search multimodal (image-text) models.

typical session:
  polymodal quickstart                       # train + evaluate + search on packaged real data, ~5 min on CPU
  polymodal data list                        # datasets available offline
  polymodal train my_run.yaml --set train.epochs=5
  polymodal eval runs/my_run --data pairs.jsonl --json
  polymodal vqa runs/my_vqa --image shape.png --question "what color is the shape?"
  polymodal caption runs/my_captioner photo.png --beam 5
  polymodal embed runs/my_run --data photos/ --out emb
  polymodal index build emb --out my_index
  polymodal search "a red circle left of a blue square" --index my_index
"""


def build_parser() -> argparse.ArgumentParser:
    from polymodal.cli import (caption, convert, data, embed, evaluate, index, quickstart, search, serve, train, vqa,
                               zero_shot)

    parser = argparse.ArgumentParser(
        prog="polymodal", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--version", action="version", version=f"polymodal {__version__}")
    parser.add_argument("--debug", action="store_true",
                        help="show the full traceback of an error (for bug reports); also POLYMODAL_DEBUG=1")
    verbs = parser.add_subparsers(dest="verb", metavar="VERB", required=True)
    for module in (quickstart, train, evaluate, vqa, caption, zero_shot, embed, index, search, serve, convert, data):
        module.register(verbs)
    return parser


def main(argv: list[str] | None = None) -> int:
    # Offline by design: never let a from_pretrained call reach for a hub and hang.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    parser = build_parser()
    args = parser.parse_args(argv)
    # The library reports what it decided (e.g. which checkpoint --resume took) through the "polymodal" logger.
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(f"polymodal {args.verb}: %(message)s"))
    library_log = logging.getLogger("polymodal")
    library_log.addHandler(handler)
    library_log.setLevel(logging.INFO)
    try:
        return int(args.run(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (OSError, ValueError, KeyError, ImportError) as error:
        # Bad input gets one clear line, not a traceback from deep inside (--debug shows it).
        if args.debug or os.environ.get("POLYMODAL_DEBUG"):
            raise
        print(f"polymodal {args.verb}: error: {_one_line(error)}", file=sys.stderr)
        return 2
    finally:
        library_log.removeHandler(handler)


def _one_line(error: BaseException) -> str:
    """The message of ``error`` as one line a user can act on."""
    if isinstance(error, KeyError):
        return f"missing key {error.args[0]!r}" if error.args else "missing key"
    if isinstance(error, OSError) and error.filename is not None and error.strerror:
        return f"{error.strerror}: {error.filename}"
    return " ".join(str(error).split()) or type(error).__name__


if __name__ == "__main__":
    sys.exit(main())
