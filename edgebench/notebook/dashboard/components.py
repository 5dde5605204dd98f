"""Dashboard components: each has ``root`` (a Bokeh model), ``source`` (a ColumnDataSource)
and ``update()`` (the pattern of dask's ``distributed/dashboard/components``).

All of them read one :class:`Feed`, which reads the request records of the live engines of
this process (:mod:`edgebench.profile.telemetry`) incrementally: the engines' own records
are the only source, nothing is timed here.  A page polls its feed once per tick and then
updates its components; a component built without a feed owns one and polls it itself.
"""
from __future__ import annotations

import time
import weakref
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from bokeh.core.properties import without_property_validation
from bokeh.models import (ColumnDataSource, DataRange1d, DataTable, FactorRange, HoverTool,
                          NumberFormatter, TableColumn)
from bokeh.plotting import figure

from ...profile import telemetry
from ...profile.metrics import OK

__all__ = ["Feed", "Tick", "DashboardComponent", "Throughput", "LatencyPercentiles", "QueueDepth",
           "ModelTable", "OperatorTime", "COMPONENTS"]

_ARRIVAL, _DONE, _BATCH, _STATUS = 1, 5, 6, 7   # columns of a record (metrics.FIELDS)
ROLLOVER = 1200          # points kept per time series (10 minutes at the default 500 ms tick)
WINDOW_S = 10.0          # the per-model table's percentiles and rate cover this many seconds
_TOOLS = "pan,wheel_zoom,box_zoom,reset,save"


@dataclass
class Tick:
    """What one poll of a :class:`Feed` saw: the requests that finished since the previous poll."""

    index: int
    time_ms: float        # wall clock (ms since the epoch), for datetime axes
    t_ns: int             # perf_counter_ns of the poll (the records' clock)
    dt_s: float           # seconds since the previous poll
    ok: int
    errors: int
    samples: int          # rows computed by the OK requests (their batch sizes summed)
    p50_ms: float
    p90_ms: float
    p99_ms: float


@dataclass
class _ModelState:
    label: str
    first_ns: int
    errors: int = 0
    done: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))
    latency_ms: np.ndarray = field(default_factory=lambda: np.empty(0))


