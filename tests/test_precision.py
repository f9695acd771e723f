"""resolve_precision: explicit values, bad values, and "auto" per device, with only the hardware probes faked.

The probes are ``torch.cuda.is_bf16_supported`` (GPU) and ``torch.ops.mkldnn._is_mkldnn_bf16_supported`` (CPU);
everything else, including the device objects, is real.
"""
import pytest
import torch

from polymodal.precision import autocast_context, resolve_precision

DEVICES = [torch.device("cpu"), torch.device("cuda"), torch.device("cuda", 1)]


def fake_cpu_probe(monkeypatch: pytest.MonkeyPatch, fast_bf16: bool) -> list[int]:
    """Replace the oneDNN bf16 probe; the returned list counts its calls."""
    calls = []

    def probe() -> bool:
        calls.append(1)
        return fast_bf16

    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", probe)
    return calls


def fake_gpu_probe(monkeypatch: pytest.MonkeyPatch, native: bool, emulated: bool) -> None:
    """Replace ``torch.cuda.is_bf16_supported(including_emulation=True)`` with a GPU of the given kind.

    Real torch answers True for emulated bf16 too (pre-Ampere GPUs) unless ``including_emulation=False``.
    """

    def probe(including_emulation: bool = True) -> bool:
        return native or (including_emulation and emulated)

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", probe)


@pytest.mark.parametrize("device", DEVICES, ids=str)
@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
def test_explicit_precision_is_returned_unchanged(precision: str, device: torch.device, monkeypatch) -> None:
    """An explicit choice is never second-guessed, and the probes are not even asked."""
    calls = fake_cpu_probe(monkeypatch, fast_bf16=False)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: pytest.fail("GPU probe called"))
    assert resolve_precision(precision, device) == precision
    assert calls == []


@pytest.mark.parametrize("bad", ["float32", "FP32", "bfloat16", "half", "", "Auto", "amp"])
def test_bad_precision_names_the_choices(bad: str) -> None:
    with pytest.raises(ValueError) as info:
        resolve_precision(bad, torch.device("cpu"))
    assert str(info.value) == f"precision must be auto, fp32, bf16 or fp16, got {bad!r}"


def test_auto_on_cpu_with_fast_bf16_is_bf16(monkeypatch) -> None:
    calls = fake_cpu_probe(monkeypatch, fast_bf16=True)
    assert resolve_precision("auto", torch.device("cpu")) == "bf16"
    assert calls == [1]


def test_auto_on_cpu_without_fast_bf16_is_fp32(monkeypatch) -> None:
    calls = fake_cpu_probe(monkeypatch, fast_bf16=False)
    assert resolve_precision("auto", torch.device("cpu")) == "fp32"
    assert calls == [1]


def test_auto_on_cpu_without_onednn_is_fp32(monkeypatch) -> None:
    """No oneDNN at all: fp32, whatever the bf16 probe would say."""
    fake_cpu_probe(monkeypatch, fast_bf16=True)
    monkeypatch.setattr(torch.backends.mkldnn, "is_available", lambda: False)
    assert resolve_precision("auto", torch.device("cpu")) == "fp32"


@pytest.mark.parametrize("device", [torch.device("cuda"), torch.device("cuda", 1)], ids=str)
def test_auto_on_ampere_gpu_is_bf16(device: torch.device, monkeypatch) -> None:
    calls = fake_cpu_probe(monkeypatch, fast_bf16=False)  # the CPU's answer must not matter on a GPU
    fake_gpu_probe(monkeypatch, native=True, emulated=True)
    assert resolve_precision("auto", device) == "bf16"
    assert calls == []


def test_auto_on_gpu_without_bf16_is_fp16(monkeypatch) -> None:
    calls = fake_cpu_probe(monkeypatch, fast_bf16=True)  # the CPU's answer must not matter on a GPU
    fake_gpu_probe(monkeypatch, native=False, emulated=False)
    assert resolve_precision("auto", torch.device("cuda")) == "fp16"
    assert calls == []


def test_auto_on_gpu_that_only_emulates_bf16_is_fp16(monkeypatch) -> None:
    """The docstring promises bf16 only on Ampere+ GPUs; emulated bf16 is much slower than fp16."""
    fake_gpu_probe(monkeypatch, native=False, emulated=True)
    assert resolve_precision("auto", torch.device("cuda")) == "fp16"


def test_auto_on_this_machine_uses_the_real_probe() -> None:
    """Unfaked: whatever this CPU is, the answer is one of the two CPU outcomes and agrees with oneDNN."""
    fast = torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()
    assert resolve_precision("auto", torch.device("cpu")) == ("bf16" if fast else "fp32")


# ---------------------------------------------------------------- autocast_context

def test_fp32_context_does_not_autocast() -> None:
    a, b = torch.randn(4, 4), torch.randn(4, 4)
    with autocast_context("fp32", torch.device("cpu")):
        assert not torch.is_autocast_enabled("cpu")
        assert (a @ b).dtype == torch.float32


@pytest.mark.parametrize(("precision", "dtype"), [("bf16", torch.bfloat16), ("fp16", torch.float16)])
def test_low_precision_context_autocasts_matmuls(precision: str, dtype: torch.dtype) -> None:
    a, b = torch.randn(4, 4), torch.randn(4, 4)
    with autocast_context(precision, torch.device("cpu")):
        assert torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == dtype
        product = a @ b
    assert product.dtype == dtype
    torch.testing.assert_close(product.float(), a @ b, atol=0.1, rtol=0.05)
    assert not torch.is_autocast_enabled("cpu")
