"""The model graph view: nodes, edges, shapes, layout, heat, and the front-end files."""
from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import onnx
import pandas as pd
import pytest
from onnx import TensorProto, helper, numpy_helper

import edgebench as eb
from edgebench.notebook.graph_layout import LAYER_GAP, NODE_H, attribute_times, graph_data
from ._models import mlp_proto

pytest.importorskip("anywidget")
from edgebench.notebook.graph_view import GraphView, asset_path  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def _no_overlaps(nodes: list[dict]) -> bool:
    rows: dict[int, list[dict]] = {}
    for n in nodes:
        rows.setdefault(n["layer"], []).append(n)
    for row in rows.values():
        row.sort(key=lambda n: n["x"])
        for a, b in zip(row, row[1:]):
            if a["x"] + a["w"] / 2 > b["x"] - b["w"] / 2 + 1e-6:
                return False
    return True


def _diamond_with_shape_chain() -> onnx.ModelProto:
    """x -> {Relu, Sigmoid} -> Add -> Reshape(to the shape of x, computed with Shape) -> y."""
    w = numpy_helper.from_array(np.ones((4, 4), np.float32), "w")
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["m"], name="mm"),
        helper.make_node("Relu", ["m"], ["a"], name="relu"),
        helper.make_node("Sigmoid", ["m"], ["b"], name="sig"),
        helper.make_node("Add", ["a", "b"], ["s"], name="add"),
        helper.make_node("Shape", ["x"], ["shp"], name="shape"),
        helper.make_node("Constant", [], ["idx"], name="const",
                         value=numpy_helper.from_array(np.array([0, 1], np.int64))),
        helper.make_node("Gather", ["shp", "idx"], ["shp2"], name="gather"),
        helper.make_node("Reshape", ["s", "shp2"], ["y"], name="reshape"),
    ]
    g = helper.make_graph(nodes, "diamond", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])], [w])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def _ladder(n_blocks: int) -> onnx.ModelProto:
    """A deep residual ladder: h = h + Relu(h), repeated (3 nodes per block)."""
    nodes, prev = [], "x"
    for i in range(n_blocks):
        nodes += [helper.make_node("Relu", [prev], [f"r{i}"], name=f"relu{i}"),
                  helper.make_node("Neg", [f"r{i}"], [f"n{i}"], name=f"neg{i}"),
                  helper.make_node("Add", [prev, f"n{i}"], [f"h{i}"], name=f"add{i}")]
        prev = f"h{i}"
    g = helper.make_graph(nodes, "ladder", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])],
                          [helper.make_tensor_value_info(prev, TensorProto.FLOAT, [1, 8])])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def test_chain_counts_shapes_and_layout():
    model = eb.load(mlp_proto(n_in=16, n_hidden=32, n_out=4), name="tiny")
    d = graph_data(model)
    kinds = [n["kind"] for n in d["nodes"]]
    assert kinds.count("op") == len(model.proto.graph.node) == 3
    assert kinds.count("input") == 1 and kinds.count("output") == 1
    assert len(d["edges"]) == 4  # x -> fc1 -> relu1 -> fc2 -> y
    shapes = {e["tensor"]: e["shape"] for e in d["edges"]}
    assert shapes == {"x": "batch×16", "h": "batch×32", "hr": "batch×32", "y": "batch×4"}
    fc1 = next(n for n in d["nodes"] if n["name"] == "fc1")
    assert fc1["op"] == "Gemm" and set(fc1["weights"]) == {"w1: 16×32", "b1: 32"}
    # a chain is one straight column, one layer per node, top-down
    assert [n["layer"] for n in d["nodes"]] == [0, 1, 2, 3, 4]
    assert len({n["x"] for n in d["nodes"]}) == 1
    assert [n["y"] for n in d["nodes"]] == sorted(n["y"] for n in d["nodes"])
    assert d["heat"] == {} and d["info"]["profiled"] is False
    assert d["info"]["n_nodes"] == 3 and d["info"]["hidden"] == 0