class Feed:
    """The tracked engines' new records, read once per tick and shared by a page's components.

    Parameters
    ----------
    history
        Ticks kept (the queue depth of a tick is completed as late requests finish).
    window_s
        Seconds covered by the per-model percentiles and rates.
    """

    def __init__(self, history: int = ROLLOVER, window_s: float = WINDOW_S):
        self.history = history
        self.window_s = window_s
        self.ticks: list[Tick] = []
        self._cursor = telemetry.Cursor()
        self._models: "weakref.WeakKeyDictionary[Any, _ModelState]" = weakref.WeakKeyDictionary()
        self._start_ns = self._last_ns = time.perf_counter_ns()
        self._count = 0
        # in flight at tick i (arrived, not done), as far as the records seen so far tell
        self._tick_ns = np.empty(0, np.int64)
        self._depth = np.empty(0, np.int64)

    @property
    def count(self) -> int:
        """Ticks polled so far (the next tick's index)."""
        return self._count

    def poll(self) -> Tick:
        """Read the records added since the previous poll; returns (and keeps) the new tick."""
        now = time.perf_counter_ns()
        wall_ms = time.time() * 1e3
        self._tick_ns = np.append(self._tick_ns, now)[-self.history:]
        self._depth = np.append(self._depth, 0)[-self.history:]
        chunks = []
        for obj, recs in self._cursor.new_records():
            state = self._models.get(obj)
            if state is None:
                state = self._models[obj] = _ModelState(telemetry.label(obj), now)
            if len(recs):
                chunks.append(recs)
                self._add_to_model(state, recs, now)
        recs = np.concatenate(chunks) if chunks else np.empty((0, 8), np.int64)
        self._add_depth(recs)
        # what finished before this feed existed is history: it is in the model table, not a tick
        recs = recs[recs[:, _DONE] >= self._start_ns]
        ok = recs[recs[:, _STATUS] == OK]
        lat = (ok[:, _DONE] - ok[:, _ARRIVAL]) / 1e6
        p50, p90, p99 = np.percentile(lat, [50, 90, 99]) if len(lat) else (np.nan,) * 3
        tick = Tick(self._count, wall_ms, now, (now - self._last_ns) / 1e9, len(ok), len(recs) - len(ok),
                    int(ok[:, _BATCH].sum()), float(p50), float(p90), float(p99))
        self._last_ns = now
        self._count += 1
        self.ticks = (self.ticks + [tick])[-self.history:]
        return tick

    def ticks_since(self, index: int) -> list[Tick]:
        """The kept ticks with ``tick.index >= index``."""
        first = self._count - len(self.ticks)
        return self.ticks[max(0, index - first):]

    # -- queue depth ------------------------------------------------------------------------------
    def _add_depth(self, recs: np.ndarray) -> None:
        if not len(recs) or not len(self._tick_ns):
            return
        # a request is in flight at tick time t when arrival <= t < done
        lo = np.searchsorted(self._tick_ns, recs[:, _ARRIVAL], side="left")
        hi = np.searchsorted(self._tick_ns, recs[:, _DONE], side="left")
        diff = np.zeros(len(self._tick_ns) + 1, np.int64)
        np.add.at(diff, lo, 1)
        np.add.at(diff, hi, -1)
        self._depth += np.cumsum(diff)[:-1]

    def depth(self, first: int, last: int) -> np.ndarray:
        """Queue depth at ticks ``first .. last - 1`` (those no longer kept are left out)."""
        base = self._count - len(self._depth)
        return self._depth[max(0, first - base):max(0, last - base)]

    # -- per model ------------------------------------------------------------------------------
    def _add_to_model(self, state: _ModelState, recs: np.ndarray, now: int) -> None:
        ok = recs[:, _STATUS] == OK
        state.first_ns = min(state.first_ns, int(recs[:, _ARRIVAL].min()))
        state.errors += int((~ok).sum())
        keep = state.done >= now - int(self.window_s * 1e9)
        state.done = np.concatenate([state.done[keep], recs[ok, _DONE]])
        state.latency_ms = np.concatenate([state.latency_ms[keep], (recs[ok, _DONE] - recs[ok, _ARRIVAL]) / 1e6])

    def models(self) -> list[dict[str, Any]]:
        """One row per live tracked object: ``model, requests, errors, p50_ms, p99_ms, rate``."""
        now = time.perf_counter_ns()
        rows = []
        for obj in telemetry.tracked():
            state = self._models.get(obj)
            if state is None:
                continue
            recent = state.done >= now - int(self.window_s * 1e9)
            lat = state.latency_ms[recent]
            span = min(self.window_s, max((now - state.first_ns) / 1e9, 1e-3))
            p50, p99 = np.percentile(lat, [50, 99]) if len(lat) else (np.nan, np.nan)
            rows.append({"model": state.label, "requests": int(obj.records.total), "errors": state.errors,
                         "p50_ms": float(p50), "p99_ms": float(p99), "rate": len(lat) / span})
        return rows


# --------------------------------------------------------------------------------------------
# components
# --------------------------------------------------------------------------------------------
class DashboardComponent:
    """Base of the components: ``root`` (Bokeh model), ``source`` and ``update()``.

    Parameters
    ----------
    feed
        The page's shared :class:`Feed`; ``None`` makes the component own one and poll it in
        :meth:`update`.
    rollover
        Points kept by time series.
    """

    title = ""

    def __init__(self, feed: Feed | None = None, rollover: int = ROLLOVER, **fig_kw: Any):
        self.feed = feed if feed is not None else Feed()
        self._owns_feed = feed is None
        self.rollover = rollover
        self._next = self.feed.count   # first tick not shown yet
        self.source: ColumnDataSource
        self.root: Any

    @without_property_validation
    def update(self) -> None:
        """Read what is new (polling the feed if this component owns it) and show it."""
        if self._owns_feed:
            self.feed.poll()
        self._update()

    def _update(self) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def _new_ticks(self) -> list[Tick]:
        ticks = self.feed.ticks_since(self._next)
        self._next = self.feed.count
        return ticks


def _timeseries_figure(title: str, y_label: str, **kw: Any) -> Any:
    opts = dict(height=220, width=460, tools=_TOOLS, toolbar_location="above")
    opts.update(kw)
    fig = figure(title=title, x_axis_type="datetime", y_axis_label=y_label,
                 x_range=DataRange1d(follow="end", follow_interval=300_000, range_padding=0), **opts)
    fig.y_range.start = 0
    return fig


