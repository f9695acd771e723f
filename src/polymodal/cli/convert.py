"""``polymodal convert SRC --to FORMAT --out DIR``: a checkpoint from one format to another."""
from __future__ import annotations

import argparse

HELP = """\
Convert a checkpoint between polymodal, HF transformers and open_clip, weight for weight: import a CLIP or
SigLIP to train, evaluate or serve it with polymodal, and export a polymodal model back. The source's format is
read from what it holds:

  a polymodal model or run directory     (config.json with a `family`; a run's final or latest model)
  an HF transformers directory           (config.json with model_type clip or siglip; or a hub name such as
                                          google/siglip-base-patch16-224 when the hub or its cache has it)
  an open_clip weights file              (.pt/.bin/.safetensors + --open-clip-config, or the
                                          open_clip_config.json beside it) or an open_clip directory

and written as one of:

  --to hf          an HF directory: CLIPModel or SiglipModel, picked by the model's shape
  --to open_clip   an open_clip directory (open_clip_config.json + open_clip_model.safetensors), which
                   open_clip.create_model_and_transforms("local-dir:DIR") loads
  --to polymodal   a polymodal model directory: eval, embed, serve it, or fine-tune it (`model: DIR` in a run
                   config)
  --to onnx        image_tower.onnx + text_tower.onnx + manifest.json + tokenizer.json for onnxruntime
                   (polymodal.interop.onnx_export.OnnxDualEncoder reads it); --int8 adds dynamically
                   quantised int8 towers (several times faster on CPU; see docs/embed_speed.md)

  polymodal convert ./clip-vit-base-patch32 --to polymodal --out models/clip
  polymodal eval models/clip --data pairs.jsonl              # the imported model, like any polymodal model
  polymodal convert epoch_32.pt --open-clip-config ViT-B-32-quickgelu --to polymodal --out models/oc
  polymodal convert runs/finetune --to hf --out exported/hf  # CLIPModel or SiglipModel, by the model's shape
  polymodal convert runs/finetune --to open_clip --out exported/oc
  polymodal convert exported/hf --to polymodal --out models/back --overwrite --json
  polymodal convert runs/finetune --to onnx --int8 --out exported/onnx

--to hf and --to open_clip refuse, naming the config key, what that format cannot express exactly (a ResNet
tower, mean pooling, another tokenizer than open_clip's BPE, ...) rather than approximate it. The output is
written whole or not at all; a non-empty --out is refused unless --overwrite. Prints the files written, or with
--json {"source", "source_format", "to", "out", "files": [{"file", "bytes"}]}.
"""


def register(verbs: argparse._SubParsersAction) -> None:
    parser = verbs.add_parser("convert", help="convert a checkpoint between polymodal, HF and open_clip",
                              description=HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", metavar="SRC", help="checkpoint directory, weights file or HF hub name")
    # Checked by the library's table of formats (polymodal.interop.convert.TARGETS), which imports torch: listing
    # them here would load it for every verb's --help.
    parser.add_argument("--to", required=True, metavar="FORMAT", help="output format: hf, open_clip, polymodal or onnx")
    parser.add_argument("--out", required=True, metavar="DIR", help="output directory (written whole)")
    parser.add_argument("--open-clip-config", dest="open_clip_config", metavar="NAME_OR_JSON",
                        help="an open_clip weights file's model config: a model name open_clip knows "
                             "(open_clip.list_models()) or a JSON file (default: open_clip_config.json beside it)")
    parser.add_argument("--int8", action="store_true", help="--to onnx: also write dynamic int8 towers")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from polymodal.cli.common import print_json
    from polymodal.cli.report import print_table
    from polymodal.interop.convert import convert

    result = convert(args.source, args.to, args.out, open_clip_config=args.open_clip_config,
                     overwrite=args.overwrite, **({"int8": True} if args.int8 else {}))
    files = [{"file": name, "bytes": size} for name, size in result.files.items()]
    if args.json:
        print_json({"source": args.source, "source_format": result.source_kind, "to": result.target,
                    "out": str(result.directory), "files": files})
    else:
        print_table(f"{args.source} ({result.source_kind}) -> {result.directory} (--to {result.target})", files)
    return 0
