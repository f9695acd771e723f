"""Is bf16 autocast worth it on this device? GFLOP/s of a square matmul in fp32 and bf16, side by side.

polymodal's ``precision: auto`` picks bf16 only where it is fast; this script shows why on a given machine.

    python benchmarks/matmul_precision.py [--size 1024] [--repeats 10] [--device cpu]
"""
from __future__ import annotations

import argparse
import time

import torch


def gflops(size: int, dtype: torch.dtype, repeats: int, device: torch.device) -> float:
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    for _ in range(2):  # warm-up: kernel selection, caches
        a @ b
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    if device.type == "cuda":
        torch.cuda.synchronize()
    return 2 * size**3 * repeats / (time.perf_counter() - start) / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    fp32 = gflops(args.size, torch.float32, args.repeats, device)
    bf16 = gflops(args.size, torch.bfloat16, args.repeats, device)
    print(f"device={device.type} threads={torch.get_num_threads()} matmul {args.size}x{args.size}")
    print(f"fp32 {fp32:8.1f} GFLOP/s\nbf16 {bf16:8.1f} GFLOP/s\nbf16 / fp32 = {bf16 / fp32:.2f}x")


if __name__ == "__main__":
    main()
