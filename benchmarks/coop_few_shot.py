"""CoOp few-shot prompt learning against hand-written and ensembled prompts, on the quickstart's two frozen dual
encoders: ``lit-effnet-minilm`` (trained on emoji) on the animal silhouettes, and ``clip-tiny`` (trained on the shapes
world) on the shapes world's zero-shot task (the largest object's shape).

Per world, on its test split, from the same image embeddings:

* zero-shot with the single hand-written prompt "a photo of a {}." (template set ``photo``), with the quickstart
  recipe's own templates, and with CLIP's 80 ImageNet templates (``imagenet``), each class embedding the mean of its
  prompts' (CLIP's prompt ensembling);
* CoOp (family ``prompt_learner``) trained by ``polymodal.run_training`` on K = 1, 2, 4, 8, 16 images per class of the
  training split (``shots_per_class``), each K for several seeds (the seed draws the shots and initialises the
  context): mean ± standard deviation of top-1 over the seeds;
* for reference, what any linear classifier can read off the frozen image embeddings: a logistic-regression probe
  trained on many more labelled images (``--probe-images`` of the training split), not a few-shot method.

CoOp's schedule (Zhou et al. 2022): 50 epochs for 1 shot, 100 for 2 and 4, 200 for 8 and 16; here an epoch is one
full-batch step over the K x C shots (the image tower's outputs are cached, so a step costs one pass of the C prompts
through the text tower). AdamW without weight decay. The learning rate per base was chosen among {5e-4, 2e-3, 8e-3,
2e-2} (MiniLM) and {2e-2, 6e-2, 0.15} (clip-tiny) with seed 0 at K = 1, 4 and 16 on 500 images of the training split
outside the shots, never on the test split; the chosen ones are ~0.14x the standard deviation of each text tower's
token embeddings (0.056 and 1.0).

The quickstart models are trained under ``--work`` (or given with ``--real-model`` / ``--shapes-model``), and every
CoOp run is kept there: running again reuses finished runs whose run config is unchanged. Writes
``OUT/coop_few_shot.{md,json,png}``.

    python benchmarks/coop_few_shot.py --work runs/coop [--worlds animals shapes] [--shots 1 2 4 8 16]
                                       [--seeds 0 1 2] [--variants unified init csc] [--threads N] [--out docs]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib
import torch
import torch.nn.functional as F
import yaml

from report_setup import processor_name, start_report

from polymodal import load_run_config, run_training
from polymodal.data.catalog import load_data_spec
from polymodal.data.records import ImageTextSet
from polymodal.metrics.classification import topk_accuracy
from polymodal.model_io import load_model, load_tokenizer, resolve_model_dir
from polymodal.recipes.config import run_config_to_dict
from polymodal.recipes.frozen_towers import image_tower_outputs
from polymodal.recipes.quickstart import real_recipe, run_quickstart, shapes_recipe
from polymodal.tasks.prompt_templates import TEMPLATE_SETS
from polymodal.tasks.zero_shot import zero_shot_classifier

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


@dataclass(frozen=True)
class World:
    title: str
    quickstart: str  # the quickstart world that trains its base model
    model: str  # the base's preset, for the report
    train: dict[str, Any]
    test: dict[str, Any]
    recipe_templates: tuple[str, ...]


WORLDS = {
    "animals": World("animal silhouettes", "real", "lit-effnet-minilm (quickstart, trained on openmoji)",
                     {"name": "animal-shapes", "split": "train"}, {"name": "animal-shapes", "split": "test"},
                     real_recipe("").templates),
    "shapes": World("shapes world, largest object's shape", "shapes", "clip-tiny (quickstart --world shapes)",
                    {"name": "shapes", "split": "train", "size": 5000}, {"name": "shapes", "split": "test", "size": 1000},
                    shapes_recipe("").templates),
}
# CoOp's variants: its default (16 random context vectors shared by all classes), the word-initialised context, and
# class-specific contexts (CSC).
VARIANTS = {
    "unified": ("CoOp, 16 shared vectors", {"context_length": 16}),
    "init": ("CoOp, shared, from \"a photo of a\"", {"init": "a photo of a"}),
    "csc": ("CoOp-CSC, 16 vectors per class", {"context_length": 16, "class_specific": True}),
}
EPOCHS = {1: 50, 2: 100, 4: 100, 8: 200, 16: 200}  # CoOp's schedule by shots per class


def base_model(world: World, given: str | None, work: Path) -> Path:
    """The world's frozen dual encoder: the given one, or the quickstart's (trained under ``work`` once)."""
    if given:
        return resolve_model_dir(given)
    out = work / f"quickstart-{world.quickstart}"
    if not (out / "model" / "model.safetensors").is_file():
        print(f"training the quickstart model ({world.quickstart}) in {out}", flush=True)
        run_quickstart(out, world=world.quickstart, progress=False)
    return out / "model"


@torch.no_grad()
def image_embeddings(base: torch.nn.Module, images: ImageTextSet, device: torch.device) -> torch.Tensor:
    """Unit-norm image embeddings of a set, through the image tower's feature cache (the one CoOp runs fill)."""
    cached = image_tower_outputs(base.image_encoder, base.config["image"], base.preprocess, images, device,
                                 ("pooled",), precision="fp32")
    pooled = cached.parts["image_pooled"][cached.rows].float().to(device)
    return base.encode_image(image_tower_features=pooled).float().cpu()


