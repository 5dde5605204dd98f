"""The model graph view: an anywidget drawing the ONNX graph, with per-op time as heat.

    >>> eb.notebook.GraphView(model)                       # doctest: +SKIP
    >>> eb.notebook.GraphView(model, profile=prof)         # doctest: +SKIP

The front end is ``widgets/graph.js`` and ``widgets/graph.css`` (top-level ``widgets/`` in a
checkout, ``edgebench/widgets/`` in an installed wheel).  The layout is computed in Python
(:mod:`edgebench.notebook.graph_layout`) and held in traitlets, so it is testable without a
browser.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import anywidget
import traitlets

from ..errors import EdgebenchError
from .graph_layout import MAX_NODES, graph_data

__all__ = ["GraphView", "asset_path"]


def asset_path(name: str) -> Path:
    """Path of a front-end file: ``edgebench/widgets/NAME`` (wheel) or ``widgets/NAME`` (checkout)."""
    pkg = Path(__file__).resolve().parent.parent
    candidates = [pkg / "widgets" / name]
    if (pkg.parent / "pyproject.toml").is_file():  # a source checkout (editable install)
        candidates.append(pkg.parent / "widgets" / name)
    for p in candidates:
        if p.is_file():
            return p
    raise EdgebenchError(f"the widget file {name!r} is missing (looked in {', '.join(map(str, candidates))})",
                         "reinstall edgebench: the wheel ships it in edgebench/widgets/")


class GraphView(anywidget.AnyWidget):
    """The ONNX graph of a model: operators, tensor shapes, and time per operator as heat.

    Parameters
    ----------
    model
        A :class:`~edgebench.Model` (or an ONNX proto, or anything :func:`edgebench.load` takes).
    profile
        A ``ProfileSession`` (``eb.profile(engine)``) whose operator times colour the nodes.
    max_nodes
        Draw at most this many operator nodes; ``None`` for all.
    hide_constants
        Hide nodes that only compute constants or shapes (exporters emit many).
    height
        Height of the drawing area in pixels.

    Attributes
    ----------
    nodes, edges, heat, info
        What is drawn (see :func:`edgebench.notebook.graph_layout.graph_data`).
    selected
        Name of the node last clicked in the browser.
    """

    _esm = asset_path("graph.js")
    _css = asset_path("graph.css")

    nodes = traitlets.List(traitlets.Dict()).tag(sync=True)
    edges = traitlets.List(traitlets.Dict()).tag(sync=True)
    heat = traitlets.Dict().tag(sync=True)
    info = traitlets.Dict().tag(sync=True)
    height = traitlets.Int(520).tag(sync=True)
    selected = traitlets.Unicode("").tag(sync=True)

    def __init__(self, model: Any, profile: Any = None, *, max_nodes: int | None = MAX_NODES,
                 hide_constants: bool = True, height: int = 520, **kwargs: Any):
        data = graph_data(model, profile, max_nodes=max_nodes, hide_constants=hide_constants)
        super().__init__(nodes=data["nodes"], edges=data["edges"], heat=data["heat"], info=data["info"],
                         height=height, **kwargs)
        self.source_model = model
        self.profile = profile
        self._options = {"max_nodes": max_nodes, "hide_constants": hide_constants}

    def set_profile(self, profile: Any) -> None:
        """Colour the nodes by the operator times of ``profile`` (``None`` clears the heat)."""
        data = graph_data(self.source_model, profile, **self._options)
        self.profile = profile
        with self.hold_sync():
            self.heat = data["heat"]
            self.info = data["info"]

    def node(self, name: str) -> dict[str, Any]:
        """The drawn node called ``name`` (``KeyError`` when it is hidden or absent)."""
        for n in self.nodes:
            if n["name"] == name:
                return n
        raise KeyError(name)

    def __repr__(self) -> str:
        i = self.info
        heat = f", {len(self.heat)} nodes timed" if i.get("profiled") else ""
        return f"<GraphView {i.get('name')}: {i.get('shown')} of {i.get('n_nodes')} nodes{heat}>"
