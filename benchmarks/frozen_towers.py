"""Frozen-tower feature extraction (the cold quickstart's main cost): EfficientNet-Lite0 over images and MiniLM
over captions, as polymodal ran them before (eager fp32, captions padded to the context) and as
``recipes/frozen_towers.tower_features`` runs them now (Inductor-compiled image tower with frozen weights, bf16
where this machine runs it fast, captions padded to the batch's longest), each lever also alone.

Prints ms per image / per caption and each variant's speed-up over eager fp32, measured in this run, with the
machine's bf16 capability. Features are compared with eager fp32 (cosine similarity; 1.0 = identical).

    python benchmarks/frozen_towers.py [--images 512] [--captions 2048] [--batch 64]
"""
from __future__ import annotations

import argparse
import contextlib
import time

import torch
import torch.nn.functional as F

from polymodal.data.catalog import load_data_spec
from polymodal.data.transforms import image_transform
from polymodal.encoders.build import build_tokenizer
from polymodal.factory import create_model
from polymodal.tasks.embed import InferenceCompiled, all_captions


def autocast(bf16: bool) -> contextlib.AbstractContextManager:
    return torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()


@torch.no_grad()
def run_images(tower, images: torch.Tensor, batch: int, bf16: bool) -> tuple[float, torch.Tensor]:
    with autocast(bf16):
        tower(images[:batch])  # warm-up: oneDNN primitives, or the compile
        start = time.perf_counter()
        outputs = [tower(images[i:i + batch]).pooled.float() for i in range(0, len(images), batch)]
    return (time.perf_counter() - start) / len(images), torch.cat(outputs)


@torch.no_grad()
def run_texts(tower, tokenize, captions: list[str], batch: int, bf16: bool) -> tuple[float, torch.Tensor]:
    batches = [tokenize(captions[i:i + batch]) for i in range(0, len(captions), batch)]
    with autocast(bf16):
        start = time.perf_counter()
        outputs = [tower(tokens["input_ids"], tokens["attention_mask"]).pooled.float() for tokens in batches]
    return (time.perf_counter() - start) / len(captions), torch.cat(outputs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--captions", type=int, default=2048)
    parser.add_argument("--batch", type=int, default=64)
    args = parser.parse_args()
    fast_bf16 = torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()
    model = create_model("lit-effnet-minilm").eval()
    dataset = load_data_spec({"name": "openmoji"})
    transform = image_transform(model.preprocess)
    images = torch.stack([transform(dataset.image(i)) for i in range(min(args.images, len(dataset)))])
    captions = all_captions(dataset)[0][: args.captions]
    tokenizer = build_tokenizer(model.config["text"], lambda: captions)

    def padded_to_context(texts: list[str]) -> dict[str, torch.Tensor]:
        tokens = tokenizer(texts)
        pad = tokenizer.context_length - tokens["input_ids"].shape[1]
        return {key: F.pad(value, (0, pad), value=tokenizer.pad_id if key == "input_ids" else 0)
                for key, value in tokens.items()}

    print(f"threads={torch.get_num_threads()} fast bf16: {'yes' if fast_bf16 else 'no'}; "
          f"{len(images)} openmoji images at {model.preprocess.image_size} px, {len(captions)} captions")
    image_variants = {"eager fp32 (before)": (model.image_encoder, False),
                      "compiled fp32": (InferenceCompiled(model.image_encoder), False),
                      "eager bf16": (model.image_encoder, True),
                      "compiled bf16": (InferenceCompiled(model.image_encoder), True)}
    text_variants = {"eager fp32, padded to context (before)": (padded_to_context, False),
                     "eager fp32, padded to longest": (tokenizer, False),
                     "eager bf16, padded to longest": (tokenizer, True)}
    print(f"{'image tower':42} {'ms/image':>9} {'speed-up':>9} {'cosine min':>11}")
    reference = None
    for name, (tower, bf16) in image_variants.items():
        seconds, features = run_images(tower, images, args.batch, bf16)
        reference = features if reference is None else reference
        base = seconds if name.endswith("(before)") else base
        print(f"{name:42} {1000 * seconds:>9.2f} {base / seconds:>8.2f}x "
              f"{F.cosine_similarity(features, reference).min():>11.4f}")
    print(f"{'text tower':42} {'ms/text':>9} {'speed-up':>9} {'cosine min':>11}")
    reference = None
    for name, (tokenize, bf16) in text_variants.items():
        seconds, features = run_texts(model.text_encoder, tokenize, captions, 256, bf16)
        reference = features if reference is None else reference
        base = seconds if name.endswith("(before)") else base
        print(f"{name:42} {1000 * seconds:>9.3f} {base / seconds:>8.2f}x "
              f"{F.cosine_similarity(features, reference).min():>11.4f}")


if __name__ == "__main__":
    main()
