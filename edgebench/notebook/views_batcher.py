"""The live widget of a :class:`~edgebench.DynamicBatcher`, and what the serving views share.

:class:`RecordWindow` reads one request-record buffer incrementally (a seq cursor: nothing is
read twice); :class:`LiveView` is a view refreshed a few times a second by a daemon thread
that stops when the widget, or the object it shows, is closed (the pattern of
:class:`~.views_engine.EngineView`).  :class:`BatcherView` shows the batch-size histogram,
queue depth, queue wait vs compute, request rate and p50 / p99, all from the batcher's own
records.  It is registered by :mod:`.views_serve`.
"""
from __future__ import annotations

import threading
import time
import weakref
from collections import deque
from html import escape
from time import perf_counter_ns
from typing import Any

import ipywidgets as W
import numpy as np

from ..profile.metrics import ERROR, FIELDS, OK
from .plots import PALETTE
from .views_base import LiveView, bokeh_pane, card, fmt_ms, fmt_rate, tiles

__all__ = ["BatcherView", "LiveView", "RecordWindow", "time_figure"]

_SEQ, _ARR, _FORMED, _START, _END, _DONE, _BATCH, _STATUS = range(len(FIELDS))
_TOOLS = "save,reset,box_zoom,wheel_zoom,pan"


class RecordWindow:
    """Reads one :class:`~edgebench.profile.metrics.RecordBuffer` incrementally: totals by
    outcome, batches by size, and the answered requests of the last ``window_s`` seconds.

    Starts with the records still in the ring (so a view opened late shows the history).
    """

    def __init__(self, buf: Any, window_s: float = 5.0):
        self.buf, self.window_s = buf, float(window_s)
        self.cursor = max(0, buf.total - buf.capacity)
        self.ok = self.failed = 0
        self.batch_sizes: dict[int, int] = {}
        self._recent = np.empty((0, len(FIELDS)), np.int64)
        self._seen: deque = deque(maxlen=8192)  # (start, end) of the last batches counted
        self._seen_set: set = set()

    def read(self) -> int:
        """Take in the records added since the last call; returns how many."""
        buf = self.buf
        if buf.total <= self.cursor:
            return 0
        new = buf.snapshot(self.cursor)
        if not len(new):
            self.cursor = buf.total
            return 0
        self.cursor = int(new[-1, _SEQ]) + 1
        ok = new[new[:, _STATUS] == OK]
        self.ok += len(ok)
        self.failed += len(new) - len(ok)
        ran = new[(new[:, _STATUS] == OK) | (new[:, _STATUS] == ERROR)]
        if len(ran):  # one batch = one distinct (start, end); a batch may straddle two reads
            for s, e, b in np.unique(ran[:, [_START, _END, _BATCH]], axis=0).tolist():
                if (s, e) in self._seen_set:
                    continue
                if len(self._seen) == self._seen.maxlen:
                    self._seen_set.discard(self._seen[0])
                self._seen.append((s, e))
                self._seen_set.add((s, e))
                self.batch_sizes[b] = self.batch_sizes.get(b, 0) + 1
        if len(ok):
            self._recent = np.concatenate([self._recent, ok])[-50_000:]
        return len(new)

    def stats(self, now: int | None = None) -> dict[str, float]:
        """Over the window: answers per second, latency p50 / p99, mean queue wait and compute (ms)."""
        now = perf_counter_ns() if now is None else now
        w = self._recent = self._recent[self._recent[:, _DONE] >= now - int(self.window_s * 1e9)]
        if not len(w):
            nan = float("nan")
            return {"rate": 0.0, "p50": nan, "p99": nan, "queue": nan, "compute": nan, "n": 0}
        p50, p99 = np.percentile((w[:, _DONE] - w[:, _ARR]) / 1e6, [50, 99])
        span = (now - max(int(w[:, _ARR].min()), now - int(self.window_s * 1e9))) / 1e9
        return {"rate": len(w) / max(span, 0.25), "p50": float(p50), "p99": float(p99),
                "queue": float((w[:, _FORMED] - w[:, _ARR]).mean() / 1e6),
                "compute": float((w[:, _END] - w[:, _START]).mean() / 1e6), "n": len(w)}

    @property
    def batches(self) -> int:
        return sum(self.batch_sizes.values())

    @property
    def mean_batch(self) -> float:
        n = self.batches
        return sum(k * v for k, v in self.batch_sizes.items()) / n if n else 0.0


