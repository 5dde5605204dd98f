"""Live widgets of the cluster, registered in :data:`~edgebench.notebook.display.VIEWS`.

=====================  ===========================================================
object                 widget
=====================  ===========================================================
``Cluster``            :class:`ClusterView`: scheduler, workers table, deployments
                       table, request rate and p99 per deployment over time, the
                       last events, a "kill a worker" button (local clusters)
``Deployment``         :class:`DeploymentView`: replicas (worker, health, load),
                       counters, its own rate and p99 over time
=====================  ===========================================================

Both read the client-side objects only (the deployments' counters and their submit-to-answer
latencies, the cluster's event log, the scheduler's worker list), from a daemon thread about
once a second, and stop when the widget, or the object, is closed.  :func:`cluster_html` and
:func:`deployment_html` are the HTML cards (``_repr_html_``) shown where widgets are not:
they need neither ipywidgets nor bokeh.  The dashboard page of the same cluster, as the
workers report it, is :mod:`edgebench.notebook.dashboard.cluster`.
"""
from __future__ import annotations

import threading
import time
import weakref
from html import escape
from typing import Any

try:  # the HTML cards work without ipywidgets; the widgets need it
    import ipywidgets as W

    from .views_base import LiveView, bokeh_pane
except ImportError:  # pragma: no cover - exercised only without the notebook extras
    W = None
    LiveView = object  # type: ignore[misc,assignment]

__all__ = ["ClusterView", "DeploymentView", "cluster_html", "deployment_html", "EVENTS_SHOWN"]

EVENTS_SHOWN = 8
_STYLE = ("<style>.eb-cl table{border-collapse:collapse;font-size:12px;margin:4px 0}"
          ".eb-cl th,.eb-cl td{border:1px solid var(--jp-border-color2,#ddd);padding:2px 7px;text-align:right;"
          "font-variant-numeric:tabular-nums}.eb-cl th{background:var(--jp-layout-color2,#f2f2f2)}"
          ".eb-cl .l{text-align:left}.eb-cl .bad{color:#cf222e}.eb-cl .good{color:#1a7f37}"
          ".eb-cl .sub{color:var(--jp-ui-font-color2,#666)}</style>")


def _ms(v: Any) -> str:
    try:
        v = float(v)
    except (TypeError, ValueError):
        return "–"
    return "–" if v != v else (f"{v:.3f} ms" if v < 100 else f"{v:.1f} ms")


def _table(header: list[str], rows: list[list[str]], left: int = 1) -> str:
    """Cells are HTML already (escaped by the caller); the first ``left`` columns are left-aligned."""
    th = "".join(f"<th class='{'l' if i < left else ''}'>{h}</th>" for i, h in enumerate(header))
    body = "".join("<tr>" + "".join(f"<td class='{'l' if i < left else ''}'>{c}</td>" for i, c in enumerate(r))
                   + "</tr>" for r in rows)
    return f"<table><tr>{th}</tr>{body}</table>"


def _worker_rows(cl: Any) -> list[dict[str, Any]]:
    info = cl.client.scheduler_info(n_workers=-1)["workers"]
    rows = []
    for addr, w in sorted(info.items()):
        d = cl.controller.describe_worker(addr)
        rows.append({"worker": addr, "nthreads": w.get("nthreads"),
                     "memory_mb": ((w.get("metrics") or {}).get("memory") or 0) / 2**20,
                     "memory_limit_mb": (w.get("memory_limit") or 0) / 2**20, **d})
    return rows


def _workers_html(rows: list[dict[str, Any]]) -> str:
    return _table(["worker", "threads", "memory", "replicas", "outstanding"], [
        [f"<code>{escape(r['worker'])}</code>", str(r["nthreads"]),
         f"{r['memory_mb']:,.0f} / {r['memory_limit_mb']:,.0f} MB", str(r["replicas"]), str(r["outstanding"])]
        for r in rows])


def _deployments_html(rows: list[dict[str, Any]]) -> str:
    return _table(["deployment", "replicas", "workers", "in flight", "pending", "completed", "errors", "retried",
                   "p50", "p99"], [
        [f"<code>{escape(r['deployment'])}</code>",
         f"<span class='{'good' if r['replicas'] >= r['wanted'] else 'bad'}'>{r['replicas']}/{r['wanted']}</span>",
         escape(r["workers"]) or "–", str(r["inflight"]), str(r["pending"]), f"{r['completed']:,}",
         f"{r['errors']:,}", f"{r['retried']:,}", _ms(r["p50_ms"]), _ms(r["p99_ms"])] for r in rows], left=1)


