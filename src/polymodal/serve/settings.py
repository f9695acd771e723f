"""What a service serves and how: :class:`ServeSettings`, and the settings that serve the quickstart's outputs."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from polymodal.io import read_json
from polymodal.serve.uploads import UploadLimits

__all__ = ["ServeSettings", "quickstart_settings"]

# Bytes of a request body beyond its files: multipart boundaries, headers, text fields.
_FORM_ROOM = 256 * 1024


@dataclass(frozen=True)
class ServeSettings:
    """Everything a service loads at start-up and every limit it enforces.

    Attributes:
        index: the index directory to search and add to (a missing one starts empty, written at the first add;
            then ``checkpoint`` is required).
        checkpoint: the dual encoder that embeds queries (default: the checkpoint the index records).
        onnx: an ONNX export of that dual encoder (``polymodal convert CHECKPOINT --to onnx``) that embeds the
            queries with onnxruntime instead: the same embeddings (checked at start-up), a one-text query in
            a third of PyTorch eager's time on a CPU (less Python per layer, faster small matrix products).
        vqa_checkpoint: a VQA model for ``POST /vqa`` (None: the endpoint answers 503 ``not_configured``).
        caption_checkpoint: a captioner for ``POST /caption`` (likewise).
        image_sets: data specs (as ``--data`` takes them) whose records' images the index holds, for thumbnails
            and for questions about a result; keys that are file paths need none.
        uploads: where images added through ``POST /index/add`` are kept (default: ``INDEX-uploads`` beside it).
        api_key: when set, ``POST /index/add`` requires it (``Authorization: Bearer KEY`` or ``X-API-Key``).
        device: ``auto`` (a GPU if there is one), ``cpu``, ``cuda``, ...
        limits: size limits of one uploaded image.
        max_images_per_add: files one ``/index/add`` request may carry.
        max_k: most results one search may ask for.
        batch_size: most requests one model call answers.
        batch_wait_ms: at most how long a request waits for others to share its model call (only as many as the
            previous call answered are waited for, so a lone client does not wait). 10 ms filled the batches of 8
            closed-loop clients (benchmarks/serve_load.py); 2 ms left them half full.
        max_queue: requests waiting per model before new ones are refused with 503.
    """

    index: Path
    checkpoint: Path | None = None
    onnx: Path | None = None
    vqa_checkpoint: Path | None = None
    caption_checkpoint: Path | None = None
    image_sets: tuple[Any, ...] = ()
    uploads: Path | None = None
    api_key: str | None = None
    device: str = "auto"
    limits: UploadLimits = field(default_factory=UploadLimits)
    max_images_per_add: int = 16
    max_k: int = 100
    batch_size: int = 32
    batch_wait_ms: float = 10.0
    max_queue: int = 256

    def __post_init__(self) -> None:
        for name in ("max_images_per_add", "max_k", "batch_size", "max_queue"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.batch_wait_ms < 0:
            raise ValueError(f"batch_wait_ms must be >= 0, got {self.batch_wait_ms}")
        if self.api_key is not None and not self.api_key.strip():
            raise ValueError("the API key is empty; set a real key or none")

    @property
    def uploads_dir(self) -> Path:
        return self.uploads or self.index.with_name(self.index.name + "-uploads")

    @property
    def max_request_bytes(self) -> int:
        """Largest request body accepted: one image plus room for the form fields around it."""
        return self.limits.max_bytes + _FORM_ROOM

    @property
    def max_add_bytes(self) -> int:
        """Largest ``/index/add`` body: the files of the largest add plus room for the form."""
        return self.limits.max_bytes * self.max_images_per_add + _FORM_ROOM


def quickstart_settings(run_dir: str | Path, say: Callable[[str], None] = lambda line: None,
                        **options: Any) -> ServeSettings:
    """Settings serving what ``polymodal quickstart --out RUN_DIR`` wrote: its index (which names its model) and
    the data sets the index's images come from (the quickstart recipe's, read from ``metrics.json``'s world).
    When ``run_dir`` holds no finished quickstart, the quickstart runs there first (minutes on a CPU, once);
    ``say`` receives a line for each of its stages."""
    from polymodal.recipes.quickstart import (  # imports training
        real_recipe,
        run_quickstart,
        shapes_recipe,
    )

    run_dir = Path(run_dir)
    if not (run_dir / "metrics.json").is_file() or not (run_dir / "index").is_dir():
        say(f"no quickstart outputs in {run_dir}: running `polymodal quickstart --out {run_dir}` first (a few "
            "minutes on a CPU, once)")
        run_quickstart(run_dir, progress=True, say=say)
    metrics = read_json(run_dir / "metrics.json", "quickstart metrics")
    world = metrics.get("world") if isinstance(metrics, dict) else None
    if world not in ("real", "shapes"):
        raise ValueError(f"{run_dir / 'metrics.json'}: unknown quickstart world {world!r}")
    recipe = real_recipe(str(run_dir)) if world == "real" else shapes_recipe(str(run_dir))
    # The held-out split's images are records of the training set's data, under the same keys.
    specs = tuple(recipe.run.data.train if recipe.retrieval_sets[label] == "held-out" else recipe.retrieval_sets[label]
                  for label in recipe.index_sets)
    return replace(ServeSettings(index=run_dir / "index", image_sets=specs), **options)
