"""Can a VQA model learn the shapes world's spatial relations? An ordered read-out, more relation questions and a
staged curriculum, scored on the usual shapes test split.

The shapes world asks about one pair of objects per scene ("is the circle left of the square?", answered yes or
no with a coin deciding whether the true relation or its opposite is asked) and sometimes "what shape is left of
the circle?". Every fusion family in ``fusion_compare.py`` stays near chance on them: the yes/no answer is the
XOR of the relation word and the objects' order, and no single feature correlates with it. This script trains
``vqa-xattn-effnet`` with its cross-attention read-out replaced by ``pool: slots`` (each word's read of the image
kept in place) and the image tokens' 2-D positions appended as extra channels (``--positions channels``,
``image_positions: sincos_channels``) or added with a learned scale starting at ``--position-scale``
(``--positions added``), on the training scenes' usual questions plus relation questions about every pair of
objects. Relation questions come in two kinds:

- ``order``: each pair asked both ways round with one word per axis ("is A left of B?", "is B left of A?",
  "above"), so the answer is the objects' order along that axis, no XOR yet;
- ``xor``: each pair in a random order, asked with its true relation and with the opposite one, all four words
  (the shapes world's own form).

Training runs in stages, ``--stage KIND:EPOCHS[:REGEX]`` (repeatable; default ``order:3`` then ``xor:5``): each
is an ordinary ``polymodal train`` run on a VQA v2 folder written here (``--work``) with the scenes' usual
questions plus relation questions of KIND, kept to those REGEX matches (``'^is .* left of '``: one relation, no
usual questions), starting from the previous stage's run (``model: WORK/stageN``) with a fresh optimizer. The
first stage fixes the run's tokenizer and answer list, so it should see every kind of question. The report
(``--out``) gives the test accuracy per question type after each stage and the position questions split by form,
with the question-only baseline trained on the last stage's questions for all the stages' epochs.

    python benchmarks/position_curriculum.py [--scenes 4000] [--stage KIND:EPOCHS[:REGEX] ...] [--lr 1e-3]
                                             [--positions channels|added] [--position-scale 1]
                                             [--self-attention] [--skip-baseline | --baseline-only]
                                             [--threads 2] [--work runs/position] [--out docs]
"""
from __future__ import annotations

import argparse
import copy
import json
import random
import re
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import torch
from report_setup import processor_name, start_report

from polymodal import run_training
from polymodal.data.export import export_vqa
from polymodal.data.shapes import ShapesWorld, VQAItem
from polymodal.data.shapes_language import OPPOSITE, QUESTION_RELATION, referring_phrase, relation
from polymodal.data.vqa import load_vqa_spec
from polymodal.factory import get_model_config
from polymodal.model_io import load_for_inference
from polymodal.recipes.config import DataConfig, OptimConfig, RunConfig
from polymodal.tasks.vqa import evaluate_vqa

ONE_WORD_PER_AXIS = {"right": "left", "below": "above"}  # stage 1 says "B left of A", never "A right of B"
TEST = {"name": "shapes", "split": "test", "size": 500}
# The test split's position questions by form, as regular expressions over the question text.
POSITION_FORMS = {
    "yes/no position": "^is .* (left of|right of|above|below) ",
    "yes/no left of": "^is .* left of ",
    "what shape is REL X": "^what shape is (left of|right of|above|below) ",
}


def relation_items(world: ShapesWorld, scenes: int, kind: str, seed: int = 0) -> list[VQAItem]:
    """Yes/no relation questions about every pair of objects in the first ``scenes`` training scenes, in the
    ``"order"`` or the ``"xor"`` form (see the module docstring)."""
    rng = random.Random(seed)
    items = []
    for index in range(scenes):
        scene = world.scene("train", index)
        shapes = Counter(o.shape for o in scene.objects)
        for i, a in enumerate(scene.objects):
            for b in scene.objects[i + 1:]:
                if kind == "order":
                    rel = relation(a, b)
                    if rel in ONE_WORD_PER_AXIS:
                        a, b, rel = b, a, ONE_WORD_PER_AXIS[rel]
                    asked = [(a, b, rel, "yes"), (b, a, rel, "no")]
                else:
                    if rng.random() < 0.5:
                        a, b = b, a
                    rel = relation(a, b)
                    asked = [(a, b, rel, "yes"), (a, b, OPPOSITE[rel], "no")]
                for first, second, word, answer in asked:
                    items.append(VQAItem(scene.key, f"is {referring_phrase(first, shapes)} {QUESTION_RELATION[word]} "
                                     f"{referring_phrase(second, shapes)}?", answer,
                                         "position", "yes/no"))
    return items


