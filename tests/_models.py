"""Tiny real ONNX models built with onnx.helper (no torch needed)."""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def mlp_proto(n_in: int = 16, n_hidden: int = 32, n_out: int = 4, seed: int = 0, opset: int = 17,
              batch: str | int = "batch") -> onnx.ModelProto:
    """x[batch, n_in] -> Gemm -> Relu -> Gemm -> y[batch, n_out]."""
    rng = np.random.default_rng(seed)
    w1 = numpy_helper.from_array(rng.standard_normal((n_in, n_hidden)).astype(np.float32), "w1")
    b1 = numpy_helper.from_array(rng.standard_normal(n_hidden).astype(np.float32), "b1")
    w2 = numpy_helper.from_array(rng.standard_normal((n_hidden, n_out)).astype(np.float32), "w2")
    b2 = numpy_helper.from_array(rng.standard_normal(n_out).astype(np.float32), "b2")
    nodes = [
        helper.make_node("Gemm", ["x", "w1", "b1"], ["h"], name="fc1"),
        helper.make_node("Relu", ["h"], ["hr"], name="relu1"),
        helper.make_node("Gemm", ["hr", "w2", "b2"], ["y"], name="fc2"),
    ]
    graph = helper.make_graph(
        nodes, "tiny_mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, n_in])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, n_out])],
        [w1, b1, w2, b2],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=8)


def two_input_proto() -> onnx.ModelProto:
    """a[batch, 3] float32, b[batch, 3] int64 -> a + Cast(b)."""
    nodes = [
        helper.make_node("Cast", ["b"], ["bf"], to=TensorProto.FLOAT, name="cast"),
        helper.make_node("Add", ["a", "bf"], ["sum"], name="add"),
    ]
    graph = helper.make_graph(
        nodes, "two_inputs",
        [helper.make_tensor_value_info("a", TensorProto.FLOAT, ["batch", 3]),
         helper.make_tensor_value_info("b", TensorProto.INT64, ["batch", 3])],
        [helper.make_tensor_value_info("sum", TensorProto.FLOAT, ["batch", 3])],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def mlp_reference(proto: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    """numpy forward pass of :func:`mlp_proto`."""
    w = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}
    h = np.maximum(x @ w["w1"] + w["b1"], 0)
    return h @ w["w2"] + w["b2"]
