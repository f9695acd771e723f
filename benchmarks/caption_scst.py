"""Captioning on the generated shapes world: cross-entropy training, then self-critical sequence training (SCST)
from the cross-entropy checkpoint; held-out BLEU-4, ROUGE-L and CIDEr-D after each stage, and the training curve.

Both stages go through ``polymodal.run_training`` exactly as ``polymodal train`` would run them (the SCST stage is
a run config with ``model: <the cross-entropy run>`` and ``train.scst: true``). The held-out set is the shapes
world's ``test`` split (scenes never seen in training, 5 reference captions each), scored with greedy decoding and
with beam search (beam 3). Writes ``OUT/caption_scst.{md,json,png}``.

    python benchmarks/caption_scst.py [--model caption-tiny] [--train-size 4000] [--test-size 500]
                                      [--xe-epochs 10] [--scst-epochs 4] [--samples 5] [--baseline greedy]
                                      [--out docs]
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from report_setup import start_report

from polymodal import load_run_config, run_training
from polymodal.data.catalog import load_data_spec
from polymodal.data.transforms import image_transform
from polymodal.plots import plot_two_stage_training
from polymodal.tasks.captioning import evaluate_captioning

METRICS = ("BLEU-4", "ROUGE-L", "CIDEr-D")


def held_out_scores(result, test_set) -> dict[str, dict[str, float]]:
    transform = image_transform(result.model.preprocess)
    return {method: evaluate_captioning(result.model, test_set, result.tokenizer, transform, 64,
                                        **({"method": "greedy"} if method == "greedy" else
                                           {"method": "beam", "beam_size": 3})).scores
            for method in ("greedy", "beam 3")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="caption-tiny")
    parser.add_argument("--train-size", type=int, default=4000, help="training scenes (5 captions each)")
    parser.add_argument("--val-size", type=int, default=200, help="validation scenes scored after every epoch")
    parser.add_argument("--test-size", type=int, default=500, help="held-out test scenes")
    parser.add_argument("--xe-epochs", type=int, default=10)
    parser.add_argument("--scst-epochs", type=int, default=4)
    parser.add_argument("--xe-lr", type=float, default=2e-3)
    parser.add_argument("--scst-lr", type=float, default=2e-4)
    parser.add_argument("--samples", type=int, default=5, help="SCST samples per image")
    parser.add_argument("--baseline", choices=["greedy", "mean"], default="greedy")
    parser.add_argument("--batch-size", type=int, default=64, help="cross-entropy batch size")
    parser.add_argument("--scst-batch-size", type=int, default=32, help="images per SCST step (x samples captions)")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    parser.add_argument("--out", default="docs")
    parser.add_argument("--work", help="keep the runs here (default: a temporary folder)")
    args = parser.parse_args()
    out, command = start_report(args, __file__)
    data = {"train": {"name": "shapes", "split": "train", "size": args.train_size},
            "val": {"name": "shapes", "split": "val", "size": args.val_size}}
    common = {"precision": "fp32", "checkpoint_every": 0, "log_every": 10, "seed": 0}
    test_set = load_data_spec({"name": "shapes", "split": "test", "size": args.test_size})

    with tempfile.TemporaryDirectory() as scratch:
        work = Path(args.work or scratch)
        start = time.perf_counter()
        xe = run_training(load_run_config({
            "model": args.model, "data": data, "out": str(work / "xe"),
            "train": {**common, "batch_size": args.batch_size, "epochs": args.xe_epochs, "lr": args.xe_lr,
                      "label_smoothing": 0.1, "warmup_steps": 100}}))
        xe_seconds = time.perf_counter() - start
        xe_scores = held_out_scores(xe, test_set)
        print("cross-entropy:", json.dumps(xe_scores), flush=True)
        start = time.perf_counter()
        scst = run_training(load_run_config({
            "model": str(work / "xe"), "data": data, "out": str(work / "scst"),
            "train": {**common, "batch_size": args.scst_batch_size, "epochs": args.scst_epochs, "lr": args.scst_lr,
                      "scst": True,
                      "scst_samples": args.samples, "scst_baseline": args.baseline, "warmup_steps": 20,
                      "weight_decay": 0.0}}))
        scst_seconds = time.perf_counter() - start
        scst_scores = held_out_scores(scst, test_set)
        print("SCST:", json.dumps(scst_scores), flush=True)
        plot_two_stage_training([("cross-entropy", work / "xe" / "metrics.jsonl"),
                                 ("SCST", work / "scst" / "metrics.jsonl")], "val/CIDEr-D", "reward",
                                out / "caption_scst.png",
                                f"{args.model} on the shapes world: cross-entropy, then SCST (CIDEr-D reward)")
        first = test_set.subset(range(4))
        before, after = (evaluate_captioning(result.model, first, result.tokenizer,
                                             image_transform(result.model.preprocess), method="greedy").captions
                         for result in (xe, scst))
        examples = [(key, before[key], after[key]) for key in before]

    rows = [("cross-entropy", xe_scores, xe_seconds), ("+ SCST", scst_scores, scst_seconds)]
    lines = [f"### {args.model}: shapes world, {args.train_size} training scenes, {len(test_set)} held-out test "
             f"scenes (5 references each)", "",
             f"Cross-entropy: {args.xe_epochs} epochs, AdamW lr {args.xe_lr}, label smoothing 0.1. SCST: "
             f"{args.scst_epochs} epochs from the cross-entropy checkpoint, lr {args.scst_lr}, batch "
             f"{args.scst_batch_size} images x {args.samples} "
             f"samples per image, {args.baseline} baseline, CIDEr-D reward with the training references' document "
             f"frequencies. CPU, {torch.get_num_threads()} thread(s).", "",
             "| stage | decoding | " + " | ".join(METRICS) + " | training time |",
             "| --- | --- |" + " ---: |" * (len(METRICS) + 1)]
    for stage, scores, seconds in rows:
        for method, values in scores.items():
            cells = [f"{values[m]:.3f}" for m in METRICS]
            lines.append(f"| {stage} | {method} | " + " | ".join(cells) + f" | {seconds / 60:.1f} min |")
    gain = {method: 100 * (scst_scores[method]["CIDEr-D"] / max(xe_scores[method]["CIDEr-D"], 1e-9) - 1)
            for method in xe_scores}
    lines += ["", "Relative CIDEr-D change from SCST: " +
              ", ".join(f"{method} {value:+.1f}%" for method, value in gain.items()) + ".", "",
              "Greedy captions of the first test scenes:", "", "| scene | cross-entropy | + SCST |",
              "| --- | --- | --- |"]
    lines += [f"| {key} | {a} | {b} |" for key, a, b in examples]
    lines += ["", f"Made by `{command}`; curve: `caption_scst.png`.", ""]
    (out / "caption_scst.md").write_text("\n".join(lines), encoding="utf-8")
    (out / "caption_scst.json").write_text(json.dumps({
        "command": command, "cross_entropy": xe_scores, "scst": scst_scores, "relative_cider_gain": gain,
        "seconds": {"cross_entropy": xe_seconds, "scst": scst_seconds}}, indent=1), encoding="utf-8")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
