"""What ``GET /metrics`` reports, in Prometheus' text exposition format (version 0.0.4), written by hand: request
counts by route, method and status; latency histograms by route; requests in flight; micro-batch sizes and queue
waits per model; requests refused because a queue was full; and the live index size.

Routes are labelled by their template (``/search``), never by the raw path, so a client probing random URLs
cannot grow the label set (``unmatched`` covers them all).
"""
from __future__ import annotations

import bisect
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence

from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["CONTENT_TYPE", "Histogram", "Metrics", "MetricsMiddleware"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)

Labels = tuple[tuple[str, str], ...]


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _label_text(labels: Labels, extra: Labels = ()) -> str:
    pairs = (*labels, *extra)
    return "{" + ",".join(f'{name}="{_escape(value)}"' for name, value in pairs) + "}" if pairs else ""


def _number(value: float) -> str:
    return "+Inf" if value == float("inf") else repr(float(value)) if isinstance(value, float) else str(value)


class Histogram:
    """Cumulative-bucket histogram per label set, as Prometheus defines one (``_bucket``, ``_sum``, ``_count``)."""

    def __init__(self, name: str, help_text: str, buckets: Sequence[float]) -> None:
        self.name, self.help, self.buckets = name, help_text, tuple(buckets)
        self._counts: dict[Labels, list[int]] = {}
        self._sums: dict[Labels, float] = defaultdict(float)

    def observe(self, labels: Labels, value: float) -> None:
        counts = self._counts.setdefault(labels, [0] * (len(self.buckets) + 1))
        counts[bisect.bisect_left(self.buckets, value)] += 1  # a value equal to a bound falls in that bucket
        self._sums[labels] += value

    def render(self) -> Iterable[str]:
        yield f"# HELP {self.name} {self.help}"
        yield f"# TYPE {self.name} histogram"
        for labels, counts in sorted(self._counts.items()):
            cumulative = 0
            for bound, count in zip((*self.buckets, float("inf")), counts):
                cumulative += count
                yield f"{self.name}_bucket{_label_text(labels, (('le', _number(float(bound))),))} {cumulative}"
            yield f"{self.name}_sum{_label_text(labels)} {_number(self._sums[labels])}"
            yield f"{self.name}_count{_label_text(labels)} {cumulative}"


class Metrics:
    """The service's counters, histograms and gauges; :meth:`render` writes them all."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._requests: dict[Labels, int] = defaultdict(int)
        self._rejected: dict[Labels, int] = defaultdict(int)
        self.in_flight = 0
        self._latency = Histogram("polymodal_request_duration_seconds", "Time from request to response, by route.",
                                  LATENCY_BUCKETS)
        self._batch_size = Histogram("polymodal_batch_size", "Requests answered by one model call, by batcher.",
                                     BATCH_BUCKETS)
        self._queue_wait = Histogram("polymodal_batch_queue_seconds", "Time a request waited for its batch to start.",
                                     LATENCY_BUCKETS)
        self._gauges: dict[str, tuple[str, Callable[[], float]]] = {}

    def observe_request(self, route: str, method: str, status: int, seconds: float) -> None:
        with self._lock:
            self._requests[(("route", route), ("method", method), ("status", str(status)))] += 1
            self._latency.observe((("route", route), ("method", method)), seconds)

    def observe_batch(self, batcher: str, size: int, queue_seconds: Sequence[float]) -> None:
        with self._lock:
            self._batch_size.observe((("batcher", batcher),), size)
            for seconds in queue_seconds:
                self._queue_wait.observe((("batcher", batcher),), seconds)

    def count_rejected(self, batcher: str) -> None:
        with self._lock:
            self._rejected[(("batcher", batcher),)] += 1

    def gauge(self, name: str, help_text: str, read: Callable[[], float]) -> None:
        """Report ``read()`` as gauge ``name`` at every scrape (e.g. the index size)."""
        self._gauges[name] = (help_text, read)

    def render(self) -> str:
        with self._lock:
            lines = ["# HELP polymodal_requests_total Requests answered, by route, method and status.",
                     "# TYPE polymodal_requests_total counter"]
            lines += [f"polymodal_requests_total{_label_text(labels)} {count}"
                      for labels, count in sorted(self._requests.items())]
            lines += ["# HELP polymodal_requests_rejected_total Requests refused because a model queue was full.",
                      "# TYPE polymodal_requests_rejected_total counter"]
            lines += [f"polymodal_requests_rejected_total{_label_text(labels)} {count}"
                      for labels, count in sorted(self._rejected.items())]
            lines += ["# HELP polymodal_requests_in_flight Requests being handled now.",
                      "# TYPE polymodal_requests_in_flight gauge", f"polymodal_requests_in_flight {self.in_flight}"]
            for histogram in (self._latency, self._batch_size, self._queue_wait):
                lines += histogram.render()
        for name, (help_text, read) in sorted(self._gauges.items()):
            lines += [f"# HELP {name} {help_text}", f"# TYPE {name} gauge", f"{name} {_number(read())}"]
        return "\n".join(lines) + "\n"


class MetricsMiddleware:
    """ASGI middleware timing every HTTP request and counting it by route template, method and status."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # what the client gets if the app dies before answering

        async def record_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        self.metrics.in_flight += 1
        try:
            await self.app(scope, receive, record_status)
        finally:
            self.metrics.in_flight -= 1
            route = getattr(scope.get("route"), "path", None) or "unmatched"
            self.metrics.observe_request(route, scope["method"], status, time.perf_counter() - started)
