"""The live optimizer widget: what ``display(result)`` shows for an ``OptimizeResult``, and
what :func:`live` shows while :func:`edgebench.optimize` searches.

The view follows the result through its ``on_trial`` / ``on_candidate`` callbacks (it
registers its own): each finished trial is streamed into a Bokeh ``ColumnDataSource`` (a
latency-vs-accuracy scatter with the Pareto front highlighted) and a row is added to the
trials table; the candidate being measured is named.  A daemon thread notices when the
search is over (``result.running`` turns false) and shows the winner and the explanation.

>>> res = eb.optimize(model, callbacks=[live])   # doctest: +SKIP  (the widget, live, in a notebook)
>>> res                                           # doctest: +SKIP  (the same widget, finished)
"""
from __future__ import annotations

import math
import threading
import weakref
from html import escape
from typing import Any

import ipywidgets as W

from .display import register_view, widget
from .views_base import LiveView, bokeh_pane, card, fmt_ms, tiles

__all__ = ["OptimizeView", "live", "COLUMNS"]

#: columns of :attr:`OptimizeView.source`, one row per trial
COLUMNS = ("trial", "candidate", "status", "ratio", "p50_ms", "score", "size_mb", "reason", "pareto",
           "winner", "color", "marker", "size")
_COLORS = {"baseline": "#222222", "ok": "#1f77b4", "pareto": "#2ca02c", "winner": "#ff7f0e",
           "rejected": "#9e9e9e", "failed": "#d62728"}
_SCORE = {"metric": "accuracy", "top1": "top-1 agreement with fp32", "cosine": "cosine similarity to fp32"}
_LIVE = "_eb_live_shown"


def _num(v: Any) -> float:
    try:
        v = float(v)
    except (TypeError, ValueError):
        return float("nan")
    return v if math.isfinite(v) else float("nan")


def _pct(v: Any, kind: str) -> str:
    v = _num(v)
    if not math.isfinite(v):
        return "–"
    return f"{v:.4f}" if kind == "cosine" else f"{100 * v:.2f}%"


