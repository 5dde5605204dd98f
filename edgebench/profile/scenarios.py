"""MLPerf LoadGen's four scenarios, run against an :class:`~edgebench.Engine`.

==============  =========================================================  ==================
scenario        how queries are issued                                     headline metric
==============  =========================================================  ==================
single_stream   one query, the next when it completes                      p90 latency
multi_stream    queries of ``samples_per_query`` samples, back to back      p99 latency
server          Poisson arrivals at ``qps``, latency from scheduled time   qps at p99 <= bound
offline         every query queued at once                                 samples/s
==============  =========================================================  ==================

Latencies come from the engine's own request records (warm-up excluded), plus the
scheduled issue times in the server scenario: there is no second timing system.
"""
from __future__ import annotations

import math
import time
from collections import deque
from concurrent.futures import Future, wait
from time import perf_counter_ns
from typing import Any, Callable

import numpy as np

from .._registry import Registry
from ..errors import BenchmarkError
from .metrics import FIELDS
from ._run import _check, _queries, _Run
from .report import BenchmarkReport

__all__ = ["benchmark", "SCENARIOS"]

#: scenario name -> runner(_Run) -> BenchmarkReport
SCENARIOS: Registry[Callable[["_Run"], BenchmarkReport]] = Registry("scenario")

_SPIN_NS = 100_000           # spin the last 100 us before a scheduled issue
_MAX_QUEUED = 16384          # offline: queries queued at once (each Future holds ~2 KB)
_ARRIVAL, _START, _END, _DONE, _STATUS = (FIELDS.index(f) for f in ("arrival", "start", "end", "done", "status"))


def benchmark(engine: Any, scenario: str = "single_stream", *, qps: float | None = None,
              latency_bound_ms: float | None = None, duration_s: float = 5.0,
              min_queries: int | None = None, batch_size: int = 1, samples_per_query: int = 8,
              warmup_s: float = 0.5, seed: int = 0, feeds: Any = None, progress: bool = False,
              window_s: float | None = None, max_duration_s: float | None = None) -> BenchmarkReport:
    """Benchmark an engine the way MLPerf LoadGen does.

    Parameters
    ----------
    engine
        An :class:`~edgebench.Engine`; it should serve nothing else during the run.
    scenario
        ``"single_stream"``, ``"multi_stream"``, ``"server"`` or ``"offline"``.
    qps
        Server: target queries per second of the Poisson arrival process (required).
    latency_bound_ms
        Server: the bound on p99 latency (required).  Single/multi stream: optional bound on
        p90/p99.  A run over its bound is INVALID.
    duration_s
        Minimum measured time.  The run goes on, window by window, until the last 3
        measurement windows are stable (throughput within 10%) or ``max_duration_s``.
    min_queries
        Minimum number of queries for a VALID run (default 100).
    batch_size
        Samples (rows of the batch dimension) per request.
    samples_per_query
        Multi-stream: samples per query.  When the model's batch dimension is dynamic one
        query is one request of ``samples_per_query * batch_size`` rows; otherwise it is
        ``samples_per_query`` requests submitted together.
    warmup_s
        Seconds of untimed requests first (excluded from the report).
    seed
        Seeds the sample feeds and the server's arrival process.
    feeds
        The request to send (default ``engine.sample_feeds(batch_size, seed)``).
    progress
        Show a ``tqdm.auto`` bar over ``duration_s``.
    window_s
        Measurement window for the stability rule (default ``max(duration_s / 5, 0.2)``).
    max_duration_s
        Hard limit on the measured time (default ``2 * duration_s``).

    Returns
    -------
    BenchmarkReport

    Raises
    ------
    UnknownNameError
        ``scenario`` is not one of the four.
    BenchmarkError
        An argument is invalid (the message names it), or a request failed: the run stops
        at the first failing request and the error carries it (as ``__cause__``).

    Notes
    -----
    Every wait is bounded: a request that is not answered within
    ``max(30, max_duration_s)`` seconds stops the run with a :class:`BenchmarkError`.  In
    the server scenario queries still queued a while after issuing stops (an overloaded
    engine) are cancelled and the run reported INVALID.  Single-stream requests are
    synchronous ``engine.run`` calls, so a backend that never returns cannot be
    interrupted there.
    """
    runner = SCENARIOS.get(scenario)
    s = _check(scenario, qps=qps, latency_bound_ms=latency_bound_ms, duration_s=duration_s,
               min_queries=min_queries, batch_size=batch_size, samples_per_query=samples_per_query,
               warmup_s=warmup_s, seed=seed, window_s=window_s, max_duration_s=max_duration_s)
    for attr in ("run", "submit", "records", "model"):
        if not hasattr(engine, attr):
            raise BenchmarkError(f"benchmark needs an edgebench Engine, got {type(engine).__name__}",
                                 "create one with eb.Engine(model)")
    recorded = engine.records.enabled
    engine.records.enabled = True  # the records are the measurement
    run = _Run(engine, scenario, s, feeds, progress)
    try:
        return runner(run)
    finally:
        engine.records.enabled = recorded
        run.close_bar()


