"""Bokeh dashboards of edgebench's live telemetry, run three ways.

* in a notebook: ``eb.notebook.dashboard.show()`` (a :class:`Dashboard` shown through
  ``jupyter_bokeh.BokehModel``, updated from a background thread);
* as a standalone Bokeh server: ``edgebench dashboard`` or :func:`serve_dashboard`;
* as pages of the Dask dashboard: ``dask scheduler --preload edgebench.notebook.dask_pages``.

Pages are the builders in :data:`PAGES` (route -> builder of a Bokeh ``Document``); their
components read the request records of the engines of this process
(:mod:`edgebench.profile.telemetry`).  Profiles reach the per-operator view through
:func:`publish_profile`.

Importing this package loads no Bokeh; that happens when a page is built.
"""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .pages import PAGES, cluster_doc, profiling_doc

if TYPE_CHECKING:  # pragma: no cover
    from .server import DashboardServer, serve_dashboard

__all__ = ["PAGES", "profiling_doc", "cluster_doc", "publish_profile", "latest_profile", "PublishedProfile", "Dashboard", "show",
           "serve_dashboard", "DashboardServer"]

_LAZY = {"serve_dashboard", "DashboardServer"}
log = logging.getLogger(__name__)
DEFAULT_ROUTE = "/edgebench/profile"

_PROFILE_LOCK = threading.Lock()
_latest: list[Any] = [0, None]   # [version, PublishedProfile]


@dataclass(frozen=True)
class PublishedProfile:
    """What :func:`publish_profile` keeps of a profile: its operator events, not its engine
    (so publishing keeps no engine alive)."""

    label: str                  # model@backend
    events: tuple = ()
    reason: str | None = None   # why there is no operator data

    def operators(self) -> Any:
        """Per-operator table, as ``ProfileSession.operators()`` gives it."""
        from ...profile.profiler import operator_table

        df = operator_table(list(self.events))
        if df.empty and self.reason:
            df.attrs["reason"] = self.reason
        return df


def publish_profile(prof: Any) -> Any:
    """Show ``prof`` (an :class:`~edgebench.profile.profiler.ProfileSession`, after its ``with``
    block) in the per-operator view of every open profiling dashboard; returns ``prof``.

    Examples
    --------
    >>> with eb.profile(engine) as prof:                    # doctest: +SKIP
    ...     engine.run(x)
    >>> eb.notebook.dashboard.publish_profile(prof)         # doctest: +SKIP
    """
    from ...profile.telemetry import label

    pub = PublishedProfile(label(prof.engine), tuple(prof.events), getattr(prof, "reason", None))
    with _PROFILE_LOCK:
        _latest[0] += 1
        _latest[1] = pub
    return prof


def latest_profile() -> tuple[int, PublishedProfile | None]:
    """``(version, profile)``: the last published profile (``None`` if none) and a counter that
    changes at every :func:`publish_profile`."""
    with _PROFILE_LOCK:
        return _latest[0], _latest[1]


