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
from concurrent.futures import TimeoutError as _FutureTimeout  # not the builtin before 3.11
from time import perf_counter_ns
from typing import Any, Callable

import numpy as np

from .._registry import Registry
from ..errors import BenchmarkError
from .metrics import FIELDS
from .report import BenchmarkReport, is_stable, window_stats

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


def _check(scenario: str, **s: Any) -> dict[str, Any]:
    def bad(name: str, why: str) -> BenchmarkError:
        return BenchmarkError(f"{name} {why}, got {s[name]!r}")

    def number(v: Any) -> bool:
        return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)

    if not number(s["duration_s"]) or s["duration_s"] <= 0:
        raise bad("duration_s", "must be a positive number of seconds")
    if not number(s["warmup_s"]) or s["warmup_s"] < 0:
        raise bad("warmup_s", "must be >= 0 seconds")
    for name in ("batch_size", "samples_per_query"):
        if not isinstance(s[name], int) or isinstance(s[name], bool) or s[name] < 1:
            raise bad(name, "must be a positive integer")
    if s["min_queries"] is None:
        s["min_queries"] = 100
    if not isinstance(s["min_queries"], int) or s["min_queries"] < 0:
        raise bad("min_queries", "must be a non-negative integer")
    if s["qps"] is not None and (not number(s["qps"]) or s["qps"] <= 0):
        raise bad("qps", "must be a positive number of queries per second")
    if s["latency_bound_ms"] is not None and (not number(s["latency_bound_ms"]) or s["latency_bound_ms"] <= 0):
        raise bad("latency_bound_ms", "must be a positive number of milliseconds")
    if scenario == "server":
        if s["qps"] is None:
            raise BenchmarkError("the server scenario needs qps (the target arrival rate)",
                                 "pass qps=..., e.g. a bit below the offline throughput")
        if s["latency_bound_ms"] is None:
            raise BenchmarkError("the server scenario needs latency_bound_ms (the p99 bound)",
                                 "pass latency_bound_ms=..., e.g. latency_bound_ms=10")
    if s["window_s"] is None:
        s["window_s"] = max(s["duration_s"] / 5, 0.2)
    if not number(s["window_s"]) or s["window_s"] <= 0:
        raise bad("window_s", "must be a positive number of seconds")
    if s["max_duration_s"] is None:
        s["max_duration_s"] = 2 * s["duration_s"]
    if not number(s["max_duration_s"]) or s["max_duration_s"] < s["duration_s"]:
        raise bad("max_duration_s", f"must be >= duration_s ({s['duration_s']})")
    if not isinstance(s["seed"], (int, np.integer)) or isinstance(s["seed"], bool):
        raise bad("seed", "must be an integer")
    return s


