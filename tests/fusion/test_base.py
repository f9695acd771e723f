"""The shared interface, checked on every kind the builder knows: shapes, masks, modality and option checks,
gradients reaching every parameter, and device/dtype moves."""
import dataclasses
from pathlib import Path

import pytest
import torch

import polymodal.fusion
from polymodal.encoders.base import EncoderOutput
from polymodal.fusion import FUSIONS, FusionOutput, build_fusion, fusion_options, pooled_features

from .helpers import DIM, DIMS, OPTIONS, TOKEN_LENGTH, TWO_MODALITY_KINDS, make_features, outputs_close, perturb_padding

KINDS = sorted(FUSIONS)
TOKEN_KINDS = [kind for kind in KINDS if FUSIONS[kind].uses_tokens]
POOLED_KINDS = [kind for kind in KINDS if not FUSIONS[kind].uses_tokens]
MANY_MODALITY_KINDS = [kind for kind in KINDS if kind not in TWO_MODALITY_KINDS]
THREE = {"image": 12, "text": 8, "audio": 6}


def build(kind: str, dims: dict[str, int] = DIMS) -> polymodal.fusion.Fusion:
    torch.manual_seed(0)
    return build_fusion(kind, dims, DIM, **OPTIONS.get(kind, {})).eval()


def test_builder_knows_every_family() -> None:
    assert set(FUSIONS) == {
        "concat", "sum", "gated_multiplicative", "gated_additive", "attention_weighted", "gated_unit", "tensor",
        "low_rank_tensor", "bilinear", "film", "cross_attention", "single_stream", "co_attention",
    }
    assert set(TOKEN_KINDS) == {"film", "cross_attention", "single_stream", "co_attention"}


@pytest.mark.parametrize("kind", KINDS)
def test_output_shapes(kind: str) -> None:
    fusion = build(kind)
    assert fusion.input_dims == DIMS and fusion.dim == DIM
    out = fusion(make_features())
    assert isinstance(out, FusionOutput)
    assert out.fused.shape == (3, DIM)
    if kind in TOKEN_LENGTH:
        assert out.tokens.shape == (3, TOKEN_LENGTH[kind], DIM)
        assert out.mask.shape == out.tokens.shape[:2] and out.mask.dtype == torch.bool
    else:
        assert out.tokens is None and out.mask is None
    assert torch.isfinite(out.fused).all()


@pytest.mark.parametrize("kind", MANY_MODALITY_KINDS)
def test_three_modalities(kind: str) -> None:
    out = build(kind, THREE)(make_features(THREE))
    assert out.fused.shape == (3, DIM)


@pytest.mark.parametrize("kind", TOKEN_KINDS)
def test_padded_tokens_do_not_change_the_output(kind: str) -> None:
    fusion = build(kind)
    features = make_features()
    out, perturbed = fusion(features), fusion(perturb_padding(features))
    outputs_close(out.fused, perturbed.fused)
    outputs_close(out.tokens, perturbed.tokens, out.mask)


@pytest.mark.parametrize("kind", TOKEN_KINDS)
def test_token_kinds_accept_missing_masks(kind: str) -> None:
    out = build(kind)(make_features(masked=False))
    assert out.mask is None and torch.isfinite(out.tokens).all()


@pytest.mark.parametrize("kind", POOLED_KINDS)
def test_pooled_kinds_ignore_tokens_and_run_on_cached_pooled_vectors(kind: str) -> None:
    fusion = build(kind)
    features = make_features()
    cached = pooled_features({name: output.pooled for name, output in features.items()})
    outputs_close(fusion(features).fused, fusion(cached).fused)


@pytest.mark.parametrize("kind", KINDS)
def test_modality_errors_name_the_modality(kind: str) -> None:
    fusion = build(kind)
    features = make_features()
    with pytest.raises(ValueError, match=r"missing modality \['text'\]"):
        fusion({"image": features["image"]})
    extra = {**features, "audio": features["text"]}
    with pytest.raises(ValueError, match=r"unexpected modality \['audio'\]"):
        fusion(extra)
    narrow = {**features, "text": EncoderOutput(tokens=torch.zeros(3, 4, 5), pooled=torch.zeros(3, 5))}
    with pytest.raises(ValueError, match="'text'.*configured 8"):
        fusion(narrow)


