"""Engine: run, submit, validation (with hypothesis), records, lifecycle."""
from __future__ import annotations

import threading

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import edgebench as eb
from edgebench.errors import (BackendUnavailableError, EngineClosedError, InvalidInputError,
                              UnknownNameError)
from edgebench.profile.metrics import OK, REJECTED

from ._models import mlp_proto, mlp_reference, two_input_proto


@pytest.fixture(scope="module")
def model():
    return eb.load(mlp_proto())


@pytest.fixture(scope="module")
def engine(model):
    with eb.Engine(model, threads=1) as eng:
        yield eng


def test_run_matches_numpy(engine, model):
    x = np.random.default_rng(0).standard_normal((5, 16)).astype(np.float32)
    out = engine.run({"x": x})
    assert list(out) == ["y"] and out["y"].shape == (5, 4)
    np.testing.assert_allclose(out["y"], mlp_reference(model.proto, x), rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(engine.run(x)["y"], out["y"])  # bare array for one input


def test_submit_and_concurrency(model):
    with eb.Engine(model, threads=1, workers=2) as eng:
        xs = [np.full((1, 16), i, np.float32) for i in range(50)]
        futs = [eng.submit({"x": x}) for x in xs]
        results = [f.result(timeout=10)["y"] for f in futs]
        for x, r in zip(xs, results):
            np.testing.assert_allclose(r, mlp_reference(model.proto, x), rtol=1e-4, atol=1e-3)
        # runs from many threads at once are safe
        errors = []

        def hammer():
            try:
                for _ in range(50):
                    eng.run({"x": xs[3]})
            except Exception as e:  # pragma: no cover - the assertion below reports it
                errors.append(e)

        threads = [threading.Thread(target=hammer) for _ in range(4)]
        [t.start() for t in threads]
        [t.join() for t in threads]
        assert not errors
        assert eng.records.total == 50 + 200


def test_records_and_stats(model):
    eng = eb.Engine(model, threads=1)
    for _ in range(20):
        eng.run({"x": np.zeros((3, 16), np.float32)})
    with pytest.raises(InvalidInputError):
        eng.run({"x": np.zeros((3, 15), np.float32)})
    snap = eng.records.snapshot()
    assert snap.shape == (21, 8)
    ok = snap[snap[:, 7] == OK]
    assert len(ok) == 20 and (ok[:, 6] == 3).all()  # batch size recorded
    assert (snap[:, 5] >= snap[:, 1]).all()  # done >= arrival
    assert (ok[:, 4] >= ok[:, 3]).all()  # end >= start
    assert snap[-1, 7] == REJECTED
    s = eng.stats()
    assert s["count"] == 21 and s["p50_ms"] > 0
    df = eng.records.to_pandas()
    assert {"latency_ms", "queue_ms", "compute_ms", "status"} <= set(df.columns)
    off = eb.Engine(model, record=False)
    off.run({"x": np.zeros((1, 16), np.float32)})
    assert off.records.total == 0


def test_two_inputs_and_safe_casts():
    eng = eb.Engine(eb.load(two_input_proto()))
    a = np.ones((2, 3), np.float64)  # float64 -> float32 is a documented safe cast
    b = np.arange(6, dtype=np.int32).reshape(2, 3)  # int32 -> int64 too
    out = eng.run({"a": a, "b": b})["sum"]
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, a + b)
    with pytest.raises(InvalidInputError, match="'b' has dtype float32"):
        eng.run({"a": a, "b": b.astype(np.float32)})  # float -> int would truncate
    with pytest.raises(InvalidInputError, match="dict of input name"):
        eng.run(a)  # a bare array is ambiguous with two inputs


