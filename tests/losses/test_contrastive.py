"""Contrastive losses against open_clip (CLIP, SigLIP) and against per-sample loops of the paper formulas."""
from __future__ import annotations

import importlib.util
import math
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from polymodal.losses import (
    ClipLoss,
    InfoNCELoss,
    NTXentLoss,
    SigLipLoss,
    clip_loss,
    infonce_loss,
    nt_xent_loss,
    siglip_loss,
)

TOL = {"atol": 1e-5, "rtol": 1e-5}


@pytest.fixture(scope="module")
def open_clip_loss() -> ModuleType:
    """open_clip's ``loss.py``, loaded on its own.

    ``import open_clip`` pulls in timm and transformers (10-20 s here); ``loss.py`` needs only torch, so the
    file is loaded directly. find_spec locates the package without executing its ``__init__``.
    """
    spec = importlib.util.find_spec("open_clip")
    if spec is None or spec.origin is None:
        pytest.skip("open_clip_torch is not installed")
    loss_spec = importlib.util.spec_from_file_location("open_clip_loss", Path(spec.origin).parent / "loss.py")
    module = importlib.util.module_from_spec(loss_spec)
    loss_spec.loader.exec_module(module)
    return module


def _features(batch: int = 6, dim: int = 8, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Unit-norm (B, D) image and text features that require grad, as a CLIP model emits them."""
    generator = torch.Generator().manual_seed(seed)
    image = F.normalize(torch.randn(batch, dim, generator=generator), dim=-1)
    text = F.normalize(torch.randn(batch, dim, generator=generator), dim=-1)
    return image.requires_grad_(), text.requires_grad_()


def _loss_and_grads(loss_fn, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Run ``loss_fn`` on fresh leaf copies of ``inputs``; return the loss and d loss / d each input."""
    leaves = [x.detach().clone().requires_grad_() for x in inputs]
    loss = loss_fn(*leaves)
    return (loss.detach(), *torch.autograd.grad(loss, leaves))


# ---------------------------------------------------------------- CLIP

def test_clip_loss_matches_open_clip_value_and_gradients(open_clip_loss: ModuleType) -> None:
    image, text = _features()
    logit_scale = torch.tensor(math.log(1 / 0.07)).exp()
    reference = open_clip_loss.ClipLoss()
    ours = _loss_and_grads(clip_loss, image, text, logit_scale)
    theirs = _loss_and_grads(reference, image, text, logit_scale)
    for mine, peer in zip(ours, theirs):
        torch.testing.assert_close(mine, peer, **TOL)
    assert ours[0].item() > 0.1  # random features: a real loss, not a degenerate zero


@pytest.mark.parametrize("label_smoothing", [0.0, 0.1, 0.3])
def test_clip_loss_label_smoothing_matches_formula(label_smoothing: float) -> None:
    # open_clip's ClipLoss has no label smoothing, so the reference is the smoothed-target cross-entropy
    # written out: target (1 - eps) on the diagonal plus eps / B everywhere, against log-softmax.
    image, text = _features(batch=5, seed=1)
    logit_scale = torch.tensor(20.0)

    def reference(image: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        batch = image.shape[0]
        target = (1 - label_smoothing) * torch.eye(batch) + label_smoothing / batch
        logits = logit_scale * image @ text.T
        image_to_text = -(target * logits.log_softmax(dim=1)).sum(dim=1).mean()
        text_to_image = -(target * logits.T.log_softmax(dim=1)).sum(dim=1).mean()
        return (image_to_text + text_to_image) / 2

    ours = _loss_and_grads(lambda i, t: clip_loss(i, t, logit_scale, label_smoothing=label_smoothing), image, text)
    theirs = _loss_and_grads(reference, image, text)
    for mine, peer in zip(ours, theirs):
        torch.testing.assert_close(mine, peer, **TOL)


def test_label_smoothing_changes_the_loss() -> None:
    image, text = _features(seed=2)
    logit_scale = torch.tensor(30.0)
    assert not torch.isclose(clip_loss(image, text, logit_scale), clip_loss(image, text, logit_scale, 0.1))


def _clip_loop(image: torch.Tensor, text: torch.Tensor, logit_scale: float, label_smoothing: float = 0.0) -> float:
    """CLIP's loss written per row in float64: cross-entropy of the scaled cosine logits, image->text and
    text->image, with the smoothed target (1 - eps) on the partner plus eps / B on every column."""
    image, text = image.detach().double().numpy(), text.detach().double().numpy()
    batch = len(image)
    logits = logit_scale * image @ text.T  # row i: image i against every text

    def cross_entropy(rows: np.ndarray) -> float:
        total = 0.0
        for i, row in enumerate(rows):
            log_z = math.log(sum(math.exp(v) for v in row))
            for j, value in enumerate(row):
                target = (1 - label_smoothing) * (i == j) + label_smoothing / batch
                total -= target * (value - log_z)
        return total / batch

    return (cross_entropy(logits) + cross_entropy(logits.T)) / 2


def test_clip_loss_module_takes_model_output_keywords() -> None:
    """``ClipLoss()(**model_out)`` on a model's output dict equals the per-row cross-entropy formula."""
    image, text = _features(seed=3)
    model_out = {"image_features": image, "text_features": text, "logit_scale": torch.tensor(14.0)}
    for smoothing in (0.0, 0.2):
        loss = ClipLoss(label_smoothing=smoothing)(**model_out)
        assert loss.ndim == 0
        assert loss.item() == pytest.approx(_clip_loop(image, text, 14.0, smoothing), rel=1e-5)
    # Smoothing matters at this scale, so the two comparisons above are distinct checks.
    assert _clip_loop(image, text, 14.0, 0.2) != pytest.approx(_clip_loop(image, text, 14.0), rel=1e-3)
    with pytest.raises(ValueError, match="label_smoothing"):
        ClipLoss(label_smoothing=1.5)
    with pytest.raises(TypeError):
        ClipLoss()(**model_out, logit_bias=torch.tensor(-10.0))  # a SigLIP output is not a CLIP loss's input


def test_clip_loss_module_matches_open_clip(open_clip_loss: ModuleType) -> None:
    """The module (not only the function) gives open_clip's ClipLoss value and gradients."""
    image, text = _features(seed=11)
    logit_scale = torch.tensor(1 / 0.07)
    ours = _loss_and_grads(lambda i, t, s: ClipLoss()(image_features=i, text_features=t, logit_scale=s),
                           image, text, logit_scale)
    theirs = _loss_and_grads(open_clip_loss.ClipLoss(), image, text, logit_scale)
    for mine, peer in zip(ours, theirs):
        torch.testing.assert_close(mine, peer, **TOL)


def test_clip_loss_aligned_features_with_large_scale_is_near_zero() -> None:
    features = torch.eye(4, 16)  # orthonormal rows: each image matches only its own text
    assert clip_loss(features, features, torch.tensor(100.0)).item() < 1e-6
    # The same features with the texts shuffled must be heavily penalised, so the check above can fail.
    assert clip_loss(features, features.roll(1, dims=0), torch.tensor(100.0)).item() > 50


def test_clip_loss_batch_of_one_is_zero() -> None:
    image, text = _features(batch=1)
    assert clip_loss(image, text, torch.tensor(10.0)).item() == 0.0


def test_clip_loss_rejects_bad_shapes() -> None:
    image, text = _features(batch=4)
    with pytest.raises(ValueError, match=r"image_features and text_features .*\(4, 8\) and \(3, 8\)"):
        clip_loss(image, text[:3], torch.tensor(1.0))
    with pytest.raises(ValueError, match=r"image_features must have shape \(B, D\), got \(8,\)"):
        clip_loss(image[0], text[0], torch.tensor(1.0))
    with pytest.raises(ValueError, match="image_features and text_features"):
        clip_loss(image, text[:, :5], torch.tensor(1.0))
    with pytest.raises(ValueError, match=r"logit_scale must be a scalar.*\(2,\)"):
        clip_loss(image, text, torch.ones(2))


# ---------------------------------------------------------------- SigLIP

def test_siglip_loss_matches_open_clip_value_and_gradients(open_clip_loss: ModuleType) -> None:
    image, text = _features(seed=4)
    logit_scale, logit_bias = torch.tensor(10.0), torch.tensor(-10.0)
    ours = _loss_and_grads(siglip_loss, image, text, logit_scale, logit_bias)
    theirs = _loss_and_grads(open_clip_loss.SigLipLoss(), image, text, logit_scale, logit_bias)
    for mine, peer in zip(ours, theirs):
        torch.testing.assert_close(mine, peer, **TOL)


def _siglip_loop(image: torch.Tensor, text: torch.Tensor, logit_scale: float, logit_bias: float) -> float:
    """SigLIP per pair in float64: sum of -log sigmoid(label * (scale * <image_i, text_j> + bias)), / B."""
    logits = (logit_scale * image @ text.T + logit_bias).detach().double().numpy()
    batch = len(logits)
    total = 0.0
    for i in range(batch):
        for j in range(batch):
            label = 1.0 if i == j else -1.0
            total += math.log1p(math.exp(-label * logits[i, j]))  # -log sigmoid(label * logit)
    return total / batch


def test_siglip_loss_matches_pairwise_formula() -> None:
    image, text = _features(batch=3, seed=5)
    expected = _siglip_loop(image, text, 5.0, -2.0)
    assert siglip_loss(image, text, 5.0, -2.0).item() == pytest.approx(expected, rel=1e-5)


def test_siglip_module_and_shape_errors() -> None:
    """``SigLipLoss()(**model_out)`` on a SigLIP output dict (with ``logit_bias``) equals the pairwise formula."""
    image, text = _features(seed=6)
    model_out = {"image_features": image, "text_features": text, "logit_scale": 10.0, "logit_bias": -10.0}
    expected = _siglip_loop(image, text, 10.0, -10.0)
    assert SigLipLoss()(**model_out).item() == pytest.approx(expected, rel=1e-5)
    tensor_out = dict(model_out, logit_scale=torch.tensor(10.0), logit_bias=torch.tensor(-10.0))
    assert SigLipLoss()(**tensor_out).item() == pytest.approx(expected, rel=1e-5)
    # The bias is not ignored: another bias gives another value.
    assert SigLipLoss()(**dict(model_out, logit_bias=0.0)).item() == pytest.approx(
        _siglip_loop(image, text, 10.0, 0.0), rel=1e-5
    )
    assert _siglip_loop(image, text, 10.0, 0.0) != pytest.approx(expected, rel=1e-3)
    with pytest.raises(TypeError):
        SigLipLoss()(image_features=image, text_features=text, logit_scale=10.0)  # a CLIP output lacks the bias
    with pytest.raises(ValueError, match="logit_bias must be a scalar"):
        siglip_loss(image, text, 10.0, torch.zeros(6))
    with pytest.raises(ValueError, match="image_features and text_features"):
        siglip_loss(image, text[:2], 10.0, -10.0)


def test_siglip_module_matches_open_clip(open_clip_loss: ModuleType) -> None:
    """The module gives open_clip's SigLipLoss value and gradients, scale and bias included."""
    image, text = _features(seed=12)
    logit_scale, logit_bias = torch.tensor(8.0), torch.tensor(-6.0)
    ours = _loss_and_grads(
        lambda i, t, s, b: SigLipLoss()(image_features=i, text_features=t, logit_scale=s, logit_bias=b),
        image, text, logit_scale, logit_bias,
    )
    theirs = _loss_and_grads(open_clip_loss.SigLipLoss(), image, text, logit_scale, logit_bias)
    for mine, peer in zip(ours, theirs):
        torch.testing.assert_close(mine, peer, **TOL)


# ---------------------------------------------------------------- NT-Xent

def _nt_xent_loop(z_i: np.ndarray, z_j: np.ndarray, temperature: float) -> float:
    """SimCLR's l(i, j) = -log(exp(sim(i,j)/t) / sum_{k != i} exp(sim(i,k)/t)), averaged over all 2N anchors."""
    views = np.concatenate([z_i, z_j]).astype(np.float64)
    num_views = len(views)
    half = num_views // 2

    def cosine(a: np.ndarray, b: np.ndarray) -> float:
        return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))

    total = 0.0
    for anchor in range(num_views):
        positive = (anchor + half) % num_views
        numerator = math.exp(cosine(views[anchor], views[positive]) / temperature)
        denominator = sum(
            math.exp(cosine(views[anchor], views[k]) / temperature) for k in range(num_views) if k != anchor
        )
        total += -math.log(numerator / denominator)
    return total / num_views


