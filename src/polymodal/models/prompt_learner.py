"""CoOp prompt learning (Zhou et al. 2022, "Learning to Prompt for Vision-Language Models") on a frozen dual encoder.

Each class's prompt is learned context vectors around its name, read by the base's frozen text tower::

    class c:  [BOS] [ctx_1 … ctx_M] [tokens of "name_c."] [EOS]      (class_token_position "end")
                  → text tower on token embeddings → text head → L2 norm → w_c           (C, D)
    image:    → image tower → image head → L2 norm → x                                   (B, D)
    logits:   exp(base.logit_scale) · x · wᵀ                                             (B, C)

Only the M context vectors train: one set shared by every class, or one per class (``class_specific``, CoOp's
CSC). Initialised from words (``init: "a photo of a"``) the model is exactly the base's zero-shot classifier with
the prompt "a photo of a {name}."; without ``init`` they start at random, at the scale of the tower's own token
embeddings. The image tower is locked, so a run trains on its cached outputs (``image_pooled``).

The base is a saved dual encoder named by path (``base: PATH``), not copied: a saved prompt learner holds the
context vectors and the SHA-256 of the base's weights, loading reads the base from that path again and refuses
it when its weights changed. Class names come from the config or, when it has none, from the training data
(:meth:`PromptLearner.use_class_names`, called by the classification task), and are saved in ``config.json``.

The family ``prompt_learner`` (task ``classification``): config :class:`PromptLearnerConfig`, builder
:func:`build_prompt_learner`, loss softmax cross-entropy.
"""
from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import nn

from polymodal.data.tokenizers import TextTokenizer
from polymodal.data.transforms import ImagePreprocess
from polymodal.encoders.base import freeze
from polymodal.models.dual_encoder import DualEncoder
from polymodal.models.family import ModelFamily
from polymodal.models.fusion_model import build_classification_loss
from polymodal.typed_config import ConfigError, dataclass_from_mapping

__all__ = ["PROMPT_LEARNER", "PromptLearner", "PromptLearnerConfig", "build_prompt_learner"]

# CoOp's default number of context vectors.
DEFAULT_CONTEXT_LENGTH = 16
ClassTokenPosition = Literal["end", "middle", "front"]


