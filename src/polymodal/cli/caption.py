"""``polymodal caption CHECKPOINT IMAGE [IMAGE ...]``, and the generation options ``eval`` shares with it."""
from __future__ import annotations

import argparse
from typing import Any

HELP = """\
Describe images with a trained captioner (model family `captioner`, e.g. a run of caption-tiny): prints one
caption per image, as a table or, with --json, as {"model", "captions": [{"image", "caption"}]}.

The model decodes as its config's `generate` section says (the presets: beam search, 3 beams); any setting
can be changed for this call:

  polymodal caption runs/captions photo.png
  polymodal caption runs/captions images/*.png --json
  polymodal caption runs/captions scene.png --beam 5 --length-penalty 1.2 --no-repeat-ngram 3
  polymodal caption runs/captions scene.png --method greedy --max-length 12
  polymodal caption runs/captions scene.png --method sample --top-p 0.9 --temperature 0.8 --seed 1

--beam N means --method beam with N beams. --top-k, --top-p, --temperature and --seed apply to sampling only.
"""

SAMPLING_OPTIONS = ("top_k", "top_p", "temperature", "seed")


def add_generation_arguments(parser: argparse.ArgumentParser, full: bool = True) -> None:
    """The decoding options: ``--beam``, ``--method``, ``--max-length`` (what ``eval`` takes), and with ``full``
    the rest of the model's ``generate`` settings and ``--seed`` (what ``caption`` takes)."""
    group = parser.add_argument_group("generation (default: the model config's `generate` section)")
    group.add_argument("--beam", type=int, metavar="N", help="beam search with N beams (implies --method beam)")
    group.add_argument("--method", choices=["greedy", "beam", "sample"], help="decoding method")
    group.add_argument("--max-length", dest="max_length", type=int, metavar="N",
                       help="most tokens per caption, end token included")
    if not full:
        return
    group.add_argument("--no-repeat-ngram", dest="no_repeat_ngram_size", type=int, metavar="N",
                       help="never repeat an n-gram of N tokens (0: allow)")
    group.add_argument("--length-penalty", dest="length_penalty", type=float, metavar="X",
                       help="beam score = log-prob / length^X (0 favours short captions, >1 long ones)")
    group.add_argument("--top-k", dest="top_k", type=int, metavar="K", help="sample among the K likeliest tokens")
    group.add_argument("--top-p", dest="top_p", type=float, metavar="P",
                       help="sample from the smallest set of tokens holding probability P (nucleus)")
    group.add_argument("--temperature", type=float, metavar="T", help="sampling temperature (default 1)")
    group.add_argument("--seed", type=int, metavar="S", help="seed of the sampling, for repeatable captions")


def generation_overrides(args: argparse.Namespace, default_method: str) -> dict[str, Any]:
    """The ``Captioner.generate`` overrides the options ask for (unset options are left out, so the model's
    defaults apply). ``default_method`` is the model's own, used to reject options its method would ignore."""
    method = args.method
    if args.beam is not None:
        if method not in (None, "beam"):
            raise ValueError(f"--beam {args.beam} means beam search; it cannot go with --method {method}")
        method = "beam"
    overrides: dict[str, Any] = {"method": method, "beam_size": args.beam, "max_length": args.max_length}
    for name in ("no_repeat_ngram_size", "length_penalty", "top_k", "top_p", "temperature"):
        overrides[name] = getattr(args, name, None)
    # Model.generate silently ignores settings of another method; a user who typed them meant something.
    ignored = [name for name in SAMPLING_OPTIONS if getattr(args, name, None) is not None]
    if ignored and (method or default_method) != "sample":
        flags = ", ".join("--" + name.replace("_", "-") for name in ignored)
        raise ValueError(f"{flags} {'applies' if len(ignored) == 1 else 'apply'} to sampling only; "
                         "add --method sample")
    return {name: value for name, value in overrides.items() if value is not None}


def register(verbs: argparse._SubParsersAction) -> None:
    parser = verbs.add_parser("caption", help="describe images with a trained captioner", description=HELP,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", help="checkpoint directory or run directory of a captioner")
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="image files")
    add_generation_arguments(parser)
    parser.add_argument("--batch-size", dest="batch_size", type=int, default=32,
                        help="images decoded together (default 32)")
    parser.add_argument("--json", action="store_true", help="print the captions as JSON")
    parser.add_argument("--device", default="auto")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from polymodal.cli.common import load_task_model, print_json
    from polymodal.cli.report import print_table
    from polymodal.data.records import ImageTextRecord, ImageTextSet, open_image_file
    from polymodal.tasks.captioning import caption_batches, generate_captions

    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be at least 1, got {args.batch_size}")
    loaded = load_task_model(args.checkpoint, args.device, "captioning", "caption", "captioner")
    generation = generation_overrides(args, loaded.model.generation.method)
    # Every file is opened (and checked) before any decoding, so a bad path fails at once, named, not after
    # minutes of captioning the files before it. The decoded pixels are not kept: a batch reopens its files.
    for path in args.images:
        open_image_file(path)
    images = ImageTextSet("images", [ImageTextRecord(key=path) for path in args.images],
                          load_image=lambda record: open_image_file(record.key))
    if args.seed is not None:
        device = next(loaded.model.parameters()).device
        generation["generator"] = torch.Generator(device=device).manual_seed(args.seed)
    captions = generate_captions(loaded.model, loaded.tokenizer,
                                 caption_batches(images, loaded.transform, args.batch_size), **generation)
    rows = [{"image": path, "caption": caption} for path, caption in zip(args.images, captions)]
    if args.json:
        print_json({"model": str(loaded.directory), "captions": rows})
    else:
        print_table(f"captions by {loaded.directory}", rows)
    return 0