@pytest.mark.parametrize("temperature", [0.1, 0.5, 1.0])
def test_nt_xent_matches_loop(temperature: float) -> None:
    generator = torch.Generator().manual_seed(7)
    z_i, z_j = torch.randn(5, 6, generator=generator), torch.randn(5, 6, generator=generator)
    expected = _nt_xent_loop(z_i.numpy(), z_j.numpy(), temperature)
    assert nt_xent_loss(z_i, z_j, temperature).item() == pytest.approx(expected, rel=1e-5)
    assert NTXentLoss(temperature)(z_i, z_j).item() == pytest.approx(expected, rel=1e-5)


def test_nt_xent_is_scale_invariant_and_gradients_are_finite() -> None:
    # The self-similarity is masked with -inf; gradcheck confirms that trick leaves correct, finite gradients.
    generator = torch.Generator().manual_seed(8)
    z_i = torch.randn(3, 4, generator=generator, dtype=torch.float64, requires_grad=True)
    z_j = torch.randn(3, 4, generator=generator, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: nt_xent_loss(a, b, 0.5), (z_i, z_j))
    torch.testing.assert_close(nt_xent_loss(3 * z_i, z_j, 0.5), nt_xent_loss(z_i, z_j, 0.5))


def test_nt_xent_single_pair_and_errors() -> None:
    # With N = 1 the only other view is the positive, so the softmax is certain.
    assert nt_xent_loss(torch.randn(1, 4), torch.randn(1, 4), 0.1).item() == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError, match=r"z_i and z_j .*\(4, 3\) and \(5, 3\)"):
        nt_xent_loss(torch.randn(4, 3), torch.randn(5, 3), 0.1)
    with pytest.raises(ValueError, match="temperature must be > 0"):
        NTXentLoss(temperature=0.0)


