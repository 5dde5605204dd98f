"""Engine: a model compiled on a backend and device, run synchronously or from a thread pool.

Every request leaves one timing record in ``engine.records`` (a lock-free ring buffer; about 1 us a request with the clock reads):
the single source of the profiler, benchmark reports, dashboards and ``/metrics``.
"""
from __future__ import annotations

import threading
from concurrent.futures import Future, ThreadPoolExecutor
from time import perf_counter_ns
from typing import Any, Mapping

from .backends import get as get_backend
from ._feeds import FeedValidator, random_feeds
from .config import settings
from .errors import (BackendUnavailableError, EdgebenchError, EngineClosedError, InferenceError,
                     InvalidInputError)
from .model import Model, load
from .profile import telemetry
from .profile.metrics import ERROR, OK, REJECTED, RecordBuffer

__all__ = ["Engine"]


class Engine:
    """A model ready to run on one backend and device.

    Parameters
    ----------
    model
        A :class:`~edgebench.Model` or anything :func:`edgebench.load` accepts.
    backend
        Backend name (``"onnxruntime"``, ``"torch"``, or a registered plugin);
        default from settings (``onnxruntime``).
    device
        ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ... A device that is not present raises
        :class:`~edgebench.errors.DeviceUnavailableError` with the reason.
    threads
        Intra-op threads; ``None`` lets the backend decide (all physical cores).
    options
        Backend-specific options (see ``edgebench.backends.onnxruntime``).
    workers
        Threads serving :meth:`submit` (default 1: the backend already uses ``threads``).
    record
        Keep per-request timing records (default on; about 1 us a request, see
        ``benchmarks/recording_overhead.py``).

    Examples
    --------
    >>> eng = eb.Engine(eb.zoo.load("mlp"), threads=1)          # doctest: +SKIP
    >>> out = eng.run({"input": x})                             # doctest: +SKIP
    """

    def __init__(self, model: Any, backend: str | None = None, device: str = "cpu",
                 threads: int | None = None, *, options: Mapping[str, Any] | None = None,
                 workers: int = 1, record: bool = True):
        cfg = settings()
        self.model: Model = load(model)
        self.backend = backend or cfg.backend
        self.device = device
        self.threads = threads if threads is not None else cfg.threads
        self.options = dict(options or {})
        if not isinstance(workers, int) or workers < 1:
            raise InvalidInputError(f"workers must be a positive integer, got {workers!r}")
        self.workers = workers
        impl = get_backend(self.backend)
        ok, reason = impl.available()
        if not ok:
            raise BackendUnavailableError(f"backend {self.backend!r} is not available: {reason}")
        self.session = impl.compile(self.model, device, threads=self.threads, **self.options)
        self._validate = FeedValidator(self.model.inputs)
        self._out_names = list(self.session.output_names)
        self._session_run = self.session.run
        # dim 0 of the first input is the batch when it is dynamic: recorded as the batch size
        first = self.model.inputs[0] if self.model.inputs else None
        self._batch_input = first.name if first and first.shape and not isinstance(first.shape[0], int) else None
        self.records = RecordBuffer(cfg.record_capacity)
        self.records.enabled = bool(record)
        self._pool: ThreadPoolExecutor | None = None
        self._pool_lock = threading.Lock()
        self._closed = False
        telemetry.track(self)

    # -- running ------------------------------------------------------------------------------
    def run(self, feeds: Any) -> dict[str, Any]:
        """Run one request and return ``{output name: np.ndarray}``.

        ``feeds`` is a dict of input name to numpy array (a bare array is accepted for
        single-input models).  Invalid feeds raise :class:`InvalidInputError` and leave the
        engine usable.
        """
        return self._run(feeds, perf_counter_ns())

    def _run(self, feeds: Any, arrival: int) -> dict[str, Any]:
        # the hot path: a few attribute reads, two clock reads and one ring-buffer store
        if self._closed:
            raise EngineClosedError(f"engine for {self.model.name!r} is closed", "create a new Engine")
        try:
            feeds = self._validate(feeds)
        except InvalidInputError:
            self._record_failure(arrival, None, REJECTED)
            raise
        start = perf_counter_ns()
        try:
            outs = self._session_run(feeds)
        except Exception as e:
            self._record_failure(arrival, start, ERROR)
            if isinstance(e, EdgebenchError):
                raise
            msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise InferenceError(f"{self.backend} failed running {self.model.name!r}: {msg}",
                                 "check the input values and shapes against the model") from e
        rec = self.records
        if rec.enabled:
            end = perf_counter_ns()
            batch = feeds[self._batch_input].shape[0] if self._batch_input else 1
            rec.add(arrival, start, start, end, end, batch, OK)
        return dict(zip(self._out_names, outs))

    def _record_failure(self, arrival: int, start: int | None, status: int) -> None:
        if self.records.enabled:
            t = perf_counter_ns()
            self.records.add(arrival, start or t, start or t, t, t, 0, status)

    def submit(self, feeds: Any) -> "Future[dict[str, Any]]":
        """Run a request on the engine's worker thread(s); returns a ``concurrent.futures.Future``."""
        arrival = perf_counter_ns()
        if self._closed:
            raise EngineClosedError(f"engine for {self.model.name!r} is closed", "create a new Engine")
        pool = self._pool or self._start_pool()
        return pool.submit(self._run, feeds, arrival)

    def _start_pool(self) -> ThreadPoolExecutor:
        with self._pool_lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix=f"edgebench-{self.model.name}")
        return self._pool

    def warmup(self, n: int = 10, batch_size: int = 1) -> "Engine":
        """Run ``n`` requests of random data (not recorded) so first-call costs are paid."""
        feeds = self._validate(random_feeds(self.model.inputs, batch_size=batch_size))
        for _ in range(n):
            self.session.run(feeds)
        return self

    def sample_feeds(self, batch_size: int = 1, seed: int = 0) -> dict[str, Any]:
        """Seeded random feeds that match the model's inputs."""
        return random_feeds(self.model.inputs, batch_size=batch_size, seed=seed)

    # -- introspection --------------------------------------------------------------------------
    @property
    def providers(self) -> list[str]:
        return list(getattr(self.session, "providers", [self.device]))

    def memory(self) -> dict[str, int]:
        """Bytes: the model, what the session holds, and this process's resident set."""
        import psutil

        held = getattr(self.session, "memory_bytes", lambda: self.model.size_bytes)()
        return {"model_bytes": self.model.size_bytes, "session_bytes": int(held),
                "process_rss_bytes": psutil.Process().memory_info().rss}

    def stats(self, since: int = 0):
        """Latency percentiles and throughput of the recorded requests (a pandas Series)."""
        from .profile.report import summarize

        return summarize(self.records.snapshot(since))

    # -- lifecycle ------------------------------------------------------------------------------
    def close(self) -> None:
        """Finish queued requests and release the worker threads.  Idempotent."""
        self._closed = True
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True)

    def __enter__(self) -> "Engine":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __del__(self) -> None:
        pool = getattr(self, "_pool", None)
        if pool is not None:
            pool.shutdown(wait=False)

    def __repr__(self) -> str:
        threads = "auto" if self.threads is None else self.threads
        state = "closed" if self._closed else f"{self.records.total} requests"
        return (f"Engine({self.model.name!r}, backend={self.backend!r}, device={self.device!r}, "
                f"threads={threads}, {state})")

    def _repr_mimebundle_(self, include=None, exclude=None, **kwargs):
        from .notebook.display import mimebundle  # the widget; text and HTML without ipywidgets

        return mimebundle(self, include, exclude)

    def _repr_html_(self) -> str:
        from html import escape

        n = self.records.total
        extra = ""
        if n:
            s = self.stats()
            extra = (f" &middot; p50 {s['p50_ms']:.3f} ms &middot; p99 {s['p99_ms']:.3f} ms"
                     f" &middot; {s['throughput']:.0f}/s")
        return (f"<div class='edgebench-card'><b>Engine</b> <code>{escape(self.model.name)}</code> on "
                f"<code>{escape(self.backend)}</code> / <code>{escape(self.device)}</code> "
                f"({escape(', '.join(self.providers))}) &middot; threads "
                f"{'auto' if self.threads is None else self.threads} &middot; {n} requests{extra}</div>")
