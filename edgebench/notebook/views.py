"""The built-in widgets, registered per class name in :data:`edgebench.notebook.display.VIEWS`.

=====================  ==========================================================
object                 widget
=====================  ==========================================================
``Model``              :class:`ModelView`: signature, sizes, op histogram, graph
``Engine``             :class:`~.views_engine.EngineView`: live rate and latency,
                       warm-up / run buttons
``BenchmarkReport``    :class:`~.views_report.ReportView`
``ProfileSession``     :class:`~.views_report.ProfileView`
``OptimizeResult``...  :mod:`.views_optimize` (optimizer), :mod:`.views_serve`
                       (batcher, server), :mod:`.views_graph` (compiled graph, stream)
``Cluster``            :class:`~.views_cluster.ClusterView`: workers, deployments,
                       rate / p99, events, kill a worker
``Deployment``         :class:`~.views_cluster.DeploymentView`: replicas, counters
=====================  ==========================================================

Importing this module imports ipywidgets (and numpy); bokeh and anywidget are imported
when a view is built.  Later issues register their own views the same way::

    from edgebench.notebook.display import register_view
    register_view("Optimizer", OptimizerView)
"""
from __future__ import annotations

from html import escape
from typing import Any

import ipywidgets as W

from .display import register_view
from .views_base import View, bokeh_pane, card, lazy_sections, tiles
from .views_engine import EngineView
from .views_report import ProfileView, ReportView, _graph

__all__ = ["ModelView", "EngineView", "ReportView", "ProfileView", "EAGER_GRAPH_NODES"]

#: Models with at most this many nodes show their graph at once; bigger ones on request.
EAGER_GRAPH_NODES = 300


def _human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"


class ModelView(View):
    """A :class:`~edgebench.Model`: signature, size, parameters, content hash, and tabs with
    the drawn graph and the operator histogram.

    Attributes
    ----------
    model
        The model shown.
    tabs
        ``Tab`` of ``graph`` and ``operators`` (``tabs.build(i)`` builds one from code).
    """

    def __init__(self, model: Any):
        from .plots import op_count_bars

        self.model = m = model
        sig = "".join(
            f"<tr><td class='eb-l'>{kind}</td><td class='eb-l'><code>{escape(s.name)}</code></td>"
            f"<td class='eb-l'>{escape(s.dtype)}</td>"
            f"<td class='eb-l'>[{escape(', '.join('?' if d is None else str(d) for d in s.shape))}]</td></tr>"
            for kind, specs in (("input", m.inputs), ("output", m.outputs)) for s in specs)
        n_nodes = sum(m.op_counts.values())
        figures = [("size", _human(m.size_bytes)), ("parameters", f"{m.n_params:,}"), ("nodes", f"{n_nodes:,}"),
                   ("opset", str(m.opset.get("ai.onnx", "?"))), ("sha256", m.sha256[:12])]
        desc = f"<div class='eb-sub'>{escape(m.description)}</div>" if m.description else ""
        self.header = W.HTML(card(
            f"<b>Model</b> <code>{escape(m.name)}</code> <span class='eb-sub'>from {escape(str(m.source))}"
            f"</span>{tiles(figures)}<table class='eb-table'><tr><th></th><th class='eb-l'>name</th>"
            f"<th class='eb-l'>dtype</th><th class='eb-l'>shape</th></tr>{sig}</table>{desc}"))
        small = n_nodes <= EAGER_GRAPH_NODES
        self.tabs = lazy_sections(W.Tab, [
            ("graph", lambda: _graph(m)),
            ("operators", lambda: bokeh_pane(op_count_bars(m.op_counts))),
        ], selected=0 if small else 1)
        super().__init__([self.header, self.tabs])

    @property
    def graph(self) -> Any:
        """The graph view (built now if it was not yet)."""
        return self.tabs.build(0)


register_view("Model", ModelView)
register_view("Engine", EngineView)
register_view("BenchmarkReport", ReportView)
register_view("ProfileSession", ProfileView)

# the views of later subsystems live in their own modules; importing them registers them
from . import views_optimize, views_serve  # noqa: E402,F401
from . import views_graph  # noqa: E402,F401
from . import views_cluster  # noqa: E402,F401
