"""The machinery shared by the scenario runners: argument checks, record harvesting,
measurement windows, the stop rule, and turning records into queries and a report."""
from __future__ import annotations

import math
from concurrent.futures import Future
from concurrent.futures import TimeoutError as _FutureTimeout  # not the builtin before 3.11
from time import perf_counter_ns
from typing import Any, Callable

import numpy as np

from ..errors import BenchmarkError
from .metrics import FIELDS
from .report import BenchmarkReport, is_stable, window_stats


_ARRIVAL, _START, _END, _DONE, _STATUS = (FIELDS.index(f) for f in ("arrival", "start", "end", "done", "status"))


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
