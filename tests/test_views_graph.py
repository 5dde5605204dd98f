"""The graph views: a CompiledGraph drawn from its steps (time per step as heat), and the
live per-stage view of a StreamGraph."""
from __future__ import annotations

import numpy as np
import pytest

import edgebench as eb
from edgebench.graph import FrameSource, StreamGraph

pytest.importorskip("anywidget")
W = pytest.importorskip("ipywidgets")
from edgebench.notebook import display
from edgebench.notebook.views_graph import (
    CompiledGraphView,
    StreamGraphView,
    compiled_graph_data,
)


def _two_branch():
    digits = eb.zoo.load("digits")
    mlp = eb.zoo.load("mlp")
    g = eb.Graph("two_branch")
    g.add(fn=lambda image: image.reshape(1, 1, 8, 8).astype(np.float32), inputs=["image"], outputs=["x"],
          name="pre")
    g.add(model=digits, inputs={"input": "x"}, outputs={"logits": "la"}, name="cnn")
    g.add(fn=lambda x: np.resize(x.ravel(), (1, 784)).astype(np.float32), inputs=["x"], outputs=["flat"],
          name="flatten")
    g.add(model=mlp, inputs={"input": "flat"}, outputs={"logits": "lb"}, name="mlp")
    g.add(fn=lambda a, b: a + b, inputs=["la", "lb"], outputs=["result"], name="combine")
    return g.compile(backend="onnxruntime", device="cpu")


@pytest.fixture(scope="module")
def cg():
    c = _two_branch()
    yield c
    c.close()


def test_steps_are_timed_by_the_executor(cg):
    before = {s.node.name: s.timing["count"] for s in cg.steps}
    for _ in range(3):
        cg.run({"image": np.arange(64, dtype=np.float32)})
    for s in cg.steps:
        assert s.timing["count"] == before[s.node.name] + 3
        assert s.timing["total_ns"] > 0


def test_compiled_graph_data_draws_steps_tensors_and_heat(cg):
    cg.run({"image": np.zeros(64, np.float32)})
    d = compiled_graph_data(cg)
    ops = {n["name"]: n for n in d["nodes"] if n["kind"] == "op"}
    assert set(ops) == {s.node.name for s in cg.steps}
    assert {n["name"] for n in d["nodes"] if n["kind"] == "input"} == {"image"}
    assert {n["name"] for n in d["nodes"] if n["kind"] == "output"} == {"result"}
    by_id = {n["id"]: n["name"] for n in d["nodes"]}
    edges = {(by_id[e["s"]], by_id[e["t"]], e["tensor"]) for e in d["edges"]}
    assert ("pre", "cnn", "x") in edges and ("pre", "flatten", "x") in edges
    assert ("mlp", "combine", "lb") in edges and ("combine", "result", "result") in edges
    assert all(e["shape"] == e["tensor"] for e in d["edges"])  # graph.js labels edges with it
    # every step has run: each is coloured, the slowest at norm 1
    assert len(d["heat"]) == len(cg.steps) and d["info"]["profiled"]
    assert max(h["norm"] for h in d["heat"].values()) == pytest.approx(1.0)
    assert abs(sum(h["share"] for h in d["heat"].values()) - 1.0) < 1e-6
    # branches sit side by side: cnn and flatten in the same layer, below pre
    assert ops["cnn"]["layer"] == ops["flatten"]["layer"] > ops["pre"]["layer"]


def test_compiled_graph_widget_and_mimebundle(cg):
    w = display.widget(cg)
    assert isinstance(w, CompiledGraphView)
    assert w.info["n_nodes"] == len(cg.steps)
    n0 = w.heat[str(w.node("cnn")["id"])]["calls"]
    cg.run({"image": np.ones(64, np.float32)})
    w.refresh()
    assert w.heat[str(w.node("cnn")["id"])]["calls"] == n0 + 1
    b = cg._repr_mimebundle_()
    assert b["text/plain"] == repr(cg)
    assert display.WIDGET_MIME in b
    w.close()


def test_stream_graph_view_counts_stages_live():
    sg = (StreamGraph("frames", queue_size=2)
          .source(FrameSource(fps=30, n=40, shape=(8, 8)))
          .map(lambda f: f.astype(np.float32) / 255.0, name="scale")
          .map(lambda f: float(f.mean()), name="mean"))
    v = display.widget(sg)
    assert isinstance(v, StreamGraphView)
    assert "idle" in v._html.value
    sg.run(timeout=30)
    v.update()
    rows = {r["stage"]: r for r in v.snapshot()}
    assert rows["scale"]["processed"] == rows["mean"]["processed"] == 40
    assert all(r["rate"] > 0 for r in rows.values())
    assert all(0 <= r["max_queue"] <= 2 for r in rows.values())
    html = v._html.value
    assert "scale" in html and "mean" in html and "done" in html and ">40<" in html
    assert len(sg.outputs) == 40
    assert sg._repr_mimebundle_()["text/plain"] == repr(sg)
    v.close()
    assert not v.running or v._stop.is_set()
