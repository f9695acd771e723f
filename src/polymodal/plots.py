"""PNG figures a person would rather look at than read (matplotlib, headless): training curves, search grids."""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display on servers and CI
import matplotlib.pyplot as plt  # noqa: E402
from PIL import Image  # noqa: E402

from polymodal.train.metrics_log import MetricsLog  # noqa: E402

__all__ = ["plot_grouped_bars", "plot_search_grid", "plot_training_curve", "plot_two_stage_training"]


def plot_training_curve(metrics_jsonl: str | Path, out_png: str | Path) -> Path | None:
    """Loss per step (left axis) and the validation score per epoch (right axis: retrieval R@1 both ways, or
    classification top-1) from a run's ``metrics.jsonl``.

    A resumed run repeats some steps in the log; the last record of each step wins.
    """
    records = MetricsLog(metrics_jsonl).read()
    train = {r["step"]: r for r in records if "loss" in r}
    val = {r["step"]: r for r in records if any(k.startswith("val/") for k in r)}
    if not train:
        return None
    figure, loss_axis = plt.subplots(figsize=(7, 4), dpi=120)
    steps = sorted(train)
    loss_axis.plot(steps, [train[s]["loss"] for s in steps], color="tab:blue", label="training loss")
    loss_axis.set_xlabel("optimizer step")
    loss_axis.set_ylabel("training loss", color="tab:blue")
    if val:
        recall_axis = loss_axis.twinx()
        val_steps = sorted(val)
        for key, color in (("val/text_to_image_R@1", "tab:red"), ("val/image_to_text_R@1", "tab:orange"),
                           ("val/top1", "tab:red"), ("val/vqa_accuracy", "tab:red"), ("val/CIDEr-D", "tab:red")):
            if key in val[val_steps[0]]:
                recall_axis.plot(val_steps, [val[s][key] for s in val_steps], "o-", color=color, label=key[4:])
        recall_axis.set_ylabel("validation score (%; CIDEr-D x10)", color="tab:red")
        recall_axis.legend(loc="center right", fontsize=8)
    loss_axis.set_title("training curve")
    figure.tight_layout()
    out_png = Path(out_png)
    figure.savefig(out_png)
    plt.close(figure)
    return out_png


def plot_search_grid(
    queries: Sequence[str], results: Sequence[Sequence[tuple[Image.Image, float]]], out_png: str | Path
) -> Path:
    """One row per text query: the query above its top-k images, each with its cosine score below it."""
    columns = max(len(hits) for hits in results)
    figure = plt.figure(figsize=(1.9 * columns, 2.3 * len(queries)), dpi=110, layout="constrained")
    for row_figure, query, hits in zip(figure.subfigures(len(queries), 1), queries, results):
        row_figure.suptitle(f"“{query}”", x=0.01, ha="left", fontsize=11, weight="bold")
        for column, axis in enumerate(row_figure.subplots(1, columns, squeeze=False)[0]):
            axis.set_axis_off()
            if column < len(hits):
                image, score = hits[column]
                axis.imshow(image)
                axis.set_title(f"{score:.3f}", fontsize=8, y=-0.16)
    out_png = Path(out_png)
    figure.savefig(out_png)
    plt.close(figure)
    return out_png


def plot_grouped_bars(
    values: dict[str, dict[str, float]], out_png: str | Path, title: str, ylabel: str
) -> Path:
    """One group of bars per row name (``values[row][column]``), one colour per column, value over each bar."""
    rows = list(values)
    columns = list(dict.fromkeys(column for row in values.values() for column in row))
    width = 0.8 / max(len(columns), 1)
    figure, axis = plt.subplots(figsize=(max(7.0, 0.55 * len(rows) * max(len(columns), 1)), 4.2), dpi=120)
    for offset, column in enumerate(columns):
        positions = [index + (offset - (len(columns) - 1) / 2) * width for index in range(len(rows))]
        heights = [values[row].get(column, 0.0) for row in rows]
        bars = axis.bar(positions, heights, width, label=column)
        axis.bar_label(bars, fmt="%.0f", fontsize=6, padding=1)
    axis.set_xticks(range(len(rows)), rows, rotation=35, ha="right", fontsize=8)
    axis.set_ylabel(ylabel)
    axis.set_title(title)
    axis.legend(fontsize=7, ncols=min(len(columns), 6), loc="lower right")
    figure.tight_layout()
    out_png = Path(out_png)
    figure.savefig(out_png)
    plt.close(figure)
    return out_png


def plot_two_stage_training(stages: Sequence[tuple[str, str | Path]], score_key: str, reward_key: str | None,
                            out_png: str | Path, title: str) -> Path:
    """Runs trained one after another (e.g. cross-entropy, then self-critical) on one time axis: the validation
    ``score_key`` after each epoch (left), and, for stages that log it, the training ``reward_key`` per log
    step (right), with a dashed line where each stage starts."""
    figure, score_axis = plt.subplots(figsize=(8, 4), dpi=120)
    reward_axis = score_axis.twinx() if reward_key else None
    offset, colors = 0, ["tab:blue", "tab:red", "tab:green", "tab:purple"]
    for (name, metrics_jsonl), color in zip(stages, colors):
        records = MetricsLog(metrics_jsonl).read()
        val = {r["step"]: r[score_key] for r in records if score_key in r}
        steps = sorted(val)
        score_axis.plot([offset + s for s in steps], [val[s] for s in steps], "o-", color=color,
                        label=f"{name}: validation {score_key}")
        if reward_axis is not None:
            rewards = {r["step"]: r[reward_key] for r in records if reward_key in r}
            if rewards:
                reward_axis.plot([offset + s for s in sorted(rewards)], [rewards[s] for s in sorted(rewards)],
                                 color=color, alpha=0.35, label=f"{name}: training {reward_key}")
        score_axis.axvline(offset, color="gray", linestyle="--", linewidth=0.8)
        offset += max([r["step"] for r in records], default=0)
    score_axis.set_xlabel("optimizer step (stages in sequence)")
    score_axis.set_ylabel(f"validation {score_key}")
    score_axis.legend(loc="lower right", fontsize=8)
    if reward_axis is not None:
        reward_axis.set_ylabel(f"training {reward_key} (mean of samples)")
        reward_axis.legend(loc="upper left", fontsize=8)
    score_axis.set_title(title)
    figure.tight_layout()
    out_png = Path(out_png)
    figure.savefig(out_png)
    plt.close(figure)
    return out_png
