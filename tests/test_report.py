"""summarize(), the stability rule, measurement windows and BenchmarkReport's figures."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

import edgebench as eb
from edgebench.profile.metrics import ERROR, OK, RecordBuffer
from edgebench.profile.report import BenchmarkReport, is_stable, summarize, window_stats


def _records(n: int = 1000, seed: int = 0, errors: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Records with random timings; returns them and the OK latencies in ms."""
    rng = np.random.default_rng(seed)
    buf = RecordBuffer(4096)
    arrival = 10**12 + np.cumsum(rng.integers(10_000, 1_000_000, n))
    queue = rng.integers(0, 50_000, n)
    compute = rng.integers(100_000, 5_000_000, n)
    post = rng.integers(0, 10_000, n)
    status = np.full(n, OK)
    status[rng.choice(n, errors, replace=False)] = ERROR
    for a, q, c, p, s in zip(arrival, queue, compute, post, status):
        buf.add(int(a), int(a + q), int(a + q), int(a + q + c), int(a + q + c + p), 1, int(s))
    recs = buf.snapshot()
    ok = recs[recs[:, 7] == OK]
    return recs, (ok[:, 5] - ok[:, 1]) / 1e6


def test_summarize_matches_numpy():
    recs, lat = _records(1000, errors=7)
    s = summarize(recs)
    assert (s["count"], s["ok"], s["errors"]) == (1000, 993, 7)
    for name, q in [("p50_ms", 50), ("p90_ms", 90), ("p95_ms", 95), ("p99_ms", 99), ("p999_ms", 99.9)]:
        assert s[name] == pytest.approx(np.percentile(lat, q), rel=1e-12)
    assert s["max_ms"] == pytest.approx(lat.max())
    assert s["mean_ms"] == pytest.approx(lat.mean())
    span_s = (recs[:, 5].max() - recs[:, 1].min()) / 1e9
    assert s["throughput"] == pytest.approx(993 / span_s)
    ok = recs[recs[:, 7] == OK]
    assert s["queue_ms"] == pytest.approx(((ok[:, 3] - ok[:, 1]) / 1e6).mean())
    assert s["compute_ms"] == pytest.approx(((ok[:, 4] - ok[:, 3]) / 1e6).mean())
    assert s["p50_ms"] <= s["p90_ms"] <= s["p99_ms"] <= s["p999_ms"] <= s["max_ms"]


def test_summarize_empty_and_all_errors():
    s = summarize(np.empty((0, 8), np.int64))
    assert (s["count"], s["ok"], s["errors"]) == (0, 0, 0)
    assert math.isnan(s["p99_ms"]) and math.isnan(s["throughput"])
    recs, _ = _records(20, errors=20)
    s = summarize(recs)
    assert s["errors"] == 20 and s["ok"] == 0 and math.isnan(s["p50_ms"])


@pytest.mark.parametrize("throughputs, stable", [
    ([100, 100, 100], True),
    ([100, 105, 109.9], True),          # max/min = 1.099
    ([100, 95, 105], False),            # max/min = 1.105
    ([300, 50, 100, 104, 101], True),   # only the last three count
    ([100, 104, 300], False),
    ([100, 100], False),                # fewer than three windows
    ([0, 0, 0], False),
    ([100, float("nan"), 100], False),
])
def test_stability_rule(throughputs, stable):
    assert is_stable(throughputs) is stable


def _queries(done_offsets_ms, t0=10**12, latency_ms=1.0, samples=1, status=OK):
    done = t0 + (np.asarray(done_offsets_ms, float) * 1e6).astype(np.int64)
    issue = done - int(latency_ms * 1e6)
    q = np.stack([issue, issue, issue, done, done, np.full(len(done), samples), np.full(len(done), status)], 1)
    return q.astype(np.int64)


