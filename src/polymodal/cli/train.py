"""``polymodal train CONFIG [--set key=value ...] [--resume] [--nproc N]``."""
from __future__ import annotations

import argparse
import os
import sys

HELP = """\
Train a model from a YAML/JSON run config. Sections and their defaults:

  model: clip-tiny                 # a preset (see below) or a full model config mapping
  data:
    train: {name: shapes, split: train, size: 4000}   # a catalog name, a path, a mapping, or a shard directory
                                   # (VQA models: easy-vqa, shapes, or a folder of VQA v2 questions/annotations)
    val:   {name: shapes, split: val, size: 500}      # null: use val_fraction of train instead
    val_fraction: 0.0
    skip_bad: false                # skip (and count) malformed rows instead of stopping
    shuffle_buffer: 1000           # shard streams (polymodal data shard): samples held for shuffling
  train:
    epochs: 10       batch_size: 128   lr: 1.0e-3   weight_decay: 0.1   warmup_steps: 50
    grad_clip: 1.0   accum_steps: 1    max_steps: null
    grad_cache_micro_batch: null     # GradCache: keep the whole batch's negatives, N rows per forward pass
    local_loss: false  gather_with_grad: false   # CLIP loss across processes, as open_clip's flags
    precision: auto  # auto = bf16 where the device runs it fast, else fp32 (fp16 + loss scaling on old GPUs)
    checkpoint_every: 200  log_every: 10  seed: 0  num_workers: 0  cache_features: true  device: auto
    compile: false   # torch.compile the model (pays on long GPU runs; the first steps pay the compile)
    fsdp: false  ddp_bucket_mb: 25.0  ddp_gradient_as_bucket_view: false   # several processes
  out: runs/default

Every key can be overridden: --set train.lr=5e-4 --set model.image.layers=2 --set out=runs/x
Writes OUT/checkpoints/step_N/ (weights, config, tokenizer, optimizer state), OUT/metrics.jsonl and
OUT/training_curve.png. --resume continues from OUT's latest checkpoint at the exact batch it stopped.

Several processes (DDP): --nproc N runs N processes on this machine under torchrun, or start torchrun
yourself (several machines: see the README):
  torchrun --nproc_per_node=2 -m polymodal.cli train run.yaml
batch_size is per process (as open_clip's --batch-size is per GPU): a step sees batch_size x N pairs.
Rank 0 logs, evaluates and writes checkpoints; --resume also works with another number of processes.
"""


def register(verbs: argparse._SubParsersAction) -> None:
    parser = verbs.add_parser(
        "train", help="train a model from a run config", description=HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("config", nargs="?", help="YAML/JSON run config (omit to use the defaults)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key, e.g. train.epochs=3 (repeatable)")
    parser.add_argument("--resume", action="store_true", help="continue from OUT/checkpoints/latest")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars (for logs)")
    parser.add_argument("--nproc", type=int, metavar="N",
                        help="train with N processes on this machine (execs torchrun --standalone)")
    parser.set_defaults(run=run)


def torchrun_command(args: argparse.Namespace) -> list[str]:
    """This same command, without ``--nproc``, under ``torchrun --standalone --nproc_per_node N`` (one machine)."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={args.nproc}",
               "-m", "polymodal.cli", "train"]
    if args.config is not None:
        command.append(args.config)
    for override in args.overrides:
        command += ["--set", override]
    return command + ["--resume"] * args.resume + ["--no-progress"] * args.no_progress


def run(args: argparse.Namespace) -> int:
    from polymodal.recipes.config import load_run_config

    # Checked before --nproc execs torchrun, so a bad config fails once here rather than in every process.
    config = load_run_config(args.config, args.overrides)
    if args.nproc is not None:
        if args.nproc < 1:
            raise ValueError(f"--nproc must be at least 1, got {args.nproc}")
        sys.stdout.flush()
        command = torchrun_command(args)
        os.execvp(command[0], command)

    from polymodal.plots import plot_training_curve
    from polymodal.recipes.training import run_training

    result = run_training(config, resume=args.resume, progress=not args.no_progress)
    if result.dist.is_main:
        plot_training_curve(f"{config.out}/metrics.jsonl", f"{config.out}/training_curve.png")
        print(f"trained to step {result.position.step}; checkpoint: {result.checkpoint}")
    return 0
