"""Micro-batching: concurrent requests for one model share a forward pass, run off the event loop.

A :class:`ModelWorker` owns one thread, so a model is only ever called from one thread at a time and the event
loop never runs model code. A :class:`MicroBatcher` queues single items (a text query, an image) and a loop
takes the first one, gathers more for at most ``max_wait_ms`` (or until ``max_batch``), and hands the batch to
the worker as one call. While that call runs, new requests wait in the queue and make up the next batch, so
under load the batch grows by itself and one forward pass answers many clients. The wait is only for as many
requests as the previous call answered, so a lone client never waits at all. A full queue refuses new work with
a 503 at once (fail soft) instead of letting latency grow without bound.
"""
from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Generic, TypeVar

from polymodal.serve.errors import ServiceError
from polymodal.serve.metrics import Metrics

__all__ = ["MicroBatcher", "ModelWorker"]

Item = TypeVar("Item")
Result = TypeVar("Result")
Value = TypeVar("Value")


class ModelWorker:
    """One thread that runs every call to one model (PyTorch modules are not meant to be used from two threads
    at once, and the event loop must stay free to accept requests)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"polymodal-{name}")

    async def run(self, function: Callable[[], Value]) -> Value:
        """``function()`` on the worker thread; the caller's coroutine waits without blocking the loop."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, function)

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


class MicroBatcher(Generic[Item, Result]):
    """Turns single-item calls into batched calls of ``process(items) -> results`` (same length, same order).

    Args:
        name: the batcher's label in ``/metrics`` (``search_text``, ``vqa``, ...).
        process: the batched model call; runs on ``worker``.
        worker: the thread of the model ``process`` uses.
        metrics: where batch sizes and queue waits are recorded.
        max_batch: most items per call.
        max_wait_ms: how long the first item of a batch waits for company.
        max_queue: items waiting beyond this are refused with 503 ``busy``.
    """

    def __init__(self, name: str, process: Callable[[Sequence[Item]], Sequence[Result]], worker: ModelWorker,
                 metrics: Metrics, max_batch: int = 32, max_wait_ms: float = 2.0, max_queue: int = 256) -> None:
        if max_batch < 1 or max_wait_ms < 0 or max_queue < 1:
            raise ValueError(f"batcher {name}: max_batch and max_queue must be >= 1 and max_wait_ms >= 0, got "
                             f"{max_batch}, {max_queue}, {max_wait_ms}")
        self.name, self.process, self.worker, self.metrics = name, process, worker, metrics
        self.max_batch, self.max_wait, self.max_queue = max_batch, max_wait_ms / 1000, max_queue
        self._queue: asyncio.Queue[tuple[Item, asyncio.Future[Result], float]] | None = None
        self._loop_task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start the batching loop on the running event loop (the app's start-up)."""
        self._queue = asyncio.Queue()
        self._loop_task = asyncio.get_running_loop().create_task(self._batch_loop(), name=f"batcher-{self.name}")

    async def stop(self) -> None:
        if self._loop_task is not None:
            self._loop_task.cancel()
            await asyncio.gather(self._loop_task, return_exceptions=True)
            self._loop_task = None

    async def submit(self, item: Item) -> Result:
        """The result of ``item``, computed in some batch. Raises 503 ``busy`` when the queue is full."""
        if self._queue is None:
            raise RuntimeError(f"batcher {self.name} is not started (the app's lifespan starts it)")
        if self._queue.qsize() >= self.max_queue:
            self.metrics.count_rejected(self.name)
            raise ServiceError(503, "busy", f"the {self.name} queue is full ({self.max_queue} waiting); retry shortly",
                               {"Retry-After": "1"})
        future: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait((item, future, time.perf_counter()))
        return await future

    async def _batch_loop(self) -> None:
        assert self._queue is not None
        loop = asyncio.get_running_loop()
        expected = 1
        while True:
            batch = [await self._queue.get()]
            # Wait (at most max_wait) only for as many requests as the last call answered: clients that just got
            # their answers tend to ask again at once, so under load the batch fills without waiting out the
            # deadline, and a lone client, whose last batch was itself, never waits.
            deadline = loop.time() + self.max_wait
            while len(batch) < self.max_batch:
                if not self._queue.empty():
                    batch.append(self._queue.get_nowait())
                    continue
                remaining = deadline - loop.time()
                if len(batch) >= expected or remaining <= 0:
                    break
                try:
                    batch.append(await asyncio.wait_for(self._queue.get(), remaining))
                except TimeoutError:
                    break
            expected = len(batch)
            # A client that went away cancelled its future: its item is not worth a forward pass.
            batch = [entry for entry in batch if not entry[1].done()]
            if batch:
                await self._run(batch)

    async def _run(self, batch: list[tuple[Item, asyncio.Future[Result], float]]) -> None:
        started = time.perf_counter()
        self.metrics.observe_batch(self.name, len(batch), [started - queued for _, _, queued in batch])
        items = [item for item, _, _ in batch]
        try:
            results = await self.worker.run(lambda: self.process(items))
            if len(results) != len(items):
                raise RuntimeError(f"batcher {self.name}: {len(results)} results for {len(items)} items")
        except Exception as error:  # noqa: BLE001 - every waiting request gets the failure, the loop goes on
            for _, future, _ in batch:
                if not future.done():
                    future.set_exception(error)
            return
        for (_, future, _), result in zip(batch, results):
            if not future.done():
                future.set_result(result)
