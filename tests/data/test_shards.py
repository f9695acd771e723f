"""Tar shards: round trip, exact once-per-epoch coverage across ranks x workers, deterministic shuffling,
sample-exact resume (in process and through a multi-worker DataLoader), clear errors, and the CLI action."""
from __future__ import annotations

import json
import subprocess
import sys
import tarfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from polymodal.data.pair_dataset import ImageCaptionCollator, ImageCaptionDataset
from polymodal.data.records import DataError, ImageTextSet
from polymodal.data.shapes import ShapesConfig, ShapesWorld
from polymodal.data.shards import CaptionPairStream, ShardedImageTextStream, ShardSample, write_shards
from polymodal.data.tokenizers import TextTokenizer
from polymodal.data.transforms import ImagePreprocess, image_transform


@pytest.fixture(scope="module")
def dataset() -> ImageTextSet:
    return ShapesWorld(ShapesConfig(image_size=32)).image_text_set("train", 100)


@pytest.fixture(scope="module")
def shard_dir(dataset: ImageTextSet, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("shards") / "train"
    # 10 shards over 2 ranks x 2 workers = 4 streams: 3, 3, 2 and 2 shards, so streams differ in size.
    write_shards(dataset, out, samples_per_shard=10, image_format="png", progress=False)
    return out


def _keep(batch):  # a module-level collate_fn, so worker processes can use it
    return batch


def _keys(samples: list[ShardSample]) -> list[str]:
    return [sample.record.key for sample in samples]


def _loader_batches(stream: ShardedImageTextStream, batch_size: int | None, stop: int | None = None) -> list:
    batches = []
    for batch in DataLoader(stream, batch_size=batch_size, num_workers=2, collate_fn=_keep,
                            drop_last=batch_size is not None):
        if stop is not None and len(batches) == stop:
            break
        batches.append(tuple(_keys(batch)) if batch_size else batch.record.key)
    return batches


def test_round_trip_keeps_records_and_pixels(dataset: ImageTextSet, shard_dir: Path) -> None:
    index = json.loads((shard_dir / "shards.json").read_text())
    assert [entry["name"] for entry in index["shards"]] == [f"{i:06d}.tar" for i in range(10)]
    assert index["total"] == 100 and index["class_names"] == dataset.class_names
    with tarfile.open(shard_dir / "000000.tar") as tar:
        assert tar.getnames()[:3] == ["000000.png", "000000.txt", "000000.json"]  # WebDataset: key.extension
    samples = list(ShardedImageTextStream(shard_dir, rank=0, world_size=1, shuffle=False))
    assert [sample.index for sample in samples] == list(range(100))
    for sample, record in zip(samples, dataset.records):
        assert sample.record == record
        assert np.array_equal(np.asarray(sample.image), np.asarray(dataset.load_image(record)))
    assert not [p for p in shard_dir.rglob("*") if p.name.endswith(".tmp")]


def test_writing_is_reproducible_and_refuses_a_used_folder(dataset: ImageTextSet, shard_dir: Path,
                                                          tmp_path: Path) -> None:
    again = write_shards(dataset, tmp_path / "again", samples_per_shard=10, image_format="png", progress=False)
    assert all(path.read_bytes() == (shard_dir / path.name).read_bytes() for path in again)
    with pytest.raises(ValueError, match=r"is not empty; pass --overwrite"):
        write_shards(dataset, tmp_path / "again", samples_per_shard=10, progress=False)


@pytest.mark.parametrize("even_ranks", [False, True])
def test_two_ranks_two_workers_cover_one_epoch_once(shard_dir: Path, even_ranks: bool) -> None:
    per_rank = [
        _loader_batches(ShardedImageTextStream(shard_dir, rank=rank, world_size=2, shuffle_buffer=16, seed=3,
                                               even_ranks=even_ranks), batch_size=None)
        for rank in range(2)
    ]
    keys = per_rank[0] + per_rank[1]
    assert max(Counter(keys).values()) == 1  # nothing duplicated, within or across ranks
    if even_ranks:  # the ranks yield equal counts; what is dropped is the uneven remainder only
        assert len(per_rank[0]) == len(per_rank[1]) and len(keys) >= 100 - 2 * 10
    else:
        assert len(keys) == 100


def test_rank_and_world_size_come_from_torchrun_environment(shard_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    explicit = ShardedImageTextStream(shard_dir, rank=1, world_size=2, even_ranks=False)
    assert _keys(list(ShardedImageTextStream(shard_dir, even_ranks=False))) == _keys(list(explicit))


def test_epochs_reshuffle_deterministically(shard_dir: Path) -> None:
    def order(seed: int, epoch: int) -> list[str]:
        return _keys(list(ShardedImageTextStream(shard_dir, rank=0, world_size=1, shuffle_buffer=16, seed=seed,
                                                 epoch=epoch)))

    first, second = order(0, 0), order(0, 1)
    assert first != second and sorted(first) == sorted(second) and len(set(first)) == 100
    assert order(0, 0) == first and order(1, 0) != first


def test_resume_in_process_continues_the_exact_order(shard_dir: Path) -> None:
    full = _keys(list(ShardedImageTextStream(shard_dir, rank=0, world_size=1, shuffle_buffer=16, epoch=2)))
    stream = ShardedImageTextStream(shard_dir, rank=0, world_size=1, shuffle_buffer=16, epoch=2)
    iterator = iter(stream)
    before = [next(iterator).record.key for _ in range(37)]
    resumed = ShardedImageTextStream(shard_dir, rank=0, world_size=1, shuffle_buffer=16)
    resumed.load_state_dict(stream.state_dict())
    assert resumed.epoch == 2
    assert before + _keys(list(resumed)) == full


def test_resume_does_not_open_consumed_shards(shard_dir: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    copy.mkdir()
    for path in shard_dir.iterdir():
        (copy / path.name).write_bytes(path.read_bytes())
    (copy / "000000.tar").write_bytes(b"garbage")  # in index order, consumed by the first 10 samples
    stream = ShardedImageTextStream(shard_dir, rank=0, world_size=1, shuffle=False)
    iterator = iter(stream)
    before = [next(iterator).index for _ in range(15)]
    resumed = ShardedImageTextStream(copy, rank=0, world_size=1, shuffle=False)
    resumed.load_state_dict(stream.state_dict())
    assert before + [sample.index for sample in resumed] == list(range(100))


@pytest.mark.parametrize("stop", [5, 11])  # worker 1 of each rank runs out after the 10th batch
def test_resume_through_a_two_worker_loader_repeats_and_skips_nothing(shard_dir: Path, stop: int) -> None:
    def stream(rank: int) -> ShardedImageTextStream:
        return ShardedImageTextStream(shard_dir, rank=rank, world_size=2, shuffle_buffer=16, seed=5, epoch=1)

    seen: list[str] = []
    for rank in range(2):
        full = _loader_batches(stream(rank), batch_size=4)
        assert len(full) == stream(rank).batches_per_epoch(4, num_workers=2)
        before = _loader_batches(stream(rank), batch_size=4, stop=stop)
        resumed = stream(rank)
        resumed.load_state_dict(stream(rank).loader_state(stop, batch_size=4, num_workers=2))
        after = _loader_batches(resumed, batch_size=4)
        assert Counter(before + after) == Counter(full)  # the same batches, each once
        seen += [key for batch in before + after for key in batch]
    assert max(Counter(seen).values()) == 1


def test_resume_refuses_a_changed_layout(shard_dir: Path) -> None:
    stream = ShardedImageTextStream(shard_dir, rank=0, world_size=2, shuffle_buffer=16)
    moved = ShardedImageTextStream(shard_dir, rank=0, world_size=1)
    moved.load_state_dict(stream.loader_state(2, batch_size=4, num_workers=2))
    with pytest.raises(ValueError, match="world_size 2 x 2 workers"):
        next(iter(moved))


def test_caption_pairs_draw_captions_as_the_map_style_dataset_does(dataset: ImageTextSet, shard_dir: Path) -> None:
    to_tensor = image_transform(ImagePreprocess(32))
    pairs = CaptionPairStream(shard_dir, rank=0, world_size=1, shuffle=False, epoch=3, seed=7, transform=to_tensor)
    reference = ImageCaptionDataset(dataset, to_tensor, seed=7)
    reference.set_epoch(3)
    collected = list(pairs)
    assert len(collected) == 100
    for index, (image, caption) in enumerate(collected):
        expected_image, expected_caption = reference[index]
        assert caption == expected_caption and torch.equal(image, expected_image)
    tokenizer = TextTokenizer.train_bpe([caption for _, caption in collected], vocab_size=64, context_length=8)
    batch = ImageCaptionCollator(tokenizer)(collected[:4])
    assert batch["image"].shape == (4, 3, 32, 32) and batch["input_ids"].shape == (4, 8)
    with pytest.raises(ValueError, match="needs a transform"):
        CaptionPairStream(shard_dir, rank=0, world_size=1)


def test_bad_shards_and_index_are_named(shard_dir: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "shards.json").write_text((shard_dir / "shards.json").read_text())
    for path in shard_dir.glob("*.tar"):
        (broken / path.name).write_bytes(path.read_bytes())
    (broken / "000003.tar").write_bytes(b"not a tar file" * 100)
    with tarfile.open(shard_dir / "000005.tar") as tar:
        fourth_sample = tar.getmembers()[9].offset
    data = (shard_dir / "000005.tar").read_bytes()
    (broken / "000005.tar").write_bytes(data[:fourth_sample])  # torn between samples: still a valid tar
    (broken / "000007.tar").write_bytes(data[: fourth_sample + 700])  # torn inside a member
    for name, reason in [("000003", "not a readable tar"), ("000005", "holds 3 samples"), ("000007", "not a readable")]:
        with pytest.raises(DataError, match=f"{name}.tar.*{reason}"):
            list(ShardedImageTextStream([broken / f"{name}.tar"], rank=0, world_size=1))
    with pytest.raises(FileNotFoundError, match="shards.json"):
        ShardedImageTextStream(tmp_path, rank=0, world_size=1)
    with pytest.raises(ValueError, match="10 shards cannot feed .* 12 streams"):
        ShardedImageTextStream(shard_dir, rank=0, world_size=6).batches_per_epoch(4, num_workers=2)


def test_cli_shard_action(tmp_path: Path) -> None:
    out = tmp_path / "shards"
    done = subprocess.run(
        [sys.executable, "-m", "polymodal.cli", "data", "shard", "shapes", "--size", "50", "--to", str(out),
         "--samples-per-shard", "20"],
        capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in out.glob("*.tar")) == ["000000.tar", "000001.tar", "000002.tar"]
    index = json.loads((out / "shards.json").read_text())
    assert [entry["samples"] for entry in index["shards"]] == [20, 20, 10] and index["total"] == 50
