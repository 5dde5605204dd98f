"""The live Engine widget: request rate and latency percentiles while the engine serves.

A daemon thread reads ``engine.records`` incrementally (a seq cursor, nothing when no new
record) a few times a second, streams into Bokeh sources (``rollover`` bounds them) and
updates the labels.  It stops when the widget or the engine is closed.
"""
from __future__ import annotations

import threading
import time
import weakref
from html import escape
from time import perf_counter_ns
from typing import Any

import ipywidgets as W
import numpy as np

from ..profile.metrics import FIELDS, OK
from .views_base import LiveView, bokeh_pane, card, fmt_ms, fmt_rate, tiles

__all__ = ["EngineView"]

_SEQ, _ARRIVAL, _DONE, _STATUS = (FIELDS.index(f) for f in ("seq", "arrival", "done", "status"))


class EngineView(LiveView):
    """Live view of an :class:`~edgebench.Engine` (what ``display(engine)`` shows).

    Parameters
    ----------
    engine
        The engine (held weakly: the view does not keep it alive).
    interval
        Seconds between updates of the background thread (default 0.3).
    window_s
        The rate and percentiles shown are over the last ``window_s`` seconds.
    rollover
        Points kept in the per-request source (older ones drop off).
    start
        Start the background updater now (tests pass ``False`` and call :meth:`update`).

    Attributes
    ----------
    source
        Bokeh ``ColumnDataSource`` of requests: ``t`` (ms since the epoch), ``latency_ms``.
    ticks
        Bokeh ``ColumnDataSource``, one row per update with requests: ``t, rate, p50_ms, p99_ms``.
    labels
        ``{"requests", "rate", "p50", "p99", "state"}``: the figures shown (text).
    """

    def __init__(self, engine: Any, *, interval: float = 0.3, window_s: float = 5.0, rollover: int = 2000,
                 points_per_update: int = 200, start: bool = True):
        import pandas  # noqa: F401  (bokeh's stream() imports it lazily: never first in the updater
        #                                  thread, where it would race the main thread's import)
        from bokeh.layouts import column
        from bokeh.models import ColumnDataSource

        from .plots import live_latency_figure, live_rate_figure

        self._engine = weakref.ref(engine)
        self.interval, self.window_s, self.rollover = float(interval), float(window_s), int(rollover)
        self.points_per_update = int(points_per_update)
        self._lock = threading.RLock()
        self._worker: threading.Thread | None = None
        # history: the last `rollover` requests already recorded
        self._cursor = max(0, engine.records.total - self.rollover)
        self._window = np.empty((0, len(FIELDS)), np.int64)
        self._epoch_ms = engine.records.epoch_ns / 1e6
        self._last_rate = 0.0
        self.labels = {"requests": "0", "rate": "–", "p50": "–", "p99": "–", "state": "serving"}

        self.source = ColumnDataSource({"t": np.empty(0), "latency_ms": np.empty(0)}, name="requests")
        self.ticks = ColumnDataSource({k: np.empty(0) for k in ("t", "rate", "p50_ms", "p99_ms")}, name="ticks")
        lat = live_latency_figure(self.source, self.ticks)
        rate = live_rate_figure(self.ticks, lat.x_range)
        self.plot = bokeh_pane(column(lat, rate, sizing_mode="stretch_width"))

        m = engine.model
        threads = "auto" if engine.threads is None else engine.threads
        self.header = W.HTML(card(
            f"<b>Engine</b> <code>{escape(m.name)}</code> on <code>{escape(engine.backend)}</code> / "
            f"<code>{escape(engine.device)}</code> <span class='eb-sub'>&middot; providers "
            f"{escape(', '.join(engine.providers))} &middot; threads {threads} &middot; workers "
            f"{engine.workers}</span>"))
        self.figures = W.HTML()
        self.n_requests = W.BoundedIntText(value=100, min=1, max=10_000_000, description="requests",
                                           layout=W.Layout(width="190px"))
        self.warmup_button = W.Button(description="warm up", icon="fire",
                                      tooltip="engine.warmup(): 10 untimed requests")
        self.run_button = W.Button(description="run", icon="play", button_style="primary",
                                   tooltip="run this many requests of engine.sample_feeds()")
        self.warmup_button.on_click(lambda _: self.warmup())
        self.run_button.on_click(lambda _: self.run(self.n_requests.value))
        self.output = W.Output(layout=W.Layout(max_height="8em", overflow="auto"))
        controls = W.HBox([self.warmup_button, self.n_requests, self.run_button])
        super().__init__([self.header, self.figures, self.plot, controls, self.output])
        self._render_labels()
        self.update()
        if start:
            self.start()

    # -- state ------------------------------------------------------------------------------
    @property
    def engine(self) -> Any:
        """The engine, or ``None`` once it is garbage collected."""
        return self._engine()

    def _finished(self) -> bool:
        eng = self._engine()
        return eng is None or getattr(eng, "_closed", False) or self.comm is None

    # -- reading the records ----------------------------------------------------------------
    def update(self) -> int:
        """Read the records added since the last update, stream them, refresh the labels.

        Returns the number of new records.
        """
        with self._lock:
            eng = self._engine()
            if eng is None:
                return 0
            buf = eng.records
            now = perf_counter_ns()
            new = buf.snapshot(self._cursor) if buf.total > self._cursor else None
            n = 0 if new is None else len(new)
            if n:
                self._cursor = int(new[-1, _SEQ]) + 1
                ok = new[new[:, _STATUS] == OK]
                if len(ok):
                    pick = ok if len(ok) <= self.points_per_update else \
                        ok[np.linspace(0, len(ok) - 1, self.points_per_update).astype(int)]
                    self.source.stream({"t": pick[:, _DONE] / 1e6 + self._epoch_ms,
                                        "latency_ms": (pick[:, _DONE] - pick[:, _ARRIVAL]) / 1e6},
                                       rollover=self.rollover)
                self._window = np.concatenate([self._window, new])[-50_000:]
            self._window = self._window[self._window[:, _DONE] >= now - int(self.window_s * 1e9)]
            stats = self._stats(now)
            if n or self._last_rate > 0:  # one more point, down to zero, once traffic stops
                self.ticks.stream({"t": [now / 1e6 + self._epoch_ms], "rate": [stats["rate"]],
                                   "p50_ms": [stats["p50"]], "p99_ms": [stats["p99"]]},
                                  rollover=self.rollover)
            self._last_rate = stats["rate"]
            closed = getattr(eng, "_closed", False)
            self.labels = {"requests": f"{buf.total:,}", "rate": fmt_rate(stats["rate"]),
                           "p50": fmt_ms(stats["p50"]), "p99": fmt_ms(stats["p99"]),
                           "state": "closed" if closed else "serving"}
            self._render_labels()
            if closed:
                self.run_button.disabled = self.warmup_button.disabled = True
            return n

    def _stats(self, now: int) -> dict[str, float]:
        w = self._window
        ok = w[w[:, _STATUS] == OK]
        if not len(ok):
            return {"rate": 0.0, "p50": float("nan"), "p99": float("nan")}
        lat = (ok[:, _DONE] - ok[:, _ARRIVAL]) / 1e6
        p50, p99 = np.percentile(lat, [50, 99])
        # completions per second over the window (shorter while the engine has just started)
        span = (now - max(int(ok[:, _ARRIVAL].min()), now - int(self.window_s * 1e9))) / 1e9
        return {"rate": len(ok) / max(span, self.interval), "p50": float(p50), "p99": float(p99)}

    def _render_labels(self) -> None:
        lab = self.labels
        self.figures.value = card(tiles(
            [("requests", lab["requests"]), (f"rate ({self.window_s:g} s)", lab["rate"]),
             ("p50", lab["p50"]), ("p99", lab["p99"]), ("state", lab["state"])],
            {"state": "eb-invalid" if lab["state"] == "closed" else "eb-valid"}))

    # -- buttons ----------------------------------------------------------------------------
    def _in_background(self, job: Any, label: str) -> threading.Thread:
        def target() -> None:
            self.run_button.disabled = self.warmup_button.disabled = True
            try:
                msg = job()
                self.output.append_stdout(msg + "\n")
            except Exception as e:  # shown in the widget, the engine stays usable
                self.output.append_stderr(f"{label} failed: {type(e).__name__}: {e}\n")
            finally:
                eng = self._engine()
                closed = eng is None or getattr(eng, "_closed", False)
                self.run_button.disabled = self.warmup_button.disabled = closed

        self._worker = threading.Thread(target=target, name=f"edgebench-{label}", daemon=True)
        self._worker.start()
        return self._worker

    def warmup(self, n: int = 10) -> threading.Thread:
        """Run ``engine.warmup(n)`` in a thread (what the "warm up" button does)."""
        def job() -> str:
            eng = self._engine()
            t = time.perf_counter()
            eng.warmup(n)
            return f"warmed up: {n} untimed requests in {time.perf_counter() - t:.3f} s"

        return self._in_background(job, "warm-up")

    def run(self, n: int = 100) -> threading.Thread:
        """Run ``n`` requests of ``engine.sample_feeds()`` in a thread (the "run" button)."""
        def job() -> str:
            eng = self._engine()
            feeds = eng.sample_feeds()
            t = time.perf_counter()
            for _ in range(int(n)):
                eng.run(feeds)
            dt = time.perf_counter() - t
            return f"ran {n} requests in {dt:.3f} s ({n / dt:,.0f}/s)"

        return self._in_background(job, "run")