def _dynamic_batch(engine: Any) -> bool:
    ins = engine.model.inputs
    return bool(ins) and all(s.shape and not isinstance(s.shape[0], int) for s in ins)


def _closed_loop(run: _Run, step: Callable[[], Any], to_queries: Callable[[np.ndarray], np.ndarray],
                 requests_per_step: int) -> BenchmarkReport:
    run.warmup(step)
    run.begin()
    every = max(1, run.buf.capacity // 4 // requests_per_step)
    n = 0
    try:
        while True:
            step()
            n += 1
            if n % every == 0:
                run.harvest()
            now = perf_counter_ns()
            if now >= run.next_window and run.check(now, to_queries):
                break
    except BenchmarkError:
        raise
    except Exception as e:
        raise run.fail(e) from e
    return run.finish(to_queries)


@SCENARIOS.register("single_stream")
def _single_stream(run: _Run) -> BenchmarkReport:
    feeds, eng, b = run.feeds(run.s["batch_size"]), run.engine, run.s["batch_size"]
    return _closed_loop(run, lambda: eng.run(feeds), lambda r: _queries(r, b), 1)


@SCENARIOS.register("multi_stream")
def _multi_stream(run: _Run) -> BenchmarkReport:
    eng, b, k = run.engine, run.s["batch_size"], run.s["samples_per_query"]
    if _dynamic_batch(eng):  # one request of k samples
        feeds = run.feeds(b * k)
        if run.user_feeds is not None:
            feeds = {n: np.concatenate([np.asarray(a)] * k) for n, a in dict(feeds).items()}
        return _closed_loop(run, lambda: eng.run(feeds), lambda r: _queries(r, b * k), 1)
    feeds = run.feeds(b)

    def step() -> None:  # k requests in flight together; the query completes with the last
        for f in [eng.submit(feeds) for _ in range(k)]:
            run.result(f)

    return _closed_loop(run, step, lambda r: _queries(r, b * k, group=k), k)


def _sleep_until(t: int) -> None:
    left = t - perf_counter_ns()
    if left > _SPIN_NS:
        time.sleep((left - _SPIN_NS) / 1e9)
    while perf_counter_ns() < t:
        time.sleep(0)  # releases the GIL while spinning


@SCENARIOS.register("server")
def _server(run: _Run) -> BenchmarkReport:
    eng, s = run.engine, run.s
    feeds = run.feeds(s["batch_size"])
    run.warmup(lambda: run.result(eng.submit(feeds)))
    rng = np.random.default_rng(s["seed"])
    gaps = iter(())
    sched: list[int] = []
    pending: deque[Future] = deque()
    max_outstanding = min(_MAX_QUEUED, max(256, int(2 * s["qps"])))  # 2 s of backlog: it cannot keep up

    def to_queries(r: np.ndarray) -> np.ndarray:
        return _queries(r, s["batch_size"], issue=np.asarray(sched, np.int64))

    def issue() -> None:
        nonlocal gaps
        t, stop, every = run.t0, False, max(1, run.buf.capacity // 4)
        while not stop:
            try:
                t += next(gaps)
            except StopIteration:
                gaps = iter((rng.exponential(1e9 / s["qps"], 4096)).astype(np.int64).tolist())
                t += next(gaps)
            while True:
                now = perf_counter_ns()
                if now >= run.next_window:
                    stop = run.check(now, to_queries)
                    if stop:
                        break
                    continue
                if now >= t:
                    break
                _sleep_until(min(t, run.next_window))
            if stop:
                break
            f = eng.submit(feeds)
            sched.append(t)
            f.add_done_callback(run.on_done)
            pending.append(f)
            if run.failures:
                break
            if len(sched) % every == 0:
                run.harvest()
            if len(sched) % 64 == 0:
                while pending and pending[0].done():
                    pending.popleft()
                if len(pending) > max_outstanding:
                    run.notes.append(f"the engine fell behind: {len(pending)} queries outstanding "
                                     f"{(perf_counter_ns() - run.t0) / 1e9:.2f} s into the run; issuing stopped "
                                     f"(lower qps below {s['qps']:g})")
                    break

    _open_loop(run, pending, issue, drain_s=max(1.0, 0.5 * s["duration_s"]))
    return run.finish(to_queries)


def _open_loop(run: _Run, pending: deque, issue: Callable[[], None], drain_s: float) -> None:
    """Measure while ``issue`` queues requests; then wait (bounded) for the outstanding ones.

    Queries still queued ``drain_s`` after issuing stopped are cancelled (and reported);
    the first failed request stops the run with a BenchmarkError.
    """
    run.begin()
    try:
        issue()
    except BenchmarkError:
        _cancel(run, pending)
        raise
    except Exception as e:  # engine.submit refused (closed engine, bad feeds)
        _cancel(run, pending)
        raise run.fail(e) from e
    if run.failures:
        _cancel(run, pending)
        raise run.fail(run.failures[0])
    _, left = wait(pending, timeout=drain_s)
    cancelled = sum(f.cancel() for f in left)
    if cancelled:
        run.notes.append(f"{cancelled} queries were still queued {drain_s:g} s after issuing stopped "
                         "and were cancelled (the engine cannot sustain this load)")
    _, left = wait([f for f in left if not f.cancelled()], timeout=run.wait_s)
    if run.failures:
        raise run.fail(run.failures[0])
    if left:
        raise BenchmarkError(f"the engine did not answer {len(left)} requests within {run.wait_s:g} s",
                             "check the model and backend; the run was stopped")


def _cancel(run: _Run, pending: deque) -> None:
    """Cancel queued requests and wait (bounded) for the running ones."""
    for f in pending:
        f.cancel()
    wait([f for f in pending if not f.cancelled()], timeout=run.wait_s)


@SCENARIOS.register("offline")
def _offline(run: _Run) -> BenchmarkReport:
    eng, s = run.engine, run.s
    feeds = run.feeds(s["batch_size"])
    burst = 32

    def warm() -> None:
        for f in [eng.submit(feeds) for _ in range(burst)]:
            run.result(f)

    rate = burst / run.warmup(warm)  # queries/s through the engine's queue
    planned = max(s["min_queries"], math.ceil(rate * s["duration_s"]))
    pending: deque[Future] = deque()
    poll = min(0.05, s["window_s"] / 4)
    low_water = max(64, int(rate * poll * 4))  # never let the queue run dry between polls

    def issue(n: int) -> None:
        for _ in range(n):
            f = eng.submit(feeds)
            f.add_done_callback(run.on_done)
            pending.append(f)

    def to_queries(r: np.ndarray) -> np.ndarray:
        return _queries(r, s["batch_size"])

    def issue_all() -> None:
        nonlocal planned
        issued = min(planned, _MAX_QUEUED)
        issue(issued)
        while not run.failures:
            time.sleep(poll)
            now = perf_counter_ns()
            run.tick(now)
            completed = run.buf.total - run.since
            if completed - (run.next_seq - run.since) > run.buf.capacity // 4:
                run.harvest()
            outstanding = issued - completed
            if outstanding > low_water:
                continue
            while pending and pending[0].done():
                pending.popleft()
            if outstanding <= 0:  # the queue ran dry: measured time ends at the last answer
                run.harvest()
                now = int(run.records()[:, _DONE].max()) if len(run.records()) else now
            if issued < planned:
                n = min(planned - issued, _MAX_QUEUED - outstanding)
            elif run.need_more(now, to_queries):
                n = max(low_water, math.ceil(rate * s["window_s"]))
                planned += n
            else:
                return
            issue(n)
            issued += n

    _open_loop(run, pending, issue_all, drain_s=run.wait_s)
    return run.finish(to_queries)
