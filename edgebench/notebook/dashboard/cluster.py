"""The cluster page: workers, replicas per worker, health, request rate and p99, as the
workers themselves report them.

One code path serves the three places the page runs.  A :class:`StatusPoller` asks every
worker for its ``eb_status`` (the handler of :class:`~edgebench.cluster.worker.EdgebenchWorker`:
the replicas it holds, their counters and worker-side p50 / p99) about once a second, on an
event loop, never blocking it: on the Dask scheduler it uses ``scheduler.rpc`` on the
scheduler's loop (the page has no client-side deployments there); in a notebook or
``edgebench dashboard`` it uses a Dask client's ``rpc`` on the client's loop (an
``eb.Cluster``, a ``Client``, or the default client).  The page's periodic callback only reads
the poller's latest :class:`ClusterStatus`, so it never waits for the network.
"""
from __future__ import annotations

import asyncio
import threading
import time
import weakref
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from html import escape
from typing import Any

import numpy as np
from bokeh.models import (
    ColumnDataSource,
    DataTable,
    Div,
    FactorRange,
    HoverTool,
    NumberFormatter,
    TableColumn,
)
from bokeh.plotting import figure

from ...errors import EdgebenchError
from .components import ROLLOVER, _timeseries_figure

__all__ = ["ClusterStatus", "StatusPoller", "poller_for", "ClusterFeed", "ClusterWorkers", "ClusterReplicas",
           "ReplicasPerWorker", "ClusterRate", "cluster_page"]

INTERVAL_S = 1.0     # between two polls of the workers
TIMEOUT_S = 2.0      # a worker that does not answer eb_status within this is "unreachable"
IDLE_S = 30.0        # a poller nobody has read for this long stops (the next read restarts it)


@dataclass
class ClusterStatus:
    """One poll of every worker: a row per worker and a row per replica, with rates."""

    time_ms: float                     # wall clock of the poll (ms since the epoch)
    poll_ms: float                     # how long the poll took
    scheduler: str
    workers: list[dict[str, Any]] = field(default_factory=list)
    replicas: list[dict[str, Any]] = field(default_factory=list)

    @property
    def rate(self) -> float:
        """Answered requests per second, all replicas."""
        return float(sum(r["rate"] for r in self.replicas))

    @property
    def p99_ms(self) -> float:
        """The worst replica's p99 (ms, over its recent window); NaN when none answered lately."""
        v = [r["p99_ms"] for r in self.replicas if np.isfinite(r["p99_ms"])]
        return float(max(v)) if v else float("nan")


def _nan(v: Any) -> float:
    return float("nan") if v is None else float(v)


