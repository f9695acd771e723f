"""The micro-batcher alone, with a plain function as the 'model': concurrent requests share calls, each gets its
own result, failures reach every waiter, a full queue refuses at once, and nothing runs on the event loop."""
import asyncio
import threading

import pytest

from polymodal.serve.batching import MicroBatcher, ModelWorker
from polymodal.serve.errors import ServiceError
from polymodal.serve.metrics import Metrics


def run(coroutine):
    return asyncio.run(coroutine)


def squares_recording(calls: list, threads: set, delay: float = 0.0):
    def process(items):
        calls.append(list(items))
        threads.add(threading.current_thread().name)
        if delay:
            threading.Event().wait(delay)
        return [item * item for item in items]
    return process


def test_concurrent_requests_share_calls_and_each_gets_its_own_result():
    calls, threads = [], set()

    async def main():
        batcher = MicroBatcher("square", squares_recording(calls, threads, delay=0.02), ModelWorker("square"),
                               Metrics(), max_batch=8, max_wait_ms=5)
        batcher.start()
        results = await asyncio.gather(*(batcher.submit(i) for i in range(20)))
        await batcher.stop()
        return results

    assert run(main()) == [i * i for i in range(20)]
    assert sorted(item for call in calls for item in call) == list(range(20))
    assert max(len(call) for call in calls) == 8 and len(calls) <= 4  # 20 requests in 3 full-ish calls, not 20
    assert threads == {"polymodal-square_0"}  # the model ran on its worker thread, never the event loop's


def test_a_lone_request_waits_at_most_the_wait_time():
    calls, threads = [], set()

    async def main():
        batcher = MicroBatcher("square", squares_recording(calls, threads), ModelWorker("square"), Metrics(),
                               max_batch=8, max_wait_ms=1)
        batcher.start()
        loop = asyncio.get_running_loop()
        started = loop.time()
        result = await batcher.submit(3)
        elapsed = loop.time() - started
        await batcher.stop()
        return result, elapsed

    result, elapsed = run(main())
    assert result == 9 and calls == [[3]] and elapsed < 0.5


def test_a_failing_call_fails_its_whole_batch_and_the_next_batch_runs():
    def process(items):
        if "bad" in items:
            raise ValueError("the model refused")
        return [item.upper() for item in items]

    async def main():
        batcher = MicroBatcher("upper", process, ModelWorker("upper"), Metrics(), max_batch=4, max_wait_ms=20)
        batcher.start()
        first = await asyncio.gather(batcher.submit("ok"), batcher.submit("bad"), return_exceptions=True)
        second = await batcher.submit("fine")
        await batcher.stop()
        return first, second

    first, second = run(main())
    assert all(isinstance(outcome, ValueError) for outcome in first)
    assert second == "FINE"


def test_a_full_queue_refuses_with_503_and_counts_it():
    metrics = Metrics()
    gate = threading.Event()

    def slow(items):
        gate.wait(5)
        return items

    async def main():
        batcher = MicroBatcher("slow", slow, ModelWorker("slow"), metrics, max_batch=1, max_wait_ms=0, max_queue=2)
        batcher.start()
        running = [asyncio.ensure_future(batcher.submit(0))]
        await asyncio.sleep(0.05)  # 0 is taken off the queue and runs (until the gate opens)
        running += [asyncio.ensure_future(batcher.submit(i)) for i in (1, 2)]
        await asyncio.sleep(0.05)  # 1 and 2 wait: the queue is full
        with pytest.raises(ServiceError) as refused:
            await batcher.submit(99)
        gate.set()
        done = await asyncio.gather(*running)
        await batcher.stop()
        return refused.value, done

    refused, done = run(main())
    assert (refused.status, refused.code, refused.headers) == (503, "busy", {"Retry-After": "1"})
    assert done == [0, 1, 2]
    assert 'polymodal_requests_rejected_total{batcher="slow"} 1' in metrics.render()


def test_a_cancelled_request_is_not_computed():
    calls, threads = [], set()

    async def main():
        batcher = MicroBatcher("square", squares_recording(calls, threads, delay=0.05), ModelWorker("square"),
                               Metrics(), max_batch=1, max_wait_ms=0)
        batcher.start()
        first = asyncio.ensure_future(batcher.submit(1))
        await asyncio.sleep(0.01)  # 1 is running; 2 will wait behind it
        second = asyncio.ensure_future(batcher.submit(2))
        await asyncio.sleep(0)
        second.cancel()  # the client went away
        third = await batcher.submit(3)
        await first
        await batcher.stop()
        return third

    assert run(main()) == 9
    assert [1] in calls and [2] not in calls


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="max_batch"):
        MicroBatcher("x", lambda items: items, ModelWorker("x"), Metrics(), max_batch=0)
