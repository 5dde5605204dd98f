"""eb.profile: operators from the backend's profiler, requests from the engine's records."""
from __future__ import annotations

import json

import numpy as np
import pytest

import edgebench as eb
from edgebench.errors import BenchmarkError
from edgebench.profile.profiler import ProfileSession, operator_table

from ._models import mlp_proto

N = 7


@pytest.fixture(scope="module")
def engine():
    # graph optimizations off so Gemm and Relu stay separate nodes (ORT fuses them otherwise)
    with eb.Engine(eb.load(mlp_proto(n_in=64)), threads=1,
                   options={"graph_optimization_level": "disable"}) as eng:
        yield eng


@pytest.fixture(scope="module")
def prof(engine):
    x = engine.sample_feeds(4)
    engine.run(x)  # before the block: not part of it
    with eb.profile(engine) as p:
        assert p.active
        for _ in range(N):
            engine.run(x)
    return p


def test_operators_are_the_models_nodes(prof):
    ops = prof.operators()
    assert list(ops.columns) == ["op", "type", "calls", "total_ms", "mean_ms", "share"]
    assert set(ops["op"]) == {"fc1", "relu1", "fc2"}
    assert dict(zip(ops["op"], ops["type"])) == {"fc1": "Gemm", "relu1": "Relu", "fc2": "Gemm"}
    assert (ops["calls"] == N).all()
    assert ops["share"].sum() == pytest.approx(1.0)
    assert (ops["total_ms"] > 0).all()
    assert ops["total_ms"].is_monotonic_decreasing
    np.testing.assert_allclose(ops["mean_ms"], ops["total_ms"] / ops["calls"])
    types = prof.operator_types()
    assert set(types["type"]) == {"Gemm", "Relu"}
    assert types.set_index("type").loc["Gemm", "calls"] == 2 * N


def test_requests_are_the_block_only_and_not_duplicated(engine, prof):
    req = prof.requests()
    assert len(req) == N and (req["status"] == "ok").all() and (req["batch"] == 4).all()
    assert prof.summary()["count"] == N
    # the engine runs normally afterwards; later requests are not the block's
    before = engine.records.total
    out = engine.run(engine.sample_feeds(2))
    assert out["y"].shape == (2, 4)
    assert engine.records.total == before + 1
    assert len(prof.requests()) == N and prof.summary()["count"] == N
    assert prof.requests()["seq"].is_unique


def test_chrome_trace_is_valid(prof, tmp_path):
    path = prof.export_chrome_trace(tmp_path / "trace.json")
    trace = json.loads(path.read_text())
    events = trace["traceEvents"]
    assert isinstance(events, list)
    for ev in events:
        assert {"name", "ph", "pid", "tid"} <= set(ev)
        if ev["ph"] == "X":
            assert isinstance(ev["ts"], (int, float)) and ev["dur"] >= 0
    requests = [e for e in events if e["name"] == "request"]
    assert len(requests) == N
    assert min(e["ts"] for e in requests) == 0
    assert [e["args"]["seq"] for e in requests] == prof.requests()["seq"].tolist()
    kernels = [e for e in events if e.get("cat") == "Node" and e["name"].endswith("_kernel_time")]
    assert len(kernels) == 3 * N
    # the operator events are placed inside the request span they belong to
    first_end = requests[0]["ts"] + requests[0]["dur"]
    first_ops = sorted(kernels, key=lambda e: e["ts"])[:3]
    assert all(-50 <= e["ts"] <= first_end + 50 for e in first_ops)


def test_display(prof):
    text = repr(prof)
    assert text.startswith("<ProfileSession tiny_mlp:") and f"{N} requests" in text
    html = prof._repr_html_()
    assert "fc1" in html and "Relu" in html and "<table>" in html


def test_operators_off_and_nested_profile(engine):
    x = engine.sample_feeds(1)
    with eb.profile(engine, operators=False) as p:
        engine.run(x)
    assert p.operators().empty and "operators=False" in p.operators().attrs["reason"]
    assert len(p.requests()) == 1
    with eb.profile(engine) as outer:
        with pytest.raises(BenchmarkError, match="already"):
            with eb.profile(engine):
                pass
        engine.run(x)
    assert set(outer.operators()["op"]) == {"fc1", "relu1", "fc2"}


def test_profiling_ends_when_the_block_raises(engine):
    x = engine.sample_feeds(1)
    with pytest.raises(ZeroDivisionError):
        with eb.profile(engine) as p:
            engine.run(x)
            1 / 0
    assert not p.active and len(p.operators()) == 3
    with eb.profile(engine) as again:  # would raise if the first were still on
        engine.run(x)
    assert (again.operators()["calls"] == 1).all()


def test_empty_block_has_a_reason(engine):
    with eb.profile(engine) as p:
        pass
    assert p.operators().empty and p.operators().attrs["reason"]
    assert p.summary()["count"] == 0
    json.loads(json.dumps({"traceEvents": p.trace_events()}))


def test_default_graph_level_reports_fused_ops():
    with eb.Engine(eb.load(mlp_proto(n_in=64)), threads=1) as eng, eb.profile(eng) as p:
        for _ in range(3):
            eng.run(eng.sample_feeds(1))
    types = set(p.operators()["type"])
    assert any("Gemm" in t or "MatMul" in t for t in types), types
    assert p.operators()["share"].sum() == pytest.approx(1.0)


def test_operator_table_on_torch_style_events():
    events = [
        {"name": "aten::linear", "ph": "X", "ts": 0, "dur": 100, "args": {"op_type": "linear", "self_us": 10}},
        {"name": "aten::addmm", "ph": "X", "ts": 5, "dur": 90, "args": {"op_type": "addmm", "self_us": 90}},
        {"name": "aten::relu", "ph": "X", "ts": 100, "dur": 20, "args": {"op_type": "relu", "self_us": 20}},
        {"name": "aten::addmm", "ph": "X", "ts": 120, "dur": 70, "args": {"op_type": "addmm", "self_us": 70}},
        {"name": "process_name", "ph": "M", "args": {"name": "x"}},
    ]
    t = operator_table(events)
    assert t["type"].tolist() == ["addmm", "relu", "linear"]
    assert t["calls"].tolist() == [2, 1, 1]
    assert t["total_ms"].tolist() == pytest.approx([0.16, 0.02, 0.01])  # self time: nesting not double counted
    assert t["share"].sum() == pytest.approx(1.0)


@pytest.mark.torch
def test_torch_backend_operators():
    torch = pytest.importorskip("torch")
    module = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 10))
    model = eb.load(module, example_inputs=(torch.zeros(1, 64),))
    with eb.Engine(model, backend="torch", threads=1) as eng:
        x = eng.sample_feeds(4)
        with eb.profile(eng) as p:
            for _ in range(3):
                eng.run(x)
        assert isinstance(p, ProfileSession)
        ops = p.operators()
        assert {"addmm", "relu"} <= set(ops["type"]) or {"linear", "relu"} <= set(ops["type"]), set(ops["type"])
        assert ops["share"].sum() == pytest.approx(1.0)
        assert len(p.requests()) == 3
        assert eng.run(x)["output"].shape == (4, 10)
