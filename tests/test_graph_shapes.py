"""Shape checks between graph nodes by ONNX shape inference (edgebench.graph.shapes)."""
from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

import edgebench as eb
from edgebench.errors import GraphError
from edgebench.graph.dags import linear_model
from edgebench.graph.shapes import check_shapes, compatible, infer_output_shapes


def _matmul_model(n_in: int, n_out: int, name: str = "proj"):
    """x float[batch, n_in] @ W[n_in, n_out] -> y, declared only as float[batch, d]."""
    w = numpy_helper.from_array(np.full((n_in, n_out), 0.1, np.float32), "W")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "W"], ["y"])], name,
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", n_in])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "d"])], [w])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    return eb.load(proto.SerializeToString())


def _relu_model():
    """A shape-agnostic step: x float[n, m] -> Relu -> y float[n, m]."""
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "relu",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", "m"])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", "m"])])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    return eb.load(proto.SerializeToString())


def test_compatible_treats_symbolic_and_unknown_dims_as_wildcards():
    assert compatible(("batch", 8), (None, 8)) and compatible((1, "d"), ("n", 4)) and compatible(None, (3,))
    assert not compatible(("batch", 6), ("batch", 4))
    assert not compatible((2, 3), (2, 3, 1))


def test_inference_fixes_what_the_signature_leaves_symbolic():
    m = _matmul_model(8, 6)
    assert m.outputs[0].shape == ("batch", "d")
    assert infer_output_shapes(m, {"x": ("batch", 8)}) == {"y": ("batch", 6)}
    assert infer_output_shapes(m, {"x": (3, 8)}) == {"y": (3, 6)}


def test_inferred_mismatch_names_both_nodes_and_the_tensor():
    g = eb.Graph()
    g.add(model=_matmul_model(8, 6), inputs={"x": "x"}, outputs={"y": "h"}, name="proj")
    g.add(model=linear_model(4, 0), inputs={"x": "h"}, outputs={"y": "y"}, name="head")
    with pytest.raises(GraphError, match=r"node 'head' input 'x' expects shape \[batch,4\] but tensor 'h' "
                                         r"from node 'proj' has shape \[batch,6\] \(by ONNX shape inference\)"):
        g.compile()


def test_shapes_propagate_through_shape_agnostic_models():
    g = eb.Graph()
    g.add(model=_matmul_model(8, 6), inputs={"x": "x"}, outputs={"y": "h"}, name="proj")
    g.add(model=_relu_model(), inputs={"x": "h"}, outputs={"y": "r"}, name="act")
    g.add(model=linear_model(4, 0), inputs={"x": "r"}, outputs={"y": "y"}, name="head")
    with pytest.raises(GraphError, match=r"node 'head' .* tensor 'r' from node 'act' has shape \[batch,6\]"):
        g.validate()


def test_matching_inferred_shapes_compile_and_run():
    g = eb.Graph()
    g.add(model=_matmul_model(8, 4), inputs={"x": "x"}, outputs={"y": "h"}, name="proj")
    g.add(model=_relu_model(), inputs={"x": "h"}, outputs={"y": "r"}, name="act")
    g.add(model=linear_model(4, 0), inputs={"x": "r"}, outputs={"y": "y"}, name="head")
    known = check_shapes(g.validate().nodes)
    assert known == {"h": ("batch", 4), "r": ("batch", 4), "y": ("batch", 4)}
    x = np.ones((2, 8), np.float32)
    assert g.compile(fuse=False).run({"x": x})["y"].shape == (2, 4)