class OptimizeView(LiveView):
    """Live view of an :class:`~edgebench.optimize.result.OptimizeResult`.

    Parameters
    ----------
    result
        The result (running or finished).
    interval
        Seconds between the checks of the background thread for the end of the search.
    start
        Start that thread now (only while the search runs; tests pass ``False`` and call
        :meth:`update`).

    Attributes
    ----------
    source
        Bokeh ``ColumnDataSource``, one row per trial (:data:`COLUMNS`): ``ratio`` (latency over
        fp32's), ``score`` (accuracy, or the fidelity the gate uses), ``pareto`` and ``winner``
        flags.  New trials are ``stream()`` ed in, flags ``patch()`` ed.
    front
        ``ColumnDataSource`` of the Pareto front (``ratio``, ``score``), sorted by latency.
    figures, current, table, explanation
        The ``HTML`` widgets: key figures, the candidate being measured, the trials table and
        (once the search is over) ``result.explain()``.
    """

    def __init__(self, result: Any, *, interval: float = 0.5, start: bool = True):
        import pandas  # noqa: F401  (bokeh's stream() imports it lazily: never first in the thread)
        from bokeh.models import ColumnDataSource

        self.result = result
        self.interval = float(interval)
        self._lock = threading.RLock()
        self._n = 0
        self._flags: list[tuple[bool, bool]] = []
        self._state: tuple | None = None
        self._resync_left = 0
        self._final_synced = False
        self._kind = getattr(result.gate, "kind", "metric")
        self.source = ColumnDataSource({c: [] for c in COLUMNS}, name="trials")
        self.front = ColumnDataSource({"ratio": [], "score": []}, name="pareto")
        self._fig, self._spans = self._figure()
        self.plot = bokeh_pane(self._fig)
        self.header = W.HTML(card(self._header_html()))
        self.figures = W.HTML()
        self.current = W.HTML()
        self.table = W.HTML()
        self.explanation = W.HTML(layout=W.Layout(display="none"))
        super().__init__([self.header, self.figures, self.current, self.plot, self.table, self.explanation])
        ref = weakref.ref(self)
        # first in line: a probe registered after it sees the view already updated
        result.on_trial.insert(0, _Follow(ref))
        result.on_candidate.insert(0, _Follow(ref))
        self.update()
        if start and result.running:
            self.start()

    # -- building ---------------------------------------------------------------------------
    def _figure(self) -> tuple[Any, dict]:
        from bokeh.models import HoverTool, Span
        from bokeh.plotting import figure

        fig = figure(height=300, sizing_mode="stretch_width", tools="save,reset,box_zoom,wheel_zoom,pan",
                     title="Trials: latency vs " + _SCORE.get(self._kind, "accuracy") + " (Pareto front in green)",
                     x_axis_label="latency / fp32 latency (interleaved p50; < 1 is faster)",
                     y_axis_label=_SCORE.get(self._kind, "accuracy"), toolbar_location="right")
        fig.line("ratio", "score", source=self.front, color=_COLORS["pareto"], line_width=2, line_dash="dashed")
        r = fig.scatter("ratio", "score", source=self.source, color="color", marker="marker", size="size",
                        alpha=0.85, line_color="#333333", line_width=0.5)
        fig.add_tools(HoverTool(renderers=[r], tooltips=[
            ("#", "@trial"), ("candidate", "@candidate"), ("status", "@status"), ("latency", "@ratio{0.000}x"),
            ("p50", "@p50_ms{0.0000} ms"), ("score", "@score{0.0000}"), ("size", "@size_mb{0.00} MB"),
            ("reason", "@reason")]))
        spans = {"fp32": Span(location=1.0, dimension="height", line_color="#222222", line_dash="dotted"),
                 "gate": Span(location=None, dimension="width", line_color=_COLORS["failed"], line_dash="dashed"),
                 "latency": Span(location=None, dimension="height", line_color=_COLORS["failed"],
                                 line_dash="dashed")}
        for s in spans.values():
            fig.add_layout(s)
        return fig, spans

    def _header_html(self) -> str:
        res = self.result
        b = res.budgets or {}
        budgets = [f"max accuracy drop {100 * b['max_accuracy_drop']:g} points"] if "max_accuracy_drop" in b else []
        if b.get("latency_budget_ms"):
            budgets.append(f"p50 ≤ {b['latency_budget_ms']:g} ms")
        if b.get("size_budget_mb"):
            budgets.append(f"size ≤ {b['size_budget_mb']:g} MB")
        if b.get("threads"):
            budgets.append(f"{b['threads']} thread(s)")
        gate = f"<div class='eb-sub'>gate: {escape(res.gate.why)}</div>" if res.gate is not None else ""
        return (f"<b>Optimize</b> <code>{escape(res.baseline.name)}</code> <span class='eb-sub'>&middot; "
                f"{escape(res.policy)} policy &middot; {escape(', '.join(budgets))}</span>"
                f"<div class='eb-sub'>{escape(res.hardware)}</div>"
                f"<div class='eb-sub'>data: {escape(res.data_description)}</div>{gate}")

    # -- state ------------------------------------------------------------------------------
    def _finished(self) -> bool:  # one last update once the search is over
        return not self.result.running

    def update(self) -> int:
        """Stream the trials added since the last update, refresh the Pareto flags, the
        figures, the current candidate and (when the search is over) the explanation.

        Returns the number of trials streamed.
        """
        with self._lock:
            res = self.result
            hist = list(res.history)
            best = res.best_trial
            state = (len(hist), None if res.current is None else res.current.key(), res.running,
                     None if best is None else best.index)
            if state == self._state:
                return 0
            new = hist[self._n:]
            front = {t.index for t in res.pareto_trials()} if hist else set()
            winner = None if res.running or best is None else best.index
            if new:
                rows = [self._row(t, t.index in front, t.index == winner) for t in new]
                self.source.stream({c: [r[c] for r in rows] for c in COLUMNS})
                self._flags.extend((r["pareto"], r["winner"]) for r in rows)
                self._n = len(hist)
            self._patch_flags(hist[:len(hist) - len(new)], front, winner)
            pts = sorted((t for t in hist if t.index in front), key=lambda t: (t.latency_ratio, -_num(t.accuracy)))
            self.front.data = {"ratio": [t.latency_ratio for t in pts], "score": [_num(t.accuracy) for t in pts]}
            self._set_spans()
            self._render(hist, front, winner)
            self._state = state
            if self._resync_left > 0 or (not res.running and not self._final_synced):
                self._resync_left = max(0, self._resync_left - 1)
                self._final_synced = not res.running
                self.resync()
            return len(new)

    def resync(self) -> None:
        """Send the whole plot (its current data) to the browser again.

        A ``BokehModel`` view draws from the snapshot it is created with plus the ``stream`` /
        ``patch`` events it receives afterwards; a view created later (the widget shown again)
        or while events were in flight (shown while the search runs) would miss some.  This
        is called when the widget is displayed, on the next two updates, and once the search
        is over, so every view ends up drawing the same data as :attr:`source`.
        """
        with self._lock:
            pane = self.plot
            if hasattr(pane, "update_from_model") and pane.comm is not None:
                pane.update_from_model(pane._model)

    def _row(self, t: Any, pareto: bool, winner: bool) -> dict:
        status = "baseline" if t.candidate.is_baseline else t.status
        colour, marker, size = self._style(status, pareto, winner)
        return {"trial": t.index, "candidate": t.describe(), "status": t.status, "ratio": _num(t.latency_ratio),
                "p50_ms": _num(t.p50_ms), "score": _num(t.accuracy),
                "size_mb": _num(None if t.size_bytes is None else t.size_bytes / 2**20),
                "reason": t.reason or "", "pareto": pareto, "winner": winner, "color": colour,
                "marker": marker, "size": size}

    @staticmethod
    def _style(status: str, pareto: bool, winner: bool) -> tuple[str, str, int]:
        if winner:
            return _COLORS["winner"], "star", 18
        if status == "baseline":
            return _COLORS["baseline"], "square", 11 if pareto else 9
        if status == "ok":
            return (_COLORS["pareto"], "circle", 12) if pareto else (_COLORS["ok"], "circle", 8)
        return _COLORS.get(status, _COLORS["rejected"]), "x", 9

    def _patch_flags(self, old: list, front: set, winner: int | None) -> None:
        patches: dict[str, list] = {c: [] for c in ("pareto", "winner", "color", "marker", "size")}
        for i, t in enumerate(old):
            flags = (t.index in front, t.index == winner)
            if flags == self._flags[i]:
                continue
            self._flags[i] = flags
            status = "baseline" if t.candidate.is_baseline else t.status
            colour, marker, size = self._style(status, *flags)
            for c, v in zip(("pareto", "winner", "color", "marker", "size"), (*flags, colour, marker, size)):
                patches[c].append((i, v))
        if patches["pareto"]:
            self.source.patch(patches)

    def _set_spans(self) -> None:
        res = self.result
        base = res.baseline_trial
        gate = res.gate
        if gate is not None:
            if gate.kind == "cosine":
                self._spans["gate"].location = gate.min_cosine
            elif gate.kind == "top1":
                self._spans["gate"].location = 1.0 - gate.max_drop
            elif base is not None and base.accuracy is not None:
                self._spans["gate"].location = base.accuracy - gate.max_drop
        lat = (res.budgets or {}).get("latency_budget_ms")
        if lat and base is not None and base.p50_ms:
            self._spans["latency"].location = lat / base.p50_ms

    # -- rendering --------------------------------------------------------------------------
    def _render(self, hist: list, front: set, winner: int | None) -> None:
        res = self.result
        counts = {"ok": 0, "rejected": 0, "failed": 0}
        for t in hist:
            counts[t.status] = counts.get(t.status, 0) + 1
        ratios = [t.latency_ratio for t in hist if t.ok and t.latency_ratio is not None]
        best = res.best_trial
        if res.running:
            state, cls = "searching", "eb-valid"
        else:
            state, cls = ("interrupted", "eb-invalid") if res.interrupted else ("done", "eb-valid")
        figures = [("trials", str(len(hist))), ("ok", str(counts["ok"])), ("rejected", str(counts["rejected"])),
                   ("failed", str(counts["failed"])),
                   ("fastest so far", f"{min(ratios):.2f}x" if ratios else "–"), ("state", state)]
        if not res.running and best is not None:
            r = res.confirmed_ratio if res.confirmed_ratio is not None else best.latency_ratio
            figures.insert(5, ("winner", "fp32 kept" if best.candidate.is_baseline else f"{r:.2f}x"))
        self.figures.value = card(tiles(figures, {"state": cls}))
        if res.running:
            cur = res.current
            self.current.value = card(
                f"<b>measuring #{len(hist)}</b>: <code>{escape(cur.describe())}</code>" if cur is not None else
                "<span class='eb-sub'>choosing the next candidate, or timing the best ones head to head "
                "against fp32 &hellip;</span>")
        else:
            self.current.value = card(f"<b>winner</b>: {escape(res.reason)} <span class='eb-sub'>&middot; "
                                      f"{res.wall_s:.1f} s</span>")
        self.table.value = card(self._table(hist, front, winner))
        if not res.running:
            self.explanation.value = card(
                "<details open><summary><b>Why</b> (<code>result.explain()</code>)</summary>"
                f"<pre style='white-space: pre-wrap; font-size: 12px'>{escape(res.explain())}</pre></details>")
            self.explanation.layout.display = None

    def _table(self, hist: list, front: set, winner: int | None) -> str:
        score = _SCORE.get(self._kind, "accuracy")
        rows = []
        for t in hist:
            mark = "&#9733;" if t.index == winner else ("&#9670;" if t.index in front else "")
            style = {"rejected": " style='color: #888'", "failed": " style='color: #cf222e'"}.get(t.status, "")
            rows.append(
                f"<tr{style}><td>{t.index}</td><td>{mark}</td><td class='eb-l'>{escape(t.describe())}</td>"
                f"<td class='eb-l'>{t.status}</td>"
                f"<td>{'–' if t.latency_ratio is None else f'{t.latency_ratio:.2f}x'}</td>"
                f"<td>{fmt_ms(t.p50_ms)}</td><td>{_pct(t.accuracy, self._kind)}</td>"
                f"<td>{'–' if t.size_bytes is None else f'{t.size_bytes / 2**20:.2f}'}</td>"
                f"<td class='eb-l'>{escape(t.reason or ('from the results store' if t.source == 'store' else ''))}"
                "</td></tr>")
        return ("<table class='eb-table'><tr><th>#</th><th></th><th class='eb-l'>candidate</th>"
                f"<th class='eb-l'>status</th><th>vs fp32</th><th>p50</th><th>{escape(score)}</th><th>MB</th>"
                "<th class='eb-l'>reason</th></tr>" + "".join(rows) + "</table>"
                "<div class='eb-sub'>&#9670; Pareto front (latency, accuracy, size) &middot; &#9733; winner "
                "&middot; all columns: <code>result.trials</code></div>")

    def _repr_mimebundle_(self, **kwargs: Any) -> Any:
        with self._lock:
            self.update()
            self.resync()
            self._resync_left = 2  # the view appears in the browser a moment later
        return super()._repr_mimebundle_(**kwargs)


class _Follow:
    """The view's result callback ``fn(result, trial_or_candidate)``; holds the view weakly."""

    def __init__(self, ref: "weakref.ref[OptimizeView]"):
        self._ref = ref
        self.__qualname__ = "OptimizeView.update"

    def __call__(self, result: Any, _arg: Any) -> None:
        view = self._ref()
        if view is not None and view.comm is not None:
            view.update()


def live(result: Any, _arg: Any = None) -> None:
    """Show the live view of ``result`` in the notebook, once: an ``eb.optimize`` callback.

    Pass it as ``eb.optimize(..., callbacks=[live])``: the first trial (the fp32 baseline)
    builds the :class:`OptimizeView` and displays it, which then follows the search.  Outside
    IPython the view is built but not displayed; without ipywidgets it does nothing.
    """
    if result.__dict__.get(_LIVE):
        return
    result.__dict__[_LIVE] = True
    try:
        widget(result)
    except ImportError:
        return
    try:
        from IPython import get_ipython
        from IPython.display import display
    except ImportError:
        return
    if get_ipython() is not None:
        display(result)


register_view("OptimizeResult", OptimizeView)
