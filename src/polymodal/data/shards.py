"""Tar shards in the WebDataset layout: a writer, and a streaming reader for training that scales out.

Layout (readable by the ``webdataset`` package and any tar tool)::

    000000.tar   000000.png  000000.txt  000000.json  000001.png ...
    000001.tar   ...
    shards.json  {"shards": [{"name": "000000.tar", "samples": 1000}, ...], "total": ..., "class_names": ...}

A sample is ``KEY.jpg|png``, ``KEY.txt`` (first caption) and ``KEY.json`` (``key``: the original record key,
``index``, ``captions``, ``group``, ``label``); ``KEY`` is the zero-padded sample index.

Why :mod:`tarfile` and not the ``webdataset`` package: rank/worker splitting and a shuffle buffer are a few
lines each, but webdataset has no resumable position, the one part that needs care. Here the buffer's order is
computed from the index's sample counts and a seeded RNG alone, so a resumed stream replays that order without
reading what it skips (fully consumed shards are never opened) and continues with exactly the next sample.
About 100 lines of reader keep that exact and testable, with no new dependency.

Splitting: each epoch the shard order is shuffled from ``(seed, epoch)``, and shard ``i`` of it feeds stream
``i mod (world_size * num_workers)``, stream ``worker * world_size + rank``; streams differ by at most one
shard, and ranks get extra shards evenly. Fewer shards than streams raises a :class:`ValueError` (an idle
stream would silently shrink a rank's data). With ``even_ranks`` (default) worker ``w`` of every rank stops at
the smallest count any rank's worker ``w`` has, so all ranks yield the same number of batches and DDP never
waits on a rank that ran dry; this drops at most one shard's worth per stream per epoch (nothing when every
shard is full and the shard count divides by ``world_size * num_workers``). ``even_ranks=False`` yields every
sample exactly once per epoch.

Resume granularity: one sample per ``(rank, worker)`` stream, within the epoch being resumed.
:meth:`ShardedImageTextStream.loader_state` turns "a DataLoader delivered N batches on every rank" into
per-stream counts by replaying the DataLoader's round robin over workers (``in_order=True``, the default). The
resumed run sees the same batches, none repeated or skipped, though the first ones may come from the workers
in another order. A position holds only for the same ``world_size`` and ``num_workers``; a changed layout
raises, and such a run should restart at the next epoch. Avoid ``persistent_workers``: workers keep the copy
of the stream they started with, so :meth:`~ShardedImageTextStream.set_epoch` would not reach them.
"""
from __future__ import annotations

import io
import json
import random
import tarfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch.distributed as dist
from PIL import Image
from torch.utils.data import IterableDataset, get_worker_info
from tqdm import tqdm

from polymodal.data.export import PROGRESS_MIN_IMAGES
from polymodal.data.records import DataError, ImageTextRecord, ImageTextSet, caption_choice
from polymodal.distributed import DistInfo, get_rank, get_world_size
from polymodal.io import atomic_path, output_directory, read_json

INDEX_NAME = "shards.json"
IMAGE_FORMATS = {"jpg": "JPEG", "png": "PNG"}
# JPEG at 95 is visually lossless and several times smaller than PNG on photos; use png for exact pixels.
JPEG_QUALITY = 95


def _add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)  # mtime stays 0, so the same set always gives byte-identical shards
    tar.addfile(info, io.BytesIO(data))


