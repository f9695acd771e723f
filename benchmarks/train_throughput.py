"""Training-step throughput and memory: polymodal vs open_clip on the same CLIP configuration.

Both sides get the same architecture (ViT image tower with a CLS token, causal text transformer pooled at
the EOS token, linear projections, learnable temperature), the same batch, AdamW and the symmetric CLIP loss
(polymodal's ``ClipLoss`` vs open_clip's ``ClipLoss``). Steps run alternately in one process, so both see the
same machine state; the figure reported is the median over the timed rounds.

Memory: on CUDA, ``torch.cuda.max_memory_allocated`` per step. On CPU, PyTorch has no allocator statistics,
so the script counts what a training step must hold: bytes of tensors saved for backward (activations, via
``saved_tensors_hooks``) plus parameters, gradients and AdamW's two moments.

    python benchmarks/train_throughput.py [--batch 64] [--rounds 10] [--image-size 64] [--width 128]
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch


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


def make_step(name: str, model: torch.nn.Module, batch: dict, device: torch.device):
    if name == "polymodal":
        from polymodal.losses import ClipLoss

        loss_fn = ClipLoss()

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

    def step() -> tuple[float, int]:
        if device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        with SavedBytes() as saved:
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
    parser.add_argument("--context", type=int, default=32)
    parser.add_argument("--vocab", type=int, default=2048)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()

    device = torch.device(args.device)
    torch.manual_seed(0)
    lengths = torch.randint(8, args.context, (args.batch,))
    input_ids = torch.randint(3, args.vocab, (args.batch, args.context))
    positions = torch.arange(args.context)
    attention_mask = (positions[None] < lengths[:, None]).long()
    # open_clip pools at argmax(token id), so give the EOS the largest id; padding is 0 for both.
    input_ids = torch.where(attention_mask.bool(), input_ids % (args.vocab - 1), 0)
    input_ids[torch.arange(args.batch), lengths - 1] = args.vocab - 1
    batch = {"image": torch.randn(args.batch, 3, args.image_size, args.image_size).to(device),
             "input_ids": input_ids.to(device), "attention_mask": attention_mask.to(device)}

    models = {"polymodal": polymodal_model(args).to(device).train(), "open_clip": open_clip_model(args).to(device).train()}
    steps = {name: make_step(name, model, batch, device) for name, model in models.items()}
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
          f"width={args.width} layers={args.layers} rounds={args.rounds} (median step time)")
    print(f"{'':10} {'params':>10} {'samples/s':>10} {'step ms':>9} {'memory MiB':>11}")
    for name in models:
        median = statistics.median(times[name])
        print(f"{name:10} {parameters[name]:>10,} {args.batch / median:>10.1f} {1000 * median:>9.1f} "
              f"{memory[name] / 2**20:>11.1f}")
    ratio = statistics.median(times["open_clip"]) / statistics.median(times["polymodal"])
    print(f"throughput ratio polymodal / open_clip = {ratio:.2f}x; memory ratio = "
          f"{memory['polymodal'] / memory['open_clip']:.2f}x")


if __name__ == "__main__":
    main()