# --------------------------------------------------------------------------------------------
# in a notebook
# --------------------------------------------------------------------------------------------
class Dashboard:
    """A dashboard page inside a notebook, updated live from a background thread.

    The page is built into its own Bokeh ``Document`` by the route's builder; the periodic
    callbacks the builder adds (which only a Bokeh server would run) are run here by a
    daemon thread, and ``jupyter_bokeh.BokehModel`` carries every change to the browser.

    Parameters
    ----------
    route
        A key of :data:`~edgebench.notebook.dashboard.PAGES`.
    start
        Start updating right away (else call :meth:`start`).
    **builder_kw
        Passed to the page's builder, e.g. ``source=cl`` for ``/edgebench/cluster``.
    """

    def __init__(self, route: str = DEFAULT_ROUTE, start: bool = True, **builder_kw: Any):
        from .server import _require

        _require("bokeh")
        from bokeh.document import Document
        from bokeh.layouts import column

        self.route = route
        builder = PAGES.get(route)
        self.doc = Document()
        builder(self.doc, **builder_kw)
        roots = list(self.doc.roots)
        if len(roots) != 1:
            for r in roots:
                self.doc.remove_root(r)
            self.doc.add_root(column(*roots))
        self.root = self.doc.roots[0]
        self.callbacks = [(cb.callback, cb.period / 1e3) for cb in self.doc.session_callbacks
                          if getattr(cb, "period", None)]
        self.errors = 0
        self._widget: Any = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._shown_in: Any = None
        if start:
            self.start()

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def update(self) -> None:
        """Run every periodic callback of the page once."""
        for fn, _ in self.callbacks:
            fn()

    def start(self) -> "Dashboard":
        """Start the thread that runs the page's periodic callbacks."""
        if not self.running:
            self._stop.clear()
            self._thread = threading.Thread(target=self._loop, daemon=True,
                                            name=f"edgebench-dashboard{self.route.replace('/', '-')}")
            self._thread.start()
        return self

    def stop(self) -> None:
        """Stop updating (the plots stay as they are).  Idempotent."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=10)
        self._thread = None

    def close(self) -> None:
        """Stop updating and close the widget."""
        self.stop()
        if self._widget is not None:
            # ipywidgets' close only: BokehModel.close also unhooks it from the document, and
            # raises when the widget's __del__ calls it a second time (jupyter_bokeh 4.1)
            from ipywidgets import DOMWidget

            DOMWidget.close(self._widget)
            self._widget = None

    def _loop(self) -> None:
        due = [time.monotonic() + period for _, period in self.callbacks]
        while self.callbacks and not self._stop.is_set():
            i = min(range(len(due)), key=due.__getitem__)
            if self._stop.wait(max(0.0, due[i] - time.monotonic())):
                break
            fn, period = self.callbacks[i]
            try:
                fn()
            except Exception:  # keep the dashboard alive; the first three errors are logged
                self.errors += 1
                if self.errors <= 3:
                    log.exception("dashboard %s: update failed", self.route)
            due[i] = max(due[i] + period, time.monotonic())

    # -- display --------------------------------------------------------------------------------
    def widget(self) -> Any:
        """The ``jupyter_bokeh.BokehModel`` showing the page (built once), or ``None`` when
        ipywidgets or jupyter_bokeh is missing."""
        if self._widget is None:
            try:
                from jupyter_bokeh import BokehModel
            except ImportError:
                return None
            self._widget = BokehModel(self.root)
        return self._widget

    def _ipython_display_(self) -> None:
        from IPython import get_ipython
        from IPython.display import HTML, display

        ip = get_ipython()
        count = getattr(ip, "execution_count", None)
        if self._shown_in is not None and self._shown_in == count:
            return  # `show()` as the last line of a cell: shown once, not twice
        self._shown_in = count
        widget = self.widget()
        if widget is None:
            display(HTML(self._repr_html_()))
            return
        _ensure_bokehjs()
        display(widget)

    def _repr_html_(self) -> str:
        from html import escape

        return (f"<div class='edgebench-card'><b>edgebench dashboard</b> <code>{escape(self.route)}</code>: "
                "the live view needs ipywidgets and jupyter_bokeh (<code>pip install 'edgebench[notebook]'"
                "</code>); or run <code>edgebench dashboard</code> and open it in a browser.</div>")

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        periods = ", ".join(f"{p * 1e3:g} ms" for _, p in self.callbacks) or "no updates"
        return f"<Dashboard {self.route}: {state}, every {periods}>"


def _ensure_bokehjs() -> None:
    """Load BokehJS into the notebook page, inline (no CDN), once per kernel: the bundles the
    dashboards use (core, widgets, tables), each published once, shared with the views."""
    try:
        from ..display import load_bokehjs
    except ImportError:  # pragma: no cover - the views module is missing
        from bokeh.io import output_notebook
        from bokeh.resources import Resources

        output_notebook(resources=Resources(mode="inline", components=["bokeh", "bokeh-widgets",
                                                                       "bokeh-tables"]), hide_banner=True)
        return
    for bundle in ("bokeh", "bokeh-widgets", "bokeh-tables"):
        load_bokehjs((bundle,))


def show(route: str = DEFAULT_ROUTE, **builder_kw: Any) -> Dashboard:
    """Show a dashboard page in the notebook, updating live; returns its :class:`Dashboard`
    (``d.stop()`` stops the updates).  ``builder_kw`` go to the page's builder.

    Examples
    --------
    >>> d = eb.notebook.dashboard.show("/edgebench/profile")    # doctest: +SKIP
    >>> d = eb.notebook.dashboard.show("/edgebench/cluster", source=cl)   # doctest: +SKIP
    """
    from IPython.display import display

    dash = Dashboard(route, **builder_kw)
    display(dash)
    return dash


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from . import server

        return getattr(server, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
