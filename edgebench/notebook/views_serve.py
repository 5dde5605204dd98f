"""Live widgets of the serving stack, registered in :data:`~edgebench.notebook.display.VIEWS`.

=====================  ===========================================================
object                 widget
=====================  ===========================================================
``DynamicBatcher``     :class:`~.views_batcher.BatcherView`: batch-size histogram,
                       queue depth, queue wait vs compute, request rate, p50 / p99
``Server``             :class:`ServerView`: URL, models (versions, ready state,
                       dispatch), tenants, rate per model and per tenant, p99, errors,
                       a stop button
=====================  ===========================================================

Both follow :class:`~.views_engine.EngineView`: everything comes from the request records
(each model's batcher or engine :class:`~edgebench.profile.metrics.RecordBuffer`), read
incrementally by a daemon thread a few times a second and streamed into Bokeh sources with
``rollover``; the thread stops when the widget, or the object it shows, is closed.
Per-tenant counts come from the server's own metrics (only the HTTP layer knows who sent a
request).  Importing this module registers both views (:func:`register`); the objects'
``_repr_mimebundle_`` hooks call it.
"""
from __future__ import annotations

import math
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable
from html import escape
from time import perf_counter_ns
from typing import Any

import ipywidgets as W

from .display import register_view
from .plots import PALETTE
from .views_base import bokeh_pane, card, fmt_ms, fmt_rate, tiles
from .views_batcher import BatcherView, LiveView, RecordWindow, time_figure

__all__ = ["BatcherView", "RecordWindow", "ServerView"]


def _fixed(v: float) -> str:
    return "–" if math.isnan(v) else f"{v:.2f}"


