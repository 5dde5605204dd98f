"""DynamicBatcher: Triton-style dynamic batching in front of an :class:`~edgebench.Engine`.

Requests (each with its own batch dim) are queued per priority level and concatenated along
axis 0 into batches, which are sent when full (``max_batch_size`` rows), when a preferred
batch size is reached, or when the oldest request has waited ``max_queue_delay_ms``.  One
worker thread per engine instance waits on a condition variable; it is woken only when a
batch may have become due, never polls, and no thread is created per request.  With
``max_queue_delay_ms=0`` and an idle instance, :meth:`DynamicBatcher.run` computes in the
caller's own thread (a batch of one is due at once anyway), so the low-load path costs no
thread hop at all (``benchmarks/batcher_low_load.py``).

Each request leaves one record in :attr:`DynamicBatcher.records`: arrival, batch formed,
compute start / end, answer handed back, batch rows and outcome; queue wait is
``formed - arrival``, compute ``end - start``.
"""
from __future__ import annotations

import threading
from collections.abc import Mapping
from concurrent.futures import Future
from time import perf_counter_ns
from typing import Any

from ._batch_adaptive import AdaptiveTuner
from ._batch_queue import NEVER, BatchQueue, QueuePolicy, Ragged, Request
from ._batch_stats import BatcherStats, check_model, make_slots, summarize
from ._batch_worker import failure, worker_loop
from .config import settings
from .errors import (
    ConfigError,
    EdgebenchError,
    EngineClosedError,
    InvalidInputError,
    QueueFullError,
)
from .profile import telemetry
from .profile.metrics import CANCELLED, ERROR, OK, REJECTED, RecordBuffer

__all__ = ["BatcherStats", "DynamicBatcher", "QueuePolicy"]