# ---------------------------------------------------------------- InfoNCE with explicit negatives

def _infonce_loop(query: torch.Tensor, positive: torch.Tensor, negatives: list[torch.Tensor], t: float) -> float:
    """negatives[b] is the (K, D) negative set of query b."""
    total = 0.0
    for b in range(len(query)):
        candidates = [positive[b], *negatives[b]]
        logits = [F.cosine_similarity(query[b], c, dim=0).item() / t for c in candidates]
        total += -logits[0] + math.log(sum(math.exp(x) for x in logits))
    return total / len(query)


def test_infonce_per_query_negatives_match_loop() -> None:
    generator = torch.Generator().manual_seed(9)
    query, positive = torch.randn(4, 5, generator=generator), torch.randn(4, 5, generator=generator)
    negatives = torch.randn(4, 3, 5, generator=generator)
    expected = _infonce_loop(query, positive, list(negatives), 0.2)
    assert infonce_loss(query, positive, negatives, 0.2).item() == pytest.approx(expected, rel=1e-5)
    assert InfoNCELoss(0.2)(query, positive, negatives).item() == pytest.approx(expected, rel=1e-5)


def test_infonce_shared_negatives_match_loop() -> None:
    generator = torch.Generator().manual_seed(10)
    # M == B on purpose: the (M, D) form must not be mistaken for anything per-query.
    query, positive = torch.randn(4, 5, generator=generator), torch.randn(4, 5, generator=generator)
    shared = torch.randn(4, 5, generator=generator)
    expected = _infonce_loop(query, positive, [shared] * 4, 0.5)
    assert infonce_loss(query, positive, shared, 0.5).item() == pytest.approx(expected, rel=1e-5)


def test_infonce_batch_of_one_and_errors() -> None:
    generator = torch.Generator().manual_seed(11)  # unseeded draws made a near-zero loss fail rel=1e-5 now and then
    query, positive = torch.randn(1, 3, generator=generator), torch.randn(1, 3, generator=generator)
    negatives = torch.randn(1, 2, 3, generator=generator)
    expected = _infonce_loop(query, positive, list(negatives), 0.1)
    assert infonce_loss(query, positive, negatives, 0.1).item() == pytest.approx(expected, rel=1e-5, abs=1e-6)
    with pytest.raises(ValueError, match=r"negatives must have shape .*got \(2, 2, 3\)"):
        infonce_loss(query, positive, torch.randn(2, 2, 3), 0.1)
    with pytest.raises(ValueError, match=r"negatives must have shape .*got \(7, 4\)"):
        infonce_loss(query, positive, torch.randn(7, 4), 0.1)
    with pytest.raises(ValueError, match=r"query and positive .*\(1, 3\) and \(2, 3\)"):
        infonce_loss(query, torch.randn(2, 3), negatives, 0.1)
    with pytest.raises(ValueError, match="temperature must be > 0"):
        infonce_loss(query, positive, negatives, -1.0)