def _events_html(events: list[dict[str, Any]]) -> str:
    if not events:
        return "<div class='sub'>no events yet</div>"
    return _table(["time", "event", "deployment", "replica", "worker", "detail"], [
        [time.strftime("%H:%M:%S", time.localtime(e["time"])), escape(e["kind"]), escape(e["deployment"] or ""),
         escape(e["replica"] or ""), escape(e["worker"] or ""), escape(e["detail"] or "")] for e in events], left=6)


def _replicas_html(dep: Any) -> str:
    return _table(["replica", "worker", "healthy", "draining", "tensors by", "outstanding", "answered"], [
        [f"<code>{escape(r.rid)}</code>", f"<code>{escape(r.worker)}</code>",
         "<span class='good'>yes</span>" if r.healthy else "<span class='bad'>no</span>",
         "yes" if r.draining else "no", r.transport, str(r.outstanding), f"{r.answered:,}"]
        for r in list(dep.replicas)], left=2)


def _cluster_head(cl: Any, n_workers: int) -> str:
    if cl.closed:
        return "<b>Cluster</b> <span class='bad'>closed</span>"
    local = " &middot; local (started here)" if getattr(cl, "_owns_dask_cluster", False) else ""
    return (f"<b>Cluster</b> <code>{escape(cl.client.scheduler.address)}</code> <span class='sub'>&middot; "
            f"{n_workers} workers &middot; {len(cl._deployments)} deployments{local}</span>")


def cluster_html(cl: Any) -> str:
    """The HTML card of an ``eb.Cluster``: workers, deployments, the last events."""
    if cl.closed:
        return f"{_STYLE}<div class='eb-cl'>{_cluster_head(cl, 0)}</div>"
    workers = _worker_rows(cl)
    deps = [d.row() for d in list(cl._deployments.values())]
    return (f"{_STYLE}<div class='eb-cl'>{_cluster_head(cl, len(workers))}{_workers_html(workers)}"
            f"{_deployments_html(deps) if deps else '<div class=sub>no deployments</div>'}"
            f"{_events_html(cl.log.list()[-EVENTS_SHOWN:])}</div>")


def _deployment_head(dep: Any) -> str:
    live = sum(r.healthy for r in list(dep.replicas))
    state = "<span class='bad'>undeployed</span>" if dep.closed else f"{live}/{dep.wanted} replicas"
    return (f"<b>Deployment</b> <code>{escape(dep.name)}</code> <span class='sub'>&middot; model "
            f"<code>{escape(dep.model.name)}</code> &middot; {state} &middot; routing {escape(dep.routing)}"
            f"{' &middot; tenant ' + escape(dep.tenant) if dep.tenant else ''}</span>")


def _counters_html(row: dict[str, Any]) -> str:
    keys = ["submitted", "completed", "errors", "retried", "rejected", "inflight", "pending"]
    return _table(keys + ["rate", "p50", "p99"], [[f"{row[k]:,}" for k in keys]
                                                  + [f"{row['rate']:,.1f}/s", _ms(row["p50_ms"]),
                                                     _ms(row["p99_ms"])]], left=0)


def deployment_html(dep: Any) -> str:
    """The HTML card of a ``Deployment``: its replicas and counters."""
    return (f"{_STYLE}<div class='eb-cl'>{_deployment_head(dep)}{_replicas_html(dep)}"
            f"{_counters_html(dep.row())}</div>")