def write_shards(
    dataset: ImageTextSet,
    out_dir: str | Path,
    samples_per_shard: int = 1000,
    image_format: str = "jpg",
    progress: bool = True,
    overwrite: bool = False,
) -> list[Path]:
    """Write ``dataset`` as tar shards ``000000.tar``, ``000001.tar``, ... and ``shards.json``; returns them.

    Every shard is written to a temporary name and renamed, and the index is written last, so a crash leaves
    either no index or an index whose shards are all complete. ``overwrite`` allows a non-empty ``out_dir``:
    its old index is removed first, and old shards beyond the new count stay on disk but unlisted.
    """
    if samples_per_shard < 1:
        raise ValueError(f"samples_per_shard must be at least 1, got {samples_per_shard}")
    if image_format not in IMAGE_FORMATS:
        raise ValueError(f"image_format must be one of {sorted(IMAGE_FORMATS)}, got {image_format!r}")
    if len(dataset) == 0:
        raise ValueError(f"{dataset.name}: no records to shard")
    out = output_directory(out_dir, "--to", empty=not overwrite)
    (out / INDEX_NAME).unlink(missing_ok=True)
    digits = max(6, len(str(len(dataset) - 1)))
    options = {"quality": JPEG_QUALITY} if image_format == "jpg" else {}
    bar = tqdm(total=len(dataset), desc=f"sharding {dataset.name}", unit="img",
               disable=not progress or len(dataset) < PROGRESS_MIN_IMAGES)
    paths: list[Path] = []
    entries: list[dict[str, Any]] = []
    for start in range(0, len(dataset), samples_per_shard):
        path = out / f"{len(paths):06d}.tar"
        chunk = range(start, min(start + samples_per_shard, len(dataset)))
        with atomic_path(path) as temporary, tarfile.open(temporary, "w") as tar:
            for index in chunk:
                record = dataset.records[index]
                image = io.BytesIO()
                dataset.load_image(record).convert("RGB").save(image, format=IMAGE_FORMATS[image_format], **options)
                meta = {"key": record.key, "index": index, "captions": list(record.captions), "group": record.group,
                        "label": record.label}
                key = f"{index:0{digits}d}"
                _add_member(tar, f"{key}.{image_format}", image.getvalue())
                _add_member(tar, f"{key}.txt", (record.captions[0] if record.captions else "").encode("utf-8"))
                _add_member(tar, f"{key}.json", json.dumps(meta, ensure_ascii=False).encode("utf-8"))
                bar.update()
        paths.append(path)
        entries.append({"name": path.name, "samples": len(chunk)})
    bar.close()
    listing = {"format": "webdataset", "name": dataset.name, "image_format": image_format, "total": len(dataset),
               "class_names": dataset.class_names, "shards": entries}
    with atomic_path(out / INDEX_NAME) as temporary:
        temporary.write_text(json.dumps(listing, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    return paths


def _read_index(folder: Path) -> dict[str, int]:
    """Shard name -> sample count, from ``folder/shards.json``; errors name the index file."""
    path = folder / INDEX_NAME
    index = read_json(path, what="shard index")
    try:
        return {str(entry["name"]): int(entry["samples"]) for entry in index["shards"]}
    except (TypeError, KeyError, ValueError):
        raise DataError(path, None, "not a shard index: expected 'shards': [{'name': ..., 'samples': ...}]") from None


def _shard_list(source: str | Path | Sequence[str | Path]) -> tuple[list[Path], list[int]]:
    """Shard paths and their sample counts, from a shard directory (its index order) or a list of shards.

    A listed shard's count comes from the ``shards.json`` beside it, so any subset of written shards works.
    """
    if isinstance(source, (str, Path)):
        paths = [Path(source) / name for name in _read_index(Path(source))]
    else:
        paths = [Path(path) for path in source]
    if not paths:
        raise ValueError(f"no shards in {source}")
    indexes: dict[Path, dict[str, int]] = {}
    counts = []
    for path in paths:
        if path.parent not in indexes:
            indexes[path.parent] = _read_index(path.parent)
        if path.name not in indexes[path.parent]:
            raise DataError(path.parent / INDEX_NAME, None, f"does not list shard {path.name}")
        if not path.is_file():
            raise FileNotFoundError(f"shard not found: {path}")
        counts.append(indexes[path.parent][path.name])
    return paths, counts


def read_captions(source: str | Path | Sequence[str | Path]) -> Iterator[str]:
    """Every caption in the shards, in index order, from the ``.json`` members alone (no image is decoded):
    what a tokenizer trains on before a streamed run."""
    for path in _shard_list(source)[0]:
        try:
            with tarfile.open(path, "r|") as tar:
                for member in tar:
                    if member.isfile() and member.name.endswith(".json"):
                        yield from json.loads(tar.extractfile(member).read())["captions"]
        except (tarfile.TarError, EOFError, ValueError, KeyError) as error:  # a torn tar, bad JSON, no captions
            raise DataError(path, None, f"cannot read captions ({error!r})") from None


@dataclass(frozen=True)
class ShardSample:
    """One sample read from a shard: the record as written, its image, and its index in the written set."""

    record: ImageTextRecord
    image: Any  # an RGB PIL image, or whatever the stream's ``transform`` made of it
    index: int


class _BufferOrder:
    """Shuffle-buffer order over read positions ``0 .. total-1``, from the RNG alone (no data is read).

    Reading position ``p`` puts it in a buffer of ``size``; each step yields a random buffered position. Since
    the order needs only counts, a resumed stream replays it cheaply and learns which positions it still needs.
    """

    def __init__(self, total: int, size: int, rng: random.Random) -> None:
        self.total, self.size, self.rng = total, max(1, size), rng
        self.cursor = 0  # next position to read
        self.buffer: list[int] = []

    def __next__(self) -> int:
        while len(self.buffer) < self.size and self.cursor < self.total:
            self.buffer.append(self.cursor)
            self.cursor += 1
        j = self.rng.randrange(len(self.buffer))
        self.buffer[j], self.buffer[-1] = self.buffer[-1], self.buffer[j]
        return self.buffer.pop()


def _tar_samples(path: Path) -> Iterator[dict[str, Any]]:
    """Consecutive members sharing a key (the name up to its first dot) form one ``{extension: bytes}`` sample."""
    sample: dict[str, Any] = {}
    try:
        with tarfile.open(path, "r|") as tar:  # stream mode: one sequential read, as from a remote store
            for member in tar:
                if not member.isfile():
                    continue
                key, _, extension = member.name.rsplit("/", 1)[-1].partition(".")
                if sample and sample["__key__"] != key:
                    yield sample
                    sample = {}
                sample.setdefault("__key__", key)
                sample[extension] = tar.extractfile(member).read()
    except (tarfile.TarError, EOFError) as error:
        raise DataError(path, None, f"not a readable tar shard ({error})") from None
    if sample:
        yield sample


def _rank_and_world(rank: int | None, world_size: int | None) -> tuple[int, int]:
    """Explicit values, else the initialised process group, else torchrun's environment, else one process."""
    if rank is not None and world_size is not None:
        return rank, world_size
    if dist.is_available() and dist.is_initialized():
        return get_rank(), get_world_size()
    # DataLoader workers started by spawn have no process group, but they inherit torchrun's environment.
    info = DistInfo.from_env("cpu")  # "cpu": only the rank is wanted; probing CUDA in a worker is not safe
    return info.rank, info.world_size


def _batches(samples: int, batch_size: int, drop_last: bool) -> int:
    return samples // batch_size if drop_last else -(-samples // batch_size)


class ShardedImageTextStream(IterableDataset):
    """Stream :class:`ShardSample` s from tar shards, split across ranks and DataLoader workers (module notes).

    Args:
        source: a directory written by :func:`write_shards`, or a list of its shard files.
        rank, world_size: this process's place; both ``None`` reads them when iterated (``torch.distributed``
            if initialised, else torchrun's ``RANK`` / ``WORLD_SIZE``, else a single process).
        shuffle_buffer: samples held for shuffling; more mixes shards better and costs memory (raw bytes).
        seed, epoch: the shard order and the buffer's choices derive from these alone.
        transform: applied to each RGB PIL image (e.g. :func:`polymodal.data.transforms.image_transform`).
        shuffle: ``False`` reads shards in index order and samples in shard order (evaluation).
        even_ranks: every rank yields the same number of samples per worker (see the module notes).
    """

    def __init__(
        self,
        source: str | Path | Sequence[str | Path],
        rank: int | None = None,
        world_size: int | None = None,
        shuffle_buffer: int = 1000,
        seed: int = 0,
        epoch: int = 0,
        transform: Callable[[Image.Image], Any] | None = None,
        shuffle: bool = True,
        even_ranks: bool = True,
    ) -> None:
        if (rank is None) != (world_size is None):
            raise ValueError("pass both rank and world_size, or neither to read them from torch.distributed")
        if rank is not None and not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, world_size={world_size}), got {rank}")
        self.shards, self.counts = _shard_list(source)
        self.rank, self.world_size = rank, world_size
        self.shuffle_buffer, self.seed, self.transform = shuffle_buffer, seed, transform
        self.shuffle, self.even_ranks = shuffle, even_ranks
        self.set_epoch(epoch)

    def set_epoch(self, epoch: int) -> None:
        """Start ``epoch`` from its beginning (this forgets a loaded resume position: load it afterwards)."""
        self.epoch = epoch
        self._resume: dict[str, Any] | None = None
        self._yielded: dict[tuple[int, int], int] = {}

    def stream_shards(self, world_size: int, num_workers: int) -> list[list[list[int]]]:
        """Shard indices feeding ``[rank][worker]`` this epoch."""
        order = list(range(len(self.shards)))
        if self.shuffle:
            random.Random(f"shards:{self.seed}:{self.epoch}").shuffle(order)
        streams = world_size * num_workers
        if len(order) < streams:
            raise ValueError(
                f"{len(order)} shards cannot feed world_size {world_size} x {num_workers} DataLoader workers = "
                f"{streams} streams: write more shards (smaller samples_per_shard) or use fewer workers"
            )
        return [[order[w * world_size + r :: streams] for w in range(num_workers)] for r in range(world_size)]

    def stream_sizes(self, world_size: int, num_workers: int) -> list[list[int]]:
        """Samples each ``[rank][worker]`` stream yields this epoch (after ``even_ranks`` evening)."""
        sizes = [[sum(self.counts[s] for s in shards) for shards in rank]
                 for rank in self.stream_shards(world_size, num_workers)]
        if self.even_ranks:
            smallest = [min(rank[w] for rank in sizes) for w in range(num_workers)]
            sizes = [list(smallest) for _ in sizes]
        return sizes

    def batches_per_epoch(self, batch_size: int, num_workers: int, drop_last: bool = True) -> int:
        """Batches a DataLoader over this stream delivers on this rank per epoch (workers batch separately)."""
        rank, world_size = _rank_and_world(self.rank, self.world_size)
        sizes = self.stream_sizes(world_size, max(1, num_workers))[rank]
        return sum(_batches(n, batch_size, drop_last) for n in sizes)

    def state_dict(self) -> dict[str, Any]:
        """The position of in-process iteration (``num_workers=0``); with workers use :meth:`loader_state`."""
        if self._resume is not None and not self._yielded:
            return dict(self._resume)  # loaded but not yet iterated: the position is still the loaded one
        _, world_size = _rank_and_world(self.rank, self.world_size)
        return {"epoch": self.epoch, "seed": self.seed, "world_size": world_size, "num_workers": 1,
                "consumed": {f"{r}/{w}": n for (r, w), n in self._yielded.items()}}

    def loader_state(self, batches: int, batch_size: int, num_workers: int, drop_last: bool = True) -> dict[str, Any]:
        """The position once a DataLoader over this stream has delivered ``batches`` batches on every rank.

        Ranks step in lockstep under DDP, so rank 0 can save every rank's position. The DataLoader takes
        batches from its workers in turn, skipping a worker that has run out; this replays that rule.
        """
        _, world_size = _rank_and_world(self.rank, self.world_size)
        num_workers = max(1, num_workers)
        consumed = {}
        for r, sizes in enumerate(self.stream_sizes(world_size, num_workers)):
            available = [_batches(n, batch_size, drop_last) for n in sizes]
            if batches > sum(available):
                raise ValueError(f"rank {r} has {sum(available)} batches this epoch, fewer than {batches}")
            taken, left = [0] * num_workers, batches
            while left:
                for w in range(num_workers):
                    if left and taken[w] < available[w]:
                        taken[w], left = taken[w] + 1, left - 1
            consumed.update({f"{r}/{w}": min(taken[w] * batch_size, sizes[w]) for w in range(num_workers)})
        return {"epoch": self.epoch, "seed": self.seed, "world_size": world_size, "num_workers": num_workers,
                "consumed": consumed}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue the recorded epoch after the samples each stream had already yielded."""
        if state["seed"] != self.seed:
            raise ValueError(f"resume position was recorded with seed {state['seed']}, this stream has {self.seed}")
        self.set_epoch(int(state["epoch"]))
        self._resume = state

    def _start(self, rank: int, worker: int, world_size: int, num_workers: int) -> int:
        if self._resume is None:
            return 0
        recorded = (self._resume["world_size"], self._resume["num_workers"])
        if recorded != (world_size, num_workers):
            raise ValueError(
                f"resume position was recorded with world_size {recorded[0]} x {recorded[1]} workers, this run has "
                f"{world_size} x {num_workers}: a mid-epoch position cannot move; resume at the next epoch instead"
            )
        return int(self._resume["consumed"].get(f"{rank}/{worker}", 0))

    def __iter__(self) -> Iterator[ShardSample]:
        rank, world_size = _rank_and_world(self.rank, self.world_size)
        info = get_worker_info()
        worker, num_workers = (info.id, info.num_workers) if info is not None else (0, 1)
        shards = self.stream_shards(world_size, num_workers)[rank][worker]
        size = self.stream_sizes(world_size, num_workers)[rank][worker]
        start = self._start(rank, worker, world_size, num_workers)
        rng = random.Random(f"buffer:{self.seed}:{self.epoch}:{rank}:{worker}")
        order = _BufferOrder(sum(self.counts[s] for s in shards), self.shuffle_buffer if self.shuffle else 1, rng)
        for _ in range(min(start, size)):
            next(order)
        samples = self._read(shards, first_needed=order.cursor, also_needed=set(order.buffer))
        pending: dict[int, dict[str, Any]] = {}
        for done in range(start, size):
            position = next(order)
            while position not in pending:
                read_position, sample = next(samples)
                pending[read_position] = sample
            self._yielded[(rank, worker)] = done + 1  # counted before the yield: the consumer holds it already
            yield self._decode(pending.pop(position))

    def _read(self, shards: list[int], first_needed: int, also_needed: set[int]) -> Iterator[tuple[int, dict]]:
        """``(position, raw sample)`` for positions ``>= first_needed`` or in ``also_needed``; shards holding
        none of them are not opened. Checks each shard's sample count against the index."""
        position = 0
        for shard in shards:
            path, count = self.shards[shard], self.counts[shard]
            if position + count <= first_needed and not any(position <= p < position + count for p in also_needed):
                position += count
                continue
            found = 0
            for found, sample in enumerate(_tar_samples(path), start=1):
                if found > count:
                    raise DataError(path, sample["__key__"], f"more samples than the {count} {INDEX_NAME} lists")
                if position >= first_needed or position in also_needed:
                    sample["__shard__"] = path
                    yield position, sample
                position += 1
            if found != count:
                raise DataError(path, None, f"holds {found} samples, {INDEX_NAME} lists {count} (torn shard?)")

    def _decode(self, sample: dict[str, Any]) -> ShardSample:
        extension = next((e for e in IMAGE_FORMATS if e in sample), None)
        if extension is None or "json" not in sample:
            reason = f"a sample needs .json and an image ({', '.join(IMAGE_FORMATS)}), found {sorted(sample)[2:]}"
            raise DataError(sample["__shard__"], sample["__key__"], reason)
        try:
            meta = json.loads(sample["json"])
            record = ImageTextRecord(meta["key"], tuple(meta["captions"]), meta["group"], meta["label"])
            with Image.open(io.BytesIO(sample[extension])) as image:
                rgb = image.convert("RGB")
        except (ValueError, KeyError, OSError) as error:  # bad JSON, a missing field, an undecodable image
            raise DataError(sample["__shard__"], sample["__key__"], f"bad sample ({error!r})") from None
        return ShardSample(record, self.transform(rgb) if self.transform else rgb, int(meta["index"]))


class CaptionPairStream(ShardedImageTextStream):
    """The stream as ``(image_tensor, caption)`` pairs, the items :class:`~.pair_dataset.ImageCaptionCollator` takes.

    The caption is drawn from ``(seed, epoch, sample index)`` exactly as
    :class:`~polymodal.data.pair_dataset.ImageCaptionDataset` draws it, so shards of a set train on the same
    captions as the set itself. Same arguments as :class:`ShardedImageTextStream`; ``transform`` is required.
    """

    def __init__(self, source: str | Path | Sequence[str | Path], **kwargs: Any) -> None:
        if kwargs.get("transform") is None:
            raise ValueError("CaptionPairStream needs a transform that turns images into tensors")
        super().__init__(source, **kwargs)

    def __iter__(self) -> Iterator[tuple[Any, str]]:  # type: ignore[override]
        for sample in super().__iter__():
            captions = sample.record.captions
            if not captions:
                raise ValueError(f"sample {sample.index} ({sample.record.key}) has no caption to train on")
            choice = caption_choice(self.seed, self.epoch, sample.index, len(captions))
            yield sample.image, captions[choice]
