"""``eb.serve(...)`` and ``edgebench serve``: the KServe v2 server's lifecycle on uvicorn.

>>> srv = eb.serve("zoo:mlp", port=0, batching="max_batch_size=16")   # doctest: +SKIP
>>> srv.url                                                           # doctest: +SKIP
'http://127.0.0.1:43121'
>>> srv.stop()                                                        # doctest: +SKIP

The server runs in a background thread with its own event loop, so a notebook or a test keeps
going while it serves.  :meth:`Server.stop` is graceful: the listening socket closes, every
request already received is answered (each model's batcher drains), then engines close.
"""
from __future__ import annotations

import ipaddress
import logging
import socket
import threading
import time
from collections.abc import Iterable, Mapping
from html import escape
from pathlib import Path
from typing import Any

from ..errors import ConfigError, ServeError
from .app import ServeApp
from .auth import AuthConfig, Authenticator
from .config import BatchingConfig, ModelConfig, parse_batching
from .protocol import Limits
from .repository import Repository

__all__ = ["Server", "is_loopback", "serve"]

log = logging.getLogger("edgebench.serve")


def is_loopback(host: str) -> bool:
    """Whether ``host`` only reaches this machine (127.0.0.0/8, ::1, localhost)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def serve(*models: Any, repository: str | Path | None = None, host: str = "127.0.0.1", port: int = 8000,
          auth: str | Path | Mapping[str, Any] | AuthConfig | None = None,
          batching: str | bool | Mapping[str, Any] | BatchingConfig | None = None,
          threads: int | None = None, backend: str | None = None, device: str = "cpu",
          insecure: bool = False, limits: Limits | None = None, load: Iterable[str] | None = None,
          ssl_certfile: str | None = None, ssl_keyfile: str | None = None,
          log_level: str = "warning") -> Server:
    """Serve models over KServe v2 REST (Triton's HTTP protocol) and return the running server.

    Parameters
    ----------
    *models
        Paths, ``"zoo:NAME"`` (served as ``NAME``), :class:`~edgebench.Model` or
        :class:`~edgebench.Engine` objects, or a ``{name: model}`` dict.
    repository
        A model repository directory (a folder per model, numeric version subfolders, an
        optional ``config.json``/``config.toml``); all its models are loaded unless ``load``
        names some.
    host, port
        Where to listen; ``port=0`` picks a free port (see :attr:`Server.url`).
    auth
        ``auth.json`` (path or dict): tenants, tokens, model lists, rate limits, priorities,
        queue shares.  Without it, only a loopback ``host`` is allowed unless ``insecure``.
    batching
        Dynamic batching of the given models (and repository models without a config file):
        ``"on"``, ``"max_batch_size=32,max_queue_delay_ms=1"``, a dict or a
        :class:`~edgebench.serve.config.BatchingConfig`.  ``None``: each request runs alone.
    threads, backend, device
        Engine settings of those same models.
    limits
        Request limits (:class:`~edgebench.serve.protocol.Limits`).

    Returns
    -------
    Server
        Running; ``url``, ``stop()``, usable as a context manager, a live widget in notebooks.
    """
    _require()
    auth_cfg = AuthConfig.load(auth) if auth is not None else None
    if auth_cfg is None and not is_loopback(host) and not insecure:
        raise ConfigError(f"refusing to serve on {host} without authentication",
                          "pass auth (--auth auth.json), bind 127.0.0.1, or pass insecure=True (--insecure) "
                          "if the network is trusted")
    defaults = ModelConfig(backend=backend, device=device, threads=threads, batching=parse_batching(batching))
    authn = Authenticator(auth_cfg)
    repo = Repository(repository, defaults, priority_levels=authn.max_priority)
    for m in models:
        if isinstance(m, Mapping):
            for name, src in m.items():
                repo.add(src, name)
        else:
            repo.add(m)
    names = list(load) if load is not None else repo.available()
    if not names:
        raise ConfigError("no model to serve", "pass MODEL (a path or zoo:NAME) or --repository DIR")
    try:
        for name in names:
            repo.load(name)
        app = ServeApp(repo, authn, limits)
        return Server(app, host, port, ssl_certfile=ssl_certfile, ssl_keyfile=ssl_keyfile, log_level=log_level)
    except BaseException:
        repo.close()
        raise


def _require() -> None:
    """A clear error when the serving extras are not installed."""
    from importlib.util import find_spec

    missing = [m for m in ("starlette", "uvicorn", "prometheus_client") if find_spec(m) is None]
    if missing:
        raise ServeError(f"serving needs {', '.join(missing)}, which {'is' if len(missing) == 1 else 'are'} "
                         "not installed", "pip install 'edgebench[serve]'")


class Server:
    """A running edgebench server (what :func:`serve` returns).

    Attributes
    ----------
    url
        ``http://host:port`` it listens on.
    app
        The :class:`~edgebench.serve.app.ServeApp` (repository, tenants, metrics).
    """

    def __init__(self, app: ServeApp, host: str = "127.0.0.1", port: int = 8000, *, ssl_certfile: str | None = None,
                 ssl_keyfile: str | None = None, log_level: str = "warning", start_timeout_s: float = 30.0):
        import uvicorn

        self.app = app
        self.host = host
        self._sock = _listen(host, port)
        self.port = self._sock.getsockname()[1]
        scheme = "https" if ssl_certfile else "http"
        shown = f"[{host}]" if ":" in host else host
        self.url = f"{scheme}://{shown}:{self.port}"
        self._config = uvicorn.Config(app, log_level=log_level, access_log=False, lifespan="on",
                                      ssl_certfile=ssl_certfile, ssl_keyfile=ssl_keyfile,
                                      server_header=False, proxy_headers=False, timeout_keep_alive=30)
        self._uv = uvicorn.Server(self._config)
        self._error: BaseException | None = None
        self._stopped = threading.Event()
        self._closed = False
        self.started_at = time.time()
        self._thread = threading.Thread(target=self._run, name=f"edgebench-serve-{self.port}", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + start_timeout_s
        while not self._uv.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self._sock.close()
                self.app.repo.close()
                raise ServeError(f"the server on {self.url} did not start"
                                 + (f": {self._error}" if self._error else ""), "see the log above")
            time.sleep(0.005)

    def _run(self) -> None:
        try:
            self._uv.run(sockets=[self._sock])
        except BaseException as e:  # reported by __init__ or stop()
            self._error = e
            log.exception("edgebench serve: the server stopped with an error")
        finally:
            self._stopped.set()

    # -- lifecycle --------------------------------------------------------------------------------
    def stop(self, timeout: float = 30.0) -> None:
        """Stop gracefully: refuse new connections, answer every request in flight, close models.

        Requests still unanswered after ``timeout`` seconds are cancelled.  Idempotent.
        """
        if self._closed:
            return
        self._closed = True
        self.app.draining = True
        self._config.timeout_graceful_shutdown = timeout
        self._uv.should_exit = True
        self._thread.join(timeout + 10)
        self.app.repo.close()
        try:
            self._sock.close()
        except OSError:
            pass

    close = stop

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the server stops (``True``) or ``timeout`` passes (``False``)."""
        return self._stopped.wait(timeout)

    @property
    def running(self) -> bool:
        return not self._closed and self._thread.is_alive()

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __del__(self) -> None:
        if not getattr(self, "_closed", True) and getattr(self, "_uv", None) is not None:
            self._uv.should_exit = True

    # -- what it serves ---------------------------------------------------------------------------
    @property
    def models(self) -> list[str]:
        """``name:version`` of every loaded model."""
        return [f"{m.name}:{m.version}" for m in self.app.repo.served()]

    @property
    def name(self) -> str:
        return f"serve@{self.port}"

    def metrics(self) -> str:
        """The Prometheus text ``/metrics`` serves."""
        return self.app.metrics.text().decode()

    def snapshot(self) -> dict[str, Any]:
        """Live figures: per model version (requests, batches, mean batch size, queue and
        compute time) and per tenant (answered, failed, at the model, waiting)."""
        return {"url": self.url, "running": self.running, "inflight": self.app.inflight, **self.app.metrics.snapshot()}

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        auth = f", {len(self.app.auth.tenants)} tenants" if self.app.auth.enabled else ""
        return f"Server({self.url}, {state}, models={self.models}{auth})"

    def _repr_html_(self) -> str:
        rows = "".join(f"<tr><td><code>{escape(m.name)}</code></td><td>{escape(m.version)}</td>"
                       f"<td>{escape(m.runner.mode)}</td><td>{m.inflight}</td></tr>"
                       for m in self.app.repo.served())
        state = "running" if self.running else "stopped"
        return (f"<div class='edgebench-card'><b>Server</b> <a href='{escape(self.url)}/v2'>{escape(self.url)}</a>"
                f" &middot; {state} &middot; {self.app.inflight} in flight"
                f"<table><tr><th>model</th><th>version</th><th>dispatch</th><th>in flight</th></tr>{rows}</table></div>")

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None, **kwargs: Any) -> Any:
        from ..notebook.display import mimebundle

        return mimebundle(self, include, exclude)



def _listen(host: str, port: int) -> socket.socket:
    if not isinstance(port, int) or isinstance(port, bool) or not 0 <= port <= 65535:
        raise ConfigError(f"port must be an integer in 0..65535, got {port!r}")
    try:
        infos = socket.getaddrinfo(host.strip("[]"), port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as e:
        raise ConfigError(f"cannot resolve host {host!r}: {e}") from None
    family, _, _, _, addr = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(addr)
    except OSError as e:
        sock.close()
        raise ServeError(f"cannot listen on {host}:{port}: {e.strerror or e}",
                         "pick another port (port=0 / --port 0 takes a free one)") from None
    sock.set_inheritable(True)
    return sock
