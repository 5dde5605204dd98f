"""Dashboard pages: :data:`PAGES` maps a route to a builder that fills a Bokeh ``Document``.

A builder takes a ``Document``, adds one root layout and a periodic callback that polls the
page's :class:`~edgebench.notebook.dashboard.components.Feed` and updates its components.
The same builders serve every way the pages run: a notebook (``dashboard.show()``), the
standalone Bokeh server (``edgebench dashboard``) and the Dask dashboard
(``edgebench.notebook.dask_pages``).  Other subsystems add their pages with
``@PAGES.register("/edgebench/NAME")`` (or the ``edgebench.dashboard_pages`` entry point).

Importing this module is light: Bokeh is imported when a page is built.
"""
from __future__ import annotations

import weakref
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

from ..._registry import Registry

if TYPE_CHECKING:  # pragma: no cover
    from bokeh.document import Document

    from .components import DashboardComponent, Feed

__all__ = ["PAGES", "Page", "attach", "profiling_page", "profiling_doc", "cluster_doc", "individual_doc",
           "DEFAULT_INTERVAL_MS", "CLUSTER_INTERVAL_MS"]

DEFAULT_INTERVAL_MS = 500
CLUSTER_INTERVAL_MS = 1000   # the cluster page's workers are polled about once a second

#: route -> builder ``(doc: bokeh.document.Document) -> None``
PAGES: Registry[Callable[["Document"], None]] = Registry("dashboard page", "edgebench.dashboard_pages")


@dataclass
class Page:
    """A page's parts: the root layout, its components and the feed they share."""

    title: str
    root: Any
    feed: "Feed"
    components: list["DashboardComponent"] = field(default_factory=list)

    def update(self) -> None:
        """One tick: poll the feed once, then update every component."""
        self.feed.poll()
        for c in self.components:
            c.update()


def _tick(ref: "weakref.ref[Page]") -> None:
    page = ref()
    if page is not None:
        page.update()


def attach(doc: "Document", page: Page, interval_ms: int = DEFAULT_INTERVAL_MS) -> "Document":
    """Add ``page`` to ``doc``: its root, its title and a periodic callback updating it.

    The callback holds the page weakly (as dask's ``add_periodic_callback`` does) and the
    document holds it strongly, so closing a session frees both.
    """
    ref = weakref.ref(page)
    doc.title = page.title
    doc.add_root(page.root)
    doc.add_periodic_callback(lambda: _tick(ref), interval_ms)
    pages = getattr(doc, "edgebench_pages", None)
    if pages is None:
        pages = doc.edgebench_pages = []  # type: ignore[attr-defined]
    pages.append(page)
    page.update()  # show what there is right away
    return doc


def profiling_page(rollover: int | None = None) -> Page:
    """The profiling dashboard: throughput, latency percentiles and queue depth over time,
    per-operator time of the latest published profile, and one row per live engine."""
    from bokeh.layouts import column, row
    from bokeh.models import Div

    from .components import (ROLLOVER, Feed, LatencyPercentiles, ModelTable, OperatorTime, QueueDepth,
                             Throughput)

    rollover = rollover or ROLLOVER
    feed = Feed(history=rollover)
    thr, lat, queue = (c(feed, rollover) for c in (Throughput, LatencyPercentiles, QueueDepth))
    ops, table = OperatorTime(feed, rollover), ModelTable(feed, rollover)
    lat.root.x_range = thr.root.x_range   # pan and zoom the time series together
    queue.root.x_range = thr.root.x_range
    header = Div(text="<b>edgebench</b> &middot; profiling: the live engines of this process, "
                      "from their request records", styles={"font-size": "14px"})
    root = column(header, row(thr.root, lat.root), row(queue.root, ops.root), table.root,
                  name="edgebench-profile")
    return Page("edgebench: profiling", root, feed, [thr, lat, queue, ops, table])


@PAGES.register("/edgebench/profile")
def profiling_doc(doc: "Document", interval_ms: int = DEFAULT_INTERVAL_MS) -> None:
    """Builder of the ``/edgebench/profile`` route."""
    attach(doc, profiling_page(), interval_ms)


@PAGES.register("/edgebench/cluster")
def cluster_doc(doc: "Document", source: Any = None, interval_ms: int = CLUSTER_INTERVAL_MS) -> None:
    """Builder of the ``/edgebench/cluster`` route: workers, replicas per worker, health,
    request rate and p99, from each worker's ``eb_status`` (see
    :mod:`edgebench.notebook.dashboard.cluster`).  ``source``: an ``eb.Cluster``, a dask
    ``Client`` or a ``Scheduler`` (the Dask dashboard passes its scheduler); ``None``: the
    process's default Dask client."""
    from .cluster import cluster_page

    attach(doc, cluster_page(source), interval_ms)


def individual_doc(component: type["DashboardComponent"], interval_ms: int = DEFAULT_INTERVAL_MS,
                   **kw: Any) -> Callable[["Document"], None]:
    """A builder showing one component alone (dask's ``individual_doc``)."""

    def builder(doc: "Document") -> None:
        from .components import Feed

        feed = Feed()
        comp = component(feed, **kw)
        attach(doc, Page(f"edgebench: {component.title}", comp.root, feed, [comp]), interval_ms)

    builder.__name__ = f"{component.__name__.lower()}_doc"
    return builder
