"""The dashboard pages as a standalone Bokeh server (:func:`serve_dashboard`,
``edgebench dashboard``), and a bounded background load (:class:`LoadGenerator`) so a fresh
server has live data to show.

The Bokeh server binds 127.0.0.1 only and serves BokehJS from its own ``/static`` folder,
never from a CDN.
"""
from __future__ import annotations

import argparse
import threading
import time
from typing import Any, Iterable, Sequence

from ...errors import ConfigError, EdgebenchError
from .pages import PAGES

__all__ = ["serve_dashboard", "DashboardServer", "make_server", "LoadGenerator",
           "add_dashboard_command", "cmd_dashboard"]

ADDRESS = "127.0.0.1"


def _require(module: str) -> None:
    import importlib.util

    if importlib.util.find_spec(module) is None:
        raise EdgebenchError(f"the dashboards need {module}, which is not installed",
                             "pip install 'edgebench[notebook]'")


# --------------------------------------------------------------------------------------------
# the standalone Bokeh server
# --------------------------------------------------------------------------------------------
def make_server(routes: Iterable[str] | None = None, port: int = 5006, io_loop: Any = None) -> Any:
    """A ``bokeh.server.server.Server`` (not started) serving ``routes`` (default: every page)
    on 127.0.0.1, with BokehJS from the server's own ``/static``."""
    _require("bokeh")
    from urllib.parse import urljoin

    from bokeh.application import Application
    from bokeh.application.handlers.function import FunctionHandler
    from bokeh.resources import Resources
    from bokeh.server.server import Server
    from bokeh.server.views.static_handler import StaticHandler

    routes = list(routes) if routes is not None else PAGES.names()
    apps = {r: Application(FunctionHandler(PAGES.get(r))) for r in routes}
    try:
        server = Server(apps, io_loop=io_loop, port=port, address=ADDRESS)
    except OSError as e:
        raise ConfigError(f"cannot listen on {ADDRESS}:{port}: {e.strerror or e}",
                          "pass another --port (0 picks a free one)") from None
    tornado = server._tornado
    # the port is known only now (port=0): let pages opened as 127.0.0.1 or localhost connect
    tornado.websocket_origins.update({f"{ADDRESS}:{server.port}", f"localhost:{server.port}"})

    def resources(absolute_url: Any = None) -> Resources:
        # "server" mode whatever BOKEH_RESOURCES says: BokehJS comes from this server, never a CDN
        base = tornado._absolute_url if absolute_url is True else (absolute_url or "/")
        return Resources(mode="server", root_url=urljoin(base, tornado._prefix),
                         path_versioner=StaticHandler.append_version)

    tornado.resources = resources
    return server


class DashboardServer:
    """A Bokeh server of the dashboard pages on a background thread (see :func:`serve_dashboard`).

    Attributes
    ----------
    port, url
        Where it listens (``http://127.0.0.1:PORT``).
    urls
        Route -> full URL of each page.
    """

    def __init__(self, routes: Iterable[str] | None = None, port: int = 0):
        self.routes = list(routes) if routes is not None else PAGES.names()
        self.port: int = port
        self._server: Any = None
        self._loop: Any = None
        self._error: BaseException | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="edgebench-dashboard-server")
        self._thread.start()
        if not self._ready.wait(60):
            raise EdgebenchError("the dashboard server did not start within 60 s")
        if self._error is not None:
            raise self._error

    def _run(self) -> None:
        import asyncio

        from tornado.ioloop import IOLoop

        asyncio.set_event_loop(asyncio.new_event_loop())
        self._loop = IOLoop.current()
        try:
            self._server = make_server(self.routes, self.port, io_loop=self._loop)
            self._server.start()
            self.port = self._server.port
        except BaseException as e:
            self._error = e
            self._ready.set()
            return
        self._ready.set()
        self._loop.start()
        self._loop.close(all_fds=True)

    @property
    def url(self) -> str:
        return f"http://{ADDRESS}:{self.port}"

    @property
    def urls(self) -> dict[str, str]:
        return {r: self.url + r for r in self.routes}

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def stop(self) -> None:
        """Stop serving and end the server's thread.  Idempotent."""
        if not self._thread.is_alive():
            return

        def shutdown() -> None:
            self._server.stop()
            self._loop.stop()

        self._loop.add_callback(shutdown)
        self._thread.join(timeout=30)

    def __enter__(self) -> "DashboardServer":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"<DashboardServer {self.url} ({'running' if self.running else 'stopped'}): {', '.join(self.routes)}>"


def serve_dashboard(port: int = 0, routes: Iterable[str] | None = None) -> DashboardServer:
    """Serve the dashboard pages from a Bokeh server on ``127.0.0.1:port`` in a background
    thread (``port=0`` picks a free port).

    Returns
    -------
    DashboardServer
        ``.url``, ``.urls`` (route -> URL) and ``.stop()``.

    Examples
    --------
    >>> srv = eb.notebook.dashboard.serve_dashboard()         # doctest: +SKIP
    >>> srv.urls["/edgebench/profile"]                        # doctest: +SKIP
    >>> srv.stop()                                            # doctest: +SKIP
    """
    return DashboardServer(routes, port)