@pytest.mark.parametrize("feeds,pattern", [
    ({"x": np.zeros((1, 16), np.float32), "z": np.zeros(1)}, "unknown input.*'z'"),
    ({}, "missing input.*'x'"),
    ({"x": np.zeros(16, np.float32)}, "rank 1.*expected rank 2"),
    ({"x": np.zeros((1, 15), np.float32)}, "dim 1 must be 16"),
    ({"x": np.array([["a"] * 16])}, "dtype <U1"),
    ({"x": np.array([[object()] * 16])}, "dtype object"),
    ({"x": [[0.0] * 16]}, "must be a numpy array, got list"),
    ({"x": np.zeros((1, 16), np.complex64)}, "complex64"),
    ("not feeds", "dict of input name"),
])
def test_invalid_feeds_named_and_engine_survives(engine, feeds, pattern):
    with pytest.raises(InvalidInputError, match=pattern) as info:
        engine.run(feeds)
    assert "x: float32[batch,16]" in str(info.value) or "feeds must be" in str(info.value)
    assert engine.run({"x": np.zeros((1, 16), np.float32)})["y"].shape == (1, 4)


def test_submit_reports_invalid_feeds_through_future(engine):
    fut = engine.submit({"x": np.zeros((1, 3), np.float32)})
    with pytest.raises(InvalidInputError):
        fut.result(timeout=5)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(arr=hnp.arrays(
    dtype=st.sampled_from([np.float32, np.float64, np.float16, np.int32, np.int64, np.uint8, np.bool_,
                           np.complex64, np.dtype("<U3")]),
    shape=hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=20)))
def test_property_any_array_is_answered_or_refused_cleanly(engine, arr):
    """Any array either runs (right shape and a numeric dtype) or raises InvalidInputError."""
    ok_shape = arr.ndim == 2 and arr.shape[1] == 16
    ok_dtype = arr.dtype.kind in "fiub"
    try:
        out = engine.run({"x": arr})
    except InvalidInputError:
        assert not (ok_shape and ok_dtype)
    else:
        assert ok_shape and ok_dtype
        assert out["y"].shape == (arr.shape[0], 4)
    assert engine.run({"x": np.zeros((1, 16), np.float32)})["y"].shape == (1, 4)


def test_close_and_context_manager(model):
    eng = eb.Engine(model)
    fut = eng.submit({"x": np.zeros((1, 16), np.float32)})
    eng.close()
    assert fut.done() and fut.result()["y"].shape == (1, 4)  # queued work finishes
    with pytest.raises(EngineClosedError):
        eng.run({"x": np.zeros((1, 16), np.float32)})
    with pytest.raises(EngineClosedError):
        eng.submit({"x": np.zeros((1, 16), np.float32)})
    eng.close()  # idempotent
    assert "closed" in repr(eng)


def test_unknown_backend_and_device(model):
    with pytest.raises(UnknownNameError, match="onnxruntime"):
        eb.Engine(model, backend="nope")
    with pytest.raises(BackendUnavailableError):
        eb.Engine(model, device="cuda")  # no CUDA provider in the CPU wheel


def test_options_graph_level_and_iobinding(model):
    x = np.random.default_rng(1).standard_normal((1, 16)).astype(np.float32)
    ref = eb.Engine(model).run({"x": x})["y"]
    for opts in ({"graph_optimization_level": "disable"}, {"execution_mode": "parallel"}):
        np.testing.assert_allclose(eb.Engine(model, options=opts).run({"x": x})["y"], ref, rtol=1e-5)
    fixed = eb.load(mlp_proto(batch=1))
    iob = eb.Engine(fixed, options={"io_binding": True})
    a = iob.run({"x": x})["y"]
    b = iob.run({"x": x + 1})["y"]
    np.testing.assert_allclose(a, ref, rtol=1e-5)
    assert not np.allclose(a, b)  # each answer is its own array, not a reused buffer
    dyn = eb.Engine(model, options={"io_binding": True})  # dynamic batch: rebinds per call
    for n in (3, 1, 5):
        xs = np.random.default_rng(n).standard_normal((n, 16)).astype(np.float32)
        np.testing.assert_allclose(dyn.run({"x": xs})["y"], mlp_reference(model.proto, xs), rtol=1e-4, atol=1e-4)
    with pytest.raises(eb.errors.ConfigError, match="unknown onnxruntime options"):
        eb.Engine(model, options={"bogus": 1})


def test_memory_and_repr(engine):
    mem = engine.memory()
    assert mem["model_bytes"] == engine.model.size_bytes and mem["process_rss_bytes"] > mem["model_bytes"]
    assert "tiny_mlp" in repr(engine) and "onnxruntime" in repr(engine)
    assert "Engine" in engine._repr_html_()
