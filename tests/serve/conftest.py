"""Models and an index for the service tests, made once per session through the real pipeline: `run_training` on
the generated shapes world (a dual encoder, a captioner, a VQA model), then `polymodal embed` and
`polymodal index build` over exported images (keys are file paths, so thumbnails need no data set).

``serve_world``: one short epoch each (seconds): real models whose outputs the tests compare with the library's.
``trained_world``: longer runs (slow tests): models that have learnt something, for the page a person looks at.
Training runs on one thread: tiny models train fastest that way, and two threads spinning against other
processes on a shared machine were many times slower.
"""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import torch

from polymodal import load_run_config, run_training
from polymodal.cli.main import main
from polymodal.data.catalog import load_dataset
from polymodal.data.export import export_jsonl

TRAIN = {"lr": 3e-3, "precision": "fp32", "log_every": 10, "checkpoint_every": 0, "warmup_steps": 5}


@dataclass(frozen=True)
class World:
    """Saved models, the images they index and the index (copy it before adding to it)."""

    root: Path
    clip: Path
    vqa: Path
    caption: Path
    index: Path
    images: tuple[Path, ...]

    def index_copy(self, where: Path) -> Path:
        shutil.copytree(self.index, where)
        return where


def _train(out: Path, model, data: dict, epochs: int, batch_size: int, overrides: list[str] | None = None) -> Path:
    config = {"model": model, "data": {"train": data, "val": None}, "out": str(out),
              "train": {**TRAIN, "epochs": epochs, "batch_size": batch_size}}
    run_training(load_run_config(config, overrides), progress=False)
    return out


@contextmanager
def one_thread():
    """Tiny models train fastest on one thread, and on a shared machine two threads spinning against other
    processes were many times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _world(root: Path, clip_model: dict, sizes: dict[str, int], epochs: dict[str, int]) -> World:
    with one_thread():
        return _build_world(root, clip_model, sizes, epochs)


def _build_world(root: Path, clip_model: dict, sizes: dict[str, int], epochs: dict[str, int]) -> World:
    shapes = {"name": "shapes", "split": "train", "image_size": 32}
    clip = _train(root / "clip", clip_model, {**shapes, "size": sizes["clip"]}, epochs["clip"], 32)
    caption = _train(root / "caption", "caption-tiny", {**shapes, "size": sizes["caption"]}, epochs["caption"], 32,
                     ["model.image.image_size=32"])
    # A VQA set is read with name, split and size only (its scenes are drawn at 64 px; the model resizes).
    vqa = _train(root / "vqa", "vqa-concat-tiny", {"name": "shapes", "split": "train", "size": sizes["vqa"]},
                 epochs["vqa"], 64)
    pairs = export_jsonl(load_dataset("shapes", split="val", size=24, image_size=32), root / "images", progress=False)
    assert main(["embed", str(clip), "--data", str(pairs), "--out", str(root / "embeddings")]) == 0
    assert main(["index", "build", str(root / "embeddings"), "--out", str(root / "index")]) == 0
    images = tuple(sorted((root / "images" / "images").glob("*.png")))
    return World(root, clip, vqa, caption, root / "index", images)


@pytest.fixture(scope="session")
def serve_world(tmp_path_factory, tiny_model_config) -> World:
    return _world(tmp_path_factory.mktemp("serve_world"), tiny_model_config,
                  sizes={"clip": 64, "caption": 32, "vqa": 16}, epochs={"clip": 1, "caption": 1, "vqa": 1})


@pytest.fixture(scope="session")
def trained_world(tmp_path_factory, tiny_model_config) -> World:
    """About a minute of training on 2 cores: fluent captions and answers of the asked-for kind (a number for "how
    many"), not yet well grounded in the image; real models for a page a person looks at."""
    return _world(tmp_path_factory.mktemp("trained_world"), tiny_model_config,
                  sizes={"clip": 512, "caption": 384, "vqa": 96}, epochs={"clip": 5, "caption": 10, "vqa": 2})


@torch.no_grad()
def reference_answers(vqa, image, question: str, k: int) -> list[tuple[str, float]]:
    """A VQA model's top-k answers computed straight from its forward pass (sigmoid of each answer's logit),
    without polymodal.tasks: what the service's answers are checked against."""
    model = vqa.model.eval()
    batch = {"image": vqa.transform(image)[None], **vqa.tokenizer([question])}
    answers = model.config["answers"]
    probabilities = model(**batch)["logits"][0, : len(answers)].sigmoid()
    best = probabilities.topk(k)
    return [(answers[i], float(p)) for p, i in zip(best.values.tolist(), best.indices.tolist())]


@torch.no_grad()
def reference_zero_shot(clip, image_path: Path, labels: list[str], templates: str) -> list[float]:
    """A dual encoder's probability of each label for an image file, computed with the library's zero-shot
    functions and no service: what the service's /zero-shot answers are checked against."""
    from polymodal.data.records import open_image_file
    from polymodal.tasks.zero_shot import class_probabilities, zero_shot_classifier

    classifier = zero_shot_classifier(clip.model, clip.tokenizer, labels, templates)
    embedding = clip.model.encode_image(clip.transform(open_image_file(image_path))[None])
    return class_probabilities(clip.model, embedding @ classifier.T)[0].tolist()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class ServerProcess:
    """``polymodal serve ARGS`` in a subprocess on a free loopback port, as a user starts it."""

    def __init__(self, *args: str, env: dict[str, str] | None = None, log: Path | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        with open(log, "ab") if log else open(os.devnull, "wb") as output:  # the child keeps its own handle
            self.process = subprocess.Popen(
                [sys.executable, "-m", "polymodal.cli", "serve", *args, "--port", str(self.port)],
                env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}, stdout=output, stderr=output)

    def wait_ready(self, timeout: float = 180) -> ServerProcess:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"the server exited with {self.process.returncode}: {self.log_text()}")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=2).status_code == 200:
                    return self
            except httpx.TransportError:
                time.sleep(0.2)
        raise AssertionError(f"the server did not answer within {timeout} s: {self.log_text()}")

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")[-3000:] if self.log and self.log.exists() else ""

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
