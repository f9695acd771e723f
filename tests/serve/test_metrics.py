"""The hand-written Prometheus text, read back by the reference parser (prometheus_client's)."""
import pytest

from polymodal.serve.metrics import Metrics

parser = pytest.importorskip("prometheus_client.parser", reason="prometheus-client (dev dependency) reads the text")


def families(text: str) -> dict:
    return {family.name: family for family in parser.text_string_to_metric_families(text)}


def test_counts_histograms_and_gauges_read_back_exactly():
    metrics = Metrics()
    for seconds in (0.004, 0.004, 0.03, 2.0):
        metrics.observe_request("/search", "POST", 200, seconds)
    metrics.observe_request("/search", "POST", 415, 0.001)
    metrics.observe_request('/odd "route"\\', "GET", 404, 0.001)  # quotes and backslashes are escaped
    metrics.observe_batch("search_text", 5, [0.001] * 5)
    metrics.count_rejected("vqa")
    metrics.gauge("polymodal_index_size", "Vectors in the live index.", lambda: 428)
    parsed = families(metrics.render())

    counts = {(s.labels["route"], s.labels["status"]): s.value for s in parsed["polymodal_requests"].samples}
    assert counts == {("/search", "200"): 4, ("/search", "415"): 1, ('/odd "route"\\', "404"): 1}
    samples = [s for s in parsed["polymodal_request_duration_seconds"].samples if s.labels["route"] == "/search"]
    buckets = {s.labels["le"]: s.value for s in samples if s.name.endswith("_bucket")}
    assert buckets["0.0025"] == 1 and buckets["0.005"] == 3 and buckets["0.05"] == 4 and buckets["+Inf"] == 5
    total = next(s.value for s in samples if s.name.endswith("_sum"))
    assert total == pytest.approx(0.004 * 2 + 0.03 + 2.0 + 0.001)
    batch = {s.labels.get("le"): s.value for s in parsed["polymodal_batch_size"].samples if s.name.endswith("_bucket")}
    assert batch["4.0"] == 0 and batch["8.0"] == 1
    assert [s.value for s in parsed["polymodal_requests_rejected"].samples] == [1]
    assert [s.value for s in parsed["polymodal_index_size"].samples] == [428]
    assert parsed["polymodal_index_size"].type == "gauge"
    assert parsed["polymodal_request_duration_seconds"].type == "histogram"
