"""Graph validation (one test per error), constant folding, dead-node elimination, fusion, explain()."""
from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper

import edgebench as eb
from edgebench.errors import EdgebenchError, GraphError
from edgebench.graph.dags import binary_model, linear_model


def _cast_model(width: int = 8):
    """x float[batch, width] -> Cast to int64."""
    graph = helper.make_graph([helper.make_node("Cast", ["x"], ["y"], to=TensorProto.INT64)], "cast",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", width])],
                              [helper.make_tensor_value_info("y", TensorProto.INT64, ["batch", width])])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    return eb.load(proto.SerializeToString())


def test_graph_error_is_edgebench_and_value_error():
    assert issubclass(GraphError, EdgebenchError) and issubclass(GraphError, ValueError)


def test_cycle_is_reported_with_its_nodes():
    g = eb.Graph("cyc")
    g.add(fn=np.tanh, inputs=["a", "c"], outputs=["b"], name="first")
    g.add(fn=np.tanh, inputs=["b"], outputs=["c"], name="second")
    with pytest.raises(GraphError, match=r"cycle through nodes .*first.*second|cycle through nodes .*second.*first"):
        g.compile()


def test_self_loop_is_a_cycle():
    g = eb.Graph()
    g.add(fn=np.tanh, inputs=["a"], outputs=["a"], name="loop")
    with pytest.raises(GraphError, match="loop"):
        g.validate()


def test_doubly_produced_tensor_names_both_nodes():
    g = eb.Graph()
    g.add(fn=np.tanh, inputs=["x"], outputs=["y"], name="p1")
    g.add(fn=np.exp, inputs=["x"], outputs=["y"], name="p2")
    with pytest.raises(GraphError, match=r"'y' is produced twice: by node 'p1' and node 'p2'"):
        g.compile()


def test_unconnected_model_input():
    g = eb.Graph()
    g.add(model=binary_model(8), inputs={"a": "x"}, outputs={"y": "y"}, name="adder")
    with pytest.raises(GraphError, match=r"node 'adder': model inputs \['b'\] are not connected"):
        g.compile()


def test_unknown_model_port():
    with pytest.raises(GraphError, match=r"node 'lin'.*\['nope'\]"):
        eb.Graph().add(model=linear_model(8, 0), inputs={"nope": "x"}, name="lin")


def test_tensor_read_but_never_produced_with_declared_inputs():
    g = eb.Graph(inputs=["image"])
    g.add(fn=np.tanh, inputs=["imgae"], outputs=["y"], name="pre")
    with pytest.raises(GraphError, match=r"node 'pre' reads tensor 'imgae', which no node produces"):
        g.compile()


def test_output_nobody_produces():
    g = eb.Graph(outputs=["z"])
    g.add(fn=np.tanh, inputs=["x"], outputs=["y"], name="t")
    with pytest.raises(GraphError, match="graph output 'z' is produced by no node"):
        g.compile()


def test_missing_graph_input_at_run_names_the_consumer():
    g = eb.Graph()
    g.add(fn=np.add, inputs=["a", "b"], outputs=["y"], name="adder")
    cg = g.compile()
    with pytest.raises(GraphError, match=r"missing graph inputs \['b'\] \(needed by nodes \['adder'\]\)"):
        cg.run({"a": np.ones(2)})
    assert cg.run({"a": np.ones(2), "b": np.ones(2)})["y"].tolist() == [2, 2]


def test_dtype_mismatch_between_models():
    g = eb.Graph()
    g.add(model=_cast_model(8), inputs={"x": "x"}, outputs={"y": "xi"}, name="caster")
    g.add(model=linear_model(8, 0), inputs={"x": "xi"}, outputs={"y": "y"}, name="lin")
    with pytest.raises(GraphError, match=r"node 'lin' input 'x' expects float32 but tensor 'xi' from node 'caster' is int64"):
        g.compile()


