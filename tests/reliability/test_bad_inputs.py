"""Every CLI verb meets bad input with exit code 2 and one line naming the file, key or value: no traceback,
nothing written where it should not be. The verbs run in-process (``polymodal.cli.main.main``), so a traceback
would surface here as an uncaught exception."""
import struct
import zlib
from pathlib import Path

import pytest
import torch

import polymodal
from polymodal.cli.main import main
from polymodal.data.catalog import load_dataset
from polymodal.data.export import export_jsonl
from polymodal.model_io import load_model, save_model, load_tokenizer

TINY_DATA = {"name": "shapes", "split": "train", "size": 64, "image_size": 32}


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_header_only(width: int, height: int) -> bytes:
    """A decompression bomb's shape: a PNG whose header claims ``width x height`` pixels, with a few bytes of
    compressed data (decoding it would need gigabytes)."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + png_chunk(b"IDAT", zlib.compress(b"\x00" * 64))
            + png_chunk(b"IEND", b""))


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, tiny_model_config) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("reliability")
    config = {"model": tiny_model_config, "data": {"train": TINY_DATA, "val": None},
              "train": {"epochs": 1, "batch_size": 16, "precision": "fp32", "warmup_steps": 1}, "out": str(root / "run")}
    polymodal.run_training(polymodal.load_run_config(config), progress=False)
    pairs = export_jsonl(load_dataset("shapes", split="val", size=16, image_size=32), root / "pairs", progress=False)
    assert main(["embed", str(root / "run"), "--data", str(pairs), "--out", str(root / "emb")]) == 0
    assert main(["index", "build", str(root / "emb"), "--out", str(root / "index")]) == 0
    other = load_model(root / "run")
    with torch.no_grad():
        next(other.parameters()).add_(1.0)
    save_model(other, root / "other-model", load_tokenizer(root / "run"))
    (root / "a-file.txt").write_text("not a directory, not an image, not JSON\n")
    (root / "bad.yaml").write_text("train: [unclosed\n")
    (root / "bomb.png").write_bytes(png_header_only(30_000, 30_000))  # Pillow itself refuses this one
    (root / "big.png").write_bytes(png_header_only(10_000, 10_000))  # over the limit, under Pillow's own refusal
    truncated = root / "truncated-model"
    truncated.mkdir()
    for source in (root / "run" / "checkpoints").glob("step_*/*"):
        if source.is_file():
            (truncated / source.name).write_bytes(source.read_bytes())
    weights = (truncated / "model.safetensors").read_bytes()
    (truncated / "model.safetensors").write_bytes(weights[: len(weights) // 2])
    torn = root / "torn-emb"
    torn.mkdir()
    for source in (root / "emb").iterdir():
        (torn / source.name).write_bytes(source.read_bytes())
    vectors = (torn / "embeddings.safetensors").read_bytes()
    (torn / "embeddings.safetensors").write_bytes(vectors[:-8] + b"\x00" * 8)
    (root / "not-empty").mkdir()
    (root / "not-empty" / "keep.txt").write_text("keep me")
    return {"root": root, "run": root / "run", "pairs": pairs, "emb": root / "emb", "index": root / "index",
            "other": root / "other-model", "file": root / "a-file.txt", "truncated": truncated, "torn": torn}


# (verb arguments with {placeholders} from the workspace, what the one error line must say)
CASES = [
    # train
    (["train", "{root}/missing.yaml"], "config file not found"),
    (["train", "{root}/bad.yaml"], "bad.yaml: not valid YAML"),
    (["train", "--set", "train.epochs=abc"], "train.epochs = 'abc': expected an integer"),
    (["train", "--set", "train.lr=abc"], "train.lr = 'abc': expected a number"),
    (["train", "--set", "train.lr=0"], "train.lr = 0: must be greater than 0"),
    (["train", "--set", "train.accum_steps=0"], "train.accum_steps = 0: must be at least 1"),
    (["train", "--set", "train.precision=fp8"], "train.precision = 'fp8': expected one of 'auto'"),
    (["train", "--set", "train.nope=1"], "unknown key train.nope; known keys: accum_steps"),
    (["train", "--set", "model.image.bogus=3", "--set", "out={root}/x1"], "unknown key image.bogus"),
    (["train", "--set", "model.image.layers=abc", "--set", "out={root}/x2"], "image.layers = 'abc': expected an integer"),
    (["train", "--set", "model.embed_dim=0", "--set", "out={root}/x3"], "embed_dim = 0: must be at least 1"),
    (["train", "--set", "model=no-such-preset"], "unknown model 'no-such-preset'"),
    (["train", "--set", "train.device=bogus", "--set", "out={root}/x4"], "device 'bogus' is not a device"),
    (["train", "--set", "out={file}"], "out {file} is a file"),
    (["train", "--set", "out={file}/run"], "lies under {file}, which is a file"),
    (["train", "--set", "out={run}"], "already holds a run; pass --resume"),
    # eval
    (["eval", "{root}/no-such-run"], "no model at {root}/no-such-run"),
    (["eval", "{truncated}", "--data", "{pairs}"], "model.safetensors: cannot read the weights"),
    (["eval", "{run}", "--data", "{root}/missing.jsonl"], "missing.jsonl"),
    (["eval", "{run}", "--data", "{file}"], "a-file.txt"),
    # embed
    (["embed", "{run}", "--data", "{pairs}", "--out", "{file}"], "--out {file} is a file"),
    (["embed", "{run}", "--data", "{pairs}", "--out", "{file}/emb"], "lies under {file}"),
    (["embed", "{run}", "--data", "{pairs}", "--out", "{root}/not-empty"], "holds other files (keep.txt"),
    (["embed", "{file}", "--data", "{pairs}", "--out", "{root}/e2"], "no model at {file}"),
    # index build
    (["index", "build", "{root}/no-such-emb", "--out", "{root}/i1"], "not an embedding directory"),
    (["index", "build", "{torn}", "--out", "{root}/i2"], "embeddings.safetensors does not match the checksum"),
    (["index", "build", "{emb}", "--out", "{file}"], "--out {file} is a file"),
    (["index", "build", "{emb}", "--out", "{file}/index"], "lies under {file}"),
    # search
    (["search", "", "--index", "{index}"], "a text query must not be empty"),
    (["search", "   ", "--index", "{index}"], "a text query must not be empty"),
    (["search", "--index", "{index}"], "give either a text query or --image"),
    (["search", "x", "--index", "{root}/no-such-index"], "no-such-index does not exist"),
    (["search", "--image", "{file}", "--index", "{index}"], "a-file.txt: not a readable image"),
    (["search", "--image", "{root}", "--index", "{index}"], "not a regular file"),
    (["search", "--image", "/dev/zero", "--index", "{index}"], "/dev/zero: not a regular file"),
    (["search", "--image", "{root}/bomb.png", "--index", "{index}"], "bomb.png: refused as a decompression bomb"),
    (["search", "--image", "{root}/big.png", "--index", "{index}"], "big.png: 10000x10000 pixels exceed the limit"),
    (["search", "x", "--index", "{index}", "--checkpoint", "{other}"], "built from embeddings of other weights"),
    (["search", "x", "--index", "{index}", "--nprobe", "4"], "applies to kind='ivf' only, this index is 'flat'"),
    # data
    (["data", "export", "no-such-set", "--to", "{root}/d1"], "unknown dataset 'no-such-set'"),
    (["data", "export", "shapes", "--size", "4", "--to", "{file}"], "--to {file} is a file"),
    (["data", "export", "shapes", "--size", "4", "--to", "{root}/not-empty"], "is not empty; pass --overwrite"),
    (["data", "shard", "shapes", "--size", "4", "--to", "{file}/shards"], "lies under {file}"),
    (["data", "shard", "shapes", "--size", "4", "--to", "{root}/s1", "--samples-per-shard", "0"],
     "samples_per_shard must be at least 1"),
    # quickstart
    (["quickstart", "--out", "{file}"], "--out {file} is a file"),
]


@pytest.mark.parametrize(("arguments", "message"), CASES, ids=[" ".join(a)[:60] for a, _ in CASES])
def test_bad_input_exits_2_with_one_clear_line(workspace, capsys, arguments, message):
    fill = {name: str(path) for name, path in workspace.items()}
    argv = [argument.format(**fill) for argument in arguments]
    code = main(argv)
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if ": error: " in line]
    assert code == 2, err
    assert len(errors) == 1 and "Traceback" not in err, err
    assert message.format(**fill) in errors[0], errors[0]


def test_resume_refuses_a_changed_model_and_keeps_the_run(workspace, capsys):
    run = workspace["run"]
    before = sorted(p.name for p in (run / "checkpoints").iterdir())
    code = main(["train", str(run / "run_config.yaml"), "--set", "model.image.layers=1", "--resume"])
    err = capsys.readouterr().err
    assert code == 2 and "--resume cannot change the model: model.image.layers is 2" in err, err
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == before


def test_debug_shows_the_traceback(workspace):
    with pytest.raises(FileNotFoundError, match="config file not found"):
        main(["--debug", "train", str(workspace["root"] / "missing.yaml")])
