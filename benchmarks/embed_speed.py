"""Embedding speed: polymodal's inference paths against HF transformers' ``CLIPModel`` (eager fp32), side by side.

Both sides carry the same ViT-B/32-shaped weights: a randomly initialised ``CLIPModel(CLIPConfig())`` (HF's default
config is OpenAI's ViT-B/32 shape) is saved to a temporary folder with OpenAI's BPE (bundled by open_clip) and
read back with ``polymodal.interop.load_hf_clip``. Speed does not depend on the weights' values; closeness does a
little, so the inputs are real: scikit-image's photos (repeated to fill a batch, through the checkpoint's
preprocessing) and their captions.

Paths (each warmed up first; the repeats interleave the paths so that noise from other processes hits all alike;
throughputs are medians, and each speed-up is the median over rounds of the ratio to HF eager timed in the same
round, which cancels most of the drift in other processes' load):

- ``HF eager fp32``: ``get_image_features`` / ``get_text_features`` under ``torch.inference_mode``, the baseline;
- ``polymodal eager fp32``: ``encode_image`` / ``encode_text``, whose embeddings are the reference for cosines;
- ``polymodal bf16 autocast`` and ``... compiled bf16`` (only where ``precision.resolve_precision("auto")`` picks
  bf16: a CPU with AVX512-BF16 or AMX), ``polymodal compiled fp32`` (``tasks.embed.InferenceCompiled``:
  Inductor with frozen weights);
- ``onnxruntime fp32`` / ``onnxruntime int8`` (``interop.export_onnx`` + ``OnnxDualEncoder``);
- ``torch dynamic int8``: ``torch.ao.quantization.quantize_dynamic`` of every ``nn.Linear``.

For each: images/s, texts/s, their ratio to HF eager, and the smallest cosine over the batch between the path's
embeddings and polymodal's fp32 ones. The fastest path with both cosines >= 0.999 is named per modality.

    python benchmarks/embed_speed.py [--batch 16] [--text-batch 64] [--repeats 5] [--threads N] [--quick]
                                     [--skip-compile] [--out docs]

``--quick`` is a smoke run on a tiny CLIP (seconds, compile skipped). With ``--out`` the table goes to
``OUT/embed_speed.md`` and every number to ``OUT/embed_speed.json``, with the command that made them.
"""
from __future__ import annotations

import argparse
import copy
import json
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import onnxruntime
import torch
import torch.nn.functional as F
import transformers
from report_setup import processor_name, start_report
from transformers import CLIPConfig, CLIPModel

from polymodal.data.packaged import skimage_photos
from polymodal.data.transforms import image_transform
from polymodal.interop import load_hf_clip
from polymodal.interop.clip_tokenizer import open_clip_tokenizer, write_hf_tokenizer
from polymodal.interop.onnx_export import (
    ImageEmbedding,
    OnnxDualEncoder,
    TextEmbedding,
    export_onnx,
)
from polymodal.precision import resolve_precision
from polymodal.tasks.embed import InferenceCompiled

MIN_COSINE = 0.999
# A CLIP small enough for a smoke run; the text tower keeps CLIP's vocabulary, which the tokenizer needs.
QUICK_CONFIG = {
    "projection_dim": 32,
    "vision_config": {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
                      "image_size": 64, "patch_size": 16},
    "text_config": {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4},
}
CPU_FLAGS = ("avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16", "amx_int8")