class StatusPoller:
    """Polls ``eb_status`` on every worker on ``loop``, keeping the latest :class:`ClusterStatus`.

    Parameters
    ----------
    rpc
        ``rpc(address)`` -> an object whose ``eb_status()`` is awaitable (``scheduler.rpc``,
        ``client.rpc``).
    identity
        Coroutine function returning the scheduler's identity (``{"address", "workers": {...}}``).
    loop
        The asyncio loop ``rpc`` belongs to.
    """

    def __init__(self, rpc: Callable[[str], Any], identity: Callable[[], Awaitable[dict]],
                 loop: asyncio.AbstractEventLoop, *, interval: float = INTERVAL_S, timeout: float = TIMEOUT_S,
                 alive: Callable[[], bool] = lambda: True):
        self.rpc, self.identity, self.loop, self.alive = rpc, identity, loop, alive
        self.interval, self.timeout = interval, timeout
        self.latest: ClusterStatus | None = None
        self.polls = 0
        self.error: str | None = None
        self._prev: dict[tuple[str, str], tuple[int, float]] = {}
        self._lock = threading.Lock()
        self._running = False
        self._last_read = time.monotonic()

    def read(self) -> ClusterStatus | None:
        """The latest status (``None`` before the first poll); (re)starts polling."""
        self._last_read = time.monotonic()
        self.ensure_running()
        return self.latest

    def ensure_running(self) -> None:
        with self._lock:
            if self._running or self.loop.is_closed() or not self.alive():
                return
            self._running = True
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self.loop:
            self._task = self.loop.create_task(self._run())
        else:
            asyncio.run_coroutine_threadsafe(self._run(), self.loop)

    async def _run(self) -> None:
        try:
            while time.monotonic() - self._last_read < IDLE_S and self.alive():
                t0 = time.monotonic()
                try:
                    self.latest = await self.poll()
                    self.error = None
                except Exception as e:  # the scheduler is gone or closing: say so, try again
                    self.error = f"{type(e).__name__}: {e}"
                await asyncio.sleep(max(0.05, self.interval - (time.monotonic() - t0)))
        finally:
            self._running = False

    async def _status(self, addr: str) -> dict[str, Any]:
        try:
            return await asyncio.wait_for(self.rpc(addr).eb_status(), self.timeout)
        except asyncio.TimeoutError:
            return {"error": f"no answer within {self.timeout:g} s"}
        except Exception as e:  # not an edgebench worker, or dying
            return {"error": f"{type(e).__name__}: {e}"}

    async def poll(self) -> ClusterStatus:
        """Ask every worker once (concurrently) and return what they said."""
        t0 = time.perf_counter()
        ident = await self.identity()
        infos = ident.get("workers", {})
        addrs = sorted(infos)
        answers = await asyncio.gather(*(self._status(a) for a in addrs))
        now = time.monotonic()
        st = ClusterStatus(time.time() * 1e3, 0.0, str(ident.get("address", "")))
        seen: dict[tuple[str, str], tuple[int, float]] = {}
        for addr, info, ans in zip(addrs, (infos[a] for a in addrs), answers):
            reps = []
            for r in ans.get("replicas", []):
                key = (addr, r["replica"])
                seen[key] = (r["requests"], now)
                if key in self._prev and now > self._prev[key][1]:
                    n0, t_prev = self._prev[key]
                    rate = max(0, r["requests"] - n0) / (now - t_prev)
                else:  # first sighting: the worker's own recent window
                    rate = r.get("recent", 0) / max(min(r.get("window_s", 10.0), time.time() - r["created"]), 1.0)
                reps.append({"replica": r["replica"], "deployment": r["deployment"], "worker": addr,
                             "requests": int(r["requests"]), "errors": int(r["errors"]),
                             "outstanding": int(r["outstanding"]), "mean_ms": float(r["mean_ms"]), "rate": rate,
                             "p50_ms": _nan(r.get("p50_ms")), "p99_ms": _nan(r.get("p99_ms"))})
            p99 = [x["p99_ms"] for x in reps if np.isfinite(x["p99_ms"])]
            st.workers.append({
                "worker": addr, "name": str(info.get("name", "")), "nthreads": int(info.get("nthreads") or 0),
                "memory_mb": ans.get("rss", (info.get("metrics") or {}).get("memory") or 0) / 2**20,
                "memory_limit_mb": (info.get("memory_limit") or 0) / 2**20,
                "health": "ok" if "error" not in ans else f"unreachable: {ans['error']}",
                "replicas": len(reps), "deployments": ", ".join(sorted({x["deployment"] for x in reps})),
                "outstanding": sum(x["outstanding"] for x in reps), "requests": sum(x["requests"] for x in reps),
                "rate": sum(x["rate"] for x in reps), "p99_ms": max(p99) if p99 else float("nan")})
            st.replicas.extend(reps)
        self._prev = seen
        st.poll_ms = (time.perf_counter() - t0) * 1e3
        self.polls += 1
        return st


# one poller per scheduler / client, shared by every page showing it
_POLLERS: "weakref.WeakKeyDictionary[Any, StatusPoller]" = weakref.WeakKeyDictionary()
_POLLERS_LOCK = threading.Lock()


def _resolve(source: Any) -> Any:
    """The Dask ``Scheduler`` or ``Client`` behind ``source`` (``None``: the default client)."""
    if source is None:
        try:
            from distributed import default_client

            return default_client()
        except (ImportError, ValueError):
            return None
    if hasattr(source, "client") and hasattr(source, "deploy"):  # an eb.Cluster
        return source.client
    if hasattr(source, "workers") and hasattr(source, "rpc") and hasattr(source, "identity"):
        return source  # a Scheduler or a Client
    raise EdgebenchError(f"the cluster page cannot read a {type(source).__name__}",
                         "pass an eb.Cluster, a dask Client or a Scheduler (or nothing: the default client)")


def poller_for(source: Any = None) -> StatusPoller | None:
    """The (shared) poller of a Scheduler, a Client or an ``eb.Cluster``; ``None`` when
    ``source`` is ``None`` and this process has no Dask client."""
    target = _resolve(source)
    if target is None:
        return None
    with _POLLERS_LOCK:
        p = _POLLERS.get(target)
        if p is None:
            p = _POLLERS[target] = _new_poller(target)
    return p


