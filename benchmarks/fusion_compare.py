"""Every fusion family, trained with the same budget on the same VQA data, plus question-only and image-only
baselines: official VQA accuracy overall and per question type, parameters, training samples/s and inference
latency, as a Markdown table and a PNG bar chart.

Each family is the ``vqa-concat-tiny`` preset (ResNet at 32 px + 2-layer text transformer, MLP answer head) with
only its ``fusion`` section replaced, trained from the same seed for the same number of epochs with the same
optimizer settings; the baselines drop the ``image`` or the ``text`` section. Accuracy is measured on the
dataset's held-out split; latency is the median time of one forward pass for one question (batch 1).

    python benchmarks/fusion_compare.py [--datasets easy-vqa shapes] [--epochs 1] [--families concat tensor ...]
                                        [--train-size 2000] [--image-tower scratch|efficientnet] [--out docs]
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from report_setup import start_report

from polymodal import run_training
from polymodal.data.transforms import image_transform
from polymodal.factory import get_model_config
from polymodal.plots import plot_grouped_bars
from polymodal.recipes.config import DataConfig, OptimConfig, RunConfig
from polymodal.tasks.vqa import question_loader
from polymodal.train.metrics_log import MetricsLog

ATTENTION = {"layers": 2, "heads": 4, "mlp_ratio": 2.0}
SLOTS = {"pool": "slots", "slots": get_model_config("vqa-concat-tiny")["text"]["context_length"]}
FAMILIES: dict[str, dict] = {
    "concat": {"kind": "concat", "dim": 256},
    "sum": {"kind": "sum", "dim": 256},
    "gated multiplicative": {"kind": "gated_multiplicative", "dim": 256},
    "gated additive": {"kind": "gated_additive", "dim": 256},
    "attention-weighted": {"kind": "attention_weighted", "dim": 256},
    "GMU": {"kind": "gated_unit", "dim": 256},
    "tensor (TFN)": {"kind": "tensor", "dim": 256, "options": {"proj_dim": 16}},
    "low-rank tensor (LMF)": {"kind": "low_rank_tensor", "dim": 256, "options": {"rank": 8}},
    "bilinear (MLB)": {"kind": "bilinear", "dim": 256, "options": {"rank": 256}},
    "FiLM": {"kind": "film", "dim": 256},
    "cross-attention": {"kind": "cross_attention", "dim": 128, "options": ATTENTION},
    "cross + self-attention (ALBEF-like)": {"kind": "cross_attention", "dim": 128,
                                            "options": {**ATTENTION, "self_attention": True}},
    # Every text position kept in order: "A ... B" and "B ... A" read differently.
    "cross-attention (slots)": {"kind": "cross_attention", "dim": 128, "options": {**ATTENTION, **SLOTS}},
    "cross + self-attention (slots)": {"kind": "cross_attention", "dim": 128,
                                       "options": {**ATTENTION, "self_attention": True, **SLOTS}},
    "single-stream (ViLT-like)": {"kind": "single_stream", "dim": 128, "options": ATTENTION},
    "co-attention (ViLBERT-like)": {"kind": "co_attention", "dim": 128, "options": ATTENTION},
    "late (gate)": {"level": "late", "combine": "gate"},
    "hybrid (concat + weighted)": {"level": "hybrid", "kind": "concat", "dim": 256, "combine": "weighted"},
    "question only": {"kind": "concat", "dim": 256, "drop": "image"},
    "image only": {"kind": "concat", "dim": 256, "drop": "text"},
}
DATASETS = {
    "easy-vqa": ({"name": "easy-vqa", "split": "train", "size": 2000}, {"name": "easy-vqa", "split": "test"}),
    "shapes": ({"name": "shapes", "split": "train", "size": 2000}, {"name": "shapes", "split": "test", "size": 500}),
}


# What reads the image: the presets' from-scratch ResNet at 32 px, or EfficientNet-Lite0 (ImageNet), frozen, whose
# 7x7 token grid (the ImageNet head's 1280 channels, or block stage 5's 192) is computed once per image and cached
# (small shapes survive its 224 px input), with learned-scale 2-D sin-cos positions added to its tokens
# (-position-channels: appended to them as 64 extra channels instead).
EFFICIENTNET = {"type": "efficientnet_lite0", "frozen": True}
IMAGE_TOWERS: dict[str, dict] = {
    "scratch": {},
    "efficientnet": {"image": EFFICIENTNET, "image_positions": "sincos"},
    "efficientnet-stage5": {"image": {**EFFICIENTNET, "feature_stage": 5}, "image_positions": "sincos"},
    "efficientnet-position-channels": {"image": EFFICIENTNET, "image_positions": "sincos_channels"},
}


def model_config(family: dict, image_tower: str = "scratch") -> dict:
    config = copy.deepcopy(get_model_config("vqa-concat-tiny"))
    fusion = {key: value for key, value in family.items() if key != "drop"}
    config["fusion"] = {"level": "early", **fusion}
    tower = IMAGE_TOWERS[image_tower]
    if "drop" in family:
        del config[family["drop"]]
    if "image" in tower and "image" in config:
        config["image"] = dict(tower["image"])
        config["fusion"]["image_positions"] = tower["image_positions"]
    return config


@torch.no_grad()
def latency_ms(model: torch.nn.Module, batch: dict[str, torch.Tensor], repeats: int = 30) -> float:
    """Median wall time of one forward pass on one question."""
    model.eval()
    single = {key: value[:1] for key, value in batch.items() if key != "targets"}
    model(**single)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        model(**single)
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def train_spec_for(dataset: str, train_size: int | None) -> dict:
    """The dataset's training split, cut to ``train_size`` items (``0`` = the whole split)."""
    spec = dict(DATASETS[dataset][0])
    if train_size == 0:
        spec.pop("size")
    elif train_size is not None:
        spec["size"] = train_size
    return spec


