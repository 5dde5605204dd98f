"""The live widget of a running server (what ``display(eb.serve(...))`` shows).

Key figures, one row per model version (requests, rate, batches, mean batch size, queue and
compute time, in flight) and one per tenant (answered, failed, rate, at the model, waiting),
refreshed by a daemon thread from :meth:`Server.snapshot` until the widget or the server is
closed; a button stops the server gracefully.
"""
from __future__ import annotations

import threading
import time
import weakref
from html import escape
from typing import Any

import ipywidgets as W

from ..notebook.views_base import View, card, fmt_ms, fmt_rate, tiles

__all__ = ["ServerView"]


class ServerView(View):
    """Live view of a :class:`~edgebench.serve.server.Server`.

    Parameters
    ----------
    server
        The server (held weakly).
    interval
        Seconds between refreshes of the background thread.
    start
        Start the background thread now (tests pass ``False`` and call :meth:`update`).
    """

    uses_bokeh = False

    def __init__(self, server: Any, *, interval: float = 0.5, start: bool = True):
        self._server = weakref.ref(server)
        self.interval = float(interval)
        self._prev: dict[tuple, tuple[float, int]] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.body = W.HTML()
        self.stop_button = W.Button(description="stop server", icon="stop", button_style="warning",
                                    tooltip="Server.stop(): answer the requests in flight, then close")
        self.stop_button.on_click(lambda _: self._stop_server())
        super().__init__([self.body, self.stop_button])
        self.update()
        if start:
            self._thread = threading.Thread(target=_refresh, args=(weakref.ref(self), self._stop, self.interval),
                                            name="edgebench-server-view", daemon=True)
            self._thread.start()

    def _rate(self, key: tuple, count: int, now: float) -> float:
        prev = self._prev.get(key)
        self._prev[key] = (now, count)
        if prev is None or now <= prev[0]:
            return float("nan")
        return (count - prev[1]) / (now - prev[0])

    def update(self) -> dict[str, Any] | None:
        """Refresh from the server's snapshot; returns it (``None`` once the server is gone)."""
        srv = self._server()
        if srv is None:
            return None
        snap = srv.snapshot()
        now = time.monotonic()
        state = "running" if snap["running"] else "stopped"
        total = sum(m["ok"] for m in snap["models"])
        head = (f"<b>Server</b> <code>{escape(snap['url'])}</code> <span class='eb-sub'>&middot; KServe v2 "
                f"&middot; {'tenants: ' + str(len(snap['tenants'])) if srv.app.auth.enabled else 'no auth'}</span>")
        figures = tiles([("state", state), ("requests", f"{total:,}"),
                         ("rate", fmt_rate(self._rate(("all",), total, now))), ("in flight", str(snap["inflight"])),
                         ("refused (token)", str(snap["auth_failures"]))],
                        {"state": "eb-valid" if snap["running"] else "eb-invalid"})
        rows = "".join(
            f"<tr><td class='eb-l'><code>{escape(m['model'])}:{escape(m['version'])}</code></td>"
            f"<td class='eb-l'>{escape(m['mode'])}</td><td>{m['ok']:,}</td><td>{m['failed']:,}</td>"
            f"<td>{fmt_rate(self._rate(('m', m['model'], m['version']), m['ok'], now))}</td>"
            f"<td>{m['executions']:,}</td><td>{m['mean_batch']:.2f}</td><td>{fmt_ms(m['queue_ms'])}</td>"
            f"<td>{fmt_ms(m['compute_ms'])}</td><td>{fmt_ms(m['latency_ms'])}</td><td>{m['inflight']}</td></tr>"
            for m in snap["models"])
        models = ("<table class='eb-table'><tr><th class='eb-l'>model</th><th class='eb-l'>dispatch</th><th>ok</th>"
                  "<th>failed</th><th>rate</th><th>batches</th><th>mean batch</th><th>queue</th><th>compute</th>"
                  f"<th>latency</th><th>in flight</th></tr>{rows}</table>")
        tenants = ""
        if snap["tenants"]:
            trs = "".join(
                f"<tr><td class='eb-l'>{escape(t['tenant'])}</td><td>{t.get('priority') or '–'}</td>"
                f"<td>{t['ok']:,}</td><td>{t['failed']:,}</td>"
                f"<td>{fmt_rate(self._rate(('t', t['tenant']), t['ok'], now))}</td>"
                f"<td>{t.get('at_model', 0)}</td><td>{t.get('waiting', 0)}</td></tr>" for t in snap["tenants"])
            tenants = ("<table class='eb-table'><tr><th class='eb-l'>tenant</th><th>priority</th><th>ok</th>"
                       f"<th>failed</th><th>rate</th><th>at model</th><th>waiting</th></tr>{trs}</table>")
        self.body.value = card(head + figures + models + tenants)
        self.stop_button.disabled = not snap["running"]
        return snap

    def _stop_server(self) -> None:
        srv = self._server()
        if srv is not None:
            self.stop_button.disabled = True
            threading.Thread(target=srv.stop, name="edgebench-server-stop", daemon=True).start()

    def close(self) -> None:
        self._stop.set()
        super().close()


def _refresh(ref: weakref.ref[ServerView], stop: threading.Event, interval: float) -> None:
    while not stop.wait(interval):
        view = ref()
        if view is None or view.comm is None:
            return
        try:
            snap = view.update()
        except Exception:  # a refresh must never raise into a thread's void
            snap = None
        if snap is None or not snap["running"]:
            if snap is not None:
                view.update()
            return
        del view
