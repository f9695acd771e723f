"""Training-step throughput and memory: polymodal vs open_clip on the same CLIP configuration.

Both sides get the same architecture (ViT image tower with a CLS token, causal text transformer pooled at
the EOS token, linear projections, learnable temperature), the same images and captions, and the symmetric CLIP
loss (polymodal's ``ClipLoss`` vs open_clip's ``ClipLoss``). Each side runs its own training step as its own
training code sets it up: polymodal's optimizer (``train.optim.create_optimizer``: AdamW, fused where it can
run) and its tokenizer's padding (to the batch's longest caption); open_clip's training script's
``torch.optim.AdamW`` and its tokenizer's padding (always to the context length). Caption lengths are drawn
like COCO's (8–20 tokens with BOS/EOS; context 77 as in CLIP); ``--full-length`` gives every caption the whole
context instead, which leaves padding nothing to save. Steps run alternately in one process, so both see the
same machine state; the figure reported is the median over the timed rounds.

Memory: on CUDA, ``torch.cuda.max_memory_allocated`` per step. On CPU, PyTorch has no allocator statistics,
so the script counts what a training step must hold: bytes of tensors saved for backward (activations, via
``saved_tensors_hooks``) plus parameters, gradients and AdamW's two moments.

Also printed: the model FLOPs of one training step (``torch.utils.flop_counter.FlopCounterMode`` over forward and
backward), the GFLOP/s each side achieves, and that as a fraction of the matmul peak measured in the same run at
the same precision (``matmul_precision.py``), with whether this machine runs bf16 fast.

    python benchmarks/train_throughput.py [--batch 64] [--rounds 10] [--image-size 64] [--width 128]
                                          [--precision fp32|bf16] [--compile] [--full-length] [--no-fused]
"""
from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).parent))
from matmul_precision import gflops as matmul_gflops  # noqa: E402  (a sibling script, not a package)