def test_window_stats_counts_full_windows_only():
    # 10 queries in window 0, 20 in window 1, 5 in the partial window 2 (dropped)
    done = np.r_[np.linspace(1, 99, 10), np.linspace(101, 199, 20), np.linspace(201, 240, 5)]
    q = _queries(done, samples=4)
    w = window_stats(q, 10**12, 10**12 + int(240e6), 0.1)
    assert w["queries"].tolist() == [10, 20]
    assert w["samples"].tolist() == [40, 80]
    assert w["throughput"].tolist() == pytest.approx([400.0, 800.0])
    assert w["p50_ms"] == pytest.approx([1.0, 1.0])


def _report(q, scenario="server", t_end=None, **settings):
    s = dict(qps=100.0, latency_bound_ms=10.0, duration_s=1.0, min_queries=50, max_duration_s=2.0,
             batch_size=1, samples_per_query=8, warmup_s=0.0, seed=0, window_s=0.2)
    s.update(settings)
    t_end = int(q[:, 4].max()) if t_end is None else t_end
    return BenchmarkReport(scenario, "tiny", "onnxruntime", "cpu", 1, s, np.empty((0, 8), np.int64), q,
                           10**12, t_end)


def test_report_figures_validity_and_display():
    done = np.linspace(5, 1200, 240)  # 240 queries over 1.2 s, 2 ms each
    r = _report(_queries(done, latency_ms=2.0))
    assert r.valid, r.validity_reasons
    assert r.p99_ms == pytest.approx(2.0) and r.max_ms == pytest.approx(2.0)
    assert r.qps_achieved == pytest.approx(240 / 1.2)
    assert r.throughput == pytest.approx(240 / 1.2)
    assert r.stable
    text = repr(r)
    assert text.startswith("<BenchmarkReport server tiny: p99 2 ms <= 10 ms VALID")
    assert "200.0 qps" in text and "240 queries" in text
    summary = r.summary()
    assert json.loads(json.dumps(summary)) == summary
    assert summary["valid"] is True and summary["metric"] == "qps_achieved" and summary["queries"] == 240
    df = r.to_pandas()
    assert list(df.columns) == ["arrival_s", "latency_ms", "queue_ms", "compute_ms", "batch", "status"]
    assert len(df) == 240 and df["latency_ms"].tolist() == pytest.approx([2.0] * 240)
    assert len(r.windows()) == 6
    html = r._repr_html_()
    assert "VALID" in html and "INVALID" not in html and "CPU" in html
    assert isinstance(r.cpu, str) and r.cpu


def test_report_invalid_reasons():
    done = np.linspace(5, 300, 30)
    q = _queries(done, latency_ms=20.0)
    q[:, 1] += int(5e6)  # every query handed to the engine 5 ms after its scheduled time
    r = _report(q)
    reasons = " | ".join(r.validity_reasons)
    assert not r.valid
    assert "p99 latency 20 ms exceeds latency_bound_ms 10" in reasons
    assert "too few queries: 30 < min_queries 50" in reasons
    assert "run too short" in reasons
    assert "issuer fell behind schedule" in reasons
    assert "INVALID" in repr(r) and "> 10 ms" in repr(r)
    assert "INVALID" in r._repr_html_()
    assert r.summary()["valid"] is False


def test_report_unstable_and_failed_queries():
    # window throughputs 50, 50, 50, 50, 100 per 0.2 s: the last three differ by 2x
    done = np.r_[np.linspace(1, 799, 40), np.linspace(801, 999, 20)]
    q = _queries(done)
    q[0, 6] = ERROR
    r = _report(q, scenario="single_stream", latency_bound_ms=None, min_queries=10, t_end=10**12 + int(1e9))
    assert not r.stable
    assert r.windows()["queries"].tolist() == [9, 10, 10, 10, 20]
    assert any("did not complete OK" in m for m in r.validity_reasons)
    assert r.metric[0] == "p90_ms"


def test_report_empty_does_not_crash():
    r = _report(np.empty((0, 7), np.int64), t_end=10**12)
    assert not r.valid and "no query completed" in r.validity_reasons
    assert math.isnan(r.p99_ms) and not r.stable
    repr(r), r._repr_html_(), r.to_pandas(), r.windows()
    json.dumps(r.summary())


def test_exported_at_top_level():
    assert eb.BenchmarkReport is BenchmarkReport
