"""Shape checks between graph nodes by ONNX shape inference.

A model's declared signature often leaves dimensions symbolic (``y: float[batch, d]``) even
where its computation fixes them (``d`` is 6 because ``W`` is 8x6).  :func:`check_shapes`
walks the graph in topological order, runs ``onnx.shape_inference`` on each model node with
the most concrete input shapes known so far (its declared inputs, refined by what its
producers were inferred to output), and compares every tensor passed from one model to
another with the consumer's declared input shape.  A symbolic or unknown dimension matches
anything; two concrete dimensions that differ, or different ranks, are a :class:`GraphError`
naming both nodes and the tensor.
"""
from __future__ import annotations

from typing import Any

from ..errors import GraphError
from .api import Node

__all__ = ["check_shapes", "compatible", "declared_shapes", "infer_output_shapes"]

_MAX_INFER_BYTES = 256 * 2 ** 20  # bigger models keep their declared output shapes


def _dims(type_proto: Any) -> tuple | None:
    """The shape of an ONNX TypeProto (dims: int fixed, str symbolic, None unknown), or None
    when it has no shape information at all."""
    if not type_proto.HasField("tensor_type") or not type_proto.tensor_type.HasField("shape"):
        return None
    return tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
                 for d in type_proto.tensor_type.shape.dim)


def compatible(a: tuple | None, b: tuple | None) -> bool:
    """True unless ``a`` and ``b`` are both known and differ in rank or in a fixed dimension."""
    if a is None or b is None:
        return True
    return len(a) == len(b) and all(x == y for x, y in zip(a, b)
                                    if isinstance(x, int) and isinstance(y, int))


def _refine(known: tuple | None, declared: tuple | None) -> tuple | None:
    """The more concrete of two compatible shapes, dimension by dimension."""
    if known is None or declared is None or len(known) != len(declared):
        return declared if known is None else known
    return tuple(k if isinstance(k, int) or not isinstance(d, int) else d for k, d in zip(known, declared))


def _fmt(shape: tuple | None) -> str:
    return "unknown" if shape is None else "[" + ",".join("?" if d is None else str(d) for d in shape) + "]"


def declared_shapes(model: Any) -> tuple[dict[str, tuple | None], dict[str, tuple | None]]:
    """``(inputs, outputs)``: the model's declared shapes by name (None: no shape given)."""
    g = model.proto.graph
    inits = {i.name for i in g.initializer}
    return ({v.name: _dims(v.type) for v in g.input if v.name not in inits},
            {v.name: _dims(v.type) for v in g.output})


def infer_output_shapes(model: Any, inputs: dict[str, tuple | None]) -> dict[str, tuple | None]:
    """Output shapes of ``model`` by ``onnx.shape_inference`` given its input shapes.

    The model's own output and intermediate annotations are left out, so what comes back is
    what its operators compute; an output inference cannot work out is None, and so is every
    output of a model inference fails on or that is bigger than 256 MiB.
    """
    import onnx
    from onnx import shape_inference

    if getattr(model, "size_bytes", 0) > _MAX_INFER_BYTES:
        return {}
    proto = onnx.ModelProto()
    proto.CopyFrom(model.proto)
    g = proto.graph
    for vi in g.input:
        shape = inputs.get(vi.name)
        if shape is None or not vi.type.HasField("tensor_type"):
            continue
        vi.type.tensor_type.ClearField("shape")
        dims = vi.type.tensor_type.shape.dim
        for d in shape:
            dim = dims.add()
            if isinstance(d, int):
                dim.dim_value = d
            elif isinstance(d, str):
                dim.dim_param = d
    for vi in g.output:
        if vi.type.HasField("tensor_type"):
            vi.type.tensor_type.ClearField("shape")
    g.ClearField("value_info")
    try:
        inferred = shape_inference.infer_shapes(proto, strict_mode=False, data_prop=True)
    except Exception:  # noqa: BLE001 - custom ops, odd models: no inferred shapes, no error
        return {}
    return {vi.name: _dims(vi.type) for vi in inferred.graph.output}


def check_shapes(order: list[Node]) -> dict[str, tuple | None]:
    """Propagate shapes through the model nodes of ``order`` (topological) and check every
    model-to-model tensor against its consumer's declared input shape.

    Returns the shape inferred for each tensor a model node writes.  Raises
    :class:`GraphError` naming the producer, the consumer and the tensor on a mismatch.
    """
    known: dict[str, tuple | None] = {}
    producer: dict[str, Node] = {}
    for n in order:
        if n.kind != "model":
            continue
        ins, outs = declared_shapes(n.model)
        feed: dict[str, tuple | None] = {}
        for port, t in n.inputs.items():
            want = ins.get(port)
            got = known.get(t)
            if t in known and not compatible(got, want):
                raise GraphError(
                    f"node {n.name!r} input {port!r} expects shape {_fmt(want)} but tensor {t!r} from node "
                    f"{producer[t].name!r} has shape {_fmt(got)} (by ONNX shape inference)",
                    "insert a reshaping step between them, or fix the producing model")
            feed[port] = _refine(got, want)
        inferred = infer_output_shapes(n.model, feed)
        for port, t in n.outputs.items():
            known[t] = _refine(inferred.get(port), outs.get(port))
            producer[t] = n
    return known
