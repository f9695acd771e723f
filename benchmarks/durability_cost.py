"""What syncing to disk costs: the same saves with fsync (the default) and without (``POLYMODAL_FSYNC=0``).

Every checkpoint, embedding output and index is flushed to disk (file, then folder) before it is renamed into
place, so a power loss cannot leave a renamed but empty file. This script times a training checkpoint of two
presets and an index save, alternating the two settings in one process, and prints medians and ratios.

    python benchmarks/durability_cost.py [--repeats 5] [--index-vectors 100000]
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

import polymodal
from polymodal.index import VectorIndex
from polymodal.train.checkpoint import TrainPosition, save_checkpoint
from polymodal.train.optim import create_optimizer


def timed(save: Callable[[Path], object], repeats: int) -> dict[str, float]:
    """Median seconds of ``save(fresh folder)`` with and without fsync, the two alternating."""
    times: dict[str, list[float]] = {"fsync": [], "no fsync": []}
    for _ in range(repeats):
        for setting, value in (("fsync", "1"), ("no fsync", "0")):
            os.environ["POLYMODAL_FSYNC"] = value
            folder = Path(tempfile.mkdtemp(dir=os.environ.get("BENCH_DIR")))
            start = time.perf_counter()
            save(folder)
            times[setting].append(time.perf_counter() - start)
            shutil.rmtree(folder)
    os.environ.pop("POLYMODAL_FSYNC")
    return {setting: statistics.median(values) for setting, values in times.items()}


def checkpoint_saver(preset: str) -> tuple[Callable[[Path], object], int]:
    model = polymodal.create_model(preset)
    optimizer = create_optimizer(model, lr=1e-3)
    for parameter in model.parameters():  # give AdamW state to save, as a real checkpoint has
        parameter.grad = torch.zeros_like(parameter)
    optimizer.step()
    size = sum(p.numel() for p in model.parameters()) * 4 * 3  # weights + two AdamW moments, fp32
    return (lambda folder: save_checkpoint(folder, model, None, TrainPosition(step=1), optimizer)), size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--index-vectors", type=int, default=100_000)
    args = parser.parse_args()
    rows = []
    for preset in ("clip-tiny", "clip-vit-b-32"):
        save, size = checkpoint_saver(preset)
        rows.append((f"checkpoint {preset}", size, timed(save, args.repeats)))
    vectors = np.random.default_rng(0).standard_normal((args.index_vectors, 512), dtype=np.float32)
    index = VectorIndex.build(vectors, [f"item-{i}" for i in range(len(vectors))], normalize=True)
    rows.append((f"index flat {args.index_vectors}x512", vectors.nbytes,
                 timed(lambda folder: index.save(folder / "index"), args.repeats)))
    print(f"{'save':34} {'MB':>8} {'fsync s':>9} {'no fsync s':>11} {'ratio':>7}")
    for name, size, result in rows:
        print(f"{name:34} {size / 1e6:8.1f} {result['fsync']:9.3f} {result['no fsync']:11.3f} "
              f"{result['fsync'] / result['no fsync']:6.2f}x")


if __name__ == "__main__":
    main()
