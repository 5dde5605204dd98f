"""The DynamicBatcher's dispatch side: one worker thread per engine instance.

A worker sleeps on the batcher's condition variable until a batch is due (full, a preferred
size, the oldest request's delay, a deadline) and an instance is free; it never polls.  It
forms the batch under the lock, then assembles, runs and answers it outside the lock.
"""
from __future__ import annotations

from time import perf_counter_ns
from typing import Any

from ._batch_queue import NEVER, Request, assemble, split
from .errors import EdgebenchError, InferenceError, RequestTimeoutError
from .profile.metrics import CANCELLED, ERROR, OK, TIMEOUT

__all__ = ["execute", "failure", "worker_loop"]


def failure(b: Any, e: BaseException) -> EdgebenchError:
    if isinstance(e, EdgebenchError):
        return e
    msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    err = InferenceError(f"{b.backend} failed running a batch of {b.model.name!r}: {msg}",
                         "check the input values and shapes against the model")
    err.__cause__ = e
    return err


def worker_loop(b: Any) -> None:
    cond, q, free = b._cond, b._q, b._free
    slot = None
    done_rows = done_ns = 0
    while True:
        failed: list[Request] = []
        batch = None
        with cond:
            if slot is not None:  # give back the instance of the previous batch
                free.append(slot)
                slot = None
                if done_rows:
                    b._account(done_rows, done_ns)
            while True:
                now = perf_counter_ns()
                if now >= q.next_expiry:
                    failed += q.expire(now)
                if not q.count and b._closing:
                    break
                wake = q.next_expiry
                if q.count and free:
                    due = q.due_at(now, b._closing)
                    if due <= now:
                        batch = q.take(b._tuner.cap() if b._tuner is not None else q.limit)
                        slot = free.pop()
                        if q.count and free and b._idle:
                            cond.notify()  # more is due than this worker can take
                        break
                    wake = min(wake, due)
                if failed:
                    break
                b._idle += 1
                b._wake_at = wake
                cond.wait(None if wake >= NEVER else (wake - now) / 1e9)
                b._idle -= 1
        for r in failed:
            expired(b, r)
        if batch is None:
            if not failed:
                return  # closing and nothing left
            continue
        done_rows, done_ns = execute(b, slot, batch, now)


def expired(b: Any, r: Request) -> None:
    t = perf_counter_ns()
    waited = (t - r.arrival) / 1e6
    if r.fut.set_running_or_notify_cancel():
        r.fut.set_exception(RequestTimeoutError(
            f"the request waited {waited:.1f} ms in the queue of {b.name!r}, past its timeout",
            "raise timeout_ms, lower the load, or add instances"))
    b.records.add(r.arrival, t, t, t, perf_counter_ns(), 0, TIMEOUT)


def execute(b: Any, slot: tuple, batch: list[Request], formed: int) -> tuple[int, int]:
    """Run one batch and answer its requests; returns (rows, formed-to-end ns) for the tuner."""
    rec = b.records
    live = []
    for r in batch:
        if r.fut.set_running_or_notify_cancel():
            live.append(r)
        else:  # cancelled by its caller while queued
            t = perf_counter_ns()
            rec.add(r.arrival, formed, t, t, t, 0, CANCELLED)
    if not live:
        return 0, 0
    rows = sum(r.n for r in live)
    start = end = perf_counter_ns()
    try:
        feeds = live[0].feeds if len(live) == 1 else assemble(live, b._in_names, b._ragged)
        start = perf_counter_ns()
        outs = slot[0](feeds)
        end = perf_counter_ns()
        results = ([dict(zip(slot[1], outs))] if len(live) == 1
                   else split(outs, slot[1], live, b._ragged))
    except Exception as e:
        end = perf_counter_ns()
        err = failure(b, e)
        for r in live:
            r.fut.set_exception(err)
            rec.add(r.arrival, formed, start, end, perf_counter_ns(), rows, ERROR)
        return 0, 0
    for r, res in zip(live, results):
        r.fut.set_result(res)
        rec.add(r.arrival, formed, start, end, perf_counter_ns(), rows, OK)
    return rows, end - formed
