"""Graph and Node: the user-facing description of a multi-model DAG pipeline.

    >>> g = eb.Graph("pipeline")                                               # doctest: +SKIP
    >>> g.add(fn=preprocess, inputs=["image"], outputs=["x"])                  # doctest: +SKIP
    >>> g.add(model=detector, inputs={"input": "x"}, outputs={"boxes": "boxes"})  # doctest: +SKIP
    >>> cg = g.compile(backend="onnxruntime", device="cpu")                    # doctest: +SKIP

A graph is only a description: nodes name the tensors they read and write, and the
compiler (:mod:`edgebench.graph.compiler`) checks and optimizes it.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..errors import GraphError

__all__ = ["Graph", "Node"]


@dataclass
class Node:
    """One step of a graph: an ONNX model or a Python function.

    ``inputs`` maps the step's own argument names (model input names, or ``"0"``, ``"1"``,
    ... for positional function arguments) to graph tensor names; ``outputs`` maps the step's
    output names (model output names, or positions) to graph tensor names.
    """

    name: str
    kind: str  # "model" | "fn"
    inputs: dict[str, str]
    outputs: dict[str, str]
    model: Any = None
    fn: Callable[..., Any] | None = None
    const: bool | None = None
    device: str | None = None
    fused_from: list[str] = field(default_factory=list)

    @property
    def input_tensors(self) -> list[str]:
        return list(self.inputs.values())

    @property
    def output_tensors(self) -> list[str]:
        return list(self.outputs.values())

    def __repr__(self) -> str:
        return f"Node({self.name!r}, {self.kind}, {self.input_tensors} -> {self.output_tensors})"


class Graph:
    """A DAG of ONNX models and Python functions connected by named tensors.

    Parameters
    ----------
    name
        The graph's name (shown by ``explain()``).
    inputs
        Names of the graph's input tensors.  Default: every tensor some node reads and no
        node writes.  Declare them to have a typo in a tensor name reported at compile time.
    outputs
        Names of the tensors :meth:`CompiledGraph.run` returns.  Default: every tensor some
        node writes and no node reads.  Nodes that none of them needs are eliminated.
    """

    def __init__(self, name: str = "graph", *, inputs: Sequence[str] | None = None,
                 outputs: Sequence[str] | None = None):
        self.name = name
        self.nodes: list[Node] = []
        self.constants: dict[str, Any] = {}
        self._inputs = list(inputs) if inputs is not None else None
        self._outputs = list(outputs) if outputs is not None else None

    # -- building -----------------------------------------------------------------------------
    def add(self, *, model: Any = None, fn: Callable[..., Any] | None = None,
            inputs: Sequence[str] | Mapping[str, str] = (),
            outputs: Sequence[str] | Mapping[str, str] = (),
            name: str | None = None, const: bool | None = None, device: str | None = None) -> Node:
        """Add a step and return its :class:`Node`.

        Parameters
        ----------
        model
            An :class:`~edgebench.Model` or anything :func:`edgebench.load` accepts.
        fn
            A Python function; called with the input tensors positionally (list ``inputs``)
            or by keyword (dict ``inputs``: ``{parameter: tensor}``).  With one output it
            returns the value, with several a tuple.
        inputs, outputs
            For a model, a dict ``{model name: graph tensor}`` or a list in the model's own
            input/output order; for a function, a list or a dict as above.
        name
            Node name (default ``kind_index``); used in every error about it.
        const
            ``True``: the function is pure, so with constant inputs it is computed once at
            compile time (constant folding); ``False``: never folded (side effects).
            ``None`` (default): folded when all its inputs are constants.
        device
            Placement of a model node (default: the ``device`` given to ``compile``).
        """
        if (model is None) == (fn is None):
            raise GraphError("Graph.add needs exactly one of model= or fn=",
                             "pass model=<Model> for an ONNX step or fn=<callable> for a Python step")
        name = name or f"{'model' if model is not None else 'fn'}_{len(self.nodes)}"
        if any(n.name == name for n in self.nodes):
            raise GraphError(f"graph {self.name!r} already has a node named {name!r}", "pick another name")
        if model is not None:
            from ..model import load

            model = load(model)
            ins = _mapping(inputs, [s.name for s in model.inputs], name, "inputs")
            outs = _mapping(outputs, [s.name for s in model.outputs], name, "outputs")
            node = Node(name, "model", ins, outs, model=model, const=const, device=device)
        else:
            if not callable(fn):
                raise GraphError(f"node {name!r}: fn={fn!r} is not callable")
            ins = dict(inputs) if isinstance(inputs, Mapping) else {str(i): t for i, t in enumerate(inputs)}
            outs = dict(outputs) if isinstance(outputs, Mapping) else {str(i): t for i, t in enumerate(outputs)}
            if not outs:
                raise GraphError(f"node {name!r} has no outputs", "name the tensors it produces with outputs=[...]")
            node = Node(name, "fn", ins, outs, fn=fn, const=const, device=device)
        self.nodes.append(node)
        return node

    def constant(self, name: str, value: Any) -> str:
        """Add a constant tensor ``name`` (folded into the nodes that read it); returns its name."""
        self.constants[name] = value
        return name

    # -- derived ------------------------------------------------------------------------------
    @property
    def inputs(self) -> list[str]:
        """The graph's input tensors (declared, or read by some node and written by none)."""
        if self._inputs is not None:
            return list(self._inputs)
        produced = {t for n in self.nodes for t in n.output_tensors}
        seen: dict[str, None] = {}
        for n in self.nodes:
            for t in n.input_tensors:
                if t not in produced and t not in self.constants:
                    seen[t] = None
        return list(seen)

    @property
    def outputs(self) -> list[str]:
        """The graph's output tensors (declared, or written by some node and read by none)."""
        if self._outputs is not None:
            return list(self._outputs)
        consumed = {t for n in self.nodes for t in n.input_tensors}
        return [t for n in self.nodes for t in n.output_tensors if t not in consumed]

    def node(self, name: str) -> Node:
        for n in self.nodes:
            if n.name == name:
                return n
        raise GraphError(f"graph {self.name!r} has no node {name!r}",
                         f"known nodes: {', '.join(n.name for n in self.nodes)}")

    def validate(self) -> Graph:
        """Raise :class:`GraphError` if the graph is invalid; return it otherwise."""
        from .compiler import validate

        validate(self)
        return self

    def compile(self, backend: str | None = None, device: str = "cpu", **kwargs: Any):
        """Validate, optimize and place the graph; returns a :class:`CompiledGraph`.

        See :func:`edgebench.graph.compiler.compile_graph` for the options.
        """
        from .compiler import compile_graph

        return compile_graph(self, backend=backend, device=device, **kwargs)

    def __repr__(self) -> str:
        return (f"Graph({self.name!r}, {len(self.nodes)} nodes, inputs={self.inputs}, "
                f"outputs={self.outputs})")


def _mapping(spec: Sequence[str] | Mapping[str, str], names: list[str], node: str, what: str) -> dict[str, str]:
    """A model node's name mapping: a dict as given, or a list in the model's own order."""
    if isinstance(spec, Mapping):
        unknown = [k for k in spec if k not in names]
        if unknown:
            raise GraphError(f"node {node!r}: {what} {unknown} are not the model's {what}",
                             f"the model's {what} are {names}")
        return dict(spec)
    spec = list(spec)
    if not spec:
        return {k: k for k in names}
    if len(spec) > len(names):
        raise GraphError(f"node {node!r}: {len(spec)} {what} given, the model has {len(names)} ({names})")
    return dict(zip(names, spec))