def polymodal_model(args: argparse.Namespace) -> torch.nn.Module:
    from polymodal import create_model

    return create_model({
        "description": "benchmark",
        "embed_dim": args.embed_dim,
        "loss": "clip",
        "init_logit_scale": 2.6593,
        "image": {"type": "vit", "image_size": args.image_size, "patch_size": args.patch_size, "width": args.width,
                  "layers": args.layers, "heads": args.width // 32, "mlp_ratio": 4.0, "pool": "cls"},
        "text": {"type": "transformer", "context_length": args.context, "vocab_size": args.vocab, "width": args.width,
                 "layers": args.layers, "heads": args.width // 32, "mlp_ratio": 4.0, "causal": True, "pool": "eos"},
    })


def open_clip_model(args: argparse.Namespace) -> torch.nn.Module:
    import open_clip

    config = {
        "embed_dim": args.embed_dim,
        "vision_cfg": {"image_size": args.image_size, "layers": args.layers, "width": args.width, "head_width": 32,
                       "patch_size": args.patch_size, "mlp_ratio": 4.0},
        "text_cfg": {"context_length": args.context, "vocab_size": args.vocab, "width": args.width,
                     "heads": args.width // 32, "layers": args.layers, "mlp_ratio": 4.0},
    }
    folder = Path(tempfile.mkdtemp())
    (folder / "bench-clip.json").write_text(json.dumps(config))
    open_clip.add_model_config(folder)
    return open_clip.create_model("bench-clip", output_dict=True)


class SavedBytes:
    """Counts bytes of tensors autograd saves for backward during a forward pass."""

    def __init__(self) -> None:
        self.total = 0

    def pack(self, tensor: torch.Tensor) -> torch.Tensor:
        self.total += tensor.numel() * tensor.element_size()
        return tensor

    def __enter__(self) -> "SavedBytes":
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self.pack, lambda tensor: tensor)
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._hooks.__exit__(*exc)


def state_bytes(model: torch.nn.Module) -> int:
    """Parameters + gradients + AdamW exp_avg and exp_avg_sq: four copies of every trainable parameter."""
    return 4 * sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)


def make_step(name: str, model: torch.nn.Module, batch: dict, device: torch.device, precision: str = "fp32",
              fused: bool = True):
    if name == "polymodal":
        from polymodal.losses import ClipLoss

        from polymodal.train.optim import create_optimizer

        loss_fn = ClipLoss()
        optimizer = create_optimizer(model, lr=1e-4, fused=None if fused else False)

        def forward():
            return loss_fn(**model(image=batch["image"], input_ids=batch["input_ids"],
                                   attention_mask=batch["attention_mask"]))
    else:
        from open_clip.loss import ClipLoss

        loss_fn = ClipLoss()

        def forward():
            out = model(batch["image"], batch["input_ids"])
            return loss_fn(out["image_features"], out["text_features"], out["logit_scale"])

        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    dtype = torch.bfloat16 if precision == "bf16" else None

    def autocast() -> contextlib.AbstractContextManager:
        return torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()

    def step() -> tuple[float, int]:
        if device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        with SavedBytes() as saved, autocast():
            loss = forward()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
            memory = torch.cuda.max_memory_allocated()
        else:
            memory = saved.total + state_bytes(model)
        return time.perf_counter() - start, memory

    def count_flops() -> int:
        """Model FLOPs of one forward + backward (the optimizer's elementwise work is not counted)."""
        with FlopCounterMode(display=False) as counter:
            with autocast():
                loss = forward()
            loss.backward()
        optimizer.zero_grad(set_to_none=True)
        return counter.get_total_flops()

    step.count_flops = count_flops
    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--patch-size", type=int, default=8)
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--layers", type=int, default=3)
    parser.add_argument("--embed-dim", type=int, default=128)
    parser.add_argument("--context", type=int, default=77)
    parser.add_argument("--full-length", action="store_true", help="every caption fills the whole context")
    parser.add_argument("--no-fused", action="store_true", help="polymodal's AdamW without its fused kernel")
    parser.add_argument("--vocab", type=int, default=2048)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32", help="autocast dtype, both sides")
    parser.add_argument("--compile", action="store_true", help="torch.compile polymodal's model (its lever)")
    args = parser.parse_args()

    device = torch.device(args.device)
    torch.manual_seed(0)
    lengths = torch.full((args.batch,), args.context) if args.full_length else torch.randint(8, 21, (args.batch,))
    input_ids = torch.randint(3, args.vocab, (args.batch, args.context))
    positions = torch.arange(args.context)
    attention_mask = (positions[None] < lengths[:, None]).long()
    # open_clip pools at argmax(token id), so give the EOS the largest id; padding is 0 for both.
    input_ids = torch.where(attention_mask.bool(), input_ids % (args.vocab - 1), 0)
    input_ids[torch.arange(args.batch), lengths - 1] = args.vocab - 1
    padded = {"image": torch.randn(args.batch, 3, args.image_size, args.image_size).to(device),
              "input_ids": input_ids.to(device), "attention_mask": attention_mask.to(device)}
    longest = int(lengths.max())
    batches = {"polymodal": padded | {key: padded[key][:, :longest] for key in ("input_ids", "attention_mask")},
               "open_clip": padded}

    models = {"polymodal": polymodal_model(args).to(device).train(), "open_clip": open_clip_model(args).to(device).train()}
    runners = dict(models)
    if args.compile:
        runners["polymodal"] = torch.compile(models["polymodal"])
    steps = {name: make_step(name, runner, batches[name], device, args.precision, not args.no_fused) for name, runner in runners.items()}
    flops, first_step = {}, {}
    for name, step in steps.items():  # before timing: the first step also compiles
        start = time.perf_counter()
        flops[name] = step.count_flops()
        first_step[name] = time.perf_counter() - start
    matmul_peak = matmul_gflops(1024, torch.bfloat16 if args.precision == "bf16" else torch.float32, 10, device)
    fast_bf16 = device.type == "cuda" or torch.ops.mkldnn._is_mkldnn_bf16_supported()
    parameters = {name: sum(p.numel() for p in model.parameters()) for name, model in models.items()}
    times: dict[str, list[float]] = {name: [] for name in models}
    memory: dict[str, int] = {name: 0 for name in models}
    for round_index in range(args.warmup + args.rounds):
        for name, step in steps.items():  # alternate, so drift in machine load hits both equally
            seconds, peak = step()
            if round_index >= args.warmup:
                times[name].append(seconds)
                memory[name] = max(memory[name], peak)

    print(f"device={device.type} threads={torch.get_num_threads()} batch={args.batch} image={args.image_size}px "
          f"width={args.width} layers={args.layers} rounds={args.rounds} precision={args.precision} "
          f"compile={args.compile} fused AdamW={not args.no_fused} caption tokens={'all' if args.full_length else '8-20'}/{args.context} "
          f"(median step time)")
    print(f"machine: fast bf16 {'yes' if fast_bf16 else 'no'}; matmul peak at {args.precision}: {matmul_peak:.1f} GFLOP/s")
    print(f"{'':10} {'params':>10} {'samples/s':>10} {'step ms':>9} {'memory MiB':>11} {'GFLOP/s':>8} {'% peak':>7} "
          f"{'first step s':>13}")
    for name in models:
        median = statistics.median(times[name])
        achieved = flops[name] / median / 1e9
        print(f"{name:10} {parameters[name]:>10,} {args.batch / median:>10.1f} {1000 * median:>9.1f} "
              f"{memory[name] / 2**20:>11.1f} {achieved:>8.1f} {100 * achieved / matmul_peak:>6.1f}% "
              f"{first_step[name]:>13.1f}")
    ratio = statistics.median(times["open_clip"]) / statistics.median(times["polymodal"])
    print(f"throughput ratio polymodal / open_clip = {ratio:.2f}x; memory ratio = "
          f"{memory['polymodal'] / memory['open_clip']:.2f}x")


if __name__ == "__main__":
    main()
