"""Any HF transformers text encoder (BERT, RoBERTa, DistilBERT, MiniLM, ...) as a polymodal text tower.

The tower is built from the HF config alone (``AutoConfig.for_model`` + ``AutoModel.from_config``), so a saved
polymodal model that holds one needs no HF directory to load: the config travels inside polymodal's
``config.json`` and the weights inside ``model.safetensors``. Pretrained weights come in through a
``checkpoint`` tower section (``interop/towers.py``).
"""
from __future__ import annotations

from inspect import signature
from typing import Any, Literal

import torch
from torch import nn

from polymodal.encoders.base import EncoderOutput
from polymodal.layers.pooling import first_token, masked_mean

__all__ = ["HFTextTower"]


class HFTextTower(nn.Module):
    """``input_ids, attention_mask (B, L) -> EncoderOutput(tokens (B, L, H), pooled (B, H), mask (B, L))``.

    Args:
        hf_config: the HF model config as a mapping (``PretrainedConfig.to_dict()``: it names its
            ``model_type``).
        pool: ``mean`` over real tokens (sentence-transformers' pooling) or ``cls`` (the first token's state,
            BERT's classification convention, without BERT's pooler layer).
    """

    def __init__(self, hf_config: dict[str, Any], pool: Literal["mean", "cls"] = "mean") -> None:
        super().__init__()
        from transformers import AutoConfig, AutoModel

        if pool not in ("mean", "cls"):
            raise ValueError(f"pool must be 'mean' or 'cls', got {pool!r}")
        settings = dict(hf_config)
        model_type = settings.pop("model_type", None)
        if not model_type:
            raise ValueError("hf_config has no model_type")
        config = AutoConfig.for_model(model_type, **settings)
        model_class = AutoModel._model_mapping[type(config)]
        # No pooler (BERT's is trained for next-sentence prediction only): polymodal pools the token states itself.
        options = {"add_pooling_layer": False} if "add_pooling_layer" in signature(model_class.__init__).parameters \
            else {}
        self.model = model_class(config, **options)
        self.pool = pool
        self.width = int(config.hidden_size)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> EncoderOutput:
        hidden = self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state  # (B, L, H)
        mask = attention_mask.bool()
        pooled = masked_mean(hidden, mask) if self.pool == "mean" else first_token(hidden)
        return EncoderOutput(tokens=hidden, pooled=pooled, mask=mask)
