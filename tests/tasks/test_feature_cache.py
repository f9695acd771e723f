"""FeatureCache: what the key depends on, and that get_or_compute computes once and writes atomically."""
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

import polymodal.tasks.embed as embed
from polymodal.data.transforms import ImagePreprocess
from polymodal.tasks.embed import FeatureCache, feature_cache_dir

TOWER = {"type": "vit", "width": 64, "layers": 2, "patch_size": 8}
PREPROCESS = {"image_size": 32, "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}
KEYS = ["a.png", "b.png", "c.png"]
CAPTIONS = ["a red square", "a blue circle", "a green star"]


def base_key(**change) -> str:
    parts = {"tower": TOWER, "preprocess": PREPROCESS, "name": "shapes", "keys": KEYS, "captions": CAPTIONS}
    parts.update(change)
    return FeatureCache.key("image", parts["tower"], parts["preprocess"], parts["name"], parts["keys"],
                            parts["captions"])


def test_key_is_a_stable_20_hex_digest() -> None:
    key = base_key()
    assert len(key) == 20 and all(ch in "0123456789abcdef" for ch in key)
    assert base_key() == key  # same call, same key
    assert FeatureCache.key("x", 1) == FeatureCache.key("x", 1)


@pytest.mark.parametrize(
    "change",
    [
        {"tower": dict(TOWER, width=128)},  # a config value
        {"tower": dict(TOWER, pool="mean")},  # a config entry added
        {"preprocess": dict(PREPROCESS, image_size=64)},  # preprocessing
        {"preprocess": dict(PREPROCESS, mean=[0.48, 0.46, 0.41])},
        {"name": "shapes-v2"},
        {"keys": ["a.png", "b.png", "d.png"]},  # one record key
        {"keys": KEYS[:2]},  # a record dropped
        {"keys": ["b.png", "a.png", "c.png"]},  # order of records
        {"captions": ["a red square", "a blue circle", "a green star."]},  # one caption, one character
        {"captions": list(reversed(CAPTIONS))},  # order of captions
    ],
    ids=lambda change: next(iter(change)),
)
def test_key_changes_when_any_part_changes(change: dict) -> None:
    assert base_key(**change) != base_key()


def test_key_separates_kinds_and_values() -> None:
    assert FeatureCache.key("image", TOWER) != FeatureCache.key("text", TOWER)
    assert FeatureCache.key("x", 1) != FeatureCache.key("x", "1")
    assert FeatureCache.key("x", 1) != FeatureCache.key("x", 1.5)
    assert FeatureCache.key("ab", "c") != FeatureCache.key("a", "bc")  # no ambiguous concatenation


def test_key_covers_the_image_preprocess_object() -> None:
    """tower_features passes the model's ``ImagePreprocess`` (a dataclass) straight into the key."""
    preprocess = ImagePreprocess(224, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    assert FeatureCache.key(preprocess) == FeatureCache.key(ImagePreprocess(224, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)))
    assert FeatureCache.key(preprocess) != FeatureCache.key(ImagePreprocess(256, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)))
    assert FeatureCache.key(preprocess) != FeatureCache.key(ImagePreprocess(224))  # CLIP mean/std


def test_key_ignores_dict_insertion_order() -> None:
    reordered_tower = dict(reversed(list(TOWER.items())))
    reordered_preprocess = {"std": PREPROCESS["std"], "image_size": 32, "mean": PREPROCESS["mean"]}
    assert list(reordered_tower) != list(TOWER)
    assert base_key(tower=reordered_tower, preprocess=reordered_preprocess) == base_key()
    nested = {"outer": {"b": 1, "a": {"y": 2, "x": 3}}}
    assert FeatureCache.key(nested) == FeatureCache.key({"outer": {"a": {"x": 3, "y": 2}, "b": 1}})


def test_key_is_the_same_in_another_process_with_another_hash_seed() -> None:
    """No dependence on Python's per-process string hashing: a fresh interpreter gets the same key."""
    code = (
        "from polymodal.tasks.embed import FeatureCache;"
        f"print(FeatureCache.key('image', {TOWER!r}, {PREPROCESS!r}, 'shapes', {KEYS!r}, {CAPTIONS!r}))"
    )
    env = dict(os.environ, PYTHONHASHSEED="12345")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == base_key()


