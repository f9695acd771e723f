"""Data-parallel scaling on this machine: samples/s of `polymodal train` with 1 vs 2 processes (CPU, gloo).

Weak scaling, as open_clip reports it: the per-rank batch stays fixed, so 2 processes train a global batch
twice as large. Each run gets an equal share of the cores (OMP_NUM_THREADS = cores / processes), trains the
same model on the same generated data for a fixed number of steps, and the figure is the mean logged
``samples_per_s`` (global samples / step wall time, open_clip's definition) after the first log window.
Efficiency = samples/s(N) / (N x samples/s(1)).

    python benchmarks/ddp_scaling.py [--steps 40] [--batch 32] [--processes 1 2]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml


def run(processes: int, args: argparse.Namespace, workdir: Path) -> float:
    out = workdir / f"run_{processes}"
    config = {
        "model": "clip-tiny",
        "data": {"train": {"name": "shapes", "split": "train", "size": args.batch * processes * args.steps},
                 "val": None},
        "train": {"epochs": 1, "batch_size": args.batch, "lr": 1e-3, "warmup_steps": 5, "log_every": 5,
                  "checkpoint_every": 0, "precision": "fp32", "max_steps": args.steps},
        "out": str(out),
    }
    config_file = workdir / f"config_{processes}.yaml"
    config_file.write_text(yaml.safe_dump(config))
    threads = max(1, (os.cpu_count() or 1) // processes)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    command = [sys.executable, "-m", "polymodal.cli", "train", str(config_file), "--no-progress"]
    if processes > 1:
        command += ["--nproc", str(processes)]
    subprocess.run(command, env=env, check=True, stdout=subprocess.DEVNULL)
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    speeds = [r["samples_per_s"] for r in records if "samples_per_s" in r][1:]  # skip the warm-up window
    return sum(speeds) / len(speeds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--batch", type=int, default=32, help="per-rank batch")
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        speeds = {n: run(n, args, Path(folder)) for n in args.processes}
    base = speeds[args.processes[0]] / args.processes[0]
    print(f"clip-tiny, 64 px, per-rank batch {args.batch}, {args.steps} steps, cores={os.cpu_count()}, gloo")
    print(f"{'processes':>9} {'global batch':>12} {'samples/s':>10} {'efficiency':>10}")
    for n, speed in speeds.items():
        print(f"{n:>9} {n * args.batch:>12} {speed:>10.1f} {speed / (n * base):>10.2f}")


if __name__ == "__main__":
    main()