def _new_poller(target: Any) -> StatusPoller:
    # the poller holds its scheduler or client weakly: the cache entry goes with it
    from distributed import Client

    ref = weakref.ref(target)
    is_client = isinstance(target, Client)

    def get() -> Any:
        t = ref()
        if t is None:
            raise EdgebenchError("the Dask client or scheduler of this page is gone")
        return t

    def rpc(addr: str) -> Any:
        return get().rpc(addr)

    async def identity() -> dict:
        t = get()
        return await t.scheduler.identity() if is_client else t.identity()

    def alive() -> bool:
        t = ref()
        return t is not None and str(getattr(t.status, "name", t.status)).lower() not in ("closing", "closed")

    # a Scheduler polls from its own loop and connection pool; a client from its own
    return StatusPoller(rpc, identity, target.loop.asyncio_loop, alive=alive)


class ClusterFeed:
    """What a page's components share: the poller's latest status, read once per tick.

    ``source`` is resolved lazily: a page opened before any client exists shows why it is
    empty and picks the default client up once there is one.
    """

    def __init__(self, source: Any = None):
        self._source = source
        self.poller = poller_for(source) if source is not None else None
        self.status: ClusterStatus | None = None
        self.new = False            # whether the last poll() brought a status not seen before
        self.count = 0

    def poll(self) -> ClusterStatus | None:
        if self.poller is None:
            self.poller = poller_for(None)
        st = self.poller.read() if self.poller is not None else None
        self.new = st is not None and st is not self.status
        self.status = st
        self.count += 1
        return st


def _table(source: ColumnDataSource, columns: list[tuple[str, str, str | None]], **kw: Any) -> DataTable:
    from bokeh.models import CustomJS

    cols = [TableColumn(field=f, title=t, formatter=NumberFormatter(format=fmt)) if fmt
            else TableColumn(field=f, title=t) for f, t, fmt in columns]
    opts = dict(width=940, height=150, index_position=None)
    opts.update(kw)
    table = DataTable(source=source, columns=cols, **opts)
    source.js_on_change("data", CustomJS(args=dict(t=table), code="t.change.emit()"))  # bokeh/bokeh#13859
    return table


class _Component:
    title = ""

    def __init__(self, feed: ClusterFeed):
        self.feed = feed

    def update(self) -> None:
        st = self.feed.status
        if st is not None and self.feed.new:
            self._update(st)

    def _update(self, st: ClusterStatus) -> None:  # pragma: no cover - abstract
        raise NotImplementedError


class ClusterWorkers(_Component):
    """One row per worker: threads, memory, health, replicas, outstanding, rate, worst p99."""

    title = "workers"
    COLUMNS = [("worker", "worker", None), ("health", "health", None), ("nthreads", "threads", "0"),
               ("memory_mb", "memory MB", "0,0"), ("memory_limit_mb", "limit MB", "0,0"),
               ("replicas", "replicas", "0"), ("deployments", "deployments", None),
               ("outstanding", "outstanding", "0"), ("requests", "requests", "0,0"), ("rate", "rate /s", "0,0.0"),
               ("p99_ms", "p99 ms", "0.000")]

    def __init__(self, feed: ClusterFeed):
        super().__init__(feed)
        self.source = ColumnDataSource({c: [] for c, _, _ in self.COLUMNS}, name="cluster-workers")
        self.root = _table(self.source, self.COLUMNS)

    def _update(self, st: ClusterStatus) -> None:
        self.source.data = {c: [w[c] for w in st.workers] for c, _, _ in self.COLUMNS}


class ClusterReplicas(_Component):
    """One row per replica, as its worker reports it."""

    title = "replicas"
    COLUMNS = [("replica", "replica", None), ("deployment", "deployment", None), ("worker", "worker", None),
               ("requests", "requests", "0,0"), ("errors", "errors", "0,0"), ("outstanding", "outstanding", "0"),
               ("rate", "rate /s", "0,0.0"), ("p50_ms", "p50 ms", "0.000"), ("p99_ms", "p99 ms", "0.000"),
               ("mean_ms", "mean ms", "0.000")]

    def __init__(self, feed: ClusterFeed):
        super().__init__(feed)
        self.source = ColumnDataSource({c: [] for c, _, _ in self.COLUMNS}, name="cluster-replicas")
        self.root = _table(self.source, self.COLUMNS, height=200)

    def _update(self, st: ClusterStatus) -> None:
        self.source.data = {c: [r[c] for r in st.replicas] for c, _, _ in self.COLUMNS}


