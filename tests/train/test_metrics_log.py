"""The metrics log stays valid JSONL across a crash that tore its last record."""
from polymodal.train.metrics_log import MetricsLog


def test_a_torn_last_record_is_dropped_when_the_log_is_reopened(tmp_path):
    path = tmp_path / "metrics.jsonl"
    log = MetricsLog(path)
    log.write({"step": 1, "loss": 2.0})
    log.write({"step": 2, "loss": 1.5})
    with path.open("a", encoding="utf-8") as handle:
        handle.write('{"step": 3, "lo')  # the process died mid-write
    resumed = MetricsLog(path)
    resumed.write({"step": 3, "loss": 1.25})
    assert resumed.read() == [{"step": 1, "loss": 2.0}, {"step": 2, "loss": 1.5}, {"step": 3, "loss": 1.25}]


def test_an_intact_log_is_left_as_it_is(tmp_path):
    path = tmp_path / "metrics.jsonl"
    MetricsLog(path).write({"step": 1})
    before = path.read_bytes()
    MetricsLog(path)
    assert path.read_bytes() == before
