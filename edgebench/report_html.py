"""A self-contained HTML report of benchmark runs, drawn with Bokeh.

BokehJS is inlined (``bokeh.resources.INLINE``), so the file opens offline and can be mailed
around.  Without bokeh the page holds the same tables and says the plots need it::

    >>> from edgebench.report_html import write_report
    >>> write_report([report], "report.html", labels=["mlp / onnxruntime"])   # doctest: +SKIP
"""
from __future__ import annotations

import datetime as _dt
import math
import os
from dataclasses import dataclass
from html import escape
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from .errors import ConfigError

__all__ = ["write_report", "render_report"]

_MAX_POINTS = 4000  # per run in the latency-over-time plot (the histogram uses all)


@dataclass
class _Run:
    label: str
    p50_ms: float
    p90_ms: float
    p99_ms: float
    throughput: float
    valid: bool | None
    reasons: list[str]
    stable: bool | None
    n: int
    size_mb: float | None
    t_s: np.ndarray       # seconds since the run's first request completed
    latency_ms: np.ndarray


# --------------------------------------------------------------------------------------------
# collecting what a report knows
# --------------------------------------------------------------------------------------------
def _get(obj: Any, key: str, default: Any = None) -> Any:
    if isinstance(obj, Mapping):
        return obj.get(key, default)
    return getattr(obj, key, default)


def _series(obj: Any) -> tuple[np.ndarray, np.ndarray]:
    """Per-query (completion time in s from the start, latency ms) of a report or row, by time."""
    queries = None if isinstance(obj, Mapping) else getattr(obj, "queries", None)
    if isinstance(queries, np.ndarray) and queries.ndim == 2 and queries.shape[1] == 7:
        from .profile.metrics import OK

        ok = queries[queries[:, 6] == OK]  # columns: issue, arrival, start, end, done, samples, status
        t = (ok[:, 4] - getattr(obj, "t0_ns", ok[:, 0].min() if len(ok) else 0)) / 1e9
        lat = (ok[:, 4] - ok[:, 0]) / 1e6
    else:
        lat, t = _get(obj, "latencies_ms"), _get(obj, "t_s")
        if lat is None:
            return np.empty(0), np.empty(0)
    lat = np.asarray(lat, dtype=float)
    t = np.asarray(t, dtype=float) if t is not None else np.arange(len(lat), dtype=float)
    order = np.argsort(t, kind="stable")
    return t[order], lat[order]


def _label(obj: Any, i: int) -> str:
    label = _get(obj, "label")
    if label:
        return str(label)
    summary = obj.summary() if hasattr(obj, "summary") else obj if isinstance(obj, Mapping) else {}
    model = summary.get("model") or _get(obj, "model")
    backend = summary.get("backend") or _get(obj, "backend")
    model = getattr(model, "name", model)
    if model and backend:
        return f"{model} / {backend}"
    return str(model or f"run {i + 1}")


def _collect(results: Sequence[Any], labels: Sequence[str] | None,
             sizes_mb: Sequence[float] | None) -> list[_Run]:
    runs = []
    for i, r in enumerate(results):
        t, lat = _series(r)
        reasons = _get(r, "validity_reasons") or []
        runs.append(_Run(
            label=labels[i] if labels else _label(r, i),
            p50_ms=float(_get(r, "p50_ms", np.nan)), p90_ms=float(_get(r, "p90_ms", np.nan)),
            p99_ms=float(_get(r, "p99_ms", np.nan)), throughput=float(_get(r, "throughput", np.nan)),
            valid=_get(r, "valid"), reasons=[str(x) for x in reasons], stable=_get(r, "stable"),
            n=int(_get(r, "n_queries", len(lat))),
            size_mb=sizes_mb[i] if sizes_mb else _get(r, "size_mb"),
            t_s=t, latency_ms=lat))
    return runs