def test_get_or_compute_computes_once_across_instances(tmp_path) -> None:
    calls = []
    features = torch.arange(12, dtype=torch.float32).reshape(3, 4)

    def compute() -> torch.Tensor:
        calls.append(1)
        return features.clone()

    key = FeatureCache.key("image", TOWER, KEYS)
    first = FeatureCache(tmp_path / "features").get_or_compute(key, compute)
    second = FeatureCache(tmp_path / "features").get_or_compute(key, compute)  # a new instance, same folder
    third = FeatureCache(tmp_path / "features").get_or_compute(key, compute)
    assert len(calls) == 1
    for result in (first, second, third):
        assert result.dtype == torch.float32 and torch.equal(result, features)
    # On disk: exactly one file, named by the key, holding the features; no temporary file left behind.
    assert sorted(p.name for p in (tmp_path / "features").iterdir()) == [f"{key}.safetensors"]
    assert torch.equal(load_file(str(tmp_path / "features" / f"{key}.safetensors"))["features"], features)


def test_file_is_written_under_a_temporary_name_then_renamed(tmp_path, monkeypatch) -> None:
    """Atomic write: safetensors writes a temporary file in the same folder while the final name does not
    exist yet, so a concurrent reader never sees a half-written file. (A spy around the real save_file.)"""
    final = tmp_path / "features" / "k.safetensors"
    writes = []
    real_save_file = embed.save_file

    def spy(tensors, filename, *args, **kwargs):
        writes.append((filename, final.exists()))
        return real_save_file(tensors, filename, *args, **kwargs)

    monkeypatch.setattr(embed, "save_file", spy)
    FeatureCache(tmp_path / "features").get_or_compute("k", lambda: torch.ones(2, 3))
    [(written, final_existed)] = writes
    assert os.path.dirname(written) == str(final.parent) and os.path.basename(written) != final.name
    assert not final_existed
    assert sorted(p.name for p in final.parent.iterdir()) == ["k.safetensors"]
    assert torch.equal(load_file(str(final))["features"], torch.ones(2, 3))


def test_another_key_computes_again(tmp_path) -> None:
    cache = FeatureCache(tmp_path)
    calls = []

    def compute(value: float):
        def run() -> torch.Tensor:
            calls.append(value)
            return torch.full((2, 2), value)
        return run

    a = cache.get_or_compute(FeatureCache.key("a"), compute(1.0))
    b = cache.get_or_compute(FeatureCache.key("b"), compute(2.0))
    a_again = cache.get_or_compute(FeatureCache.key("a"), compute(3.0))
    assert calls == [1.0, 2.0]
    assert torch.equal(a, torch.ones(2, 2)) and torch.equal(b, torch.full((2, 2), 2.0))
    assert torch.equal(a_again, torch.ones(2, 2))  # the stored value, not the new compute's 3.0
    assert len(list(tmp_path.iterdir())) == 2


def test_non_contiguous_features_round_trip(tmp_path) -> None:
    transposed = torch.arange(6, dtype=torch.float32).reshape(2, 3).T  # (3, 2), not contiguous
    assert not transposed.is_contiguous()
    first = FeatureCache(tmp_path).get_or_compute("k", lambda: transposed)
    second = FeatureCache(tmp_path).get_or_compute("k", lambda: pytest.fail("recomputed"))
    assert torch.equal(first, transposed) and torch.equal(second, transposed)


def test_failed_compute_leaves_nothing_and_is_retried(tmp_path) -> None:
    def broken() -> torch.Tensor:
        raise RuntimeError("tower crashed")

    cache = FeatureCache(tmp_path / "features")
    with pytest.raises(RuntimeError, match="tower crashed"):
        cache.get_or_compute("k", broken)
    leftovers = list((tmp_path / "features").iterdir()) if (tmp_path / "features").exists() else []
    assert leftovers == []
    assert torch.equal(cache.get_or_compute("k", lambda: torch.ones(1)), torch.ones(1))


def test_cache_dir_follows_polymodal_cache(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("POLYMODAL_CACHE", str(tmp_path))
    assert feature_cache_dir() == tmp_path / "features"
    monkeypatch.delenv("POLYMODAL_CACHE")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert feature_cache_dir() == tmp_path / "home" / ".cache" / "polymodal" / "features"