class PromptLearner(nn.Module):
    """A frozen :class:`DualEncoder` that classifies images with learned class prompts.

    Args:
        base: the dual encoder; it is locked here (no gradients, eval mode), towers included.
        tokenizer: the base's tokenizer (it splits the class names and ``init`` into the base's tokens).
        base_sha256: the SHA-256 of the base's weights file, saved with the context vectors.
        context_length: M, the number of context vectors (None: 16, or as many as ``init`` has tokens).
        init: words whose token embeddings initialise the context (CoOp: "a photo of a").
        class_specific: one context per class (CSC) instead of one shared by all.
        class_token_position: where the class name sits among the context vectors.
        class_names: the classes, in label order; None to take them from the data later.

    Raises:
        ValueError: the base's text tower cannot read token embeddings, ``context_length`` disagrees with
            ``init``, a class name is empty or repeated, or a prompt is longer than the base's texts.
    """

    def __init__(
        self,
        base: DualEncoder,
        tokenizer: TextTokenizer,
        base_sha256: str,
        context_length: int | None = None,
        init: str | None = None,
        class_specific: bool = False,
        class_token_position: ClassTokenPosition = "end",
        class_names: Sequence[str] | None = None,
    ) -> None:
        super().__init__()
        if not hasattr(base.text_encoder, "input_embeddings"):
            raise ValueError(f"the base's text tower ({type(base.text_encoder).__name__}) cannot read token "
                             "embeddings; prompt learning supports the transformer and minilm text towers")
        # The whole base is locked; its towers are marked too, so the run caches the image tower's outputs.
        for tower in (base.image_encoder, base.text_encoder):
            freeze(tower)
        self.base = freeze(base)
        self.tokenizer = tokenizer
        self.class_specific = class_specific
        self.class_token_position = class_token_position
        self._leading, self._trailing = self._special_tokens()
        table = base.text_encoder.input_embeddings
        if init is not None:
            self._init_ids = self._content_ids(init)
            if not self._init_ids:
                raise ValueError(f"init = {init!r} has no tokens")
            if context_length not in (None, len(self._init_ids)):
                raise ValueError(f"context_length = {context_length} but init = {init!r} is {len(self._init_ids)} "
                                 "tokens: leave context_length out or make them agree")
        else:
            self._init_ids = None
        self.context_length = len(self._init_ids) if self._init_ids is not None else (
            context_length or DEFAULT_CONTEXT_LENGTH)
        # Random context at the scale of the tower's own token embeddings (CoOp's 0.02 is CLIP's scale).
        self._init_std = float(table.weight.detach().float().std())
        self.register_buffer("base_sha256", torch.tensor(list(bytes.fromhex(base_sha256)), dtype=torch.uint8))
        self._expected_sha256 = base_sha256
        self.class_names: list[str] | None = None
        self.register_parameter("ctx", None)  # (M, W), or (C, M, W) when class-specific: made with the classes
        self._memo: tuple[torch.Tensor, torch.Tensor] | None = None
        # The base is referenced by path: its weights stay out of this model's state dict.
        self.register_state_dict_post_hook(_drop_base_weights)
        self.register_load_state_dict_post_hook(_after_load)
        if class_names is not None:
            self._build_prompts(class_names)

    # -- what the run asks of a classification model ------------------------------------------------------------
    @property
    def preprocess(self) -> ImagePreprocess:
        """The pixels the base's image tower reads."""
        return self.base.preprocess

    @property
    def encoders(self) -> dict[str, nn.Module]:
        """The frozen tower a run caches (only the image one: the text tower reads the learned prompts)."""
        return {"image": self.base.image_encoder}

    def cached_parts(self, modality: str) -> tuple[str, ...]:
        return ("pooled",)

    def tower_config(self, modality: str) -> dict[str, Any]:
        """The base's config section of a tower (part of the feature cache's key)."""
        return self.base.config[modality]

    def use_class_names(self, class_names: Sequence[str]) -> None:
        """The training data's classes: adopted (and written to ``config``) when the config named none, else
        checked against the config's, since labels index into them.

        Raises:
            ValueError: the data's classes differ from the model's.
        """
        if self.class_names is None:
            self._build_prompts(class_names)
            self.config["class_names"] = list(self.class_names)
        elif list(class_names) != self.class_names:
            raise ValueError(f"the data's classes {list(class_names)} differ from the model's class_names "
                             f"{self.class_names}: labels would mean other classes")

    # -- prompts ---------------------------------------------------------------------------------------------------
    def _content_ids(self, text: str) -> list[int]:
        """The token ids of ``text`` without the special tokens the tokenizer puts around every text."""
        ids = self._token_ids(text)
        return ids[len(self._leading):len(ids) - len(self._trailing)]

    def _token_ids(self, text: str) -> list[int]:
        """Every real token of ``text`` (a tokenizer may pad even a single text to a fixed length)."""
        tokens = self.tokenizer(text)
        return tokens["input_ids"][0][tokens["attention_mask"][0].bool()].tolist()

    def _special_tokens(self) -> tuple[list[int], list[int]]:
        """The ids the tokenizer adds before and after any text (e.g. ``[CLS]`` and ``[SEP]``): read off the empty
        text, split where a one-word text's tokens stop matching it."""
        edges, word = self._token_ids(""), self._token_ids("a")
        leading = 0
        while leading < len(edges) and word[leading] == edges[leading]:
            leading += 1
        return edges[:leading], edges[leading:]

    def _build_prompts(self, class_names: Sequence[str]) -> None:
        """Lay out every class's prompt (token ids with M slots for the context) and create the context."""
        names = list(class_names)
        if not names or any(not isinstance(name, str) or not name.strip() for name in names):
            raise ValueError(f"class_names must be non-empty strings, got {names}")
        repeated = [name for name in names if names.count(name) > 1]
        if repeated:
            raise ValueError(f"class name {repeated[0]!r} is given twice")
        M, CTX = self.context_length, -1  # -1 marks a context slot
        rows = []
        for name in names:
            # "name." as one text, as it reads inside a sentence (a byte-level BPE spells a lone "." differently).
            name_ids, spelled = self._content_ids(name), self._content_ids(f"{name}.")
            if spelled[:len(name_ids)] != name_ids:
                raise ValueError(f"class name {name!r}: the tokens of {name + '.'!r} do not start with those of it")
            tail = spelled[len(name_ids):]
            if self.class_token_position == "end":
                inner = [CTX] * M + spelled
            elif self.class_token_position == "middle":
                inner = [CTX] * (M // 2) + name_ids + [CTX] * (M - M // 2) + tail
            else:
                inner = name_ids + [CTX] * M + tail
            row = self._leading + inner + self._trailing
            if len(row) > self.tokenizer.context_length:
                raise ValueError(f"the prompt of class {name!r} is {len(row)} tokens ({M} context vectors) but the "
                                 f"base reads at most {self.tokenizer.context_length}: lower context_length")
            rows.append(row)
        length = max(len(row) for row in rows)
        slots = torch.full((len(rows), length), self.tokenizer.pad_id, dtype=torch.long)
        mask = torch.zeros(len(rows), length, dtype=torch.long)
        for index, row in enumerate(rows):
            slots[index, :len(row)] = torch.tensor(row)
            mask[index, :len(row)] = 1
        is_context = slots == CTX
        # Context slots hold id 0 in the ids the tower sees: they are never looked up, and a low id keeps
        # argmax pooling (open_clip's) on the end-of-text token.
        ids = slots.masked_fill(is_context, 0)
        table = self.base.text_encoder.input_embeddings
        device = table.weight.device
        self.register_buffer("prompt_ids", ids.to(device), persistent=False)
        self.register_buffer("prompt_mask", mask.to(device), persistent=False)
        self.register_buffer("context_slots", is_context.nonzero()[:, 1].view(len(rows), M).to(device),
                             persistent=False)
        with torch.no_grad():
            self.register_buffer("prompt_embeds", table(self.prompt_ids).detach(), persistent=False)
            if self._init_ids is not None:
                context = table(torch.tensor(self._init_ids, device=device)).detach().clone()  # (M, W)
            else:
                context = torch.randn(M, table.embedding_dim, device=device) * self._init_std
        if self.class_specific:
            context = context.expand(len(rows), M, -1).clone()  # (C, M, W): CoOp's CSC starts every class alike
        self.ctx = nn.Parameter(context)
        self.class_names = names

    # -- forward ---------------------------------------------------------------------------------------------------
    def class_embeddings(self) -> torch.Tensor:
        """``(C, D)`` unit-norm class embeddings of the learned prompts (the zero-shot classifier's counterpart)."""
        if self.ctx is None:
            raise ValueError("the prompt learner has no classes yet: give model.class_names or train it on "
                             "labelled data")
        C, M = self.context_slots.shape
        context = self.ctx if self.class_specific else self.ctx.expand(C, M, -1)
        rows = torch.arange(C, device=self.context_slots.device).unsqueeze(1).expand(C, M)
        embeds = self.prompt_embeds.index_put((rows, self.context_slots), context.to(self.prompt_embeds.dtype))
        pooled = self.base.text_encoder(self.prompt_ids, self.prompt_mask, inputs_embeds=embeds).pooled
        return self.base.encode_text(text_tower_features=pooled)

    def _classifier(self) -> torch.Tensor:
        """:meth:`class_embeddings`, computed once per value of the context when no gradient is needed: an
        evaluation scores many batches against the same prompts. The context's values are the key (a fused
        optimizer step changes them without bumping the tensor's version counter)."""
        if torch.is_grad_enabled():
            return self.class_embeddings()
        memo = self._memo
        if memo is None or memo[0].device != self.ctx.device or not torch.equal(memo[0], self.ctx):
            memo = self._memo = (self.ctx.detach().clone(), self.class_embeddings())
        return memo[1]

    def forward(
        self,
        image: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        image_pooled: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """``logits (B, C)`` of pixels or of the image tower's cached ``image_pooled``, plus ``labels`` when given
        (the classification loss's keywords)."""
        if image is None and image_pooled is None:
            raise ValueError("the prompt learner reads images: pass `image` (or its cached `image_pooled`)")
        images = self.base.encode_image(image, image_tower_features=image_pooled)
        output = {"logits": self.base.temperature() * images @ self._classifier().T}
        if labels is not None:
            output["labels"] = labels
        return output


def _drop_base_weights(module: nn.Module, state_dict: dict[str, torch.Tensor], prefix: str, local_metadata) -> None:
    for key in [key for key in state_dict if key.startswith(f"{prefix}base.")]:
        del state_dict[key]


def _after_load(module: PromptLearner, incompatible_keys) -> None:
    """The base's weights were read from its own directory, not from this state dict; the saved SHA-256 must be
    theirs."""
    incompatible_keys.missing_keys[:] = [key for key in incompatible_keys.missing_keys if not key.startswith("base.")]
    saved = bytes(module.base_sha256.cpu().tolist()).hex()
    if saved != module._expected_sha256:
        raise ValueError(f"{module.config['base']}: the base model's weights changed since these prompts were learned "
                         f"(SHA-256 {saved[:12]}… then, {module._expected_sha256[:12]}… now); retrain the prompts "
                         "or point base at the model they were learned on")


@dataclass
class PromptLearnerConfig:
    """A prompt learner's config.

    Attributes:
        base: the saved dual encoder to prompt (a model directory or a run directory), by path.
        class_names: the classes in label order; None: the training data's.
        context_length: M, the number of learned context vectors (CoOp: 16; None: 16, or ``init``'s length).
        init: words that initialise the context (e.g. "a photo of a"); None: random.
        class_specific: one context per class (CoOp's CSC) instead of a unified one.
        class_token_position: the class name after the context (``end``), inside it (``middle``) or before it.
    """

    base: str
    family: Literal["prompt_learner"] = "prompt_learner"
    description: str = ""
    class_names: list[str] | None = None
    context_length: int | None = field(default=None, metadata={"min": 1})
    init: str | None = None
    class_specific: bool = False
    class_token_position: ClassTokenPosition = "end"


def build_prompt_learner(config: dict[str, Any], where: str = "model config",
                         for_loading: bool = False) -> PromptLearner:
    """Load the base named by ``config["base"]`` and build a :class:`PromptLearner` around it.

    Raises:
        ConfigError: ``base`` is not a saved model, not a dual encoder or has no tokenizer, or another field is bad
            (the message names ``where`` and the field).
    """
    # model_io imports the family registry, which imports this module.
    from polymodal.model_io import load_model, load_tokenizer, resolve_model_dir, weights_sha256

    spec = dataclass_from_mapping(PromptLearnerConfig, config, where)
    try:
        base_dir = resolve_model_dir(spec.base)
    except FileNotFoundError as error:
        raise ConfigError(f"{where}: base = {spec.base!r} is not a saved model ({error})") from None
    base = load_model(base_dir)
    if not isinstance(base, DualEncoder):
        family = base.config.get("family", type(base).__name__)
        raise ConfigError(f"{where}: base = {spec.base!r} holds a {family} model ({base_dir / 'config.json'}); "
                          "prompt learning needs a dual encoder")
    tokenizer = load_tokenizer(base_dir)
    if tokenizer is None:
        raise ConfigError(f"{where}: base = {spec.base!r} has no tokenizer.json in {base_dir}")
    try:
        model = PromptLearner(base, tokenizer, weights_sha256(base_dir), spec.context_length, spec.init,
                              spec.class_specific, spec.class_token_position, spec.class_names)
    except ValueError as error:
        raise ConfigError(f"{where}: {error}") from None
    model.config = copy.deepcopy(config)
    return model


PROMPT_LEARNER = ModelFamily("prompt_learner", build_prompt_learner, build_classification_loss, task="classification")
