"""The four LoadGen scenarios on a tiny real model, argument errors and failing requests."""
from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from onnx import TensorProto, helper

import edgebench as eb
from edgebench.errors import BenchmarkError, EngineClosedError, InferenceError, UnknownNameError
from edgebench.profile.metrics import OK

from ._models import mlp_proto

FAST = dict(duration_s=0.5, warmup_s=0.05, window_s=0.1)


@pytest.fixture(scope="module")
def engine():
    with eb.Engine(eb.load(mlp_proto(n_in=64)), threads=1) as eng:
        yield eng


@pytest.fixture(scope="module")
def fixed_engine():
    """Batch dimension fixed to 1: multi-stream queries are several requests."""
    with eb.Engine(eb.load(mlp_proto(n_in=64, batch=1)), threads=1) as eng:
        yield eng


def _failing_model():
    """x[batch, n] -> Reshape to [-1, 3]: fails at run time unless batch * n is a multiple of 3."""
    shape = helper.make_tensor("shape", TensorProto.INT64, [2], [-1, 3])
    graph = helper.make_graph(
        [helper.make_node("Reshape", ["x", "shape"], ["y"], name="reshape")], "fails",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "n"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 3])], [shape])
    return eb.load(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8))


def _check_common(r, engine, before_total):
    assert r.duration_s >= 0.5
    # max_duration_s (2 x duration) plus the drain of what is already queued: offline keeps about
    # 0.2 s of work queued, which takes longer when CI shares the cores.  A run that ignored
    # max_duration_s and kept issuing would blow through this.
    assert r.duration_s <= 1.0 + 1.0
    assert len(r.queries) >= 100
    assert (r.queries[:, 6] == OK).all()
    # warm-up requests are not in the report; no request is counted twice
    assert r.records[0, 0] > before_total
    assert len(np.unique(r.records[:, 0])) == len(r.records)
    lat = r.to_pandas()["latency_ms"].to_numpy()
    assert r.p99_ms == pytest.approx(np.percentile(lat, 99))
    assert r.p90_ms == pytest.approx(np.percentile(lat, 90))


def test_single_stream(engine):
    before = engine.records.total
    r = eb.benchmark(engine, "single_stream", progress=True, **FAST)
    assert r.valid, r.validity_reasons
    _check_common(r, engine, before)
    # one request per query, each issued after the previous one completed
    assert len(r.records) == len(r.queries)
    assert (r.queries[1:, 1] >= r.queries[:-1, 4]).all()
    # the latencies are the engine's own records
    np.testing.assert_array_equal(np.sort(r.latencies_ms), np.sort((r.records[:, 5] - r.records[:, 1]) / 1e6))
    assert r.metric == ("p90_ms", r.p90_ms)
    assert r.throughput > 0 and r.summary()["scenario"] == "single_stream"


def test_multi_stream_dynamic_batch_is_one_request(engine):
    before = engine.records.total
    r = eb.benchmark(engine, "multi_stream", samples_per_query=8, **FAST)
    assert r.valid, r.validity_reasons
    _check_common(r, engine, before)
    assert len(r.records) == len(r.queries)
    assert (r.records[:, 6] == 8).all() and (r.queries[:, 5] == 8).all()
    assert r.throughput == pytest.approx(8 * len(r.queries) / r.duration_s)


def test_multi_stream_fixed_batch_submits_together(fixed_engine):
    before = fixed_engine.records.total
    r = eb.benchmark(fixed_engine, "multi_stream", samples_per_query=4, **FAST)
    _check_common(r, fixed_engine, before)
    assert len(r.records) == 4 * len(r.queries)
    assert (r.queries[:, 5] == 4).all()
    # a query lasts from its first request's arrival to its last request's answer
    recs = r.records[np.argsort(r.records[:, 1], kind="stable")].reshape(-1, 4, 8)
    np.testing.assert_array_equal(r.queries[:, 4], recs[:, :, 5].max(axis=1))
    np.testing.assert_array_equal(r.queries[:, 0], recs[:, :, 1].min(axis=1))
    # the next query starts only after the previous one completed
    assert (r.queries[1:, 0] >= r.queries[:-1, 4]).all()


def test_server_valid_poisson_and_reproducible(engine):
    kw = dict(qps=200, latency_bound_ms=1000, **FAST)
    r = eb.benchmark(engine, "server", **kw)
    assert r.valid, r.validity_reasons
    assert 0.6 * 200 <= r.qps_achieved <= 1.4 * 200
    assert r.metric[0] == "qps_achieved"
    q = r.queries
    assert (q[:, 1] >= q[:, 0]).all()           # handed to the engine at or after its schedule
    assert (r.latencies_ms >= (q[:, 4] - q[:, 1]) / 1e6).all()  # latency counts from the schedule
    gaps = np.diff(q[:, 0]) / 1e9
    assert gaps.std() / gaps.mean() == pytest.approx(1.0, abs=0.3)  # exponential: cv = 1
    # the arrival schedule is fixed by the seed
    r2 = eb.benchmark(engine, "server", **kw)
    n = min(len(q), len(r2.queries))
    np.testing.assert_array_equal(np.diff(q[:n, 0]), np.diff(r2.queries[:n, 0]))
    r3 = eb.benchmark(engine, "server", seed=1, **kw)
    assert not np.array_equal(np.diff(q[:50, 0]), np.diff(r3.queries[:50, 0]))


def test_server_impossible_bound_is_invalid(engine):
    r = eb.benchmark(engine, "server", qps=200, latency_bound_ms=0.0001, **FAST)
    assert not r.valid
    assert any("p99 latency" in m and "latency_bound_ms 0.0001" in m for m in r.validity_reasons)
    assert "INVALID" in repr(r) and "INVALID" in r._repr_html_()