def labels_of(images: ImageTextSet) -> torch.Tensor:
    return torch.tensor([record.label for record in images.records])


def top1(logits: torch.Tensor, labels: torch.Tensor) -> float:
    return topk_accuracy(logits.float().cpu(), labels, ks=(1,))["top1"]


def linear_probe(train: torch.Tensor, labels: torch.Tensor, classes: int) -> torch.nn.Linear:
    """Multinomial logistic regression on frozen embeddings (L-BFGS, a small L2 penalty): no learning rate to tune."""
    torch.manual_seed(0)
    probe = torch.nn.Linear(train.shape[1], classes)
    optimizer = torch.optim.LBFGS(probe.parameters(), max_iter=300, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(probe(train), labels) + 1e-4 * probe.weight.square().sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    return probe.eval()


def coop_run(world: World, base: Path, variant: dict[str, Any], shots: int, seed: int, classes: int, lr: float,
             out: Path) -> tuple[torch.nn.Module, float]:
    """One CoOp training through ``run_training``; a finished run with the same run config is reused."""
    config = load_run_config({
        "model": {"family": "prompt_learner", "base": str(base), **variant},
        "data": {"train": {**world.train, "shots_per_class": shots}, "val": None},
        "train": {"epochs": EPOCHS[shots], "batch_size": shots * classes, "lr": lr, "weight_decay": 0.0,
                  "warmup_steps": 5, "seed": seed, "precision": "fp32", "log_every": 10, "checkpoint_every": 0},
        "out": str(out)})
    saved = out / "run_config.yaml"
    resume = saved.is_file() and yaml.safe_load(saved.read_text()) == yaml.safe_load(
        yaml.safe_dump(run_config_to_dict(config), sort_keys=False))
    if not resume:
        shutil.rmtree(out, ignore_errors=True)
    start = time.perf_counter()
    result = run_training(config, resume=resume, progress=False)
    return result.model.eval(), time.perf_counter() - start


def plot(results: dict[str, Any], out_png: Path) -> None:
    """Top-1 against shots per class (mean ± std over seeds) per CoOp variant, zero-shot baselines as lines."""
    figure, axes = plt.subplots(1, len(results), figsize=(6.5 * len(results), 4.4), dpi=120, squeeze=False)
    for axis, world in zip(axes[0], results.values()):
        axis.axhline(100 / world["classes"], color="gray", linestyle=":", linewidth=1, label="chance")
        if world["linear_probe"] is not None:
            axis.axhline(world["linear_probe"], color="black", linestyle=":", linewidth=1,
                         label=f"linear probe, {world['probe_images']} labelled images")
        for index, (label, top) in enumerate(world["zero_shot"].items()):
            axis.axhline(top, color=f"C{index}", linestyle="--", linewidth=1, label=f"zero-shot: {label}")
        for index, (label, by_shots) in enumerate(world["coop"].items(), start=len(world["zero_shot"])):
            shots = sorted(by_shots, key=int)
            axis.errorbar([int(k) for k in shots], [by_shots[k]["mean"] for k in shots],
                          yerr=[by_shots[k]["std"] for k in shots], marker="o", capsize=3, color=f"C{index}",
                          label=label)
        axis.set_xscale("log", base=2)
        axis.set_xticks([1, 2, 4, 8, 16], ["1", "2", "4", "8", "16"])
        axis.set_xlabel("training images per class")
        axis.set_ylabel("test top-1 (%)")
        axis.set_title(world["title"], fontsize=10)
        axis.legend(fontsize=7, loc="best")
    figure.tight_layout()
    figure.savefig(out_png)
    plt.close(figure)


def report(results: dict[str, Any], settings: dict[str, Any], command: str) -> list[str]:
    lines = [f"CoOp few-shot prompt learning vs hand-written and ensembled prompts (top-1 %, test split; CoOp: mean ± "
             f"std over seeds {settings['seeds']}).", "",
             f"Each CoOp run: `polymodal train` of family `prompt_learner` on the base (frozen), K images per class "
             f"(`shots_per_class`, drawn by the seed); epochs of one full-batch step by K (CoOp's schedule): "
             f"{', '.join(f'{k} → {e}' for k, e in EPOCHS.items())}; AdamW without weight decay, 5 warm-up steps, "
             f"cosine decay. "
             f"CPU ({settings['processor']}), {settings['threads']} thread(s).", ""]
    shots = settings["shots"]
    for world in results.values():
        lines += [f"### {world['title']} — base {world['model']}, {world['classes']} classes (chance "
                  f"{100 / world['classes']:.1f}), {world['test_images']} test images, lr {world['lr']:g}", "",
                  "| method | zero-shot | " + " | ".join(f"{k} shot{'s' if k > 1 else ''}" for k in shots) + " |",
                  "| --- | ---: |" + " ---: |" * len(shots)]
        for label, top in world["zero_shot"].items():
            lines.append(f"| {label} | {top:.1f} |" + " |" * len(shots))
        for label, by_shots in world["coop"].items():
            cells = [f"{by_shots[str(k)]['mean']:.1f} ± {by_shots[str(k)]['std']:.1f}" for k in shots]
            lines.append(f"| {label} | |" + "".join(f" {cell} |" for cell in cells))
        if world["linear_probe"] is not None:
            lines += ["", f"Reference, not few-shot: a linear probe (logistic regression) on the frozen image embeddings of "
                          f"{world['probe_images']} labelled training images reaches {world['linear_probe']:.1f}."]
        lines += ["", f"Training time of all CoOp runs: {world['train_seconds'] / 60:.1f} min.", ""]
    lines += [f"Made by `{command}`; figure: `coop_few_shot.png`.", ""]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--worlds", nargs="+", choices=list(WORLDS), default=list(WORLDS))
    parser.add_argument("--shots", nargs="+", type=int, choices=list(EPOCHS), default=list(EPOCHS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    parser.add_argument("--real-model", help="the animal world's base (default: the quickstart's, trained in --work)")
    parser.add_argument("--shapes-model", help="the shapes world's base (default: quickstart --world shapes)")
    parser.add_argument("--lr-animals", type=float, default=8e-3, help="CoOp learning rate on lit-effnet-minilm")
    parser.add_argument("--lr-shapes", type=float, default=0.15, help="CoOp learning rate on clip-tiny")
    parser.add_argument("--probe-images", type=int, default=2000,
                        help="labelled training images of the linear-probe reference (0: none)")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    parser.add_argument("--work", help="keep base models and runs here (default: a temporary folder)")
    parser.add_argument("--out", default="docs")
    args = parser.parse_args()
    out, command = start_report(args, __file__)
    # Scratch runs with one step per epoch and a checkpoint per epoch: syncing each to disk (~0.2 s here) would
    # cost more than the training step.
    os.environ.setdefault("POLYMODAL_FSYNC", "0")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as scratch:
        work = Path(args.work or scratch)
        for name in args.worlds:
            world = WORLDS[name]
            lr = args.lr_animals if name == "animals" else args.lr_shapes
            base_dir = base_model(world, args.real_model if name == "animals" else args.shapes_model, work)
            base, tokenizer = load_model(base_dir, device=device), load_tokenizer(base_dir)
            test_set = load_data_spec(world.test)
            labels, images = labels_of(test_set), image_embeddings(base, test_set, device)
            prompt_sets = {"\"a photo of a {}.\"": TEMPLATE_SETS["photo"],
                           f"the quickstart's {len(world.recipe_templates)} templates": world.recipe_templates,
                           f"CLIP's {len(TEMPLATE_SETS['imagenet'])} ImageNet templates": TEMPLATE_SETS["imagenet"]}
            zero_shot = {label: top1(images @ zero_shot_classifier(base, tokenizer, test_set.class_names,
                                                                    templates).float().T, labels)
                         for label, templates in prompt_sets.items()}
            probe = None
            if args.probe_images:
                probe_set = load_data_spec({**world.train, "size": args.probe_images})
                with torch.no_grad():
                    probe = top1(linear_probe(image_embeddings(base, probe_set, device), labels_of(probe_set),
                                              len(test_set.class_names))(images), labels)
            print(name, json.dumps(zero_shot), "linear probe", probe, flush=True)
            coop: dict[str, dict[str, Any]] = {}
            seconds = 0.0
            for variant in args.variants:
                label, options = VARIANTS[variant]
                coop[label] = {}
                for shots in args.shots:
                    scores = {}
                    for seed in args.seeds:
                        run = work / "runs" / name / variant / f"{shots}shot-seed{seed}"
                        model, took = coop_run(world, base_dir, options, shots, seed, len(test_set.class_names),
                                               lr, run)
                        with torch.no_grad():
                            scores[seed] = top1(images @ model.class_embeddings().float().cpu().T, labels)
                        seconds += took
                        print(f"{name} {variant} {shots}-shot seed {seed}: {scores[seed]:.1f} ({took:.0f} s)",
                              flush=True)
                    values = list(scores.values())
                    coop[label][str(shots)] = {"seeds": scores, "mean": statistics.mean(values),
                                               "std": statistics.stdev(values) if len(values) > 1 else 0.0}
            results[name] = {"title": world.title, "model": world.model, "base": str(base_dir), "lr": lr,
                             "classes": len(test_set.class_names), "test_images": len(test_set),
                             "zero_shot": zero_shot, "coop": coop, "train_seconds": seconds,
                             "linear_probe": probe, "probe_images": args.probe_images}
    settings = {"shots": args.shots, "seeds": args.seeds, "epochs": EPOCHS, "threads": torch.get_num_threads(),
                "processor": processor_name()}
    lines = report(results, settings, command)
    plot(results, out / "coop_few_shot.png")
    (out / "coop_few_shot.md").write_text("\n".join(lines), encoding="utf-8")
    (out / "coop_few_shot.json").write_text(json.dumps({"command": command, "settings": settings,
                                                        "results": results}, indent=1), encoding="utf-8")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