def test_unknown_kind_and_option_errors() -> None:
    with pytest.raises(ValueError, match="unknown fusion kind 'mystery'.*concat"):
        build_fusion("mystery", DIMS, DIM)
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['ranks'\]; it accepts \['rank'\]"):
        build_fusion("low_rank_tensor", DIMS, DIM, ranks=3)
    with pytest.raises(ValueError, match=r"\['hidden'\]; it accepts none"):
        build_fusion("sum", DIMS, DIM, hidden=3)
    assert fusion_options("film") == ["condition", "target"]
    assert build_fusion("tensor", DIMS, DIM, proj_dim=4).out.in_features == 5 * 5


@pytest.mark.parametrize(
    "kind, options, match",
    [
        ("film", {"condition": "audio"}, r"unknown \{'condition': 'audio'\}, without a role \['text'\]"),
        ("cross_attention", {"query": "image"}, "distinct"),
        ("cross_attention", {"pool": "max"}, "pool='max'"),
        ("cross_attention", {"pool": "slots"}, r"pool='slots' needs slots >= 1 .* slots=None"),
        ("cross_attention", {"pool": "slots", "slots": 0}, "slots=0"),
        ("cross_attention", {"slots": 4}, r"other pools none; got pool='mean', slots=4"),
        ("co_attention", {"combine": "sum"}, "combine='sum'"),
    ],
)
def test_invalid_role_and_choice_options(kind: str, options: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        build_fusion(kind, DIMS, DIM, **options)


def test_gated_families_need_two_modalities_and_streams_exactly_two() -> None:
    for kind in ("gated_multiplicative", "gated_additive", "gated_unit"):
        with pytest.raises(ValueError, match="at least two"):
            build_fusion(kind, {"image": 4}, DIM)
    with pytest.raises(ValueError, match="two streams"):
        build_fusion("co_attention", THREE, DIM)


def test_fusion_output_is_frozen() -> None:
    out = FusionOutput(fused=torch.zeros(1, 2))
    with pytest.raises(dataclasses.FrozenInstanceError):
        out.fused = torch.ones(1, 2)


@pytest.mark.parametrize("dims", [DIMS, THREE], ids=["two", "three"])
@pytest.mark.parametrize("kind", KINDS)
def test_every_parameter_gets_a_gradient(kind: str, dims: dict[str, int]) -> None:
    if kind in TWO_MODALITY_KINDS and dims is THREE:
        pytest.skip("built for exactly two modalities")
    fusion = build(kind, dims).train()
    fused = fusion(make_features(dims)).fused
    # A random readout: a plain sum of a LayerNorm output has zero gradient whatever the parameters.
    (fused * torch.randn(fused.shape, generator=torch.Generator().manual_seed(1))).sum().backward()
    for name, parameter in fusion.named_parameters():
        assert parameter.grad is not None, f"{kind}: {name} got no gradient"
        assert parameter.grad.abs().sum() > 0, f"{kind}: {name} got a zero gradient"


def hidden_tensors(module: torch.nn.Module) -> list[str]:
    """Tensors held as plain attributes (or inside lists/tuples/dicts) rather than as parameters or buffers:
    ``.to()``, ``state_dict`` and the optimizer would all miss them."""
    found = []
    for module_name, submodule in module.named_modules():
        for attribute, value in vars(submodule).items():
            if attribute in ("_parameters", "_buffers"):
                continue
            values = list(value.values()) if isinstance(value, dict) else value
            if any(isinstance(v, torch.Tensor) for v in (values if isinstance(values, list | tuple) else [values])):
                found.append(f"{module_name}.{attribute}")
    return found


@pytest.mark.parametrize("kind", KINDS)
def test_moves_with_to_and_holds_no_hidden_tensors(kind: str) -> None:
    fusion = build(kind)
    assert hidden_tensors(fusion) == []
    fusion = fusion.to(torch.float64)
    assert all(tensor.dtype == torch.float64 for tensor in [*fusion.parameters(), *fusion.buffers()])
    out = fusion(make_features(dtype=torch.float64))
    assert out.fused.dtype == torch.float64
    assert out.tokens is None or out.tokens.dtype == torch.float64
    # Every tensor created inside forward must follow the inputs' device: on "meta" a stray CPU tensor errors.
    meta = {
        name: EncoderOutput(o.tokens.to("meta"), o.pooled.to("meta"), None if o.mask is None else o.mask.to("meta"))
        for name, o in make_features().items()
    }
    assert build(kind).to("meta")(meta).fused.device.type == "meta"


def test_source_is_device_agnostic() -> None:
    for path in Path(polymodal.fusion.__file__).parent.glob("*.py"):
        text = path.read_text(encoding="utf-8")
        assert ".cuda(" not in text and '"cuda' not in text, path.name