# --------------------------------------------------------------------------------------------
# live widgets
# --------------------------------------------------------------------------------------------
class _RateLines:
    """Per-deployment lines of rate (answers per second, from ``completed``) and p99 (ms, over
    ``window_s``, from ``Deployment.latency_ms``), one point per update."""

    def __init__(self, window_s: float, rollover: int):
        from .views_batcher import time_figure

        self.window_s, self.rollover = window_s, rollover
        self.sources: dict[str, Any] = {}
        self._last: dict[str, tuple[int, float]] = {}
        self.new_lines = False
        self.rate_fig = time_figure("Answers per second, per deployment", 180)
        self.p99_fig = time_figure(f"p99 latency per deployment over {window_s:g} s (client side)", 160,
                                   self.rate_fig.x_range, "ms")
        from bokeh.layouts import column

        self.layout = column(self.rate_fig, self.p99_fig, sizing_mode="stretch_width")

    def add(self, dep: Any, t_ms: float) -> dict[str, Any]:
        from bokeh.models import ColumnDataSource

        from .plots import PALETTE

        name = dep.name
        src = self.sources.get(name)
        if src is None:
            src = self.sources[name] = ColumnDataSource({"t": [], "rate": [], "p99_ms": []}, name=name)
            colour = PALETTE[(len(self.sources) - 1) % len(PALETTE)]
            self.rate_fig.line("t", "rate", source=src, color=colour, line_width=2, legend_label=name)
            self.p99_fig.line("t", "p99_ms", source=src, color=colour, line_width=2, legend_label=name)
            self.rate_fig.legend.location = self.p99_fig.legend.location = "top_left"
            self.new_lines = True
        now, done = time.monotonic(), dep.completed
        prev = self._last.get(name)
        self._last[name] = (done, now)
        rate = (done - prev[0]) / (now - prev[1]) if prev and now > prev[1] else 0.0
        p99 = dep.latency_ms(self.window_s)["p99_ms"]
        point = {"t": t_ms, "rate": rate, "p99_ms": float("nan") if p99 is None else p99}
        src.stream({k: [v] for k, v in point.items()}, rollover=self.rollover)
        return point


class ClusterView(LiveView):
    """Live view of an ``eb.Cluster`` (what ``display(cl)`` shows).

    Parameters
    ----------
    cluster
        The cluster (held weakly).
    interval
        Seconds between updates of the background thread (default 1).
    window_s
        p99 over the last ``window_s`` seconds.
    start
        Start the background updater now (tests pass ``False`` and call :meth:`update`).

    Attributes
    ----------
    sources
        ``{deployment: ColumnDataSource}`` with ``t, rate, p99_ms``, one row per update.
    workers, deployments, events
        What the tables show: worker rows, ``Deployment.row()`` dicts, the last events.
    kill_button, message
        Kills a worker (:meth:`kill_worker`); ``message`` says what happened (or why not).
    """

    def __init__(self, cluster: Any, *, interval: float = 1.0, window_s: float = 5.0, rollover: int = 600,
                 start: bool = True):
        import pandas  # noqa: F401  (see BatcherView: bokeh's stream() imports it lazily)

        self._cluster = weakref.ref(cluster)
        self.interval = float(interval)
        self._lock = threading.RLock()
        self._lines = _RateLines(float(window_s), int(rollover))
        self.sources = self._lines.sources
        self.workers: list[dict[str, Any]] = []
        self.deployments: list[dict[str, Any]] = []
        self.events: list[dict[str, Any]] = []
        self.plot: Any = None
        self.header, self.tables, self.event_list = W.HTML(), W.HTML(), W.HTML()
        self.message = W.HTML()
        local = getattr(cluster, "_owns_dask_cluster", False)
        self.kill_button = W.Button(description="kill a worker", icon="bolt", button_style="danger",
                                    tooltip="cl.kill_worker(): SIGKILL one worker process (its nanny restarts it)"
                                    if local else "only for clusters started by eb.Cluster.local()")
        self.kill_button.on_click(lambda _: self.kill_worker())
        self._killer: threading.Thread | None = None
        self.update()
        self.plot = bokeh_pane(self._lines.layout)
        self._lines.new_lines = False
        super().__init__([self.header, self.tables, self.plot, self.event_list,
                          W.HBox([self.kill_button, self.message])])
        if start:
            self.start()

    @property
    def cluster(self) -> Any:
        return self._cluster()

    def _finished(self) -> bool:
        cl = self._cluster()
        return cl is None or cl.closed

    def kill_worker(self, address: str | None = None) -> threading.Thread | None:
        """``cl.kill_worker(address)`` in a background thread (what the button does); the
        outcome, or the :class:`~edgebench.errors.ClusterError` saying why not, goes to
        :attr:`message`.  Returns the thread."""
        cl = self._cluster()
        if cl is None:
            return None

        def kill() -> None:
            try:
                addr = cl.kill_worker(address)
            except Exception as e:  # ClusterError for remote clusters: shown, not raised
                self.message.value = f"<span style='color:#cf222e'>{escape(getattr(e, 'message', str(e)))}"
                hint = getattr(e, 'hint', None)
                self.message.value += f" ({escape(hint)})</span>" if hint else "</span>"
            else:
                self.message.value = (f"killed <code>{escape(addr)}</code>: its replicas are re-created "
                                      "elsewhere, its nanny starts a new worker")
            finally:
                self.kill_button.disabled = False

        self.kill_button.disabled = True
        self.message.value = "killing…"
        self._killer = threading.Thread(target=kill, name="edgebench-kill-worker", daemon=True)
        self._killer.start()
        return self._killer

    def update(self) -> None:
        """Read the workers, deployments and events; stream a point per deployment."""
        with self._lock:
            cl = self._cluster()
            if cl is None:
                return
            if cl.closed:
                self.header.value = f"{_STYLE}<div class='eb-cl'>{_cluster_head(cl, 0)}</div>"
                self.kill_button.disabled = True
                return
            t_ms = time.time() * 1e3
            deps = list(cl._deployments.values())
            for d in deps:
                self._lines.add(d, t_ms)
            self.deployments = [d.row() for d in deps]
            self.workers = _worker_rows(cl)
            self.events = cl.log.list()[-EVENTS_SHOWN:]
            self.header.value = f"{_STYLE}<div class='eb-cl'>{_cluster_head(cl, len(self.workers))}</div>"
            self.tables.value = (f"{_STYLE}<div class='eb-cl'>{_workers_html(self.workers)}"
                                 f"{_deployments_html(self.deployments) if deps else '<i>no deployments</i>'}</div>")
            self.event_list.value = (f"{_STYLE}<div class='eb-cl'><b>last events</b> <span class='sub'>"
                                     f"(cl.events has all)</span>{_events_html(self.events)}</div>")
            _refresh(self.plot, self._lines)