def time_figure(title: str, height: int, x_range: Any = None, y_label: str | None = None) -> Any:
    from bokeh.models import DataRange1d
    from bokeh.plotting import figure

    x_range = x_range or DataRange1d(follow="end", follow_interval=120_000, range_padding=0)
    fig = figure(height=height, sizing_mode="stretch_width", x_axis_type="datetime", x_range=x_range, title=title,
                 y_axis_label=y_label, tools=_TOOLS, toolbar_location="right")
    fig.y_range.start = 0
    return fig


# --------------------------------------------------------------------------------------------
# DynamicBatcher
# --------------------------------------------------------------------------------------------
class BatcherView(LiveView):
    """Live view of a :class:`~edgebench.DynamicBatcher` (what ``display(batcher)`` shows).

    Parameters
    ----------
    batcher
        The batcher (held weakly).
    interval
        Seconds between updates of the background thread (default 0.3).
    window_s
        Rate, percentiles and the queue / compute split are over the last ``window_s`` seconds.
    rollover
        Ticks kept in :attr:`ticks`.
    start
        Start the background updater now (tests pass ``False`` and call :meth:`update`).

    Attributes
    ----------
    hist
        Bokeh ``ColumnDataSource``: ``size`` (rows, 1 to ``max_batch_size``) and ``batches``.
    ticks
        ``ColumnDataSource``, one row per update while there is traffic: ``t`` (ms since the
        epoch), ``rate``, ``p50_ms``, ``p99_ms``, ``queue_ms`` and ``compute_ms`` (means),
        ``queued`` (queue depth).
    labels
        The figures shown, as text: ``requests, rate, p50, p99, mean_batch, queue_share,
        queued, failed, state``.
    """

    def __init__(self, batcher: Any, *, interval: float = 0.3, window_s: float = 5.0, rollover: int = 2000,
                 start: bool = True):
        import pandas  # noqa: F401  (bokeh's stream() imports it lazily: never first in the updater thread)
        from bokeh.layouts import column
        from bokeh.models import ColumnDataSource, LinearAxis, Range1d
        from bokeh.plotting import figure

        self._batcher = weakref.ref(batcher)
        self.interval, self.rollover = float(interval), int(rollover)
        self._lock = threading.RLock()
        self.window = RecordWindow(batcher.records, window_s)
        self._last_rate = 0.0
        self._last_queued = 0
        n = batcher.max_batch_size
        self.hist = ColumnDataSource({"size": list(range(1, n + 1)), "batches": [0] * n}, name="batch_sizes")
        self.ticks = ColumnDataSource({k: [] for k in ("t", "rate", "p50_ms", "p99_ms", "queue_ms", "compute_ms",
                                                       "queued")}, name="ticks")
        lat = time_figure(f"Latency (ms): queue wait + compute (means), p50 and p99 over {window_s:g} s", 230,
                          y_label="ms")
        lat.varea_stack(["queue_ms", "compute_ms"], x="t", source=self.ticks, color=(PALETTE[9], PALETTE[0]),
                        alpha=0.45, legend_label=["queue wait", "compute"])
        lat.line("t", "p50_ms", source=self.ticks, color=PALETTE[2], line_width=2, legend_label="p50")
        lat.line("t", "p99_ms", source=self.ticks, color=PALETTE[3], line_width=2, legend_label="p99")
        lat.legend.location = "top_left"
        rate = time_figure("Requests per second, and queue depth (right axis)", 160, lat.x_range)
        rate.line("t", "rate", source=self.ticks, color=PALETTE[1], line_width=2, legend_label="requests/s")
        rate.extra_y_ranges = {"queue": Range1d(0, max(8, n))}
        rate.add_layout(LinearAxis(y_range_name="queue", axis_label="queued"), "right")
        rate.step("t", "queued", source=self.ticks, y_range_name="queue", color=PALETTE[4], mode="after",
                  legend_label="queued")
        rate.legend.location = "top_left"
        hist = figure(height=180, sizing_mode="stretch_width", title="Batches by size (rows)", tools="save,reset",
                      x_axis_label="batch size (rows)", y_axis_label="batches", toolbar_location="right")
        hist.vbar(x="size", top="batches", source=self.hist, width=0.8, color=PALETTE[0])
        hist.y_range.start = 0
        self._queue_range = rate.extra_y_ranges["queue"]
        pref = f" &middot; preferred {batcher.preferred_batch_sizes}" if batcher.preferred_batch_sizes else ""
        self.header = W.HTML(card(
            f"<b>DynamicBatcher</b> <code>{escape(batcher.name)}</code> on <code>{escape(batcher.backend)}</code> "
            f"<span class='eb-sub'>&middot; max batch {n} &middot; delay {batcher.max_queue_delay_ms:g} ms{pref} "
            f"&middot; {batcher.instances} instance(s) &middot; {batcher.priority_levels} priority level(s)"
            f"{' &middot; adaptive' if batcher.adaptive else ''}</span>"))
        self.figures = W.HTML()
        self.labels: dict[str, str] = {}
        self.update()
        # after the first update: the pane's first render holds the data so far (changes made
        # before a browser view exists never reach it)
        self.plot = bokeh_pane(column(lat, rate, hist, sizing_mode="stretch_width"))
        super().__init__([self.header, self.figures, self.plot])
        if start:
            self._start_updater()

    @property
    def batcher(self) -> Any:
        """The batcher, or ``None`` once it is garbage collected."""
        return self._batcher()

    def _finished(self) -> bool:
        b = self._batcher()
        return b is None or getattr(b, "_closed", False)

    def update(self) -> int:
        """Read the records added since the last update, stream a tick, refresh the histogram
        and the labels.  Returns the number of new records."""
        with self._lock:
            b = self._batcher()
            if b is None:
                return 0
            w = self.window
            before = dict(w.batch_sizes)
            n = w.read()
            now = perf_counter_ns()
            s = w.stats(now)
            queued = b.queued
            if w.batch_sizes != before:
                self._set_hist()
            if n or self._last_rate > 0 or queued or self._last_queued:
                self.ticks.stream({"t": [time.time() * 1e3], "rate": [s["rate"]], "p50_ms": [s["p50"]],
                                   "p99_ms": [s["p99"]], "queue_ms": [s["queue"] if s["n"] else 0.0],
                                   "compute_ms": [s["compute"] if s["n"] else 0.0], "queued": [queued]},
                                  rollover=self.rollover)
                if queued > self._queue_range.end:
                    self._queue_range.end = 2 * queued
            self._last_rate, self._last_queued = s["rate"], queued
            closed = getattr(b, "_closed", False)
            share = s["queue"] / (s["queue"] + s["compute"]) if s["n"] and s["queue"] + s["compute"] > 0 else None
            self.labels = {"requests": f"{b.records.total:,}", "rate": fmt_rate(s["rate"]), "p50": fmt_ms(s["p50"]),
                           "p99": fmt_ms(s["p99"]), "mean_batch": f"{w.mean_batch:.2f}" if w.batches else "–",
                           "queue_share": "–" if share is None else f"{100 * share:.0f}%", "queued": str(queued),
                           "failed": f"{w.failed:,}", "state": "closed" if closed else "serving"}
            self._render()
            return n

    def _set_hist(self) -> None:
        # the whole (short) histogram each time, not patches: a browser view that opens late
        # still gets every count with the next change
        sizes = self.window.batch_sizes
        top = max(len(self.hist.data["size"]), max(sizes))
        self.hist.data = {"size": list(range(1, top + 1)), "batches": [sizes.get(i, 0) for i in range(1, top + 1)]}

    def _render(self) -> None:
        lab = self.labels
        self.figures.value = card(tiles(
            [("requests", lab["requests"]), (f"rate ({self.window.window_s:g} s)", lab["rate"]), ("p50", lab["p50"]),
             ("p99", lab["p99"]), ("mean batch", lab["mean_batch"]), ("queue wait share", lab["queue_share"]),
             ("queued", lab["queued"]), ("failed", lab["failed"]), ("state", lab["state"])],
            {"state": "eb-invalid" if lab["state"] == "closed" else "eb-valid"}))