def test_shape_mismatch_between_models():
    g = eb.Graph()
    g.add(model=linear_model(8, 0), inputs={"x": "x"}, outputs={"y": "h"}, name="wide")
    g.add(model=linear_model(4, 1), inputs={"x": "h"}, outputs={"y": "y"}, name="narrow")
    with pytest.raises(GraphError, match=r"node 'narrow' input 'x' expects shape .* from node 'wide'"):
        g.compile()


def test_fn_returning_wrong_arity_and_failing_fn_name_the_node():
    g = eb.Graph()
    g.add(fn=lambda x: x, inputs=["x"], outputs=["a", "b"], name="two")
    with pytest.raises(GraphError, match="node 'two' returned"):
        g.compile().run({"x": (1, 2, 3)})
    g = eb.Graph()
    g.add(fn=lambda x: 1 / 0, inputs=["x"], outputs=["y"], name="boom")
    with pytest.raises(GraphError, match="node 'boom' failed: ZeroDivisionError"):
        g.compile().run({"x": 1})


def test_add_needs_exactly_one_of_model_or_fn_and_unique_names():
    with pytest.raises(GraphError):
        eb.Graph().add(inputs=["x"], outputs=["y"])
    g = eb.Graph()
    g.add(fn=np.tanh, inputs=["x"], outputs=["y"], name="n")
    with pytest.raises(GraphError, match="already has a node named 'n'"):
        g.add(fn=np.tanh, inputs=["y"], outputs=["z"], name="n")


def test_constant_folding_runs_once_at_compile():
    calls = []

    def table(c):
        calls.append(1)
        return c * 2

    g = eb.Graph()
    g.constant("c", np.arange(3.0))
    g.add(fn=table, inputs=["c"], outputs=["t"], name="table", const=True)
    g.add(fn=np.add, inputs=["x", "t"], outputs=["y"], name="use")
    cg = g.compile()
    assert cg.plan["folded"] == ["table"] and len(cg.steps) == 1 and len(calls) == 1
    for _ in range(3):
        assert cg.run({"x": np.ones(3)})["y"].tolist() == [1, 3, 5]
    assert len(calls) == 1
    assert "constant-folded: table" in cg.explain()
    unfolded = g.compile(fold=False)
    unfolded.run({"x": np.ones(3)})
    assert len(calls) == 2 and len(unfolded.steps) == 2


def test_const_true_with_live_inputs_is_an_error_and_const_false_never_folds():
    g = eb.Graph()
    g.add(fn=np.tanh, inputs=["x"], outputs=["y"], name="f", const=True)
    with pytest.raises(GraphError, match="node 'f' is marked const=True"):
        g.compile()
    g = eb.Graph()
    g.constant("c", 1.0)
    g.add(fn=np.tanh, inputs=["c"], outputs=["y"], name="f", const=False)
    assert g.compile().plan["folded"] == []


def test_dead_nodes_are_eliminated():
    calls = []
    g = eb.Graph(outputs=["y"])
    g.add(fn=lambda x: x + 1, inputs=["x"], outputs=["y"], name="live")
    g.add(fn=lambda x: calls.append(x) or x, inputs=["x"], outputs=["unused"], name="dead")
    cg = g.compile()
    assert cg.plan["eliminated"] == ["dead"]
    assert cg.run({"x": 1}) == {"y": 2} and calls == []
    assert "eliminated (dead): dead" in cg.explain()
    g.compile(prune=False).run({"x": 1})
    assert calls == [1]


def _chain(n: int = 3, width: int = 16):
    g = eb.Graph("chain")
    t = "x"
    for i in range(n):
        g.add(model=linear_model(width, i, act="Relu" if i < n - 1 else None), inputs={"x": t},
              outputs={"y": f"h{i}"}, name=f"layer{i}")
        t = f"h{i}"
    return g