def test_branches_and_hidden_shape_computation():
    proto = _diamond_with_shape_chain()
    d = graph_data(proto)
    ops = {n["name"]: n for n in d["nodes"] if n["kind"] == "op"}
    assert set(ops) == {"mm", "relu", "sig", "add", "reshape"}  # shape/const/gather hidden
    assert d["info"]["hidden"] == 3 and ops["reshape"]["consts"] == 1
    # the two branches sit side by side in one layer, below the MatMul, above the Add
    assert ops["relu"]["layer"] == ops["sig"]["layer"] == ops["mm"]["layer"] + 1
    assert ops["relu"]["x"] != ops["sig"]["x"] and ops["add"]["layer"] == ops["relu"]["layer"] + 1
    assert _no_overlaps(d["nodes"])
    pairs = {(d["nodes"][e["s"]]["name"], d["nodes"][e["t"]]["name"]) for e in d["edges"]}
    assert {("mm", "relu"), ("mm", "sig"), ("relu", "add"), ("sig", "add"), ("add", "reshape")} <= pairs
    full = graph_data(proto, hide_constants=False)
    assert sum(n["kind"] == "op" for n in full["nodes"]) == len(proto.graph.node) == 8
    assert full["info"]["hidden"] == 0


def test_big_graph_is_capped_laid_out_and_fast():
    proto = _ladder(250)  # 750 nodes
    t = time.perf_counter()
    d = graph_data(proto, max_nodes=600)
    assert time.perf_counter() - t < 5
    assert d["info"]["truncated"] and d["info"]["shown"] == 600 and d["info"]["n_nodes"] == 750
    assert sum(n["kind"] == "op" for n in d["nodes"]) == 600
    assert _no_overlaps(d["nodes"])
    ids = {n["id"] for n in d["nodes"]}
    assert all(e["s"] in ids and e["t"] in ids for e in d["edges"])
    # residual edges skip a layer: they bend around the nodes of the layers they cross
    long = [e for e in d["edges"] if d["nodes"][e["t"]]["layer"] - d["nodes"][e["s"]]["layer"] > 1]
    assert long and all(len(e["points"]) >= 1 for e in long)
    step = NODE_H + LAYER_GAP
    rows: dict[int, list[dict]] = {}
    for n in d["nodes"]:
        rows.setdefault(n["layer"], []).append(n)
    for e in long:
        for x, y in e["points"]:
            assert all(abs(n["x"] - x) >= n["w"] / 2 for n in rows.get(y // step, []))
    everything = graph_data(proto, max_nodes=None)
    assert not everything["info"]["truncated"] and everything["info"]["shown"] == 750


def test_heat_from_a_real_profile():
    model = eb.load(mlp_proto(n_in=64, n_hidden=256, n_out=8), name="heat")
    with eb.Engine(model, threads=1) as eng:
        x = eng.sample_feeds(batch_size=8)
        with eb.profile(eng) as prof:
            for _ in range(30):
                eng.run(x)
    ops = prof.operators()
    assert len(ops)
    d = graph_data(model, prof)
    info, heat = d["info"], d["heat"]
    assert info["profiled"] and info["total_ms"] == pytest.approx(ops["total_ms"].sum())
    names = {str(n["id"]): n["name"] for n in d["nodes"]}
    # ONNX Runtime fuses Gemm+Relu into "fused fc1": the time still lands on fc1
    assert {"fc1", "fc2"} <= {names[k] for k in heat}
    assert max(h["norm"] for h in heat.values()) == pytest.approx(1.0)
    attributed = sum(h["ms"] for h in heat.values())
    assert attributed + info["unattributed_ms"] + info["hidden_ms"] == pytest.approx(info["total_ms"], abs=1e-6)
    assert all(h["calls"] == 30 for h in heat.values())


def test_attribution_heuristics_for_fused_nodes():
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="/0/Conv"),
             helper.make_node("Relu", ["c"], ["/1/Relu_output_0"], name="/1/Relu"),
             helper.make_node("MatMul", ["/1/Relu_output_0", "w2"], ["m"], name="/layers/layers.0/MatMul"),
             helper.make_node("Gemm", ["m", "w3"], ["g"], name="/2/Gemm")]
    producer = {o: i for i, n in enumerate(nodes) for o in n.output}
    ops = pd.DataFrame({"op": ["/1/Relu_output_0_nchwc", "/layers/layers.0/MatMul/MatMulScaleFusion/",
                               "fused /2/Gemm", "BiasGelu_token_7"],
                        "type": ["Conv", "FusedMatMul", "FusedGemm", "BiasGelu"],
                        "calls": [3, 3, 3, 3], "total_ms": [4.0, 2.0, 1.0, 0.5]})
    times, unattributed = attribute_times(ops, nodes, producer)
    assert {i: t["ms"] for i, t in times.items()} == {0: 4.0, 2: 2.0, 3: 1.0}  # Conv, not the Relu
    assert unattributed == 0.5