@dataclass
class Candidate:
    """One way to embed: a name and its image and text functions (inputs as polymodal's encoders take them)."""

    name: str
    image: Callable[[torch.Tensor], torch.Tensor]
    text: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    autocast: bool = False

    def context(self):
        return torch.autocast("cpu", dtype=torch.bfloat16) if self.autocast else nullcontext()

    def embed_images(self, pixels: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode(), self.context():
            return F.normalize(self.image(pixels).float(), dim=-1)

    def embed_texts(self, tokens: dict[str, torch.Tensor]) -> torch.Tensor:
        with torch.inference_mode(), self.context():
            return F.normalize(self.text(tokens["input_ids"], tokens["attention_mask"]).float(), dim=-1)


def cpu_flags() -> list[str]:
    """The bf16 / int8 instruction sets this CPU advertises (Linux ``/proc/cpuinfo``)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    flags = set(next((line for line in text.splitlines() if line.startswith("flags")), "").split())
    return [flag for flag in CPU_FLAGS if flag in flags]


def hf_features(output) -> torch.Tensor:
    """transformers 5 returns a model output whose ``pooler_output`` is the projection; older versions a tensor."""
    return getattr(output, "pooler_output", output)


def build_models(work: Path, quick: bool):
    """HF's ``CLIPModel`` (random init) and the same weights as a polymodal dual encoder, with the tokenizer."""
    torch.manual_seed(0)
    hf = CLIPModel(CLIPConfig(**(QUICK_CONFIG if quick else {}))).eval()
    hf.save_pretrained(work / "hf")
    write_hf_tokenizer(open_clip_tokenizer(hf.config.text_config.max_position_embeddings), work / "hf")
    imported = load_hf_clip(work / "hf")
    return hf, imported.model, imported.tokenizer


def real_inputs(model, tokenizer, batch: int, text_batch: int):
    """``batch`` photos (repeated) through the model's preprocessing; ``text_batch`` captions and prompts."""
    photos = skimage_photos()
    transform = image_transform(model.preprocess)
    pixels = torch.stack([transform(photos.image(i % len(photos))) for i in range(batch)])
    texts = [caption for record in photos.records for caption in record.captions]
    texts += [f"a photo of a {name}." for name in photos.class_names]
    return pixels, tokenizer([texts[i % len(texts)] for i in range(text_batch)])


def candidate_paths(hf, model, onnx_dir: Path, threads: int, bf16: bool, compile_: bool) -> list[Candidate]:
    paths = [
        Candidate("HF eager fp32", lambda x: hf_features(hf.get_image_features(pixel_values=x)),
              lambda ids, mask: hf_features(hf.get_text_features(input_ids=ids, attention_mask=mask))),
        Candidate("polymodal eager fp32", model.encode_image, model.encode_text),
    ]
    if bf16:
        paths.append(Candidate("polymodal bf16 autocast", model.encode_image, model.encode_text, autocast=True))
    if compile_:
        paths.append(Candidate("polymodal compiled fp32", InferenceCompiled(ImageEmbedding(model).eval()),
                           InferenceCompiled(TextEmbedding(model).eval())))
        if bf16:
            # A compile of its own: Inductor folds the bf16 casts of the frozen weights into constants.
            paths.append(Candidate("polymodal compiled bf16", InferenceCompiled(ImageEmbedding(model).eval()),
                               InferenceCompiled(TextEmbedding(model).eval()), autocast=True))
    fp32, int8 = (OnnxDualEncoder(onnx_dir, int8=quantized, threads=threads) for quantized in (False, True))
    paths += [Candidate("onnxruntime fp32", fp32.encode_image, fp32.encode_text),
              Candidate("onnxruntime int8", int8.encode_image, int8.encode_text)]
    quantized = torch.ao.quantization.quantize_dynamic(copy.deepcopy(model), {torch.nn.Linear}, dtype=torch.qint8)
    paths.append(Candidate("torch dynamic int8", quantized.encode_image, quantized.encode_text))
    return paths


def seconds(call: Callable[..., object], *args: object) -> float:
    start = time.perf_counter()
    call(*args)
    return time.perf_counter() - start


def measure(paths: list[Candidate], pixels, tokens, repeats: int) -> dict[str, dict[str, float]]:
    """Warm every path up, then time its image and text batch in ``repeats`` rounds that each run every path.

    Returns per path the median seconds per batch and the median over rounds of its speed-up over the first
    path in the same round: other processes' load drifts over minutes, and a ratio of neighbours in time
    cancels most of it.
    """
    warm_up = {path.name: seconds(path.embed_images, pixels) + seconds(path.embed_texts, tokens) for path in paths}
    times: dict[str, dict[str, list[float]]] = {path.name: {"image": [], "text": []} for path in paths}
    for repeat in range(repeats):
        # Rotate the order so that no path always runs right after the same neighbour.
        for path in paths[repeat % len(paths):] + paths[:repeat % len(paths)]:
            times[path.name]["image"].append(seconds(path.embed_images, pixels))
            times[path.name]["text"].append(seconds(path.embed_texts, tokens))
    baseline = times[paths[0].name]
    return {name: {**{f"{modality}_s": statistics.median(t[modality]) for modality in ("image", "text")},
                   **{f"{modality}_speedup": statistics.median(b / s for b, s in zip(baseline[modality], t[modality]))
                      for modality in ("image", "text")},
                   "warm_up_s": warm_up[name]} for name, t in times.items()}


def fastest(rows: list[dict], modality: str, allow_int8: bool) -> dict | None:
    """The row of the fastest path for ``modality`` whose embeddings keep cos >= MIN_COSINE (None: no path)."""
    eligible = [row for row in rows if row[f"{modality}_min_cosine"] >= MIN_COSINE
                and (allow_int8 or "int8" not in row["path"])]
    return max(eligible, key=lambda row: row[f"{modality}_speedup"], default=None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=16, help="images per batch")
    parser.add_argument("--text-batch", type=int, default=64, help="texts per batch")
    parser.add_argument("--repeats", type=int, default=5, help="timed batches per path (median reported)")
    parser.add_argument("--threads", type=int, help="torch and onnxruntime threads (default: torch's choice)")
    parser.add_argument("--quick", action="store_true", help="tiny CLIP, small batches, no compile: a smoke run")
    parser.add_argument("--skip-compile", action="store_true", help="leave out the torch.compile paths")
    parser.add_argument("--out", help="also write OUT/embed_speed.md and OUT/embed_speed.json")
    args = parser.parse_args()
    # torch.ao's eager quantization is deprecated in favour of torchao; it still runs, and it is what we measure.
    warnings.filterwarnings("ignore", message=r".*(torch\.ao\.quantization|quantized tensor creation).*deprecated")
    if args.quick:
        args.batch, args.text_batch, args.repeats, args.skip_compile = 4, 8, 2, True
    out, command = start_report(args, __file__) if args.out else (None, "")
    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    bf16 = resolve_precision("auto", torch.device("cpu")) == "bf16"
    capability = torch.backends.cpu.get_cpu_capability()

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        hf, model, tokenizer = build_models(work, args.quick)
        pixels, tokens = real_inputs(model, tokenizer, args.batch, args.text_batch)
        start = time.perf_counter()
        export_onnx(model, tokenizer, work / "onnx", int8=True)
        export_s = time.perf_counter() - start
        paths = candidate_paths(hf, model, work / "onnx", threads, bf16, not args.skip_compile)
        reference = paths[1]
        image_ref, text_ref = reference.embed_images(pixels), reference.embed_texts(tokens)
        cosines = {path.name: {"image": F.cosine_similarity(path.embed_images(pixels), image_ref).min().item(),
                               "text": F.cosine_similarity(path.embed_texts(tokens), text_ref).min().item()}
                   for path in paths}
        timings = measure(paths, pixels, tokens, args.repeats)

    rows = []
    for path in paths:
        timing = timings[path.name]
        rows.append({
            "path": path.name,
            "images_per_s": args.batch / timing["image_s"], "image_speedup": timing["image_speedup"],
            "image_min_cosine": cosines[path.name]["image"],
            "texts_per_s": args.text_batch / timing["text_s"], "text_speedup": timing["text_speedup"],
            "text_min_cosine": cosines[path.name]["text"],
            "warm_up_s": timing["warm_up_s"],
        })
    # Without int8 too: random weights quantize kindly (no outlier channels), so int8's cosines here overstate
    # what trained weights keep (benchmarks/int8_accuracy.py measures those).
    winners, verdicts = {}, []
    for allow_int8 in (True, False):
        for modality in ("image", "text"):
            winner = fastest(rows[1:], modality, allow_int8)
            label = modality if allow_int8 else f"{modality}, int8 left out"
            winners[label] = winner and winner["path"]
            verdicts.append(f"Fastest {label}, cos >= {MIN_COSINE}: " + (
                f"{winner['path']} ({winner[f'{modality}_speedup']:.2f}x HF eager)" if winner else "none"))

    config = hf.config
    lines = [
        (f"CPU: {processor_name()} (torch capability {capability}; flags: {', '.join(cpu_flags()) or 'none found'}; "
         f"bf16 paths {'run' if bf16 else 'skipped: no fast bf16 on this CPU'}), threads={threads}, "
         f"torch {torch.__version__}, transformers {transformers.__version__}, onnxruntime {onnxruntime.__version__}"),
        "",
        (f"model: CLIP ViT {config.vision_config.image_size}px/{config.vision_config.patch_size}, "
         f"{config.vision_config.num_hidden_layers}x{config.vision_config.hidden_size} image, "
         f"{config.text_config.num_hidden_layers}x{config.text_config.hidden_size} text (same weights on both sides); "
         f"{args.batch} images / {args.text_batch} texts of {tokens['input_ids'].shape[1]} tokens per batch; "
         f"median of {args.repeats}; ONNX export (fp32 + int8) took {export_s:.0f} s"),
        "",
        "| path | images/s | x HF eager | min cos | texts/s | x HF eager | min cos | warm-up s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
        *(f"| {row['path']} | {row['images_per_s']:.1f} | {row['image_speedup']:.2f}x | {row['image_min_cosine']:.5f} "
          f"| {row['texts_per_s']:.1f} | {row['text_speedup']:.2f}x | {row['text_min_cosine']:.5f} "
          f"| {row['warm_up_s']:.1f} |" for row in rows),
        "",
        *verdicts,
    ]
    print("\n".join(lines), flush=True)
    if out is not None:
        notes = ["", ("Cosines compare each path's unit-norm embeddings with polymodal's fp32 eager ones (HF eager's "
                      "show that both sides hold the same weights). Warm-up is the first batch of images and texts, "
                      "which includes a compile where there is one. Throughputs are medians over the rounds; "
                      "each speed-up is the median over rounds of the ratio to HF eager in the same round. Random weights quantize kindly (no outlier "
                      "channels), so int8's cosines here overstate what trained weights keep: `int8_accuracy.md` "
                      "measures those on a pretrained model."), "", f"Made by `{command}`.", ""]
        (out / "embed_speed.md").write_text("\n".join(["# Embedding speed", "", *lines, *notes]), encoding="utf-8")
        (out / "embed_speed.json").write_text(json.dumps({
            "command": command, "cpu": processor_name(), "capability": capability, "cpu_flags": cpu_flags(),
            "bf16": bf16, "threads": threads, "batch": args.batch, "text_batch": args.text_batch,
            "text_length": int(tokens["input_ids"].shape[1]), "repeats": args.repeats, "export_s": export_s,
            "min_cosine": MIN_COSINE, "winners": winners,
            "rows": rows,
        }, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
