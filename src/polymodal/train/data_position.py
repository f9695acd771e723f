"""Where the data stands: point a loader at a :class:`TrainPosition`, and record what a checkpoint needs to resume it.

Two kinds of training data meet one contract here, so :func:`~polymodal.train.fit.fit` need not tell them apart:

- a map-style dataset drawn by a :class:`~polymodal.data.sampler.ResumableRandomSampler`: the sampler skips
  the global samples already consumed, so a run resumes at the same place even with another world size;
- a stream (an ``IterableDataset`` offering ``set_epoch``, ``batches_per_epoch``, ``loader_state`` and
  ``load_state_dict``, as :class:`~polymodal.data.shards.CaptionPairStream` does): it records per-(rank, worker)
  positions, which hold for the same world size and ``num_workers`` only (a changed layout raises).

Batch sizes are per rank; one micro-batch of the run is ``batch_size x world_size`` samples.
"""
from __future__ import annotations

from typing import Any

from torch.utils.data import DataLoader, IterableDataset

from polymodal.distributed import get_world_size
from polymodal.train.checkpoint import TrainPosition


def is_stream(loader: DataLoader) -> bool:
    return isinstance(loader.dataset, IterableDataset)


def global_batch_size(loader: DataLoader) -> int:
    """Samples one micro-batch consumes over all ranks."""
    return (loader.batch_size or 1) * get_world_size()


def epoch_batches(loader: DataLoader) -> int:
    """Batches this rank takes from ``loader`` in a whole epoch (partial batches are dropped)."""
    batch_size = loader.batch_size or 1
    if is_stream(loader):
        return loader.dataset.batches_per_epoch(batch_size, loader.num_workers)
    # As ResumableRandomSampler shards an epoch: length // world_size indices per rank.
    return len(loader.dataset) // get_world_size() // batch_size


def seek(loader: DataLoader, position: TrainPosition, data_state: dict[str, Any] | None = None) -> int:
    """Point ``loader`` at ``position`` (its epoch, after the samples already consumed); return the batches left
    in that epoch on this rank.

    Args:
        data_state: what :func:`data_state` recorded for ``position``; needed only by a stream resumed mid-epoch.
    """
    dataset = loader.dataset
    if is_stream(loader):
        dataset.set_epoch(position.epoch)
        done = position.samples_in_epoch // global_batch_size(loader)
        if done:
            if data_state is None:
                raise ValueError(f"resuming a stream mid-epoch ({done} batches in) needs its recorded data_state")
            dataset.load_state_dict(data_state)
        return epoch_batches(loader) - done
    if hasattr(dataset, "set_epoch"):
        dataset.set_epoch(position.epoch)  # captions are drawn per (seed, epoch, index)
    loader.sampler.set_epoch(position.epoch, start=position.samples_in_epoch)
    return len(loader)


def data_state(loader: DataLoader, position: TrainPosition) -> dict[str, Any] | None:
    """What a checkpoint at ``position`` must hold besides ``position`` to resume the data: a stream's own record
    of a mid-epoch position, else ``None``. Ranks step in lockstep, so rank 0 can record every rank's."""
    if not is_stream(loader) or position.samples_in_epoch == 0:
        return None
    batches = position.samples_in_epoch // global_batch_size(loader)
    return loader.dataset.loader_state(batches, loader.batch_size or 1, loader.num_workers)
