"""What every HF checkpoint directory holds, read the same way for every architecture: the file names, the
weights (one file, shards or the old ``pytorch_model.bin``) and the image processor's settings."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from polymodal.interop.checkpoint import read_state_file
from polymodal.io import read_json

__all__ = ["BUFFERS", "CONFIG", "PREPROCESSOR", "PROCESSOR", "RESAMPLE", "WEIGHTS", "read_hf_weights",
           "read_processor_settings", "square_size"]

CONFIG, WEIGHTS, PREPROCESSOR = "config.json", "model.safetensors", "preprocessor_config.json"
# Where transformers 5 saves a processor's settings (its image processor's among them).
PROCESSOR = "processor_config.json"
# PIL's resampling codes, as HF's processor config records them.
RESAMPLE = {2: "bilinear", 3: "bicubic"}
# Old transformers versions saved these constant buffers with the weights.
BUFFERS = ("position_ids",)


def read_hf_weights(directory: Path) -> tuple[dict[str, torch.Tensor], Path]:
    """The checkpoint's tensors and the file they came from (an index names its shards)."""
    if (directory / WEIGHTS).is_file():
        return read_state_file(directory / WEIGHTS), directory / WEIGHTS
    index = directory / f"{WEIGHTS}.index.json"
    if index.is_file():
        state = {}
        for shard in sorted(set(read_json(index, "weights index").get("weight_map", {}).values())):
            state.update(read_state_file(directory / shard))
        return state, index
    if (directory / "pytorch_model.bin").is_file():
        return read_state_file(directory / "pytorch_model.bin"), directory / "pytorch_model.bin"
    raise ValueError(f"{directory / WEIGHTS}: missing (nor {index.name}, nor pytorch_model.bin)")


def square_size(value: Any, file: Path, key: str) -> int:
    """A size HF gives as an int, ``[n, n]`` or ``{"height": n, "width": n}``, as long as it is square."""
    if isinstance(value, dict):
        value = [value.get("height"), value.get("width")]
    if isinstance(value, (list, tuple)) and len(value) == 2 and value[0] == value[1]:
        value = value[0]
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValueError(f"{file}: {key} = {value!r} is not a square size polymodal reproduces")
    return value


def read_processor_settings(directory: Path) -> tuple[dict[str, Any], Path]:
    """The image processor's settings and their file: ``preprocessor_config.json``, or the ``image_processor``
    section of ``processor_config.json`` (where transformers 5 saves a whole processor); none: ``{}``."""
    if (directory / PREPROCESSOR).is_file():
        return read_json(directory / PREPROCESSOR, "image processor config"), directory / PREPROCESSOR
    file = directory / PROCESSOR
    if file.is_file():
        settings = read_json(file, "processor config").get("image_processor", {})
        if not isinstance(settings, dict):
            raise ValueError(f"{file}: image_processor must be a mapping, got {settings!r}")
        return settings, file
    return {}, directory / PREPROCESSOR