def test_offline(engine):
    before = engine.records.total
    r = eb.benchmark(engine, "offline", batch_size=2, **FAST)
    assert r.valid, r.validity_reasons
    _check_common(r, engine, before)
    assert r.throughput > 0 and r.metric == ("throughput", r.throughput)
    assert (r.records[:, 6] == 2).all()
    assert r.throughput == pytest.approx(2 * len(r.queries) / r.duration_s)
    # queued together: many queries wait in the queue while the first ones compute
    assert np.median(r.to_pandas()["queue_ms"]) > 10 * np.median(r.to_pandas()["compute_ms"])


def test_runs_with_recording_off_and_restores_it():
    with eb.Engine(eb.load(mlp_proto()), threads=1, record=False) as eng:
        r = eb.benchmark(eng, "single_stream", duration_s=0.2, warmup_s=0.0, window_s=0.1, min_queries=10)
        assert len(r.queries) >= 10 and r.valid
        assert eng.records.enabled is False


@pytest.mark.parametrize("scenario, kwargs, name", [
    ("single_stream", dict(duration_s=-1), "duration_s"),
    ("single_stream", dict(duration_s=0), "duration_s"),
    ("single_stream", dict(batch_size=0), "batch_size"),
    ("multi_stream", dict(samples_per_query=0), "samples_per_query"),
    ("offline", dict(warmup_s=-0.1), "warmup_s"),
    ("server", dict(latency_bound_ms=10), "qps"),
    ("server", dict(qps=0, latency_bound_ms=10), "qps"),
    ("server", dict(qps=-5, latency_bound_ms=10), "qps"),
    ("server", dict(qps=100), "latency_bound_ms"),
    ("single_stream", dict(duration_s=1, max_duration_s=0.5), "max_duration_s"),
])
def test_bad_arguments_name_the_argument(engine, scenario, kwargs, name):
    with pytest.raises(BenchmarkError, match=name):
        eb.benchmark(engine, scenario, **kwargs)


def test_unknown_scenario_lists_the_four(engine):
    with pytest.raises(UnknownNameError) as info:
        eb.benchmark(engine, "streaming")
    for name in ("single_stream", "multi_stream", "server", "offline"):
        assert name in str(info.value)


@pytest.mark.parametrize("scenario, kwargs", [
    ("single_stream", {}), ("server", dict(qps=500, latency_bound_ms=100)), ("offline", {}),
])
def test_failing_request_stops_the_run(scenario, kwargs):
    with eb.Engine(_failing_model(), threads=1) as eng:
        bad = {"x": np.ones((1, 4), np.float32)}
        t = time.perf_counter()
        with pytest.raises(BenchmarkError, match="request failed") as info:
            eb.benchmark(eng, scenario, feeds=bad, duration_s=0.5, warmup_s=0.0, **kwargs)
        assert time.perf_counter() - t < 10
        assert isinstance(info.value.__cause__, InferenceError)
        eng.run({"x": np.ones((1, 3), np.float32)})  # the engine is still usable


def _reshape_model():
    """x[1, 6], shape[2] -> Reshape(x, shape): fails once ``shape`` stops dividing 6."""
    graph = helper.make_graph(
        [helper.make_node("Reshape", ["x", "shape"], ["y"], name="reshape")], "reshape",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 6]),
         helper.make_tensor_value_info("shape", TensorProto.INT64, [2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, None])])
    return eb.load(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8))


@pytest.mark.parametrize("scenario, kwargs", [
    ("single_stream", {}), ("multi_stream", {}), ("server", dict(qps=2000, latency_bound_ms=100)),
    ("offline", {}),
])
def test_request_failing_mid_run_stops_the_run(scenario, kwargs):
    """The requests start failing 0.15 s into the run: the run stops soon with the first error."""
    with eb.Engine(_reshape_model(), threads=1) as eng:
        feeds = {"x": np.ones((1, 6), np.float32), "shape": np.array([-1, 3], np.int64)}
        timer = threading.Timer(0.15, lambda: feeds["shape"].__setitem__(1, 4))  # 6 is not a multiple of 4
        timer.start()
        t = time.perf_counter()
        try:
            with pytest.raises(BenchmarkError, match="request failed") as info:
                eb.benchmark(eng, scenario, feeds=feeds, duration_s=2.0, warmup_s=0.0, **kwargs)
        finally:
            timer.cancel()
        assert time.perf_counter() - t < 1.5
        assert isinstance(info.value.__cause__, InferenceError)
        assert eng.records.snapshot()[:, 7].max() > OK  # the failures are in the engine's records


def test_engine_closed_mid_run_stops_the_run():
    eng = eb.Engine(eb.load(mlp_proto()), threads=1)
    timer = threading.Timer(0.15, eng.close)
    timer.start()
    t = time.perf_counter()
    with pytest.raises(BenchmarkError, match="closed") as info:
        eb.benchmark(eng, "server", qps=500, latency_bound_ms=100, duration_s=2.0, warmup_s=0.0)
    assert time.perf_counter() - t < 1.5
    assert isinstance(info.value.__cause__, EngineClosedError)


@pytest.mark.torch
def test_torch_module_single_stream():
    torch = pytest.importorskip("torch")
    module = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 10))
    with eb.Engine(eb.load(module, example_inputs=(torch.zeros(1, 64),)), threads=1) as eng:
        r = eb.benchmark(eng, "single_stream", duration_s=0.3, warmup_s=0.05, window_s=0.1)
    assert r.valid and r.p90_ms > 0 and r.model == "Sequential"
