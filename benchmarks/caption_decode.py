"""How much the KV cache speeds up caption decoding: captions/s of greedy and beam search, with and without it.

A small CaptionDecoder (random weights: speed does not depend on them) decodes a batch of images' tokens. Without
the cache every step re-runs the whole prefix through the decoder, as open_clip's CoCa does; with it a step runs
only the new position. EOS is suppressed (``min_length = max_length``) so every caption is exactly as long as
the column says. Each cell is the best of ``--repeats`` timed runs after one warm-up.

    python benchmarks/caption_decode.py [--batch 16] [--lengths 16 32 64] [--beam-size 3] [--repeats 3]
                                        [--width 256] [--layers 4] [--vocab 5000] [--device cuda]
                                        [--threads N] [--out docs]

With ``--out`` the table is also written to ``OUT/caption_decode.md`` with the command that made it.
"""
from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch

from report_setup import processor_name, start_report

from polymodal.heads.caption_decoder import CaptionDecoder
from polymodal.tasks.decoding import beam_search, greedy

BOS, EOS, PAD = 1, 2, 0


def captions_per_second(decode: Callable[[], object], batch: int, repeats: int, device: torch.device) -> float:
    best = float("inf")
    for attempt in range(repeats + 1):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        decode()
        if device.type == "cuda":
            torch.cuda.synchronize()
        if attempt:  # the first run is the warm-up
            best = min(best, time.perf_counter() - start)
    return batch / best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=16, help="images decoded together")
    parser.add_argument("--lengths", type=int, nargs="+", default=[16, 32, 64], help="tokens per caption")
    parser.add_argument("--beam-size", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--vocab", type=int, default=5000)
    parser.add_argument("--memory-tokens", type=int, default=49, help="image tokens (7 x 7 grid)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    parser.add_argument("--out", help="also write OUT/caption_decode.md")
    args = parser.parse_args()
    out, command = start_report(args, __file__) if args.out else (None, "")
    device = torch.device(args.device)

    torch.manual_seed(0)
    decoder = CaptionDecoder(
        args.vocab, args.width, width=args.width, layers=args.layers, heads=args.heads, max_length=max(args.lengths)
    ).to(device).eval()
    memory = torch.randn(args.batch, args.memory_tokens, args.width, device=device)
    methods = {"greedy": (greedy, {}), f"beam {args.beam_size}": (beam_search, {"beam_size": args.beam_size})}

    where = torch.cuda.get_device_name(device) if device.type == "cuda" else processor_name()
    lines = [f"device={device.type} ({where}) threads={torch.get_num_threads()} fp32 batch={args.batch} "
             f"width={args.width} layers={args.layers} vocab={args.vocab} memory={args.memory_tokens}x{args.width}",
             "", "| method | length | no cache (captions/s) | KV cache (captions/s) | speed-up |",
             "|---|---:|---:|---:|---:|"]
    print("\n".join(lines), flush=True)
    for name, (method, extra) in methods.items():
        for length in args.lengths:
            kwargs = {"bos_id": BOS, "eos_id": EOS, "pad_id": PAD, "max_length": length, "min_length": length,
                      "device": device, **extra}
            uncached = captions_per_second(
                lambda: method(decoder.step_without_cache, decoder.init_prefix_cache(memory), args.batch, **kwargs),
                args.batch, args.repeats, device,
            )
            cached = captions_per_second(
                lambda: method(decoder.step, decoder.init_cache(memory, max_length=length), args.batch, **kwargs),
                args.batch, args.repeats, device,
            )
            lines.append(f"| {name} | {length} | {uncached:.1f} | {cached:.1f} | {cached / uncached:.2f}x |")
            print(lines[-1], flush=True)
    if out is not None:
        lines += ["", "Without the cache every step re-runs the whole prefix (as open_clip's CoCa decodes); with it a "
                  "step runs only the new position. EOS is suppressed so every caption has exactly the stated "
                  "length; each cell is the best of the timed runs after a warm-up.", "", f"Made by `{command}`.", ""]
        (out / "caption_decode.md").write_text("\n".join(lines), encoding="utf-8")


if __name__ == "__main__":
    main()
