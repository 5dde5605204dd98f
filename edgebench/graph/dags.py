"""A seeded generator of random DAG pipelines made of real tiny ONNX models and numpy functions.

Used by the property tests (compiled graph == naive node-by-node run), and meant to be reused
by the cluster partitioner and the synthetic testbed.

    >>> dag = random_dag(seed=3, n_nodes=8)                 # doctest: +SKIP
    >>> dag.graph.compile().run(dag.feeds)                  # doctest: +SKIP
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .api import Graph

__all__ = ["FUNCTIONS", "GeneratedDAG", "binary_model", "linear_model", "random_dag"]


def linear_model(width: int, seed: int, act: str | None = "Relu", name: str = "linear", opset: int = 17):
    """A real ONNX model ``x[batch, width] -> act(x @ W + b) -> y[batch, width]``."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from ..model import Model

    rng = np.random.default_rng(seed)
    w = numpy_helper.from_array((rng.standard_normal((width, width)) / np.sqrt(width)).astype(np.float32), "W")
    b = numpy_helper.from_array((0.1 * rng.standard_normal(width)).astype(np.float32), "B")
    nodes = [helper.make_node("MatMul", ["x", "W"], ["xw"]), helper.make_node("Add", ["xw", "B"], ["z" if act else "y"])]
    if act:
        nodes.append(helper.make_node(act, ["z"], ["y"]))
    graph = helper.make_graph(nodes, name, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", width])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", width])], [w, b])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=8)
    onnx.checker.check_model(proto)
    return Model(proto.SerializeToString(), name=name, source="generated", proto=proto)


def binary_model(width: int, op: str = "Add", name: str = "binary", opset: int = 17):
    """A real ONNX model ``a, b [batch, width] -> op(a, b)`` (``Add``, ``Mul``, ``Sub``, ``Max``)."""
    from onnx import TensorProto, helper

    from ..model import Model

    spec = [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["batch", width]) for n in ("a", "b")]
    graph = helper.make_graph([helper.make_node(op, ["a", "b"], ["y"])], name, spec,
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", width])])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=8)
    return Model(proto.SerializeToString(), name=name, source="generated", proto=proto)


def _scale(x):
    return (0.5 * x + 0.25).astype(np.float32)


def _tanh(x):
    return np.tanh(x).astype(np.float32)


def _mix(a, b):
    return (0.5 * (a - b)).astype(np.float32)


def _split(x):
    return (np.maximum(x, 0).astype(np.float32), np.minimum(x, 0).astype(np.float32))


# name -> (function, number of inputs, number of outputs)
FUNCTIONS = {"scale": (_scale, 1, 1), "tanh": (_tanh, 1, 1), "mix": (_mix, 2, 1), "split": (_split, 1, 2)}


@dataclass
class GeneratedDAG:
    """A generated graph, feeds for it, and what went into it."""

    graph: Graph
    feeds: dict[str, np.ndarray]
    seed: int
    n_model_nodes: int
    n_fn_nodes: int


def random_dag(seed: int = 0, n_nodes: int = 8, width: int = 8, batch: int = 1, n_inputs: int = 2,
               p_model: float = 0.6, p_chain: float = 0.5, p_const: float = 0.15) -> GeneratedDAG:
    """Generate a random DAG pipeline (deterministic for a given ``seed``).

    Parameters
    ----------
    n_nodes
        Number of steps (model and function nodes).
    width, batch
        Every tensor is float32 ``[batch, width]``.
    n_inputs
        Graph input tensors (``in0``, ``in1``, ...).
    p_model
        Probability that a step is an ONNX model (a linear layer or a binary op).
    p_chain
        Probability that a step reads the tensor the previous step wrote (makes fusable chains).
    p_const
        Probability of adding a constant tensor and a function of it (constant folding).
    """
    rng = np.random.default_rng(seed)
    g = Graph(f"dag{seed}")
    feeds = {f"in{i}": rng.standard_normal((batch, width)).astype(np.float32) for i in range(n_inputs)}
    avail = list(feeds)
    last: str | None = None
    n_model = n_fn = 0
    acts = ["Relu", "Tanh", "Sigmoid", None]

    def pick() -> str:
        if last is not None and rng.random() < p_chain:
            return last
        return avail[int(rng.integers(len(avail)))]

    for i in range(n_nodes):
        if rng.random() < p_const:
            c = g.constant(f"c{i}", rng.standard_normal((batch, width)).astype(np.float32))
            g.add(fn=_scale, inputs=[c], outputs=[f"c{i}s"], name=f"const{i}")
            avail.append(f"c{i}s")
        if rng.random() < p_model:
            n_model += 1
            if rng.random() < 0.7:
                act = acts[int(rng.integers(len(acts)))]
                m = linear_model(width, int(rng.integers(1 << 30)), act, name=f"lin{i}")
                g.add(model=m, inputs={"x": pick()}, outputs={"y": f"t{i}"}, name=f"n{i}")
            else:
                op = ["Add", "Mul", "Sub", "Max"][int(rng.integers(4))]
                a, b = pick(), avail[int(rng.integers(len(avail)))]
                g.add(model=binary_model(width, op, name=f"{op.lower()}{i}"), inputs={"a": a, "b": b},
                      outputs={"y": f"t{i}"}, name=f"n{i}")
            outs = [f"t{i}"]
        else:
            n_fn += 1
            fname = list(FUNCTIONS)[int(rng.integers(len(FUNCTIONS)))]
            fn, n_in, n_out = FUNCTIONS[fname]
            ins = [pick()] + [avail[int(rng.integers(len(avail)))] for _ in range(n_in - 1)]
            outs = [f"t{i}"] if n_out == 1 else [f"t{i}_{k}" for k in range(n_out)]
            g.add(fn=fn, inputs=ins, outputs=outs, name=f"n{i}")
        avail.extend(outs)
        last = outs[0]
    return GeneratedDAG(g, feeds, seed, n_model, n_fn)


def naive_run(graph: Graph, feeds: dict[str, Any]) -> dict[str, Any]:
    """Reference: every node in insertion-independent topological order, one plain
    onnxruntime session per model, no fusion, folding or pruning."""
    import onnxruntime as ort

    values: dict[str, Any] = {**graph.constants, **feeds}
    pending = list(graph.nodes)
    while pending:
        for n in pending:
            if all(t in values for t in n.input_tensors):
                break
        else:
            raise RuntimeError("no runnable node: the graph is not a DAG")
        pending.remove(n)
        if n.kind == "model":
            sess = ort.InferenceSession(n.model.to_bytes(), providers=["CPUExecutionProvider"])
            names = [o.name for o in sess.get_outputs()]
            res = dict(zip(names, sess.run(None, {p: values[t] for p, t in n.inputs.items()})))
            values.update({t: res[p] for p, t in n.outputs.items()})
        else:
            r = n.fn(*[values[t] for t in n.input_tensors])
            outs = n.output_tensors
            values.update({outs[0]: r} if len(outs) == 1 else dict(zip(outs, r)))
    return {t: values[t] for t in graph.outputs}