def write_stage(world: ShapesWorld, scenes: int, kind: str, folder: Path, questions: str | None = None) -> Path:
    """The scenes' usual questions plus relation questions of ``kind``, as a VQA v2 folder; with ``questions``
    (a regular expression), only the questions it matches."""
    items = world.vqa_items("train", scenes) + relation_items(world, scenes, kind)
    if questions is not None:
        items = [item for item in items if re.search(questions, item.question)]
    return export_vqa(world.image_text_set("train", scenes), items, folder, overwrite=True, progress=False)


def model_config(question_only: bool, self_attention: bool = False, positions: str = "channels",
                 position_scale: float = 1.0) -> dict:
    config = copy.deepcopy(get_model_config("vqa-xattn-effnet"))
    config["fusion"]["options"] = {**config["fusion"]["options"], "pool": "slots", "self_attention": self_attention,
                                   "slots": config["text"]["context_length"]}
    if positions == "channels":
        config["fusion"]["image_positions"] = "sincos_channels"
    else:
        config["fusion"]["image_positions"] = "sincos"
        config["fusion"]["image_positions_scale"] = position_scale
    if question_only:  # the same text tower and head on pooled question features alone
        del config["image"]
        config["fusion"] = {"level": "early", "kind": "concat", "dim": 256}
    return config


def train(model, data: Path, epochs: int, lr: float, out: Path) -> list[dict]:
    config = RunConfig(model=model, data=DataConfig(train=str(data), val=TEST),
                       train=OptimConfig(epochs=epochs, batch_size=64, lr=lr, weight_decay=0.05, warmup_steps=100,
                                         checkpoint_every=0, log_every=50, precision="fp32", seed=0),
                       out=str(out))
    run_training(config, progress=False)
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_scores(run: Path) -> dict[str, float]:
    """Test accuracy overall, per question type and per position-question form."""
    loaded = load_for_inference(run, "cpu")
    report = evaluate_vqa(loaded.model, load_vqa_spec(TEST), loaded.tokenizer, loaded.transform)
    scores = {"overall": report.overall, **report.per_question_type}
    for form, pattern in POSITION_FORMS.items():
        subset = load_vqa_spec({**TEST, "questions": pattern})
        scores[form] = evaluate_vqa(loaded.model, subset, loaded.tokenizer, loaded.transform).overall
    return scores


def markdown(rows: dict[str, dict[str, float]], command: str, threads: int, seconds: dict[str, float]) -> str:
    columns = ["overall", "count", "colour", "shape", "exists", "position", *POSITION_FORMS]
    lines = [f"### Position questions with an ordered read-out and a curriculum ({processor_name()}, "
             f"{threads} thread(s))", "", "| run | " + " | ".join(columns) + " | minutes |",
             "| --- |" + " ---: |" * (len(columns) + 1)]
    for name, scores in rows.items():
        cells = [f"{scores.get(column, float('nan')):.1f}" for column in columns]
        cell = name.replace("|", "\\|")  # a stage's regex may hold a "|", which would split the table row
        lines.append(f"| {cell} | " + " | ".join(cells) + f" | {seconds[name] / 60:.0f} |")
    return "\n".join(lines) + f"\n\nOfficial VQA accuracy (%) on {TEST['size']} test scenes. Made by `{command}`.\n"