class DynamicBatcher:
    """Dynamic batching of requests to one model, with Triton's semantics.

    Parameters
    ----------
    engine
        The :class:`~edgebench.Engine` to run batches on.  Every input and output must have a
        dynamic dim 0 (the batch).
    max_batch_size
        Rows a batch may hold.  A request with more rows is refused
        (:class:`~edgebench.errors.InvalidInputError`), as Triton does: split it yourself.
    max_queue_delay_ms
        Longest the oldest queued request waits for a batch to fill.
    preferred_batch_sizes
        Batch sizes sent as soon as they can be formed.
    max_queue_size, timeout_ms
        The default :class:`QueuePolicy` of every priority level.
    priority_levels
        Priorities ``1`` (highest) to ``priority_levels``; FIFO within a level.
    instances
        Parallel copies of the model, each its own session and worker thread.  When more
        than one, each gets ``instance_threads`` intra-op threads (default: the engine's
        threads, or the physical cores, split evenly).
    adaptive
        Tune the batch size and delay online from measured batch latencies to meet
        ``target_p99_ms`` at the highest throughput (see ``edgebench._batch_adaptive``);
        ``max_batch_size`` and ``max_queue_delay_ms`` become upper bounds.
    target_p99_ms
        p99 latency target of the adaptive mode (default 50 ms).
    queue_policy
        A :class:`QueuePolicy` for every level, or ``{level: QueuePolicy}`` for some.
    ragged
        Inputs with dynamic non-batch dims (sequences): ``"bucket"`` (default) batches only
        requests of the same shape, so answers are exactly those of single runs; ``"pad"``
        pads to the longest in the batch with ``pad_value`` and cuts outputs that carry the
        same symbolic dim back to each request's length: use it when padding does not change
        the answer (a model with an attention mask, or per-position outputs).
    pad_value
        Padding value, or ``{input name: value}``.
    inline
        Let :meth:`run` compute in the caller's thread when the batcher is idle and the delay
        is 0 (it would form a batch of one at once anyway).
    name
        Name in dashboards and stats (default ``"<model>/batcher"``).

    Examples
    --------
    >>> eng = eb.Engine(eb.zoo.load("mlp"), threads=1)                       # doctest: +SKIP
    >>> with eb.DynamicBatcher(eng, max_batch_size=32, max_queue_delay_ms=1) as b:  # doctest: +SKIP
    ...     futs = [b.submit(eng.sample_feeds(1, seed=i)) for i in range(100)]
    ...     outs = [f.result()["logits"] for f in futs]
    ...     print(b.stats()["mean_batch_size"])
    """

    def __init__(self, engine: Any, max_batch_size: int = 32, max_queue_delay_ms: float = 2.0,
                 preferred_batch_sizes: Any = None, max_queue_size: int = 1024,
                 timeout_ms: float | None = None, priority_levels: int = 1, instances: int = 1,
                 adaptive: bool = False, *, target_p99_ms: float | None = None,
                 queue_policy: QueuePolicy | Mapping[int, QueuePolicy] | None = None,
                 pad_value: float | Mapping[str, float] = 0, ragged: str = "bucket",
                 instance_threads: int | None = None, inline: bool = True, name: str | None = None):
        for label, v in (("max_batch_size", max_batch_size), ("priority_levels", priority_levels),
                         ("instances", instances)):
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ConfigError(f"{label} must be a positive integer, got {v!r}")
        if not max_queue_delay_ms >= 0:
            raise ConfigError(f"max_queue_delay_ms must be >= 0, got {max_queue_delay_ms!r}")
        preferred = sorted(set(preferred_batch_sizes or ()))
        if any(not isinstance(p, int) or not 1 <= p <= max_batch_size for p in preferred):
            raise ConfigError(f"preferred_batch_sizes must be integers in 1..max_batch_size ({max_batch_size}), "
                              f"got {preferred_batch_sizes!r}")
        if ragged not in ("bucket", "pad"):
            raise ConfigError(f"ragged must be 'bucket' or 'pad', got {ragged!r}")
        self.engine = engine
        self.model = engine.model
        self.backend = engine.backend
        self.name = name or f"{self.model.name}/batcher"
        self.max_batch_size = max_batch_size
        self.max_queue_delay_ms = float(max_queue_delay_ms)
        self.preferred_batch_sizes = preferred
        self.priority_levels = priority_levels
        self.instances = instances
        self.adaptive = bool(adaptive)
        self.inline = bool(inline)
        default = QueuePolicy(max_queue_size, timeout_ms)
        if isinstance(queue_policy, QueuePolicy):
            default, queue_policy = queue_policy, None
        self.policies = [default] * priority_levels
        for level, pol in (queue_policy or {}).items():
            if not isinstance(level, int) or not 1 <= level <= priority_levels:
                raise ConfigError(f"queue_policy level {level!r} is not in 1..{priority_levels}")
            self.policies[level - 1] = pol
        self._ragged = Ragged(self.model.inputs, self.model.outputs, dict(pad_value) if isinstance(pad_value, Mapping) else pad_value)
        check_model(self.model, self._ragged, ragged)
        self._bucket = self._ragged.active and ragged == "bucket"
        self._ragged_mode = ragged
        self._validate = engine._validate
        self._in_names = [s.name for s in self.model.inputs]
        self._first = self._in_names[0]
        self._others = self._in_names[1:]
        delay_ns = int(self.max_queue_delay_ms * 1e6)
        self._q = BatchQueue(priority_levels, [p.timeout_action == "reject" for p in self.policies],
                             max_batch_size, delay_ns, preferred, self._bucket)
        self._tuner = (AdaptiveTuner(max_batch_size, delay_ns, 50.0 if target_p99_ms is None else target_p99_ms)
                       if self.adaptive else None)
        self._slots = make_slots(engine, instances, instance_threads)
        self._free = list(self._slots)
        self._cond = threading.Condition(threading.Lock())
        self._idle = 0  # workers waiting on _cond
        self._wake_at = NEVER  # when the last worker to sleep planned to wake
        self._closing = False
        self._closed = False
        self._n_batches = 0
        self._hist: dict[int, int] = {}
        self.records = RecordBuffer(settings().record_capacity)
        self._threads = [threading.Thread(target=worker_loop, args=(self,), name=f"edgebench-{self.name}-{i}", daemon=True)
                         for i in range(instances)]
        for t in self._threads:
            t.start()
        telemetry.track(self)

    # -- requests ------------------------------------------------------------------------------
    def _prepare(self, feeds: Any, arrival: int) -> tuple[dict, int, tuple | None]:
        """Validate in the caller's thread, so a bad request never reaches a batch."""
        try:
            feeds = self._validate(feeds)
            n = feeds[self._first].shape[0]
            for name in self._others:
                if feeds[name].shape[0] != n:
                    raise InvalidInputError(
                        f"inputs {self._first!r} and {name!r} have {n} and {feeds[name].shape[0]} rows; "
                        "every input of a request must have the same batch dim")
            if not 1 <= n <= self.max_batch_size:
                raise InvalidInputError(
                    f"the request has {n} rows; this batcher takes 1 to max_batch_size={self.max_batch_size}",
                    "split it into requests of at most max_batch_size rows, or raise max_batch_size"
                    if n else "send at least one row")
            lens = None
            if self._ragged.active:
                lens = self._ragged.lengths(feeds)
                if lens is None:
                    raise InvalidInputError(
                        "inputs sharing a symbolic dim (" + ", ".join(self._ragged.syms) + ") have different lengths",
                        "give every input of a request the same length on a shared dim")
        except InvalidInputError:
            self._reject(arrival)
            raise
        return feeds, n, lens

    def _deadline(self, arrival: int, priority: int, timeout_ms: float | None) -> int:
        if type(priority) is not int or not 1 <= priority <= self.priority_levels:
            self._reject(arrival)
            raise InvalidInputError(f"priority must be an integer in 1..{self.priority_levels} (1 is highest), "
                                    f"got {priority!r}")
        pol = self.policies[priority - 1]
        t = timeout_ms if timeout_ms is not None and pol.allow_timeout_override else pol.timeout_ms
        if not t:
            return NEVER
        if not t > 0:
            self._reject(arrival)
            raise InvalidInputError(f"timeout_ms must be >= 0 or None, got {timeout_ms!r}")
        return arrival + int(t * 1e6)

    def _enqueue(self, r: Request) -> None:
        # caller holds self._cond
        if self._closing:
            raise EngineClosedError(f"batcher {self.name!r} is closed", "create a new DynamicBatcher")
        cap = self.policies[r.level].max_queue_size
        q = self._q
        if cap and q.sizes[r.level] >= cap:
            raise QueueFullError(
                f"the queue of priority level {r.level + 1} of {self.name!r} is full ({cap} requests waiting)",
                "retry later, or raise max_queue_size, or add instances")
        q.push(r)
        if self._idle and self._free and (
                q.ready(r) or r.arrival + q.delay_ns < self._wake_at or r.deadline < self._wake_at):
            self._cond.notify()

    def submit(self, feeds: Any, priority: int = 1, timeout_ms: float | None = None) -> Future[dict[str, Any]]:
        """Queue one request; returns a ``concurrent.futures.Future`` of ``{output: array}``.

        Parameters
        ----------
        feeds
            ``{input name: array}`` (a bare array for single-input models), with its own batch
            dim of 1 to ``max_batch_size`` rows.
        priority
            ``1`` (highest) to ``priority_levels``.
        timeout_ms
            Longest wait in the queue (overrides the level's policy when it allows); an expired
            request's future raises :class:`~edgebench.errors.RequestTimeoutError`.

        Raises
        ------
        InvalidInputError
            Feeds that do not match the model (checked here, in the caller's thread).
        QueueFullError
            The level's queue is full.
        EngineClosedError
            The batcher is closed.
        """
        arrival = perf_counter_ns()
        feeds, n, lens = self._prepare(feeds, arrival)
        deadline = self._deadline(arrival, priority, timeout_ms)
        r = Request(feeds, n, arrival, deadline, Future(), priority - 1, lens if self._bucket else None, lens)
        try:
            with self._cond:
                self._enqueue(r)
        except EdgebenchError:
            self._reject(arrival)
            raise
        return r.fut

    def run(self, feeds: Any, priority: int = 1, timeout_ms: float | None = None) -> dict[str, Any]:
        """Submit one request and wait for its answer (same arguments as :meth:`submit`)."""
        arrival = perf_counter_ns()
        feeds, n, lens = self._prepare(feeds, arrival)
        deadline = self._deadline(arrival, priority, timeout_ms)
        slot = r = None
        cond = self._cond
        try:
            with cond:
                if (self.inline and not self._q.count and self._free and not self._q.delay_ns
                        and not self._closing):
                    slot = self._free.pop()
                else:
                    r = Request(feeds, n, arrival, deadline, Future(), priority - 1,
                                lens if self._bucket else None, lens)
                    self._enqueue(r)
        except EdgebenchError:
            self._reject(arrival)
            raise
        if slot is None:
            return r.fut.result()
        # an idle instance and no delay: this request is a batch of one, due now; run it here
        start = perf_counter_ns()
        try:
            outs = slot[0](feeds)
        except Exception as e:
            err = failure(self, e)
            outs = None
        end = perf_counter_ns()
        with cond:
            self._free.append(slot)
            self._account(n, end - start)
            if self._closing:
                cond.notify_all()  # close() may be waiting for this instance
            elif self._q.count and self._idle:
                cond.notify()
        if outs is None:
            self.records.add(arrival, start, start, end, perf_counter_ns(), n, ERROR)
            raise err
        res = dict(zip(slot[1], outs))
        self.records.add(arrival, start, start, end, perf_counter_ns(), n, OK)
        return res

    def _reject(self, arrival: int) -> None:
        t = perf_counter_ns()
        self.records.add(arrival, t, t, t, t, 0, REJECTED)

    def _account(self, rows: int, latency_ns: int) -> None:
        # caller holds self._cond
        self._n_batches += 1
        self._hist[rows] = self._hist.get(rows, 0) + 1
        if self._tuner is not None and self._tuner.observe(rows, latency_ns):
            self._q.limit = self._tuner.batch_size
            self._q.delay_ns = self._tuner.delay_ns

    # -- workers -------------------------------------------------------------------------------
    # -- state ---------------------------------------------------------------------------------
    @property
    def queued(self) -> int:
        """Requests waiting in the queue now."""
        return self._q.count

    def stats(self) -> BatcherStats:
        """Totals and percentiles of the recorded requests (a dict; ``.to_pandas()`` per batch size).

        Counts by outcome cover the records still in :attr:`records` (a ring of
        ``settings().record_capacity``); ``batches`` and ``batch_sizes`` count every batch.

        Keys: ``requests, ok, timeouts, rejected, cancelled, errors, batches, mean_batch_size,
        batch_sizes`` (rows -> batches), ``queue_ms, compute_ms, latency_ms`` (each
        ``{"mean", "p50", "p99"}``), ``throughput`` (answers/s), ``queued``,
        ``max_batch_size`` and ``max_queue_delay_ms`` in force, and ``adaptive`` (the tuner's
        state, or ``None``).
        """
        with self._cond:
            hist = dict(sorted(self._hist.items()))
            batches = self._n_batches
            queued = self._q.count
            limit, delay = self._q.limit, self._q.delay_ns / 1e6
            tuner = self._tuner.state() if self._tuner is not None else None
        recs = self.records.snapshot()
        out = BatcherStats(summarize(recs))
        out.update(batches=batches, batch_sizes=hist,
                   mean_batch_size=(sum(k * v for k, v in hist.items()) / batches) if batches else 0.0,
                   queued=queued, max_batch_size=limit, max_queue_delay_ms=delay, adaptive=tuner)
        out._records = recs
        return out

    # -- lifecycle -----------------------------------------------------------------------------
    def close(self, drain: bool = True, timeout: float | None = None) -> None:
        """Stop taking requests.  Idempotent.

        Parameters
        ----------
        drain
            ``True``: answer everything queued first (batches are sent without waiting for
            the delay).  ``False``: queued requests' futures get
            :class:`~edgebench.errors.EngineClosedError`; batches already running finish.
        timeout
            Seconds to wait for the workers (``None``: as long as it takes).
        """
        with self._cond:
            if self._closing:
                dropped = []
            else:
                self._closing = True
                dropped = [] if drain else self._q.clear()
                self._cond.notify_all()
        for r in dropped:
            if r.fut.set_running_or_notify_cancel():
                r.fut.set_exception(EngineClosedError(
                    f"batcher {self.name!r} was closed without draining before this request ran",
                    "close(drain=True) answers queued requests first"))
            t = perf_counter_ns()
            self.records.add(r.arrival, t, t, t, t, 0, CANCELLED)
        me = threading.current_thread()
        if me not in self._threads:  # (a done-callback may close the batcher from a worker)
            for t in self._threads:
                t.join(timeout)
            with self._cond:  # wait for calls running inline in callers' threads
                self._cond.wait_for(lambda: len(self._free) == len(self._slots), timeout)
        self._closed = True

    def __enter__(self) -> DynamicBatcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"{self._q.count} queued"
        return (f"DynamicBatcher({self.name!r}, max_batch_size={self._q.limit}, "
                f"max_queue_delay_ms={self._q.delay_ns / 1e6:g}, instances={self.instances}, "
                f"{state}, {self.records.total} requests)")

    def _repr_html_(self) -> str:
        from html import escape

        s = self.stats()
        lat = s["latency_ms"]
        return (f"<div class='edgebench-card'><b>DynamicBatcher</b> <code>{escape(self.name)}</code> &middot; "
                f"max batch {s['max_batch_size']} &middot; delay {s['max_queue_delay_ms']:g} ms &middot; "
                f"{self.instances} instance(s) &middot; {s['requests']} requests in {s['batches']} batches "
                f"(mean {s['mean_batch_size']:.1f} rows) &middot; p50 {lat['p50']:.3f} ms &middot; "
                f"p99 {lat['p99']:.3f} ms &middot; {s['queued']} queued</div>")

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None, **kwargs: Any) -> dict:
        """In Jupyter: the live batcher widget (``repr`` and the HTML card beside it)."""
        from .notebook.display import mimebundle

        return mimebundle(self, include, exclude)