class ReplicasPerWorker(_Component):
    """Bars: replicas per worker, red for a worker that did not answer."""

    title = "replicas per worker"

    def __init__(self, feed: ClusterFeed):
        super().__init__(feed)
        self.source = ColumnDataSource({"worker": [], "replicas": [], "health": [], "color": []},
                                       name="cluster-replicas-per-worker")
        fig = figure(title="Replicas per worker", x_range=FactorRange(), height=220, width=460,
                     tools="save,reset", toolbar_location="above", y_axis_label="replicas")
        fig.vbar(x="worker", top="replicas", width=0.7, color="color", source=self.source)
        fig.add_tools(HoverTool(tooltips=[("worker", "@worker"), ("replicas", "@replicas"), ("health", "@health")]))
        fig.y_range.start = 0
        fig.xaxis.major_label_orientation = 0.5
        self.root = fig

    def _update(self, st: ClusterStatus) -> None:
        names = [w["worker"].split("://")[-1] for w in st.workers]
        self.root.x_range.factors = names
        self.source.data = {"worker": names, "replicas": [w["replicas"] for w in st.workers],
                            "health": [w["health"] for w in st.workers],
                            "color": ["#2ca02c" if w["health"] == "ok" else "#d62728" for w in st.workers]}


class ClusterRate(_Component):
    """Request rate (all replicas) and the worst replica's p99 over time, one point per poll."""

    title = "rate"

    def __init__(self, feed: ClusterFeed, rollover: int = ROLLOVER):
        super().__init__(feed)
        self.rollover = rollover
        self.source = ColumnDataSource({"time": [], "rate": [], "p99_ms": []}, name="cluster-rate")
        self.rate_fig = _timeseries_figure("Requests per second (all replicas)", "requests / s")
        self.rate_fig.line("time", "rate", source=self.source, color="#1f77b4", line_width=2)
        self.p99_fig = _timeseries_figure("p99 latency on the workers (worst replica)", "ms")
        self.p99_fig.x_range = self.rate_fig.x_range   # pan and zoom together
        self.p99_fig.line("time", "p99_ms", source=self.source, color="#d62728", line_width=2)
        for fig in (self.rate_fig, self.p99_fig):
            fig.add_tools(HoverTool(tooltips=[("rate", "@rate{0,0.0}/s"), ("p99", "@p99_ms{0.000} ms")],
                                    mode="vline"))
        from bokeh.layouts import row

        self.root = row(self.rate_fig, self.p99_fig)

    def _update(self, st: ClusterStatus) -> None:
        self.source.stream({"time": [st.time_ms], "rate": [st.rate], "p99_ms": [st.p99_ms]}, rollover=self.rollover)


class _Header(_Component):
    def __init__(self, feed: ClusterFeed):
        super().__init__(feed)
        self.root = Div(text=self._text(None), styles={"font-size": "14px"})

    def update(self) -> None:
        text = self._text(self.feed.status)
        if text != self.root.text:
            self.root.text = text

    def _text(self, st: ClusterStatus | None) -> str:
        head = "<b>edgebench</b> &middot; cluster: "
        p = self.feed.poller
        if p is None:
            return head + ("no Dask client in this process: create an <code>eb.Cluster</code> (or pass one: "
                           "<code>dashboard.show('/edgebench/cluster', source=cl)</code>)")
        if st is None:
            return head + (f"waiting for the workers ({escape(p.error)})" if p.error else "asking the workers…")
        ok = sum(w["health"] == "ok" for w in st.workers)
        err = f" &middot; <span style='color:#d62728'>{escape(p.error)}</span>" if p.error else ""
        return (head + f"scheduler <code>{escape(st.scheduler)}</code> &middot; {len(st.workers)} workers "
                f"({ok} answering) &middot; {len(st.replicas)} replicas &middot; {st.rate:,.1f} requests/s"
                f" &middot; as reported by the workers' <code>eb_status</code> ({st.poll_ms:.1f} ms){err}")


def cluster_page(source: Any = None, rollover: int | None = None) -> Any:
    """The cluster page (a :class:`~edgebench.notebook.dashboard.pages.Page`) of ``source``:
    an ``eb.Cluster``, a dask ``Client``, a ``Scheduler``, or ``None`` (the default client)."""
    from bokeh.layouts import column

    from .pages import Page

    feed = ClusterFeed(source)
    header, workers, bars = _Header(feed), ClusterWorkers(feed), ReplicasPerWorker(feed)
    rate, replicas = ClusterRate(feed, rollover or ROLLOVER), ClusterReplicas(feed)
    root = column(header.root, rate.root, bars.root, workers.root, replicas.root, name="edgebench-cluster")
    return Page("edgebench: cluster", root, feed, [header, workers, bars, rate, replicas])
