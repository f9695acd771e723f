"""Data-parallel scaling on this machine: samples/s of `polymodal train` with 1 vs 2 processes (CPU, gloo).

Weak scaling, as open_clip reports it: the per-rank batch stays fixed, so 2 processes train a global batch
twice as large. Each run gets an equal share of the cores (OMP_NUM_THREADS = cores / processes), trains the
same model on the same generated data for a fixed number of steps, and the figure is the mean logged
``samples_per_s`` (global samples / step wall time, open_clip's definition) after the first log window.
Efficiency = samples/s(N) / (N x samples/s(1)). To tell DDP's own cost from how well one process uses several
threads, it also runs one process on one thread and times one gloo all-reduce of all the gradients, and tries
DDP's bucket size and ``gradient_as_bucket_view`` (run-config keys ``train.ddp_bucket_mb`` and
``train.ddp_gradient_as_bucket_view``).

    python benchmarks/ddp_scaling.py [--steps 40] [--batch 32] [--processes 1 2]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml


def run(processes: int, args: argparse.Namespace, workdir: Path, ddp: dict, threads: int | None = None) -> float:
    out = workdir / f"run_{processes}_{len(list(workdir.iterdir()))}"
    config = {
        "model": "clip-tiny",
        "data": {"train": {"name": "shapes", "split": "train", "size": args.batch * processes * args.steps},
                 "val": None},
        "train": {"epochs": 1, "batch_size": args.batch, "lr": 1e-3, "warmup_steps": 5, "log_every": 5,
                  "checkpoint_every": 0, "precision": "fp32", "max_steps": args.steps, **ddp},
        "out": str(out),
    }
    config_file = out.with_suffix(".yaml")
    config_file.write_text(yaml.safe_dump(config))
    threads = threads or max(1, (os.cpu_count() or 1) // processes)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    command = [sys.executable, "-m", "polymodal.cli", "train", str(config_file), "--no-progress"]
    if processes > 1:
        command += ["--nproc", str(processes)]
    subprocess.run(command, env=env, check=True, stdout=subprocess.DEVNULL)
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    speeds = [r["samples_per_s"] for r in records if "samples_per_s" in r][1:]  # skip the warm-up window
    return sum(speeds) / len(speeds)


VARIANTS = {  # DDP settings tried on every multi-process run: name -> run-config keys
    "default (25 MiB buckets)": {},
    "5 MiB buckets": {"ddp_bucket_mb": 5.0},
    "100 MiB buckets": {"ddp_bucket_mb": 100.0},
    "gradient_as_bucket_view": {"ddp_gradient_as_bucket_view": True},
}


def _all_reduce_worker(rank: int, world: int, numel: int, repeats: int, port: int, result) -> None:
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    buffer = torch.randn(numel)
    dist.all_reduce(buffer)
    start = time.perf_counter()
    for _ in range(repeats):
        dist.all_reduce(buffer)
    if rank == 0:
        result.value = (time.perf_counter() - start) / repeats
    dist.destroy_process_group()


def all_reduce_ms(numel: int, world: int = 2, repeats: int = 20) -> float:
    """Wall time of one gloo all-reduce of ``numel`` fp32 values between ``world`` local processes."""
    import torch.multiprocessing as mp

    result = mp.get_context("spawn").Value("d", 0.0)
    mp.start_processes(_all_reduce_worker, args=(world, numel, repeats, 29500 + os.getpid() % 1000, result),
                       nprocs=world, start_method="spawn")
    return 1000 * result.value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--batch", type=int, default=32, help="per-rank batch")
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args()
    from polymodal import create_model

    parameters = sum(p.numel() for p in create_model("clip-tiny").parameters())
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        # One process on one thread: what each of the N single-threaded DDP processes would do alone, so the
        # gap to N x this is DDP's own cost (all-reduce, synchronisation), apart from thread scaling.
        one_thread = run(1, args, Path(folder), {}, threads=1)
        for n in args.processes:
            for variant, ddp in (VARIANTS.items() if n > 1 else [("-", {})]):
                rows.append((n, variant, run(n, args, Path(folder), ddp)))
    base = rows[0][2] / rows[0][0]
    print(f"clip-tiny ({parameters:,} parameters), 64 px, per-rank batch {args.batch}, {args.steps} steps, "
          f"cores={os.cpu_count()}, gloo")
    print(f"{'processes':>9} {'DDP settings':26} {'global batch':>12} {'samples/s':>10} {'step ms':>8} "
          f"{'efficiency':>10}")
    for n, variant, speed in rows:
        print(f"{n:>9} {variant:26} {n * args.batch:>12} {speed:>10.1f} {1000 * n * args.batch / speed:>8.1f} "
              f"{speed / (n * base):>10.2f}")
    print(f"1 process on 1 thread: {one_thread:.1f} samples/s; N single-threaded DDP processes reach "
          f"{max(speed for n, _, speed in rows if n > 1) / (2 * one_thread):.2f} of 2 x that")
    print(f"one gloo all-reduce of all {parameters:,} gradients (fp32) between 2 processes: "
          f"{all_reduce_ms(parameters):.1f} ms")


if __name__ == "__main__":
    main()