class Throughput(DashboardComponent):
    """Completed requests per second (and errors per second), one point per tick."""

    title = "throughput"

    def __init__(self, feed: Feed | None = None, rollover: int = ROLLOVER, **fig_kw: Any):
        super().__init__(feed, rollover)
        self.source = ColumnDataSource({"time": [], "ok": [], "errors": [], "samples": []})
        fig = _timeseries_figure("Throughput", "requests / s", **fig_kw)
        fig.line("time", "ok", source=self.source, color="#1f77b4", line_width=2, legend_label="ok")
        fig.line("time", "errors", source=self.source, color="#d62728", line_width=1.5, legend_label="errors")
        fig.add_tools(HoverTool(tooltips=[("ok/s", "@ok{0,0.0}"), ("errors/s", "@errors{0,0.0}"),
                                          ("samples/s", "@samples{0,0.0}")], mode="vline"))
        fig.legend.location = "top_left"
        self.root = fig

    def _update(self) -> None:
        ticks = [t for t in self._new_ticks() if t.dt_s > 0]
        if ticks:
            self.source.stream({"time": [t.time_ms for t in ticks],
                                "ok": [t.ok / t.dt_s for t in ticks],
                                "errors": [t.errors / t.dt_s for t in ticks],
                                "samples": [t.samples / t.dt_s for t in ticks]}, rollover=self.rollover)


class LatencyPercentiles(DashboardComponent):
    """p50 / p90 / p99 latency (arrival to done) of the requests that finished in each tick."""

    title = "latency"

    def __init__(self, feed: Feed | None = None, rollover: int = ROLLOVER, **fig_kw: Any):
        super().__init__(feed, rollover)
        self.source = ColumnDataSource({"time": [], "p50": [], "p90": [], "p99": []})
        fig = _timeseries_figure("Latency percentiles", "ms", **fig_kw)
        for col, color in (("p50", "#2ca02c"), ("p90", "#ff7f0e"), ("p99", "#d62728")):
            fig.line("time", col, source=self.source, color=color, line_width=2, legend_label=col)
        fig.add_tools(HoverTool(tooltips=[("p50", "@p50{0.000} ms"), ("p90", "@p90{0.000} ms"),
                                          ("p99", "@p99{0.000} ms")], mode="vline"))
        fig.legend.location = "top_left"
        self.root = fig

    def _update(self) -> None:
        ticks = self._new_ticks()
        if ticks:  # ticks without requests stream NaN: a gap in the lines, not a fake zero
            self.source.stream({"time": [t.time_ms for t in ticks], "p50": [t.p50_ms for t in ticks],
                                "p90": [t.p90_ms for t in ticks], "p99": [t.p99_ms for t in ticks]},
                               rollover=self.rollover)


class QueueDepth(DashboardComponent):
    """Requests arrived but not done at each tick.

    A request is known only once it is done, so a tick's point is shown one tick late and
    patched afterwards when a request that was in flight at that tick finishes later still.
    """

    title = "queue depth"

    def __init__(self, feed: Feed | None = None, rollover: int = ROLLOVER, **fig_kw: Any):
        super().__init__(feed, rollover)
        self.source = ColumnDataSource({"time": [], "depth": []})
        fig = _timeseries_figure("Queue depth (in flight)", "requests", **fig_kw)
        fig.step("time", "depth", source=self.source, mode="after", color="#9467bd", line_width=2)
        fig.add_tools(HoverTool(tooltips=[("in flight", "@depth")], mode="vline"))
        self.root = fig
        self._shown: list[int] = []      # values in the source (last `rollover`)
        self._first_shown = self._next   # tick index of source row 0

    def _update(self) -> None:
        ticks = self.feed.ticks_since(self._next)
        settled = ticks[:-1]             # the newest tick waits for its requests to finish
        # patch points already shown whose requests finished since
        if self._shown:
            now = self.feed.depth(self._first_shown, self._first_shown + len(self._shown))
            off = len(self._shown) - len(now)   # rows whose tick the feed no longer keeps
            changed = [(off + i, int(v)) for i, v in enumerate(now) if int(v) != self._shown[off + i]]
            if changed:
                for i, v in changed:
                    self._shown[i] = v
                self.source.patch({"depth": changed})
        if settled:
            vals = [int(v) for v in self.feed.depth(settled[0].index, settled[-1].index + 1)]
            vals = [0] * (len(settled) - len(vals)) + vals
            self.source.stream({"time": [t.time_ms for t in settled], "depth": vals}, rollover=self.rollover)
            self._shown = (self._shown + vals)[-self.rollover:]
            self._next = settled[-1].index + 1
            self._first_shown = self._next - len(self._shown)


