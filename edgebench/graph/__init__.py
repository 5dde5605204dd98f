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

__all__ = ["CompiledGraph", "Graph", "Node", "compile_graph", "random_dag", "validate"]


def __getattr__(name: str):
    if name == "random_dag":
        from .dags import random_dag

        return random_dag
    raise AttributeError(f"module 'edgebench.graph' has no attribute {name!r}")