def run_family(name: str, family: dict, dataset: str, epochs: int, train_size: int | None, work: Path,
               image_tower: str = "scratch") -> dict:
    train_spec, test_spec = train_spec_for(dataset, train_size), DATASETS[dataset][1]
    out = work / f"{dataset}-{name.replace(' ', '_').replace('(', '').replace(')', '')}"
    # The test split is the run's validation set, scored after every epoch: a frozen tower then reads each test
    # image once (cached), not once per question.
    config = RunConfig(model=model_config(family, image_tower),
                       data=DataConfig(train=train_spec, val=test_spec),
                       train=OptimConfig(epochs=epochs, batch_size=64, lr=2e-3, weight_decay=0.05, warmup_steps=50,
                                         checkpoint_every=0, log_every=50, precision="fp32", seed=0),
                       out=str(out))
    result = run_training(config, progress=False)
    records = MetricsLog(out / "metrics.jsonl").read()
    final = [record for record in records if "val/vqa_accuracy" in record][-1]
    prefix = "val/vqa_accuracy/"
    per_type = {key[len(prefix):]: value for key, value in final.items() if key.startswith(prefix)}
    transform = None if result.model.preprocess is None else image_transform(result.model.preprocess)
    first_batch = next(iter(question_loader(result.val_set, result.model, transform, result.tokenizer, batch_size=1)))
    speeds = [record["samples_per_s"] for record in records if "samples_per_s" in record]
    return {"family": name, "dataset": dataset, "accuracy": final["val/vqa_accuracy"], "per_type": per_type,
            "parameters": sum(p.numel() for p in result.model.parameters()),
            "train_samples_per_s": statistics.median(speeds), "latency_ms": latency_ms(result.model, first_batch),
            "epochs": epochs, "questions": len(result.val_set), "train": train_spec}


def report_name(dataset: str, image_tower: str) -> str:
    """File stem of a dataset's report; runs with another image tower get their own files."""
    return f"fusion_compare_{dataset}" + ("" if image_tower == "scratch" else f"_{image_tower}")


def markdown(rows: list[dict], dataset: str, command: str, threads: int, image_tower: str) -> str:
    types = list(dict.fromkeys(t for row in rows for t in row["per_type"]))
    header = ["family", "overall", *types, "parameters", "train samples/s", "latency ms"]
    lines = [f"### {dataset}, image tower {image_tower}: {rows[0]['questions']} test questions; "
             f"trained on {rows[0]['train']}, "
             f"{rows[0]['epochs']} epoch(s) each, CPU with {threads} thread(s)", "",
             "| " + " | ".join(header) + " |", "| --- |" + " ---: |" * (len(header) - 1)]
    for row in rows:
        cells = [row["family"], f"{row['accuracy']:.2f}", *(f"{row['per_type'].get(t, 0):.2f}" for t in types),
                 f"{row['parameters']:,}", f"{row['train_samples_per_s']:.0f}", f"{row['latency_ms']:.2f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + f"\n\nMade by `{command}`.\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", nargs="+", choices=list(DATASETS), default=list(DATASETS))
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--image-tower", dest="image_tower", choices=list(IMAGE_TOWERS), default="scratch",
                        help="scratch: the presets' 32 px ResNet; efficientnet: frozen ImageNet EfficientNet-Lite0 "
                             "tokens (the head's map; -stage5: block stage 5's), cached, with 2-D sin-cos positions "
                             "added (-position-channels: appended as extra channels); question-only rows are "
                             "unaffected")
    parser.add_argument("--train-size", type=int, help="training items (images or scenes) per dataset; 0 = the "
                        "whole training split (default: 2000)")
    parser.add_argument("--families", nargs="+", choices=list(FAMILIES), default=list(FAMILIES), metavar="FAMILY")
    parser.add_argument("--out", default="docs", help="folder for fusion_compare_DATASET[_TOWER].md/.json/.png")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    parser.add_argument("--keep-runs", dest="keep_runs", help="keep each family's run folder (model, metrics.jsonl) "
                        "under this folder, for `polymodal eval` or `polymodal vqa` afterwards (default: deleted)")
    args = parser.parse_args()
    out, command = start_report(args, __file__)
    threads = torch.get_num_threads()
    with (contextlib.nullcontext(args.keep_runs) if args.keep_runs else tempfile.TemporaryDirectory()) as work:
        for dataset in args.datasets:
            rows = []
            for name in args.families:
                start = time.perf_counter()
                rows.append(run_family(name, FAMILIES[name], dataset, args.epochs, args.train_size, Path(work),
                                       args.image_tower))
                print(f"{dataset:9} {name:28} accuracy {rows[-1]['accuracy']:6.2f}  "
                      f"({time.perf_counter() - start:.0f} s)", flush=True)
            section = markdown(rows, dataset, command, threads, args.image_tower)
            stem = report_name(dataset, args.image_tower)
            (out / f"{stem}.md").write_text(section, encoding="utf-8")
            (out / f"{stem}.json").write_text(json.dumps(rows, indent=1), encoding="utf-8")
            plot_grouped_bars({row["family"]: {"overall": row["accuracy"], **row["per_type"]} for row in rows},
                              out / f"{stem}.png", f"VQA accuracy by fusion family: {dataset}, {args.image_tower} "
                              "image tower", "official VQA accuracy (%)")
            print(section)


if __name__ == "__main__":
    main()
