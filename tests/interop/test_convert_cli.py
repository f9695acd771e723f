"""``polymodal convert`` end to end: a converted HF checkpoint scores under ``polymodal eval`` as HF's own model
does, polymodal → HF / open_clip loads in the original libraries with the same weights, SigLIP both ways and
through a fine-tuning run, output written whole or not at all, and bad input as one line naming the file and key
(exit code 2)."""
import json
import re
import shutil

import open_clip
import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import CLIPModel, CLIPProcessor

import polymodal
from polymodal.cli.main import main
from polymodal.data.packaged import skimage_photos
from polymodal.data.tokenizers import TextTokenizer
from polymodal.factory import get_model_config
from polymodal.metrics.retrieval import retrieval_metrics
from polymodal.model_io import load_tokenizer
from polymodal.models.registry import build_model
from tests.run_helpers import polymodal_cli, write_yaml

from .helpers import CAPTIONS, OPEN_CLIP_CONFIG, make_open_clip

ATOL = 1e-5


def convert(*args, capsys):
    """``polymodal convert ARGS`` in this process: (exit code, stdout, stderr)."""
    code = main(["convert", *map(str, args)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture(scope="module")
def polymodal_clip(hf_clip_dir, tmp_path_factory):
    """The tiny HF CLIP converted to a polymodal model directory by the CLI."""
    out = tmp_path_factory.mktemp("converted") / "clip"
    assert main(["convert", str(hf_clip_dir), "--to", "polymodal", "--out", str(out)]) == 0
    return out


def _eval_metrics(model_dir) -> dict:
    """``polymodal eval MODEL --data skimage-photos --json``, as a user runs it."""
    done = polymodal_cli("eval", str(model_dir), "--data", "skimage-photos", "--json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def _hf_metrics(model, processor, **text_options) -> dict:
    """Retrieval on the same real photos and captions with the original library's processor and model."""
    photos = skimage_photos()
    inputs = processor(text=[record.captions[0] for record in photos.records],
                       images=[photos.load_image(record) for record in photos.records], truncation=True,
                       max_length=16, return_tensors="pt", **text_options)
    with torch.no_grad():
        similarity = model.eval()(**inputs).logits_per_image
    keys = [record.key for record in photos.records]
    return retrieval_metrics(similarity, keys, keys)


@pytest.mark.slow
def test_eval_of_converted_siglip_scores_as_hf(hf_siglip_dir, tmp_path, capsys):
    """`polymodal eval` of the converted SigLIP gives the retrieval metrics HF's SiglipModel + SiglipProcessor give."""
    pytest.importorskip("sentencepiece")
    from transformers import SiglipModel, SiglipProcessor

    assert convert(hf_siglip_dir, "--to", "polymodal", "--out", tmp_path / "siglip", capsys=capsys)[0] == 0
    metrics = _eval_metrics(tmp_path / "siglip")
    expected = _hf_metrics(SiglipModel.from_pretrained(hf_siglip_dir), SiglipProcessor.from_pretrained(hf_siglip_dir),
                           padding="max_length")
    assert {key: metrics[key] for key in expected} == pytest.approx(expected)


@pytest.mark.slow
def test_eval_of_converted_clip_scores_as_hf(polymodal_clip, hf_clip_dir):
    """The same for CLIP: two of the photos have an odd crop margin, where the crop's placement matters."""
    metrics = _eval_metrics(polymodal_clip)
    expected = _hf_metrics(CLIPModel.from_pretrained(hf_clip_dir), CLIPProcessor.from_pretrained(hf_clip_dir),
                           padding=True)
    assert {key: metrics[key] for key in expected} == pytest.approx(expected)


def test_polymodal_to_hf_loads_in_transformers_alike(polymodal_clip, hf_clip_dir, tmp_path, capsys):
    out = tmp_path / "hf"
    code, stdout, _ = convert(polymodal_clip, "--to", "hf", "--out", out, "--json", capsys=capsys)
    assert code == 0
    assert {entry["file"] for entry in json.loads(stdout)["files"]} >= {"config.json", "model.safetensors"}
    original, again = load_file(hf_clip_dir / "model.safetensors"), load_file(out / "model.safetensors")
    assert sorted(again) == sorted(original) and all(torch.equal(again[key], original[key]) for key in original)
    hf_model = CLIPModel.from_pretrained(out).eval()
    model, tokenizer = polymodal.load_model(polymodal_clip), load_tokenizer(polymodal_clip)
    batch = tokenizer(CAPTIONS)
    pixels = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(model.encode_text(**batch, normalize=False),
                                   hf_model.get_text_features(**batch).pooler_output, atol=ATOL, rtol=0)
        torch.testing.assert_close(model.encode_image(pixels, normalize=False),
                                   hf_model.get_image_features(pixel_values=pixels).pooler_output, atol=ATOL, rtol=0)


def test_siglip_round_trip_through_the_cli(hf_siglip_dir, tmp_path, capsys):
    pytest.importorskip("sentencepiece")
    code, stdout, _ = convert(hf_siglip_dir, "--to", "polymodal", "--out", tmp_path / "polymodal", "--json",
                              capsys=capsys)
    assert code == 0 and json.loads(stdout)["source_format"] == "hf:siglip"
    code, _, _ = convert(tmp_path / "polymodal", "--to", "hf", "--out", tmp_path / "hf", capsys=capsys)
    assert code == 0
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["architectures"] == ["SiglipModel"]
    original, again = load_file(hf_siglip_dir / "model.safetensors"), load_file(tmp_path / "hf" / "model.safetensors")
    assert sorted(again) == sorted(original) and all(torch.equal(again[key], original[key]) for key in original)


@pytest.mark.slow
def test_fine_tune_a_converted_siglip_and_export_it_back(hf_siglip_dir, tmp_path, capsys):
    """The user's path: import a SigLIP, fine-tune it with `polymodal train`, export the run back to HF, where
    SiglipModel gives the fine-tuned model's logits."""
    pytest.importorskip("sentencepiece")
    from transformers import SiglipModel

    assert convert(hf_siglip_dir, "--to", "polymodal", "--out", tmp_path / "siglip", capsys=capsys)[0] == 0
    write_yaml(tmp_path / "run.yaml", {
        "model": str(tmp_path / "siglip"), "out": str(tmp_path / "run"),
        "data": {"train": {"name": "shapes", "split": "train", "size": 32, "image_size": 32}, "val": None},
        "train": {"epochs": 1, "batch_size": 16, "precision": "fp32", "warmup_steps": 1, "lr": 1e-3}})
    assert main(["train", str(tmp_path / "run.yaml"), "--no-progress"]) == 0
    assert convert(tmp_path / "run", "--to", "hf", "--out", tmp_path / "hf", capsys=capsys)[0] == 0
    before, after = load_file(hf_siglip_dir / "model.safetensors"), load_file(tmp_path / "hf" / "model.safetensors")
    assert not torch.equal(before["text_model.head.weight"], after["text_model.head.weight"])  # it was trained
    model, batch = polymodal.load_model(tmp_path / "run"), load_tokenizer(tmp_path / "run")(CAPTIONS)
    pixels = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        output = model(image=pixels, **batch)
        expected = SiglipModel.from_pretrained(tmp_path / "hf").eval()(pixel_values=pixels, **batch).logits_per_image
    logits = output["logit_scale"] * output["image_features"] @ output["text_features"].T + output["logit_bias"]
    torch.testing.assert_close(logits, expected, atol=ATOL, rtol=0)


def test_open_clip_weights_with_a_json_config(tmp_path, capsys):
    reference = make_open_clip(OPEN_CLIP_CONFIG)
    torch.save(reference.state_dict(), tmp_path / "epoch_1.pt")
    (tmp_path / "model.json").write_text(json.dumps(OPEN_CLIP_CONFIG))
    out = tmp_path / "exported"
    code, _, _ = convert(tmp_path / "epoch_1.pt", "--open-clip-config", tmp_path / "model.json", "--to", "open_clip",
                         "--out", out, capsys=capsys)
    assert code == 0
    model, _, _ = open_clip.create_model_and_transforms(f"local-dir:{out}")  # strict: every key must match
    state, expected = model.state_dict(), reference.state_dict()
    assert all(torch.equal(state[key], expected[key]) for key in expected)


def test_failed_conversion_leaves_the_output_as_it_was(polymodal_clip, tmp_path, capsys):
    out = tmp_path / "out"
    assert convert(polymodal_clip, "--to", "polymodal", "--out", out, capsys=capsys)[0] == 0
    before = {file.name: file.read_bytes() for file in out.iterdir()}
    # The tiny CLIP's own tokenizer is not open_clip's: refused after loading, before anything is written.
    code, _, err = convert(polymodal_clip, "--to", "open_clip", "--out", out, "--overwrite", capsys=capsys)
    assert code == 2 and "open_clip" in err
    assert {file.name: file.read_bytes() for file in out.iterdir()} == before


def _changed_weights(hf_clip_dir, tmp_path):
    directory = tmp_path / "changed"
    shutil.copytree(hf_clip_dir, directory)
    state = load_file(directory / "model.safetensors")
    state["vision_model.encoder.layers.1.mlp.fc1.weight"] = torch.zeros(80, 48)
    save_file(state, str(directory / "model.safetensors"))
    return directory


def _bert_directory(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert", "architectures": ["BertModel"]}))
    return tmp_path


def _resnet_model(tmp_path):
    model = build_model(get_model_config("clip-resnet-gru"))
    tokenizer = TextTokenizer.train_bpe(CAPTIONS * 4, vocab_size=300, context_length=32)
    return polymodal.save_model(model, tmp_path / "resnet", tokenizer)


@pytest.mark.parametrize("case", ["not a checkpoint", "unsupported architecture", "mismatched shape",
                                  "resnet to hf", "non-empty out", "unknown format"])
def test_bad_input_is_one_line_naming_file_and_key(case, hf_clip_dir, tmp_path, capsys):
    out = tmp_path / "out"
    if case == "not a checkpoint":
        (tmp_path / "notes.txt").write_text("hello")
        args, expected = [tmp_path, "--to", "polymodal"], rf"{re.escape(str(tmp_path))}: not a checkpoint directory"
    elif case == "unsupported architecture":
        args = [_bert_directory(tmp_path), "--to", "polymodal"]
        expected = r"config\.json: model_type 'bert' is not a supported architecture"
    elif case == "mismatched shape":
        args = [_changed_weights(hf_clip_dir, tmp_path), "--to", "polymodal"]
        expected = r"model\.safetensors: key 'vision_model\.encoder\.layers\.1\.mlp\.fc1\.weight' has shape \(80, 48\)"
    elif case == "resnet to hf":
        args, expected = [_resnet_model(tmp_path), "--to", "hf"], r"config key image\.type = 'resnet': HF's CLIPModel"
    elif case == "non-empty out":
        out.mkdir()
        (out / "keep.txt").write_text("mine")
        args, expected = [hf_clip_dir, "--to", "polymodal"], r"--out .* is not empty; pass --overwrite"
    else:
        args, expected = [hf_clip_dir, "--to", "tflite"], r"unknown target 'tflite'; one of: .*open_clip"
    code, _, err = convert(*args, "--out", out, capsys=capsys)
    assert code == 2
    errors = [line for line in err.splitlines() if line.startswith("polymodal convert: error: ")]
    assert len(errors) == 1 and "Traceback" not in err, err
    assert re.search(expected, errors[0]), errors[0]


@pytest.mark.slow
def test_convert_to_onnx_runs_in_onnxruntime_as_in_polymodal(polymodal_clip, tmp_path, capsys):
    """--to onnx --int8 writes both precisions; onnxruntime's fp32 embeddings equal polymodal's on real photos."""
    from polymodal.interop.onnx_export import OnnxDualEncoder

    out = tmp_path / "onnx"
    code, stdout, _ = convert(polymodal_clip, "--to", "onnx", "--int8", "--out", out, "--json", capsys=capsys)
    assert code == 0
    written = {entry["file"] for entry in json.loads(stdout)["files"]}
    assert sum(name.endswith(".onnx") for name in written) == 4, written
    model, tokenizer = polymodal.load_model(polymodal_clip), load_tokenizer(polymodal_clip)
    onnx = OnnxDualEncoder(out)
    photos = skimage_photos()
    pixels = torch.stack([onnx.transform(photos.image(index)) for index in range(3)])
    batch = tokenizer(CAPTIONS)
    with torch.no_grad():
        torch.testing.assert_close(onnx.encode_image(pixels), model.encode_image(pixels), atol=1e-4, rtol=0)
        torch.testing.assert_close(onnx.encode_text(batch["input_ids"], batch["attention_mask"]),
                                   model.encode_text(**batch), atol=1e-4, rtol=0)
    quantised = OnnxDualEncoder(out, int8=True)
    cosine = torch.nn.functional.cosine_similarity(quantised.encode_image(pixels), model.encode_image(pixels))
    assert cosine.min() > 0.99, cosine