# --------------------------------------------------------------------------------------------
# Server
# --------------------------------------------------------------------------------------------
class ServerView(LiveView):
    """Live view of a running server, what ``display(eb.serve(...))`` shows.

    Parameters
    ----------
    server
        The :class:`~edgebench.serve.server.Server` (held weakly).
    interval
        Seconds between updates of the background thread (default 0.3).
    window_s
        Rates and p99 are over the last ``window_s`` seconds.
    rollover
        Points kept per line.
    start
        Start the background updater now (tests pass ``False`` and call :meth:`update`).

    Attributes
    ----------
    model_sources
        ``{"name:version": ColumnDataSource}`` with ``t, rate, p99_ms``, one row per update
        while the model has traffic (a line per model appears when it is first loaded).
    tenant_sources
        ``{tenant: ColumnDataSource}`` with ``t, rate`` (answered requests per second).
    models, tenants
        The rows of the two tables, as dicts (what the HTML tables show).
    labels
        Key figures as text: ``state, models`` (ready / known), ``requests`` (answered),
        ``rate, inflight, errors`` (failed requests, from the server's metrics) and ``refused``
        (no or a wrong token).
    stop_button
        Stops the server gracefully (in a thread): requests in flight are answered first.
    """

    def __init__(self, server: Any, *, interval: float = 0.3, window_s: float = 5.0, rollover: int = 1000,
                 start: bool = True):
        import pandas  # noqa: F401  (see BatcherView)
        from bokeh.layouts import column

        self._server = weakref.ref(server)
        self.interval, self.window_s, self.rollover = float(interval), float(window_s), int(rollover)
        self._lock = threading.RLock()
        self._windows: dict[tuple, RecordWindow] = {}
        self._tenant_hist: dict[str, deque] = {}
        self._quiet: set[str] = set()  # lines whose last point was a zero rate
        self._new_lines = False
        self.model_sources: dict[str, Any] = {}
        self.tenant_sources: dict[str, Any] = {}
        self.models: list[dict[str, Any]] = []
        self.tenants: list[dict[str, Any]] = []
        self.labels: dict[str, str] = {}
        self._rate_fig = time_figure(f"Requests per second over {window_s:g} s: per model (solid), "
                                     "per tenant (dashed)", 200)
        self._p99_fig = time_figure(f"p99 latency per model over {window_s:g} s (ms)", 170, self._rate_fig.x_range,
                                    "ms")
        self._layout = column(self._rate_fig, self._p99_fig, sizing_mode="stretch_width")
        self.plot: Any = None
        self.header = W.HTML()
        self.figures = W.HTML()
        self.tables = W.HTML()
        self.stop_button = W.Button(description="stop server", icon="stop", button_style="warning",
                                    tooltip="server.stop(): answer the requests in flight, then close")
        self.stop_button.on_click(lambda _: self.stop_server())
        self._stopper: threading.Thread | None = None
        self._stopped_at: float | None = None
        self.update()  # first: the pane's first render has a line per model and tenant
        self.plot = bokeh_pane(self._layout)
        super().__init__([self.header, self.figures, self.tables, self.plot, self.stop_button])
        if start:
            self._start_updater()

    @property
    def server(self) -> Any:
        """The server, or ``None`` once it is garbage collected."""
        return self._server()

    def _finished(self) -> bool:
        srv = self._server()
        if srv is None:
            return True
        if srv.running:
            return False
        # stopping: done once its models are closed (a server that died on its own never
        # closes them: give up after a few seconds)
        if self._stopped_at is None:
            self._stopped_at = time.monotonic()
        return not srv.app.repo.served() or time.monotonic() - self._stopped_at > 5.0

    def stop_server(self) -> threading.Thread | None:
        """Stop the server in a background thread (what the button does); returns the thread."""
        srv = self._server()
        if srv is None:
            return None
        self.stop_button.disabled = True
        self._stopper = threading.Thread(target=srv.stop, name="edgebench-server-stop", daemon=True)
        self._stopper.start()
        return self._stopper

    # -- lines --------------------------------------------------------------------------------
    def _line(self, sources: dict, key: str, columns: tuple, draw: Callable[[Any, str], None]) -> Any:
        src = sources.get(key)
        if src is None:
            from bokeh.models import ColumnDataSource

            src = sources[key] = ColumnDataSource({c: [] for c in columns}, name=key)
            draw(src, PALETTE[(len(self.model_sources) + len(self.tenant_sources) - 1) % len(PALETTE)])
            self._new_lines = True
        return src

    def _model_line(self, key: str) -> Any:
        def draw(src: Any, colour: str) -> None:
            self._rate_fig.line("t", "rate", source=src, color=colour, line_width=2, legend_label=key)
            self._p99_fig.line("t", "p99_ms", source=src, color=colour, line_width=2, legend_label=key)
            self._rate_fig.legend.location = self._p99_fig.legend.location = "top_left"
        return self._line(self.model_sources, key, ("t", "rate", "p99_ms"), draw)

    def _tenant_line(self, name: str) -> Any:
        def draw(src: Any, colour: str) -> None:
            self._rate_fig.line("t", "rate", source=src, color=colour, line_width=2, line_dash="dashed",
                                legend_label=f"tenant {name}")
            self._rate_fig.legend.location = "top_left"
        return self._line(self.tenant_sources, name, ("t", "rate"), draw)

    def _stream(self, key: str, src: Any, row: dict[str, float], active: bool) -> None:
        """One point per update while there is traffic, and one more at zero when it stops."""
        if not active and key in self._quiet:
            return
        src.stream({k: [v] for k, v in row.items()}, rollover=self.rollover)
        (self._quiet.add if not active else self._quiet.discard)(key)

    # -- reading ------------------------------------------------------------------------------
    def update(self) -> dict[str, Any] | None:
        """Read the models' new records and the server's metrics; stream, refresh the tables.

        Returns the server's :meth:`~edgebench.serve.server.Server.snapshot` (``None`` once
        the server is gone).
        """
        with self._lock:
            srv = self._server()
            if srv is None:
                return None
            snap = srv.snapshot()
            now, t_ms = perf_counter_ns(), time.time() * 1e3
            served = {(m.name, m.version): m for m in srv.app.repo.served()}
            snap_models = {(m["model"], m["version"]): m for m in snap["models"]}
            for m in served.values():
                if (m.name, m.version, m.serial) not in self._windows:
                    self._windows[(m.name, m.version, m.serial)] = RecordWindow(m.records, self.window_s)
            for w in self._windows.values():  # unloaded ones too: their last answers count
                w.read()
            rows = []
            for entry in srv.app.repo.index():
                key = (entry["name"], entry.get("version", ""))
                m = served.get(key)
                row = {"model": entry["name"], "version": entry.get("version", "–"), "state": entry["state"],
                       "reason": entry.get("reason", ""), "dispatch": "–", "ok": 0, "failed": 0, "rate": 0.0,
                       "p50_ms": float("nan"), "p99_ms": float("nan"), "mean_batch": float("nan"), "inflight": 0}
                if m is None:  # unloaded (or the server stopped): what its versions answered
                    past = [w for k, w in self._windows.items() if k[0] == entry["name"]]
                    row.update(ok=sum(w.ok for w in past), failed=sum(w.failed for w in past))
                else:
                    w = self._windows[(m.name, m.version, m.serial)]
                    s = w.stats(now)
                    label = f"{m.name}:{m.version}"
                    self._stream(label, self._model_line(label), {"t": t_ms, "rate": s["rate"], "p99_ms": s["p99"]},
                                 s["n"] > 0)
                    b = m.batcher
                    dispatch = (f"batched (max {b.max_batch_size}, {b.max_queue_delay_ms:g} ms)" if b is not None
                                else m.runner.mode)
                    sm = snap_models.get(key, {})
                    row.update(dispatch=dispatch, ok=w.ok, failed=w.failed, rate=s["rate"], p50_ms=s["p50"],
                               p99_ms=s["p99"], mean_batch=w.mean_batch if w.batches else float("nan"),
                               inflight=sm.get("inflight", m.inflight))
                rows.append(row)
            self.models = rows
            # without auth every request is the "anonymous" tenant's: no tenant lines then
            self.tenants = [self._tenant_row(t, t_ms) for t in snap["tenants"]] if srv.app.auth.enabled else []
            running = snap["running"]
            total = sum(w.ok for w in self._windows.values())
            # every failed request the HTTP layer attributed to a model (at the model or refused
            # before it: invalid, rate limited, ...); anonymous ones too when there is no auth
            failed = sum(t["failed"] for t in snap["tenants"])
            ready = sum(r["state"] == "READY" for r in rows)
            self.labels = {"state": "running" if running else "stopped", "models": f"{ready}/{len(rows)}",
                           "requests": f"{total:,}", "rate": fmt_rate(sum(r["rate"] for r in rows)),
                           "inflight": str(snap["inflight"]), "errors": f"{failed:,}",
                           "refused": f"{snap['auth_failures']:,}"}
            self._render(srv, snap)
            if self._new_lines and self.plot is not None and hasattr(self.plot, "update_from_model"):
                # a model loaded after the pane was shown: render the figures again with its line
                # (a browser view only replays changes to models it already has)
                self.plot.update_from_model(self._layout)
            self._new_lines = False
            self.stop_button.disabled = not running or (self._stopper is not None)
            return snap

    def _tenant_row(self, t: dict[str, Any], t_ms: float) -> dict[str, Any]:
        name = t["tenant"]
        hist = self._tenant_hist.setdefault(name, deque())
        hist.append((t_ms, t["ok"]))
        while len(hist) > 2 and hist[1][0] <= t_ms - self.window_s * 1e3:
            hist.popleft()
        t0, ok0 = hist[0]
        rate = (t["ok"] - ok0) / ((t_ms - t0) / 1e3) if t_ms > t0 else 0.0
        self._stream(f"tenant:{name}", self._tenant_line(name), {"t": t_ms, "rate": rate}, rate > 0)
        return {**t, "rate": rate}

    # -- rendering ----------------------------------------------------------------------------
    def _render(self, srv: Any, snap: dict[str, Any]) -> None:
        lab = self.labels
        auth = srv.app.auth
        who = f"{len(auth.tenants)} tenant(s), bearer tokens" if auth.enabled else "no authentication"
        self.header.value = card(
            f"<b>Server</b> <a href='{escape(srv.url)}/v2' target='_blank'><code>{escape(srv.url)}</code></a> "
            f"<span class='eb-sub'>&middot; KServe v2 / Triton HTTP &middot; {escape(who)} &middot; "
            f"<code>/metrics</code> for Prometheus</span>")
        self.figures.value = card(tiles(
            [("state", lab["state"]), ("models ready", lab["models"]), ("answered", lab["requests"]),
             (f"rate ({self.window_s:g} s)", lab["rate"]), ("in flight", lab["inflight"]), ("failed", lab["errors"]),
             ("refused (token)", lab["refused"])],
            {"state": "eb-valid" if lab["state"] == "running" else "eb-invalid"}))
        mrows = "".join(
            f"<tr><td class='eb-l'><code>{escape(r['model'])}</code></td><td>{escape(str(r['version']))}</td>"
            f"<td class='eb-l {'eb-valid' if r['state'] == 'READY' else 'eb-invalid'}' title='{escape(r['reason'])}'>"
            f"{escape(r['state'])}</td><td class='eb-l'>{escape(r['dispatch'])}</td><td>{r['ok']:,}</td>"
            f"<td>{r['failed']:,}</td><td>{fmt_rate(r['rate'])}</td><td>{fmt_ms(r['p50_ms'])}</td>"
            f"<td>{fmt_ms(r['p99_ms'])}</td><td>{_fixed(r['mean_batch'])}</td><td>{r['inflight']}</td></tr>"
            for r in self.models)
        html = ("<table class='eb-table'><tr><th class='eb-l'>model</th><th>version</th><th class='eb-l'>state</th>"
                "<th class='eb-l'>dispatch</th><th>answered</th><th title='requests that reached the model and failed "
                "(errors, timeouts, queue full)'>failed at model</th><th>rate</th><th>p50</th><th>p99</th>"
                f"<th>mean batch</th><th>in flight</th></tr>{mrows}</table>")
        if self.tenants:
            trows = "".join(
                f"<tr><td class='eb-l'>{escape(t['tenant'])}</td><td>{t.get('priority') or '–'}</td>"
                f"<td>{t['ok']:,}</td><td>{t['failed']:,}</td><td>{fmt_rate(t['rate'])}</td>"
                f"<td>{t.get('at_model', 0)}</td><td>{t.get('waiting', 0)}</td></tr>" for t in self.tenants)
            html += ("<table class='eb-table'><tr><th class='eb-l'>tenant</th><th>priority</th><th>answered</th>"
                     f"<th>failed</th><th>rate</th><th>at the model</th><th>waiting</th></tr>{trows}</table>")
        self.tables.value = card(html)


register_view("DynamicBatcher", BatcherView)
register_view("Server", ServerView)