def test_chain_of_three_models_is_fused_into_one_step_with_same_outputs():
    g = _chain(3)
    x = np.random.default_rng(0).standard_normal((1, 16)).astype(np.float32)
    fused, naive = g.compile(), g.compile(fuse=False)
    assert len(fused.steps) == 1 and len(naive.steps) == 3
    assert fused.plan["fused"] == [["layer0", "layer1", "layer2"]]
    node = fused.steps[0].node
    assert node.kind == "model" and node.fused_from == ["layer0", "layer1", "layer2"]
    # intermediates are inside the ONNX model, not graph tensors any more
    assert node.input_tensors == ["x"] and node.output_tensors == ["h2"]
    np.testing.assert_allclose(fused.run({"x": x})["h2"], naive.run({"x": x})["h2"], rtol=1e-5, atol=1e-6)
    text = fused.explain()
    assert "fused groups: layer0 -> layer1 -> layer2" in text and "onnxruntime/cpu" in text


def test_no_fusion_across_a_branch_or_a_graph_output():
    g = eb.Graph(outputs=["h0", "h1", "h2"])
    g.add(model=linear_model(8, 0), inputs={"x": "x"}, outputs={"y": "h0"}, name="a")
    g.add(model=linear_model(8, 1), inputs={"x": "h0"}, outputs={"y": "h1"}, name="b")
    g.add(model=linear_model(8, 2), inputs={"x": "h0"}, outputs={"y": "h2"}, name="c")
    cg = g.compile()
    assert cg.plan["fused"] == [] and len(cg.steps) == 3


def test_explain_lists_order_placement_and_dependencies():
    g = eb.Graph("pipe")
    g.add(fn=lambda im: (im / 255.0).astype(np.float32), inputs=["image"], outputs=["x"], name="pre")
    g.add(model=linear_model(8, 0), inputs={"x": "x"}, outputs={"y": "boxes"}, name="det")
    g.add(model=linear_model(8, 1), inputs={"x": "x"}, outputs={"y": "logits"}, name="cls")
    g.add(fn=lambda b, l: b + l, inputs=["boxes", "logits"], outputs=["result"], name="post")
    cg = g.compile(backend="onnxruntime", device="cpu")
    text = cg.explain()
    lines = text.splitlines()
    assert lines[0] == "CompiledGraph 'pipe': 4 steps"
    assert "inputs:  image" in text and "outputs: result" in text
    assert any(l.strip().startswith("0. pre (fn) on python/python") for l in lines)
    assert any("det (model) on onnxruntime/cpu" in l and "after pre" in l for l in lines)
    assert any(l.strip().startswith("3. post") and "after det, cls" in l for l in lines)
    assert "fused groups: none" in text
    assert repr(cg).startswith("CompiledGraph('pipe', 4 steps")


def test_models_that_cannot_merge_stay_separate_with_a_note():
    """Different opsets cannot be merged by onnx.compose: the chain stays two steps, still correct."""
    g = eb.Graph()
    g.add(model=linear_model(8, 0, opset=17), inputs={"x": "x"}, outputs={"y": "h"}, name="new")
    g.add(model=linear_model(8, 1, opset=13), inputs={"x": "h"}, outputs={"y": "y"}, name="old")
    cg = g.compile()
    assert cg.plan["fused"] == [] and len(cg.steps) == 2
    assert any(n.startswith("new+old not fused") for n in cg.plan["notes"])
    assert "note: new+old not fused" in cg.explain()
    x = np.ones((1, 8), np.float32)
    np.testing.assert_allclose(cg.run({"x": x})["y"], g.compile(fuse=False).run({"x": x})["y"], rtol=1e-6)


def test_per_node_device_placement_and_unavailable_device():
    g = eb.Graph()
    g.add(model=linear_model(8, 0), inputs={"x": "x"}, outputs={"y": "y"}, name="m", device="cpu")
    assert "m (model) on onnxruntime/cpu" in g.compile(device="cpu").explain()
    g2 = eb.Graph()
    g2.add(model=linear_model(8, 0), inputs={"x": "x"}, outputs={"y": "y"}, name="m", device="npu:7")
    with pytest.raises(GraphError, match="node 'm' cannot be placed on .*npu:7"):
        g2.compile()
