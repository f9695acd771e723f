"""Image captioner: an image encoder whose tokens a Transformer decoder cross-attends to.

    image ─► image_encoder ─► tokens (B, N, F) ─┐
    <bos> w1 … wT ─► CaptionDecoder (causal self-attention, cross-attention to the image tokens, tied output
                     embedding) ─► logits (B, T, V): position t predicts w(t+1)

The family ``captioner`` (presets ``caption-tiny``, ``caption-small``, ``caption-effnet``) trains with teacher-forced
cross-entropy (``CaptionLoss``), or, given ``image_index`` instead of captions, samples captions for self-critical
training (``SCSTLoss``, run config ``train.scst``). A frozen image tower (``"image": {..., "frozen": true}``) may be
run once ahead of training: every entry point then takes its outputs, ``image_tokens (B, N, F)`` (+
``image_token_mask``), in place of ``image``. Its ``text`` section describes the decoder and, as every text section,
the tokenizer (``vocab_size``, ``context_length``: the longest tokenized caption, BOS and EOS included).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import nn

from polymodal.encoders.build import build_encoder
from polymodal.heads.caption_decoder import CaptionDecoder
from polymodal.layers.mlp import Activation
from polymodal.losses.captioning import IGNORE, CaptionLoss
from polymodal.models.family import LossOptions, ModelFamily
from polymodal.tasks.decoding import Decoded, StepFn, beam_search, greedy, sample
from polymodal.typed_config import dataclass_from_mapping

__all__ = ["CAPTIONER", "Captioner", "CaptionerConfig", "DecoderSection", "GenerationSection", "build_captioner"]


@dataclass
class DecoderSection:
    """The ``text`` section of a captioner: the decoder and its tokenizer. ``norm_position`` … ``act`` are
    :class:`~polymodal.heads.caption_decoder.CaptionDecoder`'s layout options; their defaults are polymodal's own
    decoder, and imported BLIP checkpoints set BERT's (``polymodal.interop.hf_blip``)."""

    type: Literal["decoder"]
    vocab_size: int = field(metadata={"min": 8})
    context_length: int = field(metadata={"min": 3})
    width: int = field(default=256, metadata={"min": 1})
    layers: int = field(default=3, metadata={"min": 1})
    heads: int = field(default=4, metadata={"min": 1})
    mlp_ratio: float = field(default=4.0, metadata={"above": 0})
    dropout: float = field(default=0.1, metadata={"min": 0, "max": 1})
    norm_position: Literal["pre", "post"] = "pre"
    embed_norm: bool = False
    head_transform: bool = False
    head_bias: bool = False
    tie_embeddings: bool = True
    norm_eps: float = field(default=1e-5, metadata={"above": 0})
    act: Activation = "gelu"


@dataclass
class GenerationSection:
    """How ``polymodal caption`` / ``eval`` decode by default (each may be overridden per call).

    ``prompt_ids``: tokens fed after BOS that every caption continues (BLIP's "a picture of"); the returned
    captions hold only the continuation, and ``max_length``, ``min_length`` and ``no_repeat_ngram_size`` count
    only generated tokens.
    """

    method: Literal["greedy", "beam", "sample"] = "beam"
    beam_size: int = field(default=3, metadata={"min": 1})
    length_penalty: float = 1.0
    no_repeat_ngram_size: int = field(default=0, metadata={"min": 0})
    min_length: int = field(default=1, metadata={"min": 0})
    max_length: int | None = field(default=None, metadata={"min": 1})  # tokens, EOS included; None: context - 1
    top_k: int | None = field(default=None, metadata={"min": 1})
    top_p: float | None = field(default=None, metadata={"above": 0, "max": 1})
    temperature: float = field(default=1.0, metadata={"above": 0})
    prompt_ids: list[int] = field(default_factory=list)