class ModelTable(DashboardComponent):
    """One row per live engine: ``model@backend``, requests, errors, p50, p99, rate."""

    title = "models"

    def __init__(self, feed: Feed | None = None, rollover: int = ROLLOVER, **kw: Any):
        super().__init__(feed, rollover)
        self.source = ColumnDataSource({"model": [], "requests": [], "errors": [], "p50_ms": [],
                                        "p99_ms": [], "rate": []})
        ms = NumberFormatter(format="0.000")
        columns = [TableColumn(field="model", title="model@backend", width=220),
                   TableColumn(field="requests", title="requests", formatter=NumberFormatter(format="0,0")),
                   TableColumn(field="errors", title="errors", formatter=NumberFormatter(format="0,0")),
                   TableColumn(field="p50_ms", title=f"p50 ms ({WINDOW_S:g} s)", formatter=ms),
                   TableColumn(field="p99_ms", title=f"p99 ms ({WINDOW_S:g} s)", formatter=ms),
                   TableColumn(field="rate", title="rate /s", formatter=NumberFormatter(format="0,0.0"))]
        opts = dict(width=940, height=160, index_position=None)
        opts.update(kw)
        self.root = DataTable(source=self.source, columns=columns, **opts)
        # BokehJS 3.9's DataTable keeps drawing its first rows when the source is replaced
        # (bokeh/bokeh#13859); make it redraw whenever the data changes
        from bokeh.models import CustomJS

        self.source.js_on_change("data", CustomJS(args=dict(t=self.root), code="t.change.emit()"))

    def _update(self) -> None:
        rows = self.feed.models()
        data = {k: [r[k] for r in rows] for k in self.source.data}
        if data != dict(self.source.data):
            self.source.data = data


class OperatorTime(DashboardComponent):
    """Time per operator of the latest published profile (:func:`publish_profile`)."""

    title = "operators"

    def __init__(self, feed: Feed | None = None, rollover: int = ROLLOVER, top: int = 15, **fig_kw: Any):
        super().__init__(feed, rollover)
        self.top = top
        self.source = ColumnDataSource({"op": [], "type": [], "total_ms": [], "mean_ms": [],
                                        "calls": [], "share": []})
        opts = dict(height=220, width=460, tools="save,reset", toolbar_location="above")
        opts.update(fig_kw)
        fig = figure(title="Operator time: no profile published yet", y_range=FactorRange(),
                     x_axis_label="total ms", **opts)
        fig.hbar(y="op", right="total_ms", height=0.7, source=self.source, color="#17becf")
        fig.x_range.start = 0
        fig.add_tools(HoverTool(tooltips=[("op", "@op"), ("type", "@type"), ("calls", "@calls"),
                                          ("total", "@total_ms{0.000} ms"), ("mean", "@mean_ms{0.0000} ms"),
                                          ("share", "@share{0.0%}")]))
        self.root = fig
        self._version = -1

    def _update(self) -> None:
        from . import latest_profile

        version, prof = latest_profile()   # a PublishedProfile
        if version == self._version:
            return
        self._version = version
        if prof is None:
            return
        ops = prof.operators().head(self.top)
        names = [f"{op} ({typ})" for op, typ in zip(ops["op"], ops["type"])]
        self.root.title.text = (f"Operator time: {prof.label}" if len(ops)
                                else f"Operator time: {ops.attrs.get('reason', 'no operators')}")
        self.root.y_range.factors = names[::-1]
        self.source.data = {"op": names, "type": list(ops["type"]), "total_ms": list(ops["total_ms"]),
                            "mean_ms": list(ops["mean_ms"]), "calls": [int(c) for c in ops["calls"]],
                            "share": list(ops["share"])}


#: component name -> class; each also becomes an ``individual-<name>`` page of the Dask dashboard
COMPONENTS: dict[str, type[DashboardComponent]] = {
    "edgebench-throughput": Throughput,
    "edgebench-latency": LatencyPercentiles,
    "edgebench-queue-depth": QueueDepth,
    "edgebench-models": ModelTable,
    "edgebench-operators": OperatorTime,
}
