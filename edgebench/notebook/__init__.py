"""edgebench in Jupyter: widgets for every object, the graph view, Bokeh plots.

>>> import edgebench as eb
>>> eng = eb.Engine(eb.zoo.load("mlp"))        # doctest: +SKIP
>>> eng                                        # doctest: +SKIP  (a live widget in a notebook)
>>> w = eb.notebook.widget(eng)                # doctest: +SKIP  (the same widget, from code)
>>> eb.notebook.GraphView(eng.model, profile=prof)   # doctest: +SKIP

Names are imported lazily: ``import edgebench.notebook`` loads neither ipywidgets nor bokeh.
"""
from __future__ import annotations

from importlib import import_module
from typing import Any

# public name -> submodule defining it
_LAZY = {
    "widget": "display",
    "mimebundle": "display",
    "register_view": "display",
    "VIEWS": "display",
    "load_bokehjs": "display",
    "widgets_available": "display",
    "GraphView": "graph_view",
    "graph_data": "graph_layout",
    "ModelView": "views",
    "EngineView": "views",
    "ReportView": "views",
    "ProfileView": "views",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'edgebench.notebook' has no attribute {name!r}")
    value = getattr(import_module(f".{_LAZY[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