# --------------------------------------------------------------------------------------------
# HTML pieces
# --------------------------------------------------------------------------------------------
_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 1.5em 2em; color: #222; }
h1 { margin-bottom: 0.2em; } h2 { margin-top: 1.6em; border-bottom: 1px solid #ddd; }
.sub { color: #666; margin-top: 0; }
table.eb { border-collapse: collapse; margin: 0.5em 0; font-size: 0.92em; }
table.eb th, table.eb td { border: 1px solid #ddd; padding: 0.25em 0.6em; text-align: left;
                           vertical-align: top; }
table.eb th { background: #f4f4f4; }
table.eb td.num { text-align: right; font-variant-numeric: tabular-nums; }
.valid { color: #1a7f37; font-weight: 600; } .invalid { color: #c62828; font-weight: 600; }
.note { background: #fff8e1; border: 1px solid #ffe082; padding: 0.6em 1em; }
"""


def _table(headers: Sequence[str], rows: Sequence[Sequence[Any]], num: Sequence[int] = ()) -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in headers)
    body = "".join(
        "<tr>" + "".join(
            f"<td class='num'>{v}</td>" if j in num else f"<td>{v}</td>" for j, v in enumerate(r)) + "</tr>"
        for r in rows)
    return f"<table class='eb'><tr>{head}</tr>{body}</table>"


def _fmt(v: float, spec: str = ".3f") -> str:
    return "" if v is None or not math.isfinite(v) else format(v, spec)


def _summary_html(runs: list[_Run]) -> str:
    rows = []
    for r in runs:
        if r.valid is None:
            verdict = ""
        elif r.valid:
            verdict = "<span class='valid'>VALID</span>"
        else:
            verdict = "<span class='invalid'>INVALID</span>: " + escape("; ".join(r.reasons))
        stable = "" if r.stable is None else ("yes" if r.stable else "no")
        rows.append((escape(r.label), _fmt(r.p50_ms), _fmt(r.p90_ms), _fmt(r.p99_ms),
                     _fmt(r.throughput, ",.1f"), r.n, _fmt(r.size_mb, ".2f") if r.size_mb is not None else "",
                     verdict, stable))
    return _table(("run", "p50 ms", "p90 ms", "p99 ms", "throughput/s", "queries", "size MB", "result",
                   "stable"), rows, num=(1, 2, 3, 4, 5, 6))


def _system_html(info: Mapping[str, Any] | None) -> str:
    if not info:
        return "<p>(not collected)</p>"
    cpu = info.get("cpu", {})
    feats = ", ".join(f"{k} {'yes' if v else 'no'}" for k, v in cpu.get("features", {}).items())
    parts = [_table(("CPU", "vendor", "cores (physical / logical)", "inference ISA", "flags"), [(
        escape(str(cpu.get("model", ""))), escape(str(cpu.get("vendor", ""))),
        f"{cpu.get('physical_cores', '?')} / {cpu.get('logical_cores', '?')}", escape(feats),
        escape(" ".join(cpu.get("isa", []))))])]
    parts.append("<h3>Devices</h3>" + _table(("name", "kind", "available", "model / reason"), [
        (escape(d["name"]), escape(d["kind"]), "yes" if d["available"] else "no",
         escape(str(d.get("model") if d["available"] else d.get("reason") or "")))
        for d in info.get("devices", [])]))
    parts.append("<h3>Backends</h3>" + _table(("name", "available", "version", "devices / reason"), [
        (escape(b["name"]), "yes" if b["available"] else "no", escape(str(b.get("version") or "")),
         escape(", ".join(b.get("devices", ())) if b["available"] else str(b.get("reason") or "")))
        for b in info.get("backends", [])]))
    versions = info.get("versions", {})
    parts.append("<h3>Versions</h3>"
                 + _table(tuple(versions), [tuple(escape(str(v)) for v in versions.values())]))
    return "".join(parts)


# --------------------------------------------------------------------------------------------
# Bokeh
# --------------------------------------------------------------------------------------------
def _plots(runs: list[_Run]) -> dict[str, Any]:
    from bokeh.layouts import gridplot

    from .notebook.plots import PALETTE, latency_histogram, latency_timeline, percentile_bars

    bars = percentile_bars([r.label for r in runs], [r.p50_ms for r in runs], [r.p99_ms for r in runs])
    bars.name = "bars"
    hists = [latency_histogram(r.latency_ms, title=r.label, color=PALETTE[i % len(PALETTE)])
             for i, r in enumerate(runs)]
    hist_grid = gridplot(hists, ncols=3, toolbar_location=None)
    hist_grid.name = "hists"
    timeline = latency_timeline([(r.label, r.t_s, r.latency_ms) for r in runs], max_points=_MAX_POINTS)
    timeline.name = "timeline"
    return {"bars": bars, "hists": hist_grid, "timeline": timeline}


_TEMPLATE = """
{% block postamble %}<style>{{ css }}</style>{% endblock %}
{% block contents %}
{{ header }}
<h2>Latency percentiles</h2>
{{ embed(roots.bars) }}
<h2>Latency distribution per run</h2>
<p class="sub">Queries per latency bin (the slowest 0.1% are folded into the last bin).</p>
{{ embed(roots.hists) }}
<h2>Latency over time</h2>
<p class="sub">Each point is a query (thinned to at most {{ max_points }} per run);
click a legend entry to hide it.</p>
{{ embed(roots.timeline) }}
{{ footer }}
{% endblock %}
"""


# --------------------------------------------------------------------------------------------
# public API
# --------------------------------------------------------------------------------------------
def render_report(results: Sequence[Any], title: str = "edgebench report", *,
                  labels: Sequence[str] | None = None, sizes_mb: Sequence[float] | None = None,
                  info: Mapping[str, Any] | None = None) -> str:
    """The HTML text of :func:`write_report` (same parameters, no file written)."""
    if labels is not None and len(labels) != len(results):
        raise ConfigError(f"got {len(labels)} labels for {len(results)} results", "give one label per result")
    if sizes_mb is not None and len(sizes_mb) != len(results):
        raise ConfigError(f"got {len(sizes_mb)} sizes for {len(results)} results", "give one size per result")
    if info is None:
        from .cli import system_info

        info = system_info()
    runs = _collect(results, labels, sizes_mb)
    when = _dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    cpu = (info or {}).get("cpu", {}).get("model", "")
    header = (f"<h1>{escape(title)}</h1><p class='sub'>{len(runs)} run(s) &middot; {escape(cpu)} &middot; "
              f"generated {escape(when)} by edgebench</p><h2>Summary</h2>{_summary_html(runs)}")
    footer = f"<h2>System</h2>{_system_html(info)}"
    try:
        from bokeh.embed import file_html
        from bokeh.resources import INLINE
    except ImportError:
        note = ("<p class='note'>Plots are missing: bokeh is not installed "
                "(<code>pip install bokeh</code>, then write the report again).</p>")
        return (f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{escape(title)}</title>"
                f"<style>{_CSS}</style></head><body>{header}{note}{footer}</body></html>")
    if not runs:
        from bokeh.models import Div

        return file_html(Div(text="no runs"), resources=INLINE, title=title, template="""
{% block postamble %}<style>{{ css }}</style>{% endblock %}
{% block contents %}{{ header }}<p>No runs to plot.</p>{{ footer }}{% endblock %}""",
                         template_variables={"css": _CSS, "header": header, "footer": footer})
    plots = _plots(runs)
    return file_html(list(plots.values()), resources=INLINE, title=title, template=_TEMPLATE,
                     template_variables={"css": _CSS, "header": header, "footer": footer,
                                         "max_points": _MAX_POINTS})


def write_report(results: Sequence[Any], path: str | os.PathLike = "edgebench-report.html",
                 title: str = "edgebench report", *, labels: Sequence[str] | None = None,
                 sizes_mb: Sequence[float] | None = None, info: Mapping[str, Any] | None = None) -> Path:
    """Write a self-contained HTML report of benchmark runs and return its path.

    Parameters
    ----------
    results
        :class:`~edgebench.BenchmarkReport` objects, or mappings with ``p50_ms``, ``p90_ms``,
        ``p99_ms``, ``throughput`` and optionally ``label``, ``latencies_ms``, ``t_s``,
        ``valid``, ``validity_reasons``, ``stable``, ``size_mb``.
    path
        The ``.html`` file to write (parent directories are created).
    title
        Page title.
    labels
        One label per result (default: ``"model / backend"`` when the report knows them).
    sizes_mb
        Model size of each result, shown in the summary table.
    info
        System information as ``edgebench info --json`` prints it; collected when omitted.

    Returns
    -------
    pathlib.Path
        The absolute path written.

    Notes
    -----
    The page holds a summary table, a bar chart of p50/p99 per run, a latency histogram per
    run, latency over time and the CPU, devices, backends and versions.  BokehJS is inlined:
    no CDN, the file works offline.
    """
    html = render_report(results, title, labels=labels, sizes_mb=sizes_mb, info=info)
    path = Path(path).expanduser().resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(html, encoding="utf-8")
    os.replace(tmp, path)
    return path
