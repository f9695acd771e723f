"""The quickstart run: train → evaluate before/after → index → example searches → results and figures."""
from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from polymodal.data.catalog import load_data_spec, split_train_val
from polymodal.data.records import ImageTextSet, concat_sets
from polymodal.data.tokenizers import TextTokenizer
from polymodal.data.transforms import image_transform
from polymodal.encoders.build import build_tokenizer
from polymodal.index import VectorIndex
from polymodal.io import output_directory, write_json
from polymodal.metrics.classification import topk_accuracy
from polymodal.metrics.retrieval import chance_recall
from polymodal.models.dual_encoder import DualEncoder
from polymodal.models.registry import build_model
from polymodal.model_io import save_model
from polymodal.plots import plot_search_grid, plot_training_curve
from polymodal.recipes.config import DataConfig, OptimConfig, RunConfig, override_run_config
from polymodal.recipes.ensemble_weight import select_ensemble_weight, set_ensemble_weight
from polymodal.recipes.frozen_towers import embed_cached, evaluate_cached, has_frozen_towers, tower_features
from polymodal.recipes.training import TrainResult, model_config_of, run_training
from polymodal.runtime import resolve_device, seed_everything
from polymodal.tasks.embed import all_captions, embed_images, embed_texts
from polymodal.tasks.retrieval import retrieval_from_embeddings
from polymodal.tasks.search import search_index
from polymodal.tasks.zero_shot import zero_shot_classifier

__all__ = ["Recipe", "results_table", "run_quickstart"]


@dataclass
class Recipe:
    """Everything that differs between the two quickstart worlds."""

    run: RunConfig
    retrieval_sets: dict[str, Any]  # table label → dataset spec ("held-out" = the run's validation split)
    zero_shot_sets: dict[str, Any]
    index_sets: list[str]  # labels of retrieval sets whose images go into the search index
    queries: list[str]
    templates: tuple[str, ...] = ("a photo of a {}.", "a picture of a {}.", "a drawing of a {}.", "a {}.")
    compare_untrained: bool = True  # the pretrained model's untrained state is the ConSE bridge: worth a column
    ensemble: bool = True  # keep a share of the zero-shot bridge in every similarity (heads/ensemble.py)
    notes: dict[str, str] = field(default_factory=dict)


def real_recipe(out: str) -> Recipe:
    return Recipe(
        run=RunConfig(
            model="lit-effnet-minilm",
            data=DataConfig(train={"name": "openmoji"}, val=None, val_fraction=0.1),
            train=OptimConfig(epochs=25, batch_size=256, lr=1e-3, weight_decay=0.05, warmup_steps=20,
                              checkpoint_every=0, log_every=5),
            out=out,
        ),
        retrieval_sets={"emoji (held-out)": "held-out", "scikit-image photos": {"name": "skimage-photos"}},
        zero_shot_sets={"animal silhouettes": {"name": "animal-shapes", "split": "test", "size": 1000},
                        "scikit-image photos": {"name": "skimage-photos"}},
        index_sets=["emoji (held-out)", "scikit-image photos"],
        queries=["a cat", "a rocket", "a cup of coffee", "a red heart", "a smiling face with sunglasses"],
        notes={"bridge": "untrained model = ConSE bridge (ImageNet probabilities → MiniLM space), no training"},
    )


def shapes_recipe(out: str) -> Recipe:
    return Recipe(
        run=RunConfig(
            model="clip-tiny",
            data=DataConfig(train={"name": "shapes", "split": "train", "size": 5000},
                            val={"name": "shapes", "split": "val", "size": 500}),
            train=OptimConfig(epochs=10, batch_size=64, lr=2e-3, weight_decay=0.05, warmup_steps=50,
                              checkpoint_every=200, log_every=10),
            out=out,
        ),
        retrieval_sets={"shapes test": {"name": "shapes", "split": "test", "size": 500},
                        "shapes unseen colour-shape pairs": {"name": "shapes", "split": "test_compositional",
                                                             "size": 500}},
        zero_shot_sets={"shapes (largest object's shape)": {"name": "shapes", "split": "test", "size": 500}},
        index_sets=["shapes test"],
        queries=["a red circle left of a blue square", "a small green triangle", "a big yellow star",
                 "three shapes", "a purple square above a white circle"],
        templates=("a {}.", "a picture of a {}.", "a {} shape."),
        compare_untrained=False,
        ensemble=False,
    )


