"""What every benchmark that writes a report does first: its thread count, its output folder, and the exact
command line that reproduces it (written into the report)."""
from __future__ import annotations

import argparse
import platform
import shlex
import sys
from pathlib import Path

import torch


def start_report(args: argparse.Namespace, script: str) -> tuple[Path, str]:
    """Apply ``args.threads`` (when set), create ``args.out``; returns it and ``python benchmarks/SCRIPT ARGS``."""
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    return out, f"python benchmarks/{Path(script).name} {shlex.join(sys.argv[1:])}".strip()


def processor_name() -> str:
    """The CPU's model name (Linux ``/proc/cpuinfo``), else what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
