"""edgebench's dashboard pages inside the Dask dashboard.

Dask builds its dashboard from ``distributed.dashboard.scheduler.applications`` (route ->
``builder(scheduler, extra, doc)``) when the scheduler starts, so the pages must be
registered before that:

* in Python, call :func:`register_dask_pages` before creating the ``LocalCluster`` /
  ``Scheduler``;
* from the command line, preload this module: importing it registers the pages (preloads
  are imported while the scheduler is constructed, before its dashboard is connected)::

      dask scheduler --preload edgebench.notebook.dask_pages
      dask scheduler --preload edgebench.notebook.dask_pages --edgebench-model zoo:mlp --edgebench-load 50

Each page of :data:`~edgebench.notebook.dashboard.PAGES` appears with the Dask navigation
bar at its route made one path segment deep (``/edgebench/profile`` -> ``/edgebench-profile``,
see :func:`dask_route`), and each component also as ``/individual-edgebench-...``, which is
what Dask's "More..." menu and the dask-labextension side panel list.

The profiling page shows the engines of the scheduler's process (a ``LocalCluster(processes=False)``
shares it with the client; ``--edgebench-model`` starts one there under a background load).
The cluster page (``/edgebench-cluster``) polls every worker's ``eb_status`` from the scheduler
itself: the replicas of ``eb.Cluster`` deployments, whichever client made them.
"""
from __future__ import annotations

import functools
import logging
from typing import Any, Callable

import click

from ..errors import EdgebenchError

__all__ = ["register_dask_pages", "dask_routes", "dask_route", "dask_setup", "dask_teardown"]

# under "distributed" so that Dask's logging configuration shows these lines with its own
log = logging.getLogger("distributed.edgebench")


def _build(builder: Callable[..., None], scheduler: Any, doc: Any) -> None:
    """``builder(doc)``; builders that take a ``source`` (the cluster page) get the scheduler,
    whose workers they poll themselves."""
    import inspect

    try:
        takes_source = "source" in inspect.signature(builder).parameters
    except (TypeError, ValueError):
        takes_source = False
    if takes_source:
        builder(doc, source=scheduler)
    else:
        builder(doc)


def _page(builder: Callable[..., None], scheduler: Any, extra: dict, doc: Any) -> None:
    _build(builder, scheduler, doc)
    from distributed.dashboard.components.scheduler import env

    doc.template = env.get_template("simple.html")  # Dask's page frame and navigation bar
    doc.template_variables.update(extra)


def _individual(builder: Callable[..., None], scheduler: Any, extra: dict, doc: Any) -> None:
    _build(builder, scheduler, doc)


def dask_route(route: str) -> str:
    """The Dask dashboard route of a page route: ``/edgebench/profile`` -> ``/edgebench-profile``.

    Dask's pages load BokehJS and link to each other by relative URLs (so that the dashboard
    also works behind a proxy), which resolve correctly only one path segment deep.
    """
    return "/" + route.strip("/").replace("/", "-")


def dask_routes() -> dict[str, Callable[[Any, dict, Any], None]]:
    """Route -> Dask page builder ``(scheduler, extra, doc)`` of every edgebench page."""
    from .dashboard.components import COMPONENTS
    from .dashboard.pages import PAGES, cluster_doc, individual_doc, profiling_doc

    routes: dict[str, Callable[[Any, dict, Any], None]] = {}
    for route in PAGES.names():
        routes[dask_route(route)] = functools.partial(_page, PAGES.get(route))
    routes["/individual-edgebench-profile"] = functools.partial(_individual, profiling_doc)
    routes["/individual-edgebench-cluster"] = functools.partial(_individual, cluster_doc)
    for name, cls in COMPONENTS.items():
        routes[f"/individual-{name}"] = functools.partial(_individual, individual_doc(cls))
    return routes


def register_dask_pages() -> list[str]:
    """Add edgebench's pages to the Dask dashboard of schedulers started from now on.

    Returns
    -------
    list of str
        The routes registered.
    """
    try:
        from distributed.dashboard import scheduler as dask_dashboard
    except ImportError as e:
        raise EdgebenchError(f"the Dask dashboard is not available here: {e}",
                             "pip install 'dask[distributed]' bokeh") from None
    routes = dask_routes()
    dask_dashboard.applications.update(routes)
    return list(routes)


def _registered_routes(scheduler: Any) -> set[str]:
    from bokeh.server.server import BokehTornado

    apps = getattr(getattr(scheduler, "http_application", None), "applications", [])
    return {p for app in apps if isinstance(app, BokehTornado) for p in app.app_paths}


_LOADS: dict[int, tuple[Any, Any]] = {}   # id(scheduler) -> (engine, load generator)


@click.command()
@click.option("--edgebench-model", default=None, metavar="MODEL",
              help="Serve MODEL (a model file or zoo:NAME) in the scheduler's process under a "
                   "background load, so the pages have live data (a demo aid).")
@click.option("--edgebench-load", type=click.FloatRange(min=0, min_open=True), default=20.0,
              show_default=True, metavar="QPS", help="Requests per second of that load.")
def dask_setup(scheduler: Any, edgebench_model: str | None = None, edgebench_load: float = 20.0) -> None:
    """Preload hook: log where the pages are (or why they are missing), and start the
    optional demo load (``--edgebench-model``)."""
    missing = [r for r in dask_routes() if r not in _registered_routes(scheduler)]
    port = getattr(getattr(scheduler, "http_server", None), "port", None)
    if missing:
        log.warning("edgebench pages not in this scheduler's dashboard (started before "
                    "edgebench.notebook.dask_pages was imported?): %s", ", ".join(missing))
    elif port:
        log.info("edgebench dashboard pages: %s", ", ".join(f":{port}{r}" for r in _main_routes()))
    if edgebench_model:
        from ..cli import load_model_arg
        from ..engine import Engine
        from .dashboard.server import LoadGenerator

        engine = Engine(load_model_arg(edgebench_model), threads=1).warmup()
        _LOADS[id(scheduler)] = (engine, LoadGenerator(engine, edgebench_load).start())
        log.info("edgebench load: %s, %g requests/s", edgebench_model, edgebench_load)


def dask_teardown(scheduler: Any) -> None:
    """Preload hook: stop the demo load, if one was started."""
    engine, gen = _LOADS.pop(id(scheduler), (None, None))
    if gen is not None:
        gen.stop()
        engine.close()


def _main_routes() -> list[str]:
    from .dashboard.pages import PAGES

    return [dask_route(r) for r in PAGES.names()]


try:  # importing the module (``--preload``) registers the pages
    register_dask_pages()
except EdgebenchError as e:  # pragma: no cover - a scheduler without a dashboard still starts
    log.warning("%s", e)
