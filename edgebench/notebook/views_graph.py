"""Views of multi-model graphs, registered in :data:`~edgebench.notebook.display.VIEWS`.

=====================  ===========================================================
object                 widget
=====================  ===========================================================
``CompiledGraph``      :class:`CompiledGraphView`: the plan's steps (Python
                       functions, models, fused groups) and the tensors between them,
                       drawn by ``widgets/graph.js``; each step's mean time (measured
                       by the executor) is its heat colour
``StreamGraph``        :class:`StreamGraphView`: per stage, events processed and
                       emitted, restarts, the events waiting for it now and the most that did,
                       throughput; refreshed live while the stream runs
=====================  ===========================================================
"""
from __future__ import annotations

import functools
import time
import weakref
from html import escape
from typing import Any

import ipywidgets as W

from .display import register_view
from .graph_layout import NODE_H, _layout
from .views_base import LiveView, card, fmt_ms, fmt_rate, tiles

__all__ = ["CompiledGraphView", "StreamGraphView", "compiled_graph_data"]  # noqa: F822 (module __getattr__)

_KIND_COLOR = {"fn": "#6f42c1", "model": "#1f77b4", "fused": "#2ca02c"}
CHAR_W, MIN_W = 7.0, 52


def _vertex(vid: int, name: str, op: str, kind: str, label: str, outputs: list[str]) -> dict[str, Any]:
    return {"id": vid, "name": name, "op": op, "kind": kind, "label": label,
            "w": max(MIN_W, CHAR_W * len(label) + 18), "h": NODE_H, "outputs": outputs[:4]}


def compiled_graph_data(cg: Any) -> dict[str, Any]:
    """Nodes, edges, heat and layout of a compiled graph, in :func:`graph_data`'s format.

    Every step is a node (``op`` is ``fn``, ``model`` or ``fused``); graph inputs and outputs
    are round nodes; each edge is labelled with its tensor's name.  ``heat`` holds each step's
    mean time per run from ``Step.timing`` (steps not yet run have none).
    """
    verts: list[dict[str, Any]] = []
    vid_in: dict[str, int] = {}
    for name in cg.inputs:
        vid_in[name] = len(verts)
        verts.append(_vertex(len(verts), name, "Input", "input", name, [name]))
    producer: dict[str, int] = {}
    step_vid: list[int] = []
    for s in cg.steps:
        n = s.node
        op = "fused" if n.fused_from else n.kind
        vid = len(verts)
        step_vid.append(vid)
        v = _vertex(vid, n.name, op, "op", n.name, list(n.output_tensors))
        v["color"] = _KIND_COLOR.get(op, "#888")
        v["weights"] = [f"{op} on {s.backend}/{s.device}"]
        if n.fused_from:
            v["weights"].append("fused: " + " -> ".join(n.fused_from))
        verts.append(v)
        for t in n.output_tensors:
            producer[t] = vid
    edges: list[dict[str, Any]] = []
    for s, vid in zip(cg.steps, step_vid):
        for t in dict.fromkeys(s.node.input_tensors):
            src = vid_in.get(t, producer.get(t))
            if src is not None:  # constants (folded) have no producer drawn
                edges.append({"s": src, "t": vid, "tensor": t, "dtype": "tensor", "shape": t})
    for t in cg.outputs:
        vid = len(verts)
        verts.append(_vertex(vid, t, "Output", "output", t, [t]))
        src = vid_in.get(t, producer.get(t))
        if src is not None:
            edges.append({"s": src, "t": vid, "tensor": t, "dtype": "tensor", "shape": t})
    for v in verts:
        v.setdefault("color", "#3b3b3b")
    bounds = _layout(verts, edges)
    heat: dict[str, dict[str, float]] = {}
    means = {vid: s.timing["total_ns"] / s.timing["count"] / 1e6
             for s, vid in zip(cg.steps, step_vid) if getattr(s, "timing", {}).get("count")}
    total = sum(means.values())
    top = max(means.values(), default=0.0)
    for s, vid in zip(cg.steps, step_vid):
        if vid in means:
            ms = means[vid]
            heat[str(vid)] = {"ms": round(ms, 6), "calls": s.timing["count"],
                              "share": ms / total if total > 0 else 0.0, "norm": ms / top if top > 0 else 0.0}
    info = {"name": cg.name, "n_nodes": len(cg.steps), "shown": len(cg.steps), "hidden": 0, "truncated": False,
            "max_nodes": None, "profiled": bool(heat), "total_ms": total, "unattributed_ms": 0.0,
            "hidden_ms": 0.0, "max_ms": top, **bounds}
    return {"nodes": verts, "edges": edges, "heat": heat, "info": info}