def _refresh(plot: Any, lines: _RateLines) -> None:
    # a line added after the pane was shown: render again (a browser view only replays
    # changes to models it already has)
    if lines.new_lines and plot is not None:
        if hasattr(plot, "update_from_model"):
            plot.update_from_model(lines.layout)
        lines.new_lines = False


class DeploymentView(LiveView):
    """Live view of a ``Deployment``: its replicas, counters, rate and p99 over time.

    Attributes
    ----------
    source
        ``ColumnDataSource`` with ``t, rate, p99_ms``, one row per update.
    row
        The last ``Deployment.row()`` shown.
    """

    def __init__(self, dep: Any, *, interval: float = 1.0, window_s: float = 5.0, rollover: int = 600,
                 start: bool = True):
        import pandas  # noqa: F401

        self._dep = weakref.ref(dep)
        self.interval = float(interval)
        self._lock = threading.RLock()
        self._lines = _RateLines(float(window_s), int(rollover))
        self.row: dict[str, Any] = {}
        self.plot: Any = None
        self.header, self.replicas, self.counters = W.HTML(), W.HTML(), W.HTML()
        self.update()
        self.source = self._lines.sources[dep.name]
        self.plot = bokeh_pane(self._lines.layout)
        self._lines.new_lines = False
        super().__init__([self.header, self.replicas, self.counters, self.plot])
        if start:
            self.start()

    def _finished(self) -> bool:
        dep = self._dep()
        return dep is None or dep.closed or dep.cluster.closed

    def update(self) -> None:
        with self._lock:
            dep = self._dep()
            if dep is None:
                return
            if not dep.closed:
                self._lines.add(dep, time.time() * 1e3)
            self.row = dep.row()
            self.header.value = f"{_STYLE}<div class='eb-cl'>{_deployment_head(dep)}</div>"
            self.replicas.value = f"{_STYLE}<div class='eb-cl'>{_replicas_html(dep)}</div>"
            self.counters.value = f"{_STYLE}<div class='eb-cl'>{_counters_html(self.row)}</div>"
            _refresh(self.plot, self._lines)


if W is not None:
    from .display import register_view

    register_view("Cluster", ClusterView)
    register_view("Deployment", DeploymentView)
