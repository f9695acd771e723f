"""Captioning losses: token cross-entropy under teacher forcing, and self-critical sequence training (SCST).

SCST (Rennie et al. 2017) treats the captioner as a policy: it samples K captions per image, scores each with a
sequence-level reward r (CIDEr-D against the image's references) and pushes up the log-probability of samples
that beat a baseline b — the reward of the model's own greedy caption ("self-critical"), or the mean reward of
the image's other samples::

    loss = - 1/(B K) Σ_i Σ_k (r_ik - b_ik) · Σ_t log p(w_ikt | w_ik<t, image_i)

The reward and baseline carry no gradient. Sums over time run over the sampled tokens, EOS included.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["CaptionLoss", "SCSTLoss", "caption_cross_entropy", "scst_loss"]

IGNORE = -100  # target id of padding: no loss


def caption_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, label_smoothing: float = 0.0) -> torch.Tensor:
    """Mean cross-entropy over real target tokens.

    Args:
        logits: ``(B, T, V)``: position t predicts ``targets[:, t]``.
        targets: ``(B, T)`` next-token ids, :data:`IGNORE` where padding.
        label_smoothing: spread this much target mass uniformly over the vocabulary (Szegedy et al. 2016).
    """
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=IGNORE,
                           label_smoothing=label_smoothing)


class CaptionLoss(nn.Module):
    """Teacher-forced :func:`caption_cross_entropy`; keywords ``logits`` and ``targets`` (a captioner's outputs).

    Reports ``loss`` and ``token_accuracy`` (argmax hits over real target tokens)."""

    def __init__(self, label_smoothing: float = 0.0) -> None:
        super().__init__()
        self.label_smoothing = label_smoothing

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> dict[str, torch.Tensor]:
        real = targets != IGNORE
        hits = (logits.detach().argmax(dim=-1) == targets) & real
        return {"loss": caption_cross_entropy(logits, targets, self.label_smoothing),
                "token_accuracy": hits.sum() / real.sum().clamp(min=1)}


def scst_loss(log_probs: torch.Tensor, mask: torch.Tensor, rewards: torch.Tensor,
              baselines: torch.Tensor) -> torch.Tensor:
    """The policy-gradient loss of the module docstring.

    Args:
        log_probs: ``(R, T)`` log-probability of each sampled token (R = images x samples).
        mask: ``(R, T)`` 1 where the token was generated (up to and including EOS), 0 after.
        rewards, baselines: ``(R,)``; no gradient flows through them.
    """
    advantage = (rewards - baselines).detach()
    return -(advantage * (log_probs * mask).sum(dim=1)).mean()


class SCSTLoss(nn.Module):
    """SCST over a captioner's sampling outputs (``sample_ids``, ``sample_log_probs``, ``sample_mask``,
    ``sample_entropy``, ``greedy_ids``, ``image_index``).

    Args:
        reward: ``reward(image_index (B,), sequences) -> (len(sequences),)``: the reward of each token sequence
            (without BOS/EOS) as a caption of the image it was sampled for; ``sequences`` lists the K samples of
            image 0, then of image 1, ... (``recipes/tasks.CaptionReward`` computes CIDEr-D).
        baseline: ``"greedy"`` (the reward of the greedy caption, Rennie et al.) or ``"mean"`` (the mean reward of
            the image's other K - 1 samples, Luo 2020; needs K >= 2).

    Reports ``loss``, ``reward`` (mean sample reward), ``baseline`` (mean baseline) and ``entropy`` (mean
    per-token entropy of the sampling distribution: a collapsing policy shows it falling to 0).
    """

    def __init__(self, reward: Callable[[torch.Tensor, list[list[int]]], torch.Tensor],
                 baseline: str = "greedy") -> None:
        super().__init__()
        if baseline not in ("greedy", "mean"):
            raise ValueError(f"baseline must be 'greedy' or 'mean', got {baseline!r}")
        self.reward = reward
        self.baseline = baseline

    def forward(self, sample_ids: torch.Tensor, sample_log_probs: torch.Tensor, sample_mask: torch.Tensor,
                sample_entropy: torch.Tensor, image_index: torch.Tensor,
                greedy_ids: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        rows, images = sample_ids.shape[0], image_index.shape[0]
        samples = rows // images
        repeated = image_index.repeat_interleave(samples)
        rewards = self.reward(repeated, _sequences(sample_ids, sample_mask)).to(sample_log_probs.device)
        if self.baseline == "greedy":
            if greedy_ids is None:
                raise ValueError("the greedy baseline needs the model's greedy captions (greedy_ids)")
            greedy = self.reward(image_index, _sequences(greedy_ids, greedy_ids >= 0)).to(rewards.device)
            baselines = greedy.repeat_interleave(samples)
        else:
            if samples < 2:
                raise ValueError("the 'mean' baseline needs at least 2 samples per image")
            per_image = rewards.view(images, samples)
            baselines = ((per_image.sum(dim=1, keepdim=True) - per_image) / (samples - 1)).reshape(-1)
        mask = sample_mask.to(sample_log_probs.dtype)
        return {"loss": scst_loss(sample_log_probs, mask, rewards, baselines), "reward": rewards.mean(),
                "baseline": baselines.mean(),
                "entropy": (sample_entropy * mask).sum() / mask.sum().clamp(min=1)}


def _sequences(ids: torch.Tensor, mask: torch.Tensor) -> list[list[int]]:
    """Rows of ``ids`` cut to their masked tokens; a trailing EOS stays (the reward decodes without specials)."""
    return [row[:n] for row, n in zip(ids.tolist(), mask.sum(dim=1).tolist())]
