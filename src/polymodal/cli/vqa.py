"""``polymodal vqa CHECKPOINT --image PATH --question TEXT``."""
from __future__ import annotations

import argparse

HELP = """\
Answer a question about an image with a trained VQA model: prints its top-k answers and, for each, the model's
probability that it is right (each answer is scored independently, so they need not sum to 1).

  polymodal vqa runs/vqa --image shape.png --question "what color is the shape?"
  polymodal vqa runs/vqa --image scene.png --question "how many circles are there?" -k 3 --json
"""


def register(verbs: argparse._SubParsersAction) -> None:
    parser = verbs.add_parser("vqa", help="answer a question about an image", description=HELP,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", help="checkpoint directory or run directory of a VQA model")
    parser.add_argument("--image", required=True, help="image file")
    parser.add_argument("--question", required=True, help="the question, in quotes")
    parser.add_argument("-k", type=int, default=5, help="number of answers to show (default 5)")
    parser.add_argument("--json", action="store_true", help="print the answers as JSON")
    parser.add_argument("--device", default="auto")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from polymodal.cli.common import load_task_model, print_json
    from polymodal.cli.report import print_table
    from polymodal.data.records import open_image_file
    from polymodal.tasks.vqa import answer_question

    if args.k < 1:
        raise ValueError(f"-k must be at least 1, got {args.k}")
    if not args.question.strip():
        raise ValueError("--question is empty")
    loaded = load_task_model(args.checkpoint, args.device, "vqa", "vqa", "VQA model")
    image = open_image_file(args.image)
    answers = answer_question(loaded.model, loaded.tokenizer, loaded.transform, image, args.question, args.k)
    rows = [{"rank": rank, "answer": answer, "probability": round(probability, 4)}
            for rank, (answer, probability) in enumerate(answers, start=1)]
    if args.json:
        print_json({"question": args.question, "image": args.image, "answers": rows})
    else:
        print_table(f"{args.question}  ({args.image})", rows)
    return 0