@functools.lru_cache(maxsize=1)
def _compiled_graph_view_class() -> type:
    """Build the class on first use: anywidget is imported only when a graph view is built."""
    import anywidget

    from .graph_view import GraphView

    class CompiledGraphView(GraphView):
        """A :class:`~edgebench.graph.executor.CompiledGraph` drawn as a graph, steps coloured by time.

        Parameters
        ----------
        cg
            The compiled graph.
        height
            Height of the drawing area in pixels.
        """

        def __init__(self, cg: Any, *, height: int = 360, **kwargs: Any):
            data = compiled_graph_data(cg)
            anywidget.AnyWidget.__init__(self, nodes=data["nodes"], edges=data["edges"], heat=data["heat"],
                                          info=data["info"], height=height, **kwargs)
            self.source_model = cg
            self.profile = None
            self._options = {}

        def refresh(self) -> None:
            """Re-read the steps' timings (after more runs) and recolour the nodes."""
            data = compiled_graph_data(self.source_model)
            with self.hold_sync():
                self.heat = data["heat"]
                self.info = data["info"]

        def __repr__(self) -> str:
            i = self.info
            return f"<CompiledGraphView {i.get('name')}: {i.get('n_nodes')} steps, {len(self.heat)} timed>"

    return CompiledGraphView


def __getattr__(name: str) -> Any:
    if name == "CompiledGraphView":
        return _compiled_graph_view_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _build_compiled_graph_view(cg: Any) -> Any:
    return _compiled_graph_view_class()(cg)


class StreamGraphView(LiveView):
    """Live per-stage counts of a :class:`~edgebench.graph.stream.StreamGraph`.

    Parameters
    ----------
    sg
        The stream graph (held weakly).
    interval
        Seconds between refreshes while the stream runs.
    """

    uses_bokeh = False

    def __init__(self, sg: Any, interval: float = 0.3):
        self.interval = interval
        self._sg = weakref.ref(sg)
        self._html = W.HTML()
        super().__init__(children=[self._html])
        self.update()
        self.start()

    def _finished(self) -> bool:
        sg = self._sg()
        return sg is None or (bool(sg._threads) and not sg.running)

    def snapshot(self) -> list[dict[str, Any]]:
        """Per stage: ``stats()`` (``queue``: events waiting for the stage now, ``max_queue``: the most it
        held) plus ``rate`` (events processed per second since the start)."""
        sg = self._sg()
        if sg is None:
            return []
        elapsed = max(1e-9, time.perf_counter() - sg._t0)
        end = [e.time for e in sg.log if e.kind in ("done", "stop")]
        if end:
            elapsed = max(1e-9, end[-1])
        return [{**row, "rate": row["processed"] / elapsed} for row in sg.stats()]

    def update(self) -> None:
        sg = self._sg()
        if sg is None:
            return
        rows = self.snapshot()
        state = "running" if sg.running else ("failed" if sg._error else ("done" if sg._threads else "idle"))
        head = tiles([("state", state), ("source events", f"{sg.source_count:,}"),
                      ("outputs", f"{len(sg.results):,}"), ("workers", str(sg.workers)),
                      ("throughput", fmt_rate(rows[-1]["rate"] if rows else float("nan"), " ev/s"))])
        body = "".join(
            f"<tr><td class='eb-l'>{escape(r['stage'])}</td><td>{r['processed']:,}</td><td>{r['emitted']:,}</td>"
            f"<td>{r['queue']} / {r['max_queue']}</td><td>{r['restarts']}</td>"
            f"<td>{fmt_ms(1000 * r['busy_s'] / r['processed'] if r['processed'] else float('nan'))}</td>"
            f"<td>{fmt_rate(r['rate'], ' ev/s')}</td></tr>" for r in rows)
        table = ("<table class='eb-table'><tr><th class='eb-l'>stage</th><th>processed</th><th>emitted</th>"
                 "<th title='events waiting for the stage now / the most that waited'>waiting now / max</th><th>restarts</th><th>busy / event</th><th>throughput</th></tr>"
                 f"{body}</table>")
        self._html.value = card(f"<b>StreamGraph {escape(sg.name)}</b>{head}{table}")


register_view("CompiledGraph", _build_compiled_graph_view)
register_view("StreamGraph", StreamGraphView)