# --------------------------------------------------------------------------------------------
# a bounded background load
# --------------------------------------------------------------------------------------------
class LoadGenerator:
    """Poisson arrivals at ``qps`` through ``engine.submit``, at most ``max_inflight`` at once.

    Arrivals wait (they are not dropped) while ``max_inflight`` requests are unfinished, so
    the load never queues without bound.
    """

    def __init__(self, engine: Any, qps: float, max_inflight: int = 32, seed: int = 0):
        if not qps > 0:
            raise ConfigError(f"the load must be a positive rate, got {qps!r}", "pass --load QPS with QPS > 0")
        self.engine, self.qps, self.max_inflight, self.seed = engine, float(qps), int(max_inflight), seed
        self.sent = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="edgebench-load")

    def start(self) -> "LoadGenerator":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)

    def _run(self) -> None:
        import numpy as np

        rng = np.random.default_rng(self.seed)
        feeds = self.engine.sample_feeds(seed=self.seed)
        slots = threading.BoundedSemaphore(self.max_inflight)
        release = lambda _f: slots.release()  # noqa: E731
        due = time.perf_counter()
        while not self._stop.is_set():
            due += rng.exponential(1.0 / self.qps)
            if self._stop.wait(max(0.0, due - time.perf_counter())):
                break
            while not slots.acquire(timeout=0.1):
                if self._stop.is_set():
                    return
            due = max(due, time.perf_counter())  # after waiting for a slot, no burst to catch up
            try:
                self.engine.submit(feeds).add_done_callback(release)
            except EdgebenchError:  # the engine was closed
                slots.release()
                return
            self.sent += 1


# --------------------------------------------------------------------------------------------
# the `edgebench dashboard` command
# --------------------------------------------------------------------------------------------
def add_dashboard_command(sub: Any) -> None:
    """Add the ``dashboard`` subcommand to ``sub`` (an argparse subparsers object)."""
    from ...cli import _positive_float, _positive_int

    p = sub.add_parser("dashboard", help="live Bokeh dashboards (profiling, ...) on 127.0.0.1",
                       description="Serve the edgebench dashboard pages from a Bokeh server on "
                                   "127.0.0.1. With --model, an engine runs in this process under a "
                                   "bounded background load, so the pages have live data.")
    p.add_argument("--port", type=int, default=5006, help="port on 127.0.0.1 (default 5006; 0: any free port)")
    p.add_argument("--model", metavar="MODEL", default=None,
                   help="serve MODEL (a model file or zoo:NAME) in this process under a background load")
    p.add_argument("--load", type=_positive_float, default=None, metavar="QPS",
                   help="requests per second of the background load (default 20; needs --model)")
    p.add_argument("--max-inflight", type=_positive_int, default=32, metavar="N",
                   help="most unfinished requests of the load at once (default 32)")
    p.add_argument("--backend", default=None, help="backend of the --model engine (default: onnxruntime)")
    p.add_argument("--device", default="cpu", help="device of the --model engine (default cpu)")
    p.add_argument("--threads", type=_positive_int, default=None, metavar="N",
                   help="intra-op threads of the --model engine (default: the backend decides)")
    p.add_argument("--duration", type=_positive_float, default=None, metavar="S",
                   help="stop after S seconds (default: run until Ctrl-C)")
    p.add_argument("--scheduler", metavar="ADDRESS", default=None,
                   help="a Dask scheduler (tcp://host:8786) whose workers the /edgebench/cluster page polls")
    p.set_defaults(func=cmd_dashboard)


def cmd_dashboard(args: argparse.Namespace) -> int:
    """Run ``edgebench dashboard``: serve until Ctrl-C, SIGTERM or ``--duration``."""
    if args.load is not None and args.model is None:
        raise ConfigError("--load needs a model to send requests to", "add --model MODEL (e.g. zoo:mlp)")
    if not 0 <= args.port <= 65535:
        raise ConfigError(f"--port must be 0..65535, got {args.port}")
    engine = gen = client = None
    try:
        if getattr(args, "scheduler", None):
            from distributed import Client

            try:  # the process's default client: the cluster page polls its workers through it
                client = Client(args.scheduler, timeout="10s")
            except (OSError, TimeoutError) as e:
                raise ConfigError(f"cannot reach the Dask scheduler at {args.scheduler!r}: {e}",
                                  "check --scheduler (e.g. tcp://127.0.0.1:8786)") from None
        if args.model is not None:
            from ...cli import load_model_arg
            from ...engine import Engine

            engine = Engine(load_model_arg(args.model), backend=args.backend, device=args.device,
                            threads=args.threads)
            engine.warmup()
            gen = LoadGenerator(engine, args.load or 20.0, max_inflight=args.max_inflight).start()
        server = make_server(port=args.port)
        print(f"edgebench dashboard on http://{ADDRESS}:{server.port}/ (Ctrl-C stops it)")
        for route in PAGES.names():
            print(f"  http://{ADDRESS}:{server.port}{route}")
        if engine is not None:
            print(f"  load: {engine.model.name}@{engine.backend}, {gen.qps:g} requests/s (Poisson), "
                  f"at most {gen.max_inflight} in flight")
        print(flush=True)
        if args.duration:
            server.io_loop.call_later(args.duration, server.io_loop.stop)
        server.run_until_shutdown()
    finally:
        if gen is not None:
            gen.stop()
        if engine is not None:
            engine.close()
        if client is not None:
            client.close()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m edgebench.notebook.dashboard.server [options]``: the command without the CLI."""
    from ...cli import _Parser

    parser = _Parser(prog="edgebench")
    add_dashboard_command(parser.add_subparsers(dest="command", required=True))
    import sys

    args = parser.parse_args(["dashboard", *(sys.argv[1:] if argv is None else argv)])
    return cmd_dashboard(args)


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