@torch.no_grad()
def embed_dataset(
    model: DualEncoder, tokenizer: TextTokenizer, dataset: ImageTextSet, progress: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Unit-norm image and caption embeddings; frozen towers go through the on-disk feature cache."""
    device = next(model.parameters()).device
    model.eval()
    captions, _, _ = all_captions(dataset)
    if has_frozen_towers(model):
        return embed_cached(model, tower_features(model, tokenizer, dataset, device, progress))
    transform = image_transform(model.preprocess)
    return embed_images(model, dataset, transform, progress=progress), embed_texts(model, tokenizer, captions,
                                                                                    progress=False)


def evaluate_model(
    model: DualEncoder, tokenizer: TextTokenizer, sets: dict[str, ImageTextSet], zero_shot: dict[str, ImageTextSet],
    templates: tuple[str, ...], progress: bool,
) -> tuple[dict[str, dict[str, float]], dict[str, torch.Tensor]]:
    """Retrieval metrics per set and zero-shot top-1/5 per labelled set; also returns the image embeddings."""
    results: dict[str, dict[str, float]] = {}
    image_embeddings: dict[str, torch.Tensor] = {}
    for label, dataset in sets.items():
        images, texts = embed_dataset(model, tokenizer, dataset, progress)
        image_embeddings[label] = images
        results[label] = retrieval_from_embeddings(images, texts, dataset)
    for label, dataset in zero_shot.items():
        images, _ = embed_dataset(model, tokenizer, dataset, progress)
        classifier = zero_shot_classifier(model, tokenizer, dataset.class_names, templates)
        labels = torch.tensor([record.label for record in dataset.records])
        results.setdefault(label, {}).update(
            {f"zero_shot_{k}": v for k, v in topk_accuracy(images @ classifier.T, labels).items()}
        )
    return results, image_embeddings


def chance_levels(sets: dict[str, ImageTextSet], zero_shot: dict[str, ImageTextSet]) -> dict[str, dict[str, float]]:
    chance: dict[str, dict[str, float]] = {}
    for label, dataset in sets.items():
        _, text_groups, _ = all_captions(dataset)
        chance[label] = chance_recall([r.group for r in dataset.records], text_groups)
    for label, dataset in zero_shot.items():
        classes = len(dataset.class_names)
        chance.setdefault(label, {}).update({"zero_shot_top1": 100 / classes, "zero_shot_top5": 100 * min(5, classes) / classes})
    return chance


# metrics.json key → the short name shown in the terminal table
TABLE_METRICS = {"text_to_image_R@1": "text→image R@1", "text_to_image_R@5": "text→image R@5",
                 "image_to_text_R@1": "image→text R@1", "zero_shot_top1": "zero-shot top-1",
                 "zero_shot_top5": "zero-shot top-5"}


def run_quickstart(
    out: str | Path, world: str = "real", progress: bool = True, overrides: list[str] | None = None,
    say: Callable[[str], None] = lambda message: None,
) -> dict[str, Any]:
    """Run the quickstart and return its metrics (also written to ``out/metrics.json``).

    Args:
        overrides: ``key=value`` as for ``polymodal train --set``, e.g. to make the run smaller in tests.
        say: receives a line for each stage ("1/4 ...").
    """
    out = output_directory(out, "--out")
    recipe = real_recipe(str(out)) if world == "real" else shapes_recipe(str(out))
    if overrides:
        recipe.run = override_run_config(recipe.run, overrides)
    # The quickstart owns its run: a second quickstart into the same folder starts that run afresh.
    shutil.rmtree(out / "checkpoints", ignore_errors=True)
    (out / "metrics.jsonl").unlink(missing_ok=True)
    started = time.perf_counter()
    seed_everything(recipe.run.train.seed)

    before = None
    if recipe.compare_untrained:
        say("1/4 scoring the untrained model (the training-free bridge)")
        train_all = load_data_spec(recipe.run.data.train)
        _, held_out = split_train_val(train_all, recipe.run.data.val_fraction, recipe.run.train.seed)
        untrained_config, where = model_config_of(recipe.run)
        untrained = build_model(untrained_config, where).to(resolve_device(recipe.run.train.device))
        untrained_tokenizer = build_tokenizer(
            untrained_config["text"], lambda: (caption for r in train_all.records for caption in r.captions), where)
        eval_sets, zero_shot_sets = _load_eval_sets(recipe, held_out)
        before, _ = evaluate_model(untrained, untrained_tokenizer, eval_sets, zero_shot_sets, recipe.templates, progress)
        del untrained

    say("2/4 training")
    train_started = time.perf_counter()
    result = run_training(recipe.run, progress=progress)
    train_seconds = time.perf_counter() - train_started
    plot_training_curve(out / "metrics.jsonl", out / "training_curve.png")

    say("3/4 evaluating the trained model")
    eval_sets, zero_shot_sets = _load_eval_sets(recipe, result.val_set)
    after, image_embeddings = evaluate_model(result.model, result.tokenizer, eval_sets, zero_shot_sets,
                                             recipe.templates, progress)
    chance = chance_levels(eval_sets, zero_shot_sets)
    fine_tuned, mixing = None, None
    if recipe.ensemble:
        fine_tuned = after
        mixing = _ensemble_with_bridge(result, progress)
        after, image_embeddings = evaluate_model(result.model, result.tokenizer, eval_sets, zero_shot_sets,
                                                 recipe.templates, progress)
    final_model_dir = save_model(result.model, out / "model", result.tokenizer)

    say("4/4 indexing and searching")
    index_set = concat_sets([eval_sets[label] for label in recipe.index_sets], "quickstart-index")
    vectors = torch.cat([image_embeddings[label] for label in recipe.index_sets]).numpy()
    index = VectorIndex.build(vectors, [r.key for r in index_set.records], kind="flat", normalize=True,
                              checkpoint=str(final_model_dir.resolve()))
    index.save(out / "index")
    by_key = {record.key: i for i, record in enumerate(index_set.records)}
    searches = [[(index_set.image(by_key[hit.key]), hit.score, hit.key) for hit in hits]
                for hits in search_index(index, result.model, result.tokenizer, texts=recipe.queries)]
    plot_search_grid(recipe.queries, [[(image, score) for image, score, _ in hits] for hits in searches],
                     out / "search_examples.png")

    metrics = {
        "world": world,
        "model": recipe.run.model,
        "train_images": len(result.train_set),
        "train_steps": result.position.step,
        "train_seconds": round(train_seconds, 1),
        "total_seconds": round(time.perf_counter() - started, 1),
        "checkpoint": str(result.checkpoint),
        "final_model": str(final_model_dir),
        "chance": chance,
        "untrained": before,
        "fine_tuned": fine_tuned,
        "ensemble": mixing,
        "trained": after,
        "searches": {q: [{"key": key, "score": score} for _, score, key in hits] for q, hits in zip(recipe.queries, searches)},
        "notes": recipe.notes,
    }
    write_json(out / "metrics.json", metrics)
    return metrics


def results_table(metrics: dict[str, Any]) -> list[dict[str, Any]]:
    """The quickstart's result rows (dataset, metric, chance, and a column per model state), in percent."""
    after, before, fine_tuned = metrics["trained"], metrics["untrained"], metrics["fine_tuned"]
    rows = []
    for label, scores in after.items():
        for metric, shown in TABLE_METRICS.items():
            if metric not in scores:
                continue
            row = {"dataset": label, "metric": shown, "chance": metrics["chance"][label][metric]}
            if before is not None:
                row["bridge (untrained)"] = before[label][metric]
            if fine_tuned is not None:
                row["fine-tuned"] = fine_tuned[label][metric]
                row[f"final (w={metrics['ensemble']['weight']:g})"] = scores[metric]
            else:
                row["trained"] = scores[metric]
            rows.append(row)
    return rows


def _ensemble_with_bridge(result: TrainResult, progress: bool) -> dict[str, Any]:
    """Pick the bridge's share on the held-out in-domain split only, then set it on the model in place."""
    device = next(result.model.parameters()).device
    features = tower_features(result.model, result.tokenizer, result.val_set, device, progress)

    def score(model: DualEncoder) -> float:
        metrics = evaluate_cached(model, features, result.val_set)
        return (metrics["text_to_image_R@1"] + metrics["image_to_text_R@1"]) / 2

    weight, scores = select_ensemble_weight(result.model, score)
    set_ensemble_weight(result.model, weight)
    return {"weight": weight, "held_out_mean_R@1_by_weight": {str(w): v for w, v in scores.items()}}


def _load_eval_sets(recipe: Recipe, held_out: ImageTextSet | None) -> tuple[dict[str, ImageTextSet], dict[str, ImageTextSet]]:
    def load(spec: Any) -> ImageTextSet:
        if spec == "held-out":
            if held_out is None:
                raise ValueError("the recipe asks for the held-out split but the run has none")
            return held_out
        return load_data_spec(spec)

    return ({label: load(spec) for label, spec in recipe.retrieval_sets.items()},
            {label: load(spec) for label, spec in recipe.zero_shot_sets.items()})