class _Run:
    """State shared by the scenario runners: record harvesting, windows, stop rule, report."""

    def __init__(self, engine: Any, scenario: str, s: dict[str, Any], feeds: Any, progress: bool):
        self.engine, self.scenario, self.s = engine, scenario, s
        self.user_feeds = feeds
        self.buf = engine.records
        self.wait_s = max(30.0, s["max_duration_s"])
        self.w_ns = int(s["window_s"] * 1e9)
        self.chunks: list[np.ndarray] = []
        self.notes: list[str] = []
        self.failures: list[BaseException] = []
        self.lost = 0
        self.progress = progress
        self.bar: Any = None
        self.t_stop: int | None = None

    # -- feeds and warm-up ----------------------------------------------------------------------
    def feeds(self, rows: int) -> Any:
        if self.user_feeds is None:
            return self.engine.sample_feeds(rows, seed=self.s["seed"])
        return self.user_feeds

    def fail(self, e: BaseException) -> BenchmarkError:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        err = BenchmarkError(f"{self.scenario} benchmark of {self.engine.model.name!r} stopped: "
                             f"a request failed: {msg}", "fix the request (see the chained error) and rerun")
        err.__cause__ = e
        return err

    def on_done(self, f: Future) -> None:
        if not f.cancelled() and f.exception() is not None:
            self.failures.append(f.exception())

    def warmup(self, step: Callable[[], Any]) -> float:
        """Run ``step`` for warmup_s (at least once); returns seconds per step."""
        t_end = perf_counter_ns() + int(self.s["warmup_s"] * 1e9)
        n, t = 0, perf_counter_ns()
        try:
            while n == 0 or perf_counter_ns() < t_end:
                step()
                n += 1
        except BenchmarkError:
            raise
        except Exception as e:
            raise self.fail(e) from e
        return (perf_counter_ns() - t) / 1e9 / n

    def result(self, f: Future) -> Any:
        try:
            return f.result(timeout=self.wait_s)
        except _FutureTimeout:
            raise BenchmarkError(f"the engine did not answer a request within {self.wait_s:g} s",
                                 "check the model and backend; the run was stopped") from None
        except Exception as e:
            raise self.fail(e) from e

    # -- measurement ----------------------------------------------------------------------------
    def begin(self) -> None:
        self.since = self.next_seq = self.buf.total
        self.t0 = perf_counter_ns()
        self.next_window = self.t0 + self.w_ns
        if self.progress:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=self.s["duration_s"], unit="s", desc=self.scenario,
                            bar_format="{l_bar}{bar}| {n:.1f}/{total:.1f} s{postfix}")

    def harvest(self, final: bool = False) -> None:
        """Copy new records out of the ring before it wraps (cheaper than a full snapshot)."""
        total, start = self.buf.total, self.next_seq
        cap = self.buf.capacity
        if total - start > cap:
            self.lost += total - cap - start
            start = total - cap
        n = total - start
        if n <= 0:
            return
        arr = self.buf.read(start, total)  # skips slots a writer has claimed but not filled yet
        bad = np.flatnonzero(arr[:, 0] != np.arange(start, start + len(arr)))
        if len(bad) and not final:  # stop at the first gap; the next harvest picks it up
            arr = arr[:bad[0]]
        elif final:
            self.lost += n - len(arr)
        if len(arr):
            self.chunks.append(arr)
        self.next_seq = total if final else start + len(arr)

    def records(self) -> np.ndarray:
        if len(self.chunks) > 1:
            self.chunks = [np.concatenate(self.chunks)]
        return self.chunks[0] if self.chunks else np.empty((0, len(FIELDS)), np.int64)

    def tick(self, now: int) -> None:
        while self.next_window <= now:
            self.next_window += self.w_ns
        if self.bar is not None:
            self.bar.n = min(round((now - self.t0) / 1e9, 1), self.s["duration_s"])
            self.bar.set_postfix_str(f"{self.buf.total - self.since} requests", refresh=True)

    def need_more(self, now: int, to_queries: Callable[[np.ndarray], np.ndarray]) -> bool:
        """Keep going: too short, too few queries, or not stable yet (and max_duration_s not reached)."""
        elapsed = (now - self.t0) / 1e9
        if elapsed >= self.s["max_duration_s"]:
            return False
        if elapsed < self.s["duration_s"]:
            return True
        self.harvest()
        q = to_queries(self.records())
        if len(q) < self.s["min_queries"]:
            return True
        return not is_stable(window_stats(q, self.t0, now, self.s["window_s"])["throughput"])

    def check(self, now: int, to_queries: Callable[[np.ndarray], np.ndarray]) -> bool:
        """At a window boundary: True when the run should stop."""
        self.tick(now)
        if self.need_more(now, to_queries):
            return False
        self.t_stop = now  # the measured period ends here, even if the last answer came a bit earlier
        return True

    def finish(self, to_queries: Callable[[np.ndarray], np.ndarray]) -> BenchmarkReport:
        self.harvest(final=True)
        recs = self.records()
        q = to_queries(recs)
        if self.lost:
            self.notes.append(f"{self.lost} request records were overwritten before they were read "
                              "(raise settings().record_capacity)")
        t_end = max(int(q[:, 4].max()) if len(q) else self.t0, self.t_stop or self.t0)
        eng = self.engine
        self.tick(t_end)
        return BenchmarkReport(self.scenario, eng.model.name, eng.backend, eng.device, eng.threads,
                               dict(self.s), recs, q, self.t0, t_end, self.notes)

    def close_bar(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


# -- records -> queries --------------------------------------------------------------------------
def _queries(recs: np.ndarray, samples: int, group: int = 1,
             issue: np.ndarray | None = None) -> np.ndarray:
    """Per-query array (report.QUERY_FIELDS) from records in issue (= arrival) order."""
    r = recs[np.argsort(recs[:, _ARRIVAL], kind="stable")]
    n = len(r) // group if issue is None else min(len(r) // group, len(issue))
    g = r[:n * group].reshape(n, group, len(FIELDS))
    q = np.empty((n, 7), np.int64)
    q[:, 1] = g[:, :, _ARRIVAL].min(axis=1)
    q[:, 0] = q[:, 1] if issue is None else issue[:n]
    q[:, 2] = g[:, :, _START].min(axis=1)
    q[:, 3] = g[:, :, _END].max(axis=1)
    q[:, 4] = g[:, :, _DONE].max(axis=1)
    q[:, 5] = samples
    q[:, 6] = g[:, :, _STATUS].max(axis=1)
    return q


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