def test_graph_view_widget_traitlets():
    model = eb.load(_diamond_with_shape_chain(), name="diamond")
    view = GraphView(model, height=400)
    d = graph_data(model)
    assert view.nodes == d["nodes"] and view.edges == d["edges"] and view.heat == {}
    assert view.height == 400 and view.node("add")["op"] == "Add"
    with pytest.raises(KeyError):
        view.node("gather")  # hidden
    state = view.get_state()
    assert {"nodes", "edges", "heat", "info", "selected", "_esm", "_css"} <= set(state)
    assert "export default" in state["_esm"] and ".eb-graph" in state["_css"]
    json.dumps({k: state[k] for k in ("nodes", "edges", "heat", "info")})  # plain JSON for the front end
    assert "diamond" in repr(view) and "5 of 8 nodes" in repr(view)
    with eb.Engine(model, threads=1) as eng:
        with eb.profile(eng) as prof:
            for _ in range(5):
                eng.run(eng.sample_feeds())
    view.set_profile(prof)
    assert view.info["profiled"] and view.heat
    json.dumps({"info": view.info, "heat": view.heat})  # numbers the front end can take
    view.set_profile(None)
    assert view.heat == {} and not view.info["profiled"]
    view.close()


def test_front_end_files_ship_and_parse(tmp_path):
    js, css = asset_path("graph.js"), asset_path("graph.css")
    assert js.read_text().count("export default") == 1 and "https://" not in js.read_text()
    assert ".eb-graph-node" in css.read_text()
    node = shutil.which("node")
    if node:  # a syntax check of the ES module, where node is installed
        mod = tmp_path / "graph.mjs"
        mod.write_text(js.read_text())
        out = subprocess.run([node, "--input-type=module", "-e",
                              f"import w from {json.dumps(mod.as_uri())}; console.log(typeof w.render)"],
                             capture_output=True, text=True, timeout=30)
        assert out.stdout.strip() == "function", out.stderr


def test_wheel_contains_the_widgets(tmp_path):
    """``pip wheel`` of a copy of the checkout ships widgets/ as edgebench/widgets/."""
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "setup.py", "MANIFEST.in", "README.md"):
        if (ROOT / name).exists():
            shutil.copy(ROOT / name, src / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(ROOT / "edgebench", src / "edgebench", ignore=ignore)
    shutil.copytree(ROOT / "widgets", src / "widgets", ignore=ignore)
    shutil.copytree(ROOT / "jupyter-config", src / "jupyter-config", ignore=ignore)
    out = subprocess.run(["pip", "wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp_path / "whl"),
                          str(src)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    import zipfile

    (wheel,) = (tmp_path / "whl").glob("edgebench-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {"edgebench/widgets/graph.js", "edgebench/widgets/graph.css"} <= names
    assert "edgebench/notebook/graph_view.py" in names
    # the data file that enables the BokehJS server extension in the installing environment
    assert any(n.endswith("etc/jupyter/jupyter_server_config.d/edgebench.json") for n in names)
