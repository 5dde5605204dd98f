"""Widgets of finished measurements: a ``BenchmarkReport`` and a ``ProfileSession``.

Key figures on top, Bokeh plots under them, and the numbers as tables one click away (built
when opened, so a saved notebook does not carry thousands of rows).
"""
from __future__ import annotations

import math
from html import escape
from typing import Any

import ipywidgets as W

from .views_base import View, bokeh_pane, card, df_html, fmt_ms, fmt_rate, lazy_sections, tiles

__all__ = ["ReportView", "ProfileView"]


class ReportView(View):
    """A :class:`~edgebench.BenchmarkReport`: verdict, percentiles, latency histogram and
    latency over time; per-query and per-window tables in an accordion.

    Attributes
    ----------
    report
        The report shown.
    plot
        The Bokeh pane (histogram and timeline).
    tables
        The accordion of tables (``tables.build(i)`` opens one from code).
    """

    def __init__(self, report: Any):
        from bokeh.layouts import row

        from .plots import latency_histogram, latency_timeline

        self.report = r = report
        valid = r.valid
        bound = r.latency_bound_ms
        figures = [
            ("result", "VALID" if valid else "INVALID"),
            ("p50", fmt_ms(r.p50_ms)), ("p90", fmt_ms(r.p90_ms)), ("p99", fmt_ms(r.p99_ms)),
            ("throughput", fmt_rate(r.throughput, " samples/s")),
            ("queries", f"{r.n_queries:,} in {r.duration_s:.2f} s"),
            ("stable", "yes" if r.stable else "no"),
        ]
        if r.scenario == "server":
            figures.insert(5, ("qps", f"{r.qps_achieved:.1f} of {r.settings.get('qps'):g}"))
        if bound is not None:
            figures.insert(4, ("latency bound", f"{bound:g} ms"))
        reasons = "".join(f"<li>{escape(x)}</li>" for x in r.validity_reasons)
        threads = "auto" if r.threads is None else r.threads
        self.header = W.HTML(card(
            f"<b>Benchmark</b> <code>{escape(r.scenario)}</code> &middot; <code>{escape(r.model)}</code> on "
            f"<code>{escape(r.backend)}</code> / <code>{escape(r.device)}</code>, threads {threads}"
            f"{tiles(figures, {'result': 'eb-valid' if valid else 'eb-invalid'})}"
            + (f"<ul class='eb-invalid'>{reasons}</ul>" if reasons else "")
            + f"<div class='eb-sub'>CPU: {escape(r.cpu)}</div>"))
        lat = r.latencies_ms
        ok = r.queries[r.queries[:, 6] == 0] if len(r.queries) else r.queries
        t_s = (ok[:, 4] - r.t0_ns) / 1e9 if len(ok) else lat
        hist = latency_histogram(lat, title="Latency distribution", width=380, height=260)
        timeline = latency_timeline([(r.model, t_s, lat)], legend=False, height=260)
        self.plot = bokeh_pane(row(hist, timeline, sizing_mode="stretch_width"))
        self.tables = lazy_sections(W.Accordion, [
            (f"per-query table ({r.n_queries:,} rows: report.to_pandas())",
             lambda: W.HTML(df_html(r.to_pandas(), note="all rows: <code>report.to_pandas()</code>"))),
            ("measurement windows (report.windows())",
             lambda: W.HTML(df_html(r.windows().reset_index(), note="<code>report.windows()</code>"))),
            ("summary (report.summary())", lambda: W.HTML(_summary_html(r.summary()))),
        ])
        super().__init__([self.header, self.plot, self.tables])


def _summary_html(summary: dict) -> str:
    rows = "".join(f"<tr><th class='eb-l'>{escape(str(k))}</th><td class='eb-l'>{escape(_fmt(v))}</td></tr>"
                   for k, v in summary.items() if k != "settings")
    settings = ", ".join(f"{k}={v}" for k, v in summary.get("settings", {}).items())
    return card(f"<table class='eb-table'>{rows}</table><div class='eb-sub'>settings: {escape(settings)}</div>")


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.6g}" if math.isfinite(v) else "–"
    if isinstance(v, (list, tuple)):
        return "; ".join(map(str, v)) or "–"
    return "–" if v is None else str(v)


class ProfileView(View):
    """A ``ProfileSession``: request figures, the per-operator breakdown (top operators,
    coloured by op type), tables of operators and requests, and the graph with heat.

    Attributes
    ----------
    session
        The profile shown.
    plot
        The Bokeh pane of the per-operator bars (an HTML note when there is no operator data).
    sections
        Accordion: operators, operator types, requests, graph (``sections.build(i)``).
    """

    top = 20

    def __init__(self, session: Any, *, top: int | None = None):
        from .plots import operator_bars

        self.session = s = session
        top = top or self.top
        summary = s.summary()
        ops = s.operators()
        n_req = int(summary["count"])
        figures = [("requests", f"{n_req:,}"), ("p50", fmt_ms(summary["p50_ms"])),
                   ("p99", fmt_ms(summary["p99_ms"])), ("throughput", fmt_rate(summary["throughput"])),
                   ("operators", f"{len(ops):,}"),
                   ("operator time", fmt_ms(ops["total_ms"].sum()) if len(ops) else "–")]
        if summary["errors"]:
            figures.insert(1, ("errors", f"{int(summary['errors']):,}"))
        state = " (still profiling)" if s.active else ""
        eng = s.engine
        self.header = W.HTML(card(
            f"<b>Profile</b> <code>{escape(eng.model.name)}</code> on <code>{escape(eng.backend)}</code> / "
            f"<code>{escape(eng.device)}</code>{state}{tiles(figures)}"))
        if len(ops):
            self.plot = bokeh_pane(operator_bars(ops, top=top))
        else:
            reason = ops.attrs.get("reason") or s.reason or "no operator was recorded"
            self.plot = W.HTML(card(f"<span class='eb-sub'>No operator data: {escape(reason)}</span>"))
        self.sections = lazy_sections(W.Accordion, [
            (f"operators ({len(ops):,}: prof.operators())",
             lambda: W.HTML(df_html(ops, max_rows=60, note="<code>prof.operators()</code>"))),
            ("operator types (prof.operator_types())",
             lambda: W.HTML(df_html(s.operator_types(), max_rows=60, note="<code>prof.operator_types()</code>"))),
            (f"requests ({n_req:,}: prof.requests())",
             lambda: W.HTML(df_html(s.requests(), note="<code>prof.requests()</code>"))),
            ("graph, coloured by operator time", lambda: _graph(eng.model, s)),
        ])
        super().__init__([self.header, self.plot, self.sections])


def _graph(model: Any, profile: Any = None) -> W.Widget:
    try:
        from .graph_view import GraphView
    except ImportError as e:
        return W.HTML(card(f"<i>The graph view needs {escape(e.name or 'anywidget')}: "
                           "pip install 'edgebench[notebook]'.</i>"))
    return GraphView(model, profile=profile)
