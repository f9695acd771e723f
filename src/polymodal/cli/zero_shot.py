"""``polymodal zero-shot CHECKPOINT --labels a,b,c IMAGE [IMAGE ...]``."""
from __future__ import annotations

import argparse
from pathlib import Path

HELP = """\
Classify images into labels the model was never trained on (CLIP's zero-shot recipe): every label is written
into each prompt template ("a photo of a {}."), the prompts are embedded and averaged per label, and each image
goes to the labels whose averaged embedding is closest. Prints each image's top-k labels with probabilities
(a softmax over the labels for CLIP-trained models; an independent sigmoid per label for SigLIP-trained ones).

  polymodal zero-shot runs/quickstart/model --labels cat,dog,bird photo.png
  polymodal zero-shot runs/quickstart/model --labels-file animals.txt images/*.jpg -k 3 --json
  polymodal zero-shot clip-vit-base-patch32/ --labels "a cat,a dog" photo.jpg      # an HF CLIP directory
  polymodal zero-shot runs/shapes/model --labels circle,square,star scene.png --template "a {}." --template "a {} shape."

--templates: a named set — imagenet (the CLIP paper's 80 ImageNet templates, the default), default (5 short
ones), photo ("a photo of a {}."); or --template, repeated, for templates of your own with {} for the label.
--labels-file: one label per line (blank lines and lines starting with # are skipped).
"""


def register(verbs: argparse._SubParsersAction) -> None:
    parser = verbs.add_parser("zero-shot", help="classify images into any labels (CLIP prompt ensembling)",
                              description=HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", help="a dual encoder: polymodal model/run directory, HF CLIP directory, or "
                                           "open_clip weights file (with --open-clip-config)")
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="image files")
    labels = parser.add_mutually_exclusive_group(required=True)
    labels.add_argument("--labels", help="comma-separated labels, e.g. cat,dog,'fire truck'")
    labels.add_argument("--labels-file", metavar="FILE", help="a text file with one label per line")
    prompts = parser.add_mutually_exclusive_group()
    prompts.add_argument("--templates", default="imagenet", metavar="SET",
                         help="a named template set: imagenet (CLIP's 80, default), default (5 short), photo (1)")
    prompts.add_argument("--template", action="append", metavar="T",
                         help="a template of your own with {} for the label; repeat for an ensemble")
    parser.add_argument("-k", type=int, default=5, help="labels to show per image (default 5)")
    parser.add_argument("--json", action="store_true", help="print the predictions as JSON")
    parser.add_argument("--open-clip-config", metavar="NAME_OR_JSON",
                        help="the model config of an open_clip weights file (e.g. ViT-B-32, or a JSON file)")
    parser.add_argument("--device", default="auto")
    parser.set_defaults(run=run)


def read_labels(args: argparse.Namespace) -> list[str]:
    """The labels of ``--labels`` or ``--labels-file``, refused when empty."""
    if args.labels is not None:
        labels = [label.strip() for label in args.labels.split(",") if label.strip()]
        source = "--labels"
    else:
        path = Path(args.labels_file)
        if not path.is_file():
            raise ValueError(f"--labels-file {path}: no such file")
        lines = path.read_text(encoding="utf-8").splitlines()
        labels = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
        source = str(path)
    if not labels:
        raise ValueError(f"{source}: no labels given")
    return labels


def run(args: argparse.Namespace) -> int:
    from polymodal.cli.common import print_json
    from polymodal.cli.report import print_table
    from polymodal.data.records import open_image_file
    from polymodal.interop.auto import load_any_for_inference
    from polymodal.tasks.zero_shot import zero_shot_predict

    labels = read_labels(args)
    templates = args.template or args.templates
    loaded = load_any_for_inference(args.checkpoint, args.device, args.open_clip_config)
    images = [open_image_file(path) for path in args.images]
    predictions = zero_shot_predict(loaded.model, loaded.tokenizer, loaded.transform, images, labels, templates,
                                    top_k=args.k)
    if args.json:
        print_json({"model": str(loaded.directory), "labels": labels,
                    "predictions": [{"image": path, "labels": [{"label": label, "probability": round(p, 4)}
                                                               for label, p in ranked]}
                                    for path, ranked in zip(args.images, predictions)]})
        return 0
    for path, ranked in zip(args.images, predictions):
        print_table(path, [{"rank": rank, "label": label, "probability": round(p, 4)}
                           for rank, (label, p) in enumerate(ranked, start=1)])
    return 0
