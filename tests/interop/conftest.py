"""Fixtures: a tiny HF CLIPModel directory, written once per session."""
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("open_clip")

from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel  # noqa: E402

from .helpers import MEAN, STD, perturb, tiny_clip_tokenizer  # noqa: E402


@pytest.fixture(scope="session")
def hf_clip_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``save_pretrained`` of a 2-layer CLIPModel (QuickGELU, as OpenAI's), its tokenizer and image processor."""
    directory = tmp_path_factory.mktemp("hf-clip")
    tokenizer = tiny_clip_tokenizer()
    special = {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
               "pad_token_id": tokenizer.pad_token_id}
    config = CLIPConfig(
        projection_dim=24,
        text_config={"vocab_size": len(tokenizer), "hidden_size": 32, "intermediate_size": 64,
                     "num_hidden_layers": 2, "num_attention_heads": 4, "max_position_embeddings": 16, **special},
        vision_config={"hidden_size": 48, "intermediate_size": 96, "num_hidden_layers": 2, "num_attention_heads": 4,
                       "image_size": 32, "patch_size": 8},
    )
    torch.manual_seed(0)
    perturb(CLIPModel(config), seed=1).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    CLIPImageProcessor(size={"shortest_edge": 36}, crop_size={"height": 32, "width": 32}, image_mean=MEAN,
                       image_std=STD).save_pretrained(directory)
    return directory
