"""edgebench: a Jupyter-first workbench for edge-AI inference.

>>> import edgebench as eb
>>> m = eb.zoo.load("digits")
>>> eng = eb.Engine(m)
>>> eng.run(eb.zoo.sample("digits"))  # doctest: +SKIP

Every name is imported lazily (PEP 562), so ``import edgebench`` loads none of torch,
onnxruntime, dask, bokeh, ipywidgets or pandas.
"""
from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name -> module that defines it (relative to this package)
_LAZY = {
    "load": ".model",
    "Model": ".model",
    "TensorSpec": ".model",
    "Engine": ".engine",
    "benchmark": ".profile.scenarios",
    "BenchmarkReport": ".profile.report",
    "settings": ".config",
    "OptimizeResult": ".optimize.result",
    "QuantizeConfig": ".optimize.quantize",
    "MixedPrecisionConfig": ".optimize.mixed",
    "GraphOptConfig": ".optimize.graph",
    "Float16Config": ".optimize.fp16",
    "PruneConfig": ".optimize.prune",
    "SessionConfig": ".optimize.session",
    "DynamicBatcher": ".batching",
    "QueuePolicy": ".batching",
    "Graph": ".graph",
    "Cluster": ".cluster.api",
}
_SUBMODULES = {"errors", "zoo", "config", "model", "engine", "devices", "backends", "profile", "cli", "notebook", "optimize", "batching", "serve", "graph", "cluster"}

__all__ = sorted([*_LAZY, "errors", "zoo", "profile", "devices", "backends", "optimize", "serve", "graph", "cluster", "__version__"])

if TYPE_CHECKING:  # pragma: no cover
    from . import errors, zoo
    from . import backends, devices
    from .config import settings
    from .engine import Engine
    from .model import Model, TensorSpec, load
    from . import profile
    from .profile.report import BenchmarkReport
    from .profile.scenarios import benchmark
    from . import optimize
    from .optimize.result import OptimizeResult
    from .optimize.quantize import QuantizeConfig
    from .optimize.mixed import MixedPrecisionConfig
    from .optimize.graph import GraphOptConfig
    from .optimize.fp16 import Float16Config
    from .optimize.prune import PruneConfig
    from .optimize.session import SessionConfig
    from .batching import DynamicBatcher, QueuePolicy
    from . import serve
    from . import graph
    from .graph import Graph
    from . import cluster
    from .cluster.api import Cluster


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(import_module(_LAZY[name], __name__), name)
    elif name in _SUBMODULES:
        value = import_module("." + name, __name__)
    else:
        raise AttributeError(f"module 'edgebench' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


def load_ipython_extension(ipython: Any) -> None:
    """``%load_ext edgebench``: registers the ``%edgebench`` magics."""
    from .notebook.magics import load_ipython_extension as _load

    _load(ipython)
