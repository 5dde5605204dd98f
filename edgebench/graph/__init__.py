"""Multi-model DAG pipelines: :class:`Graph` (describe), the compiler (validate, fold, prune,
fuse, place) and :class:`CompiledGraph` (run them with an event-driven scheduler).

    >>> g = eb.Graph("pipeline")                                           # doctest: +SKIP
    >>> g.add(fn=pre, inputs=["image"], outputs=["x"])                     # doctest: +SKIP
    >>> g.add(model=m, inputs={"input": "x"}, outputs={"y": "y"})          # doctest: +SKIP
    >>> cg = g.compile(backend="onnxruntime", device="cpu"); print(cg.explain())  # doctest: +SKIP
"""
from __future__ import annotations

from .api import Graph, Node
from .compiler import compile_graph, validate
from .executor import CompiledGraph

_LAZY = {"random_dag": ".dags", "StreamGraph": ".stream", "Stream": ".stream", "FrameSource": ".stream_nodes",
         "QueueSource": ".stream_nodes", "Window": ".stream_nodes", "RetryPolicy": ".stream_nodes",
         "StreamError": ".stream_nodes", "Event": ".stream_nodes"}

__all__ = sorted(["CompiledGraph", "Graph", "Node", "compile_graph", "validate", *_LAZY])


def __getattr__(name: str):
    if name in _LAZY:
        from importlib import import_module

        return getattr(import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module 'edgebench.graph' has no attribute {name!r}")