@dataclass
class CaptionerConfig:
    """A captioner's config (a preset's JSON). ``bos_id`` / ``eos_id`` / ``pad_id`` are the tokenizer's; training
    fills them in from it."""

    family: str
    image: dict[str, Any]
    text: dict[str, Any]
    description: str = ""
    generate: dict[str, Any] = field(default_factory=dict)
    bos_id: int = 1
    eos_id: int = 2
    pad_id: int = 0


class Captioner(nn.Module):
    """``image (B, 3, H, W)`` + ``input_ids`` / ``attention_mask (B, T)`` (``<bos> … <eos>``) → next-token logits.

    Instead of ``image``, every entry point takes ``image_tokens (B, N, F)`` (+ ``image_token_mask (B, N)``): the
    image tower's outputs, cached when the tower is frozen (:meth:`encode_image` is the one place that chooses).

    Args:
        image_encoder: any image encoder (its ``EncoderOutput.tokens`` are the decoder's memory).
        decoder: the :class:`CaptionDecoder`.
        generation: default decoding settings.
        bos_id, eos_id, pad_id: the tokenizer's special ids.
    """

    def __init__(self, image_encoder: nn.Module, decoder: CaptionDecoder, generation: GenerationSection,
                 bos_id: int, eos_id: int, pad_id: int) -> None:
        super().__init__()
        self.image_encoder = image_encoder
        self.decoder = decoder
        self.generation = generation
        self.bos_id, self.eos_id, self.pad_id = bos_id, eos_id, pad_id
        self.scst_samples = 0  # > 0: forward without captions samples this many per image (set by the task)

    def encode_image(self, image: torch.Tensor | None = None, image_tokens: torch.Tensor | None = None,
                     image_token_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The decoder's memory: image tokens ``(B, N, F)`` and their mask (None: all real), from pixels through
        the image tower, or the tower's cached ``image_tokens`` / ``image_token_mask`` as given."""
        if image_tokens is not None:
            if image is not None:
                raise ValueError("pass `image` or its tower outputs `image_tokens`, not both")
            return image_tokens, image_token_mask
        if image is None:
            raise ValueError("the captioner needs `image` or the image tower's outputs `image_tokens`")
        output = self.image_encoder(image)
        return output.tokens, output.mask

    def forward(self, image: torch.Tensor | None = None, input_ids: torch.Tensor | None = None,
                attention_mask: torch.Tensor | None = None, image_index: torch.Tensor | None = None,
                image_tokens: torch.Tensor | None = None,
                image_token_mask: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Teacher forcing (``input_ids`` given): ``logits (B, T-1, V)`` and ``targets (B, T-1)`` (the next tokens,
        ``-100`` at padding). Self-critical sampling (``image_index`` given, no captions): see
        :meth:`sample_for_scst`. ``image_tokens`` / ``image_token_mask``: the frozen tower's outputs, for ``image``."""
        if input_ids is None:
            if image_index is None:
                raise ValueError("pass input_ids (teacher forcing) or image_index (self-critical sampling)")
            return self.sample_for_scst(image, image_index, image_tokens, image_token_mask)
        memory, memory_mask = self.encode_image(image, image_tokens, image_token_mask)
        mask = attention_mask if attention_mask is not None else torch.ones_like(input_ids)
        logits = self.decoder(input_ids[:, :-1], memory, memory_mask, mask[:, :-1])
        targets = input_ids[:, 1:].masked_fill(mask[:, 1:] == 0, IGNORE)
        return {"logits": logits, "targets": targets}

    def sample_for_scst(self, image: torch.Tensor | None, image_index: torch.Tensor,
                        image_tokens: torch.Tensor | None = None,
                        image_token_mask: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """``scst_samples`` captions per image drawn from the model (KV-cached, no gradient), their log-probs
        recomputed with gradient in one teacher-forced pass, and the greedy caption (the SCST baseline).

        Returns ``sample_ids (B·K, L)``, ``sample_log_probs (B·K, L)``, ``sample_mask (B·K, L)`` (1 up to and
        including EOS), ``sample_entropy (B·K, L)``, ``greedy_ids (B, L)`` (-1 past the caption) and
        ``image_index``.
        """
        samples = self.scst_samples
        if samples < 1:
            raise ValueError("self-critical sampling needs scst_samples >= 1 (set by a run with train.scst)")
        memory, memory_mask = self.encode_image(image, image_tokens, image_token_mask)
        B, max_length, device = memory.shape[0], self.max_new_tokens(), memory.device
        rows = torch.arange(B, device=device).repeat_interleave(samples)
        with torch.no_grad():
            detached = memory.detach()
            cache = self.decoder.init_cache(detached, memory_mask).reorder(rows)
            drawn = sample(self.decoder.step, cache, B * samples, **self._special_ids(), max_length=max_length,
                           min_length=1, device=device)
            best = greedy(self.decoder.step, self.decoder.init_cache(detached, memory_mask), B,
                          **self._special_ids(), max_length=max_length, min_length=1, device=device)
        sample_ids, sample_mask = self._padded(drawn.sequences, with_eos=True, device=device)
        inputs = torch.cat([torch.full((B * samples, 1), self.bos_id, device=device), sample_ids[:, :-1]], 1)
        logits = self.decoder(inputs.clamp(min=0), memory[rows],
                              None if memory_mask is None else memory_mask[rows], sample_mask)
        log_probs = logits.float().log_softmax(dim=-1)  # (B·K, L, V)
        chosen = log_probs.gather(2, sample_ids.clamp(min=0)[..., None]).squeeze(2)
        entropy = -(log_probs.exp() * log_probs).sum(dim=-1).detach()
        greedy_ids, _ = self._padded(best.sequences, with_eos=False, device=device)
        return {"sample_ids": sample_ids, "sample_log_probs": chosen, "sample_mask": sample_mask,
                "sample_entropy": entropy, "greedy_ids": greedy_ids, "image_index": image_index}

    def _padded(self, sequences: list[list[int]], with_eos: bool,
                device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """Token lists as ``(R, L)`` ids padded with -1, and the mask of real tokens; ``with_eos`` appends EOS to
        every sequence the decoder ended (shorter than the limit), since its probability was sampled too."""
        limit = self.max_new_tokens()
        rows = [seq + [self.eos_id] if with_eos and len(seq) < limit else seq for seq in sequences]
        width = max(1, max(map(len, rows)))
        ids = torch.full((len(rows), width), -1, dtype=torch.long)
        for i, row in enumerate(rows):
            ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
        ids = ids.to(device)
        return ids, (ids >= 0).long()

    def max_new_tokens(self) -> int:
        """The most tokens a caption may have, EOS included (the default of ``generate.max_length``)."""
        return self.generation.max_length or self.decoder.max_length - 1

    def _special_ids(self) -> dict[str, int]:
        return {"bos_id": self.bos_id, "eos_id": self.eos_id, "pad_id": self.pad_id}

    def _prompt(self, prompt_ids: list[int], device: torch.device) -> torch.Tensor:
        """``prompt_ids`` as a ``(P,)`` tensor, after checking every id is in the decoder's vocabulary."""
        outside = [i for i in prompt_ids if not 0 <= i < self.decoder.vocab_size]
        if outside:
            raise ValueError(f"prompt_ids: {outside[0]} is not a token id of the decoder's vocabulary of "
                             f"{self.decoder.vocab_size}")
        return torch.tensor(prompt_ids, dtype=torch.long, device=device)

    @torch.no_grad()
    def generate(self, image: torch.Tensor | None = None, generator: torch.Generator | None = None, *,
                 image_tokens: torch.Tensor | None = None, image_token_mask: torch.Tensor | None = None,
                 **overrides: Any) -> Decoded:
        """Captions (token ids, without BOS/EOS) for a batch of images (or their cached ``image_tokens``) with the
        default decoding settings (``config["generate"]``), any of which ``overrides`` replaces
        (``method="greedy"``, ``beam_size=5``, ``prompt_ids=[…]``: captions continuing a prompt, without it)."""
        unknown = set(overrides) - set(GenerationSection.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown generation setting(s) {sorted(unknown)}")
        settings = {**self.generation.__dict__, **{k: v for k, v in overrides.items() if v is not None}}
        memory, memory_mask = self.encode_image(image, image_tokens, image_token_mask)
        batch, device = memory.shape[0], memory.device
        max_length = settings["max_length"] or self.decoder.max_length - 1
        prompt = self._prompt(settings["prompt_ids"], device)
        if max_length + len(prompt) >= self.decoder.max_length:
            raise ValueError(f"max_length {max_length} (+ {len(prompt)} prompt tokens) leaves no room for BOS in "
                             f"the decoder's {self.decoder.max_length} positions")
        common = {**self._special_ids(), "max_length": max_length, "min_length": settings["min_length"],
                  "no_repeat_ngram_size": settings["no_repeat_ngram_size"], "device": device}
        cache = self.decoder.init_cache(memory, memory_mask, max_length=max_length + len(prompt))
        step = _after_prompt(self.decoder.step, prompt) if len(prompt) else self.decoder.step
        method = settings["method"]
        if method == "greedy":
            return greedy(step, cache, batch, **common)
        if method == "beam":
            return beam_search(step, cache, batch, beam_size=settings["beam_size"],
                               length_penalty=settings["length_penalty"], **common)
        if method == "sample":
            return sample(step, cache, batch, top_k=settings["top_k"], top_p=settings["top_p"],
                          temperature=settings["temperature"], generator=generator, **common)
        raise ValueError(f"method must be greedy, beam or sample, got {method!r}")


def _after_prompt(step: StepFn, prompt: torch.Tensor) -> StepFn:
    """``step`` for decoding that continues ``prompt (P,)``: the decoding functions start every row at BOS,
    position 0; the first call feeds BOS and the prompt together (one chunk through the KV cache) and later
    calls are shifted by ``P`` positions, so the prompt is part of every caption's prefix without being
    generated."""

    def prompted(tokens: torch.Tensor, cache: Any, position: int) -> tuple[torch.Tensor, Any]:
        if position == 0:
            return step(torch.cat([tokens, prompt.expand(tokens.shape[0], -1)], dim=1), cache, 0)
        return step(tokens, cache, position + len(prompt))

    return prompted


def build_captioner(config: dict[str, Any], where: str = "model config", for_loading: bool = False) -> Captioner:
    """Build a :class:`Captioner` from its config (see :class:`CaptionerConfig`)."""
    spec = dataclass_from_mapping(CaptionerConfig, config, where)
    text = dataclass_from_mapping(DecoderSection, spec.text, where, prefix="text.")
    generation = dataclass_from_mapping(GenerationSection, spec.generate, where, prefix="generate.")
    image = build_encoder("image", spec.image, where)
    # Every image encoder's tokens are as wide as its pooled vector (`width`).
    memory_width = image.encoder.width
    decoder = CaptionDecoder(text.vocab_size, memory_width, width=text.width, layers=text.layers, heads=text.heads,
                             mlp_ratio=text.mlp_ratio, max_length=text.context_length, dropout=text.dropout,
                             norm_position=text.norm_position, embed_norm=text.embed_norm,
                             head_transform=text.head_transform, head_bias=text.head_bias,
                             tie_embeddings=text.tie_embeddings, norm_eps=text.norm_eps, act=text.act)
    model = Captioner(image.encoder, decoder, generation, spec.bos_id, spec.eos_id, spec.pad_id)
    model.config = copy.deepcopy(config)
    model.preprocess = image.preprocess
    return model


def build_caption_loss(config: dict[str, Any], options: LossOptions) -> nn.Module:
    return CaptionLoss(options.label_smoothing)


CAPTIONER = ModelFamily("captioner", build_captioner, build_caption_loss, task="captioning")