@dataclass(frozen=True)
class Stage:
    """One training stage: relation questions of ``kind`` (plus the usual ones), ``epochs``, an optional filter."""

    kind: str
    epochs: int
    questions: str | None = None

    @classmethod
    def parse(cls, text: str) -> Stage:
        """``KIND:EPOCHS[:REGEX]``, e.g. ``order:4:^is .* left of `` (the regex may itself contain colons)."""
        kind, _, rest = text.partition(":")
        epochs, _, questions = rest.partition(":")
        if kind not in ("order", "xor") or not epochs.isdigit() or int(epochs) < 1:
            raise argparse.ArgumentTypeError(f"a stage is KIND:EPOCHS[:REGEX] with KIND order or xor and EPOCHS >= 1, "
                                             f"got {text!r}")
        return cls(kind, int(epochs), questions or None)

    def name(self) -> str:
        return f"{self.kind}, {self.epochs} ep" + (f", `{self.questions}`" if self.questions else "")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenes", type=int, default=4000, help="training scenes (default 4000)")
    parser.add_argument("--stage", dest="stages", action="append", type=Stage.parse, metavar="KIND:EPOCHS[:REGEX]",
                        help="a training stage, repeatable, run in order, each from the last one's weights with a "
                             "fresh optimizer (default: order:3 then xor:5)")
    parser.add_argument("--lr", type=float, default=1e-3, help="every stage's (and the baseline's) learning rate")
    parser.add_argument("--self-attention", dest="self_attention", action="store_true",
                        help="ALBEF's fusion layer: the words also read each other before the cross-attention")
    parser.add_argument("--positions", choices=["channels", "added"], default="channels",
                        help="the image tokens' 2-D sin-cos positions appended as extra channels "
                             "(image_positions: sincos_channels, default) or added times a learned scale (sincos)")
    parser.add_argument("--position-scale", dest="position_scale", type=float, default=1.0,
                        help="with --positions added: the scale's starting value (default 1; the presets start at "
                             "0, where positions never got in)")
    baseline = parser.add_mutually_exclusive_group()
    baseline.add_argument("--skip-baseline", dest="skip_baseline", action="store_true",
                          help="leave out the question-only baseline")
    baseline.add_argument("--baseline-only", dest="baseline_only", action="store_true",
                          help="train only the question-only baseline (on the last stage's questions, for all the "
                               "stages' epochs), e.g. beside a --skip-baseline run")
    parser.add_argument("--work", default="runs/position", help="VQA folders and runs (kept)")
    parser.add_argument("--out", default="docs", help="folder for position_curriculum.md/.json")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    args = parser.parse_args()
    stages = args.stages or [Stage("order", 3), Stage("xor", 5)]
    out, command = start_report(args, __file__)
    work, world = Path(args.work), ShapesWorld()
    rows: dict[str, dict[str, float]] = {}
    seconds: dict[str, float] = {}
    folders: dict[tuple[str, str | None], Path] = {}
    model: dict | str = model_config(False, args.self_attention, args.positions, args.position_scale)
    for stage in stages[-1:] if args.baseline_only else stages:
        key = (stage.kind, stage.questions)
        if key not in folders:
            folder = work / f"data-{stage.kind}-{len(folders) + 1}"
            folders[key] = write_stage(world, args.scenes, stage.kind, folder, stage.questions)
    for number, stage in enumerate([] if args.baseline_only else stages, 1):
        start, run, name = time.perf_counter(), work / f"stage{number}", f"stage {number}: {stage.name()}"
        train(model, folders[(stage.kind, stage.questions)], stage.epochs, args.lr, run)
        seconds[name] = time.perf_counter() - start
        rows[name] = test_scores(run)
        print(name, rows[name], flush=True)
        model = str(run)
    if not args.skip_baseline:
        start = time.perf_counter()
        last = stages[-1]
        train(model_config(True), folders[(last.kind, last.questions)], sum(s.epochs for s in stages), args.lr,
              work / "question-only")
        seconds["question only"] = time.perf_counter() - start
        rows["question only"] = test_scores(work / "question-only")
    report = markdown(rows, command, torch.get_num_threads(), seconds)
    (out / "position_curriculum.md").write_text(report, encoding="utf-8")
    (out / "position_curriculum.json").write_text(json.dumps({"rows": rows, "seconds": seconds}, indent=1),
                                                  encoding="utf-8")
    print(report)


if __name__ == "__main__":
    main()
