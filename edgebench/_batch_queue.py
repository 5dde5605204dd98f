"""The DynamicBatcher's queue: priority levels, Triton's due rules, batch formation, expiry,
and the assembly of a batch (concatenation, padding) and its split back into answers.

Nothing here is thread-safe: the batcher holds its lock around every :class:`BatchQueue` call.
"""
from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import ConfigError

NEVER = 1 << 62  # a perf_counter_ns stamp that never comes


@dataclass
class QueuePolicy:
    """How one priority level's queue behaves (Triton's ``ModelQueuePolicy``).

    Parameters
    ----------
    max_queue_size
        Requests this level may hold; one more raises :class:`~edgebench.errors.QueueFullError`
        from ``submit`` at once.  ``0`` means unbounded.
    timeout_ms
        Default time a request may wait in the queue (``None`` or ``0``: forever).
    timeout_action
        ``"reject"``: an expired request's future gets :class:`~edgebench.errors.RequestTimeoutError`;
        ``"delay"``: it is kept but runs only after every request that has not expired.
    allow_timeout_override
        Whether ``submit(..., timeout_ms=)`` may override ``timeout_ms``.

    Notes
    -----
    Expiry is checked whenever a worker looks at the queue; an idle worker wakes for the
    earliest deadline, but while every instance is busy an expired request is answered when
    the first one frees up (as in Triton, it never runs).
    """

    max_queue_size: int = 1024
    timeout_ms: float | None = None
    timeout_action: str = "reject"
    allow_timeout_override: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.max_queue_size, int) or self.max_queue_size < 0:
            raise ConfigError(f"max_queue_size must be an integer >= 0 (0: unbounded), got {self.max_queue_size!r}")
        if self.timeout_ms is not None and not self.timeout_ms >= 0:
            raise ConfigError(f"timeout_ms must be >= 0 or None, got {self.timeout_ms!r}")
        if self.timeout_action not in ("reject", "delay"):
            raise ConfigError(f"timeout_action must be 'reject' or 'delay', got {self.timeout_action!r}")


class Request:
    """One queued request: validated feeds, its row count and its future."""

    __slots__ = ("arrival", "deadline", "feeds", "fut", "key", "lens", "level", "n")

    def __init__(self, feeds: dict, n: int, arrival: int, deadline: int, fut: Any, level: int,
                 key: Any, lens: tuple | None):
        self.feeds = feeds
        self.n = n
        self.arrival = arrival
        self.deadline = deadline
        self.fut = fut
        self.level = level
        self.key = key
        self.lens = lens


class BatchQueue:
    """FIFO queues per priority level (index 0 is priority 1, the highest) plus one last level
    for requests whose timeout action is ``"delay"``.

    Parameters
    ----------
    levels
        Number of priority levels.
    reject_on_timeout
        Per level: ``True`` rejects an expired request, ``False`` moves it to the delayed level.
    limit, delay_ns, preferred
        Batch rows that make a batch full, the longest the oldest request waits, preferred
        batch sizes.
    bucket
        Only requests with the same :attr:`Request.key` (their non-batch shape) share a batch.
    """

    def __init__(self, levels: int, reject_on_timeout: Sequence[bool], limit: int, delay_ns: int,
                 preferred: Sequence[int], bucket: bool):
        self.levels: list[deque] = [deque() for _ in range(levels + 1)]
        self.sizes = [0] * (levels + 1)
        self.reject = list(reject_on_timeout) + [True]
        self.limit = limit
        self.delay_ns = delay_ns
        self.preferred = frozenset(preferred)
        self.bucket = bucket
        self.key_rows: dict[Any, int] = {}
        self.count = 0
        self.rows = 0
        self.next_expiry = NEVER

    # -- in ------------------------------------------------------------------------------------
    def push(self, r: Request) -> None:
        self.levels[r.level].append(r)
        self.sizes[r.level] += 1
        self.count += 1
        self.rows += r.n
        if self.bucket:
            self.key_rows[r.key] = self.key_rows.get(r.key, 0) + r.n
        self.next_expiry = min(self.next_expiry, r.deadline)

    def ready(self, r: Request) -> bool:
        """Whether queueing ``r`` made a batch full or reach a preferred size."""
        rows = self.key_rows[r.key] if self.bucket else self.rows
        return rows >= self.limit or rows in self.preferred

    # -- when ----------------------------------------------------------------------------------
    def due_at(self, now: int, closing: bool) -> int:
        """When the next batch is due: ``<= now`` means now."""
        if not self.count:
            return NEVER
        if closing:
            return now
        if self.bucket:
            for rows in self.key_rows.values():
                if rows >= self.limit or rows in self.preferred:
                    return now
        elif self.rows >= self.limit or self.rows in self.preferred:
            return now
        return min(q[0].arrival for q in self.levels if q) + self.delay_ns

    # -- out -----------------------------------------------------------------------------------
    def take(self, cap: int) -> list[Request]:
        """Form the next batch: highest priority first, FIFO within a level, at most ``cap``
        rows (a single larger request goes alone), cut back to the largest preferred size
        reached if any."""
        if self.bucket:
            batch = self._take_bucket(cap)
        else:
            batch, total = [], 0
            for q in self.levels:
                while q and (total + q[0].n <= cap or not batch):
                    r = q.popleft()
                    batch.append(r)
                    total += r.n
                if q:
                    break  # the next one does not fit: keep strict priority / FIFO order
        if self.preferred and len(batch) > 1:
            total, cut = 0, 0
            for i, r in enumerate(batch):
                total += r.n
                if total in self.preferred:
                    cut = i + 1
            if 0 < cut < len(batch):
                for r in reversed(batch[cut:]):
                    self.levels[r.level].appendleft(r)
                del batch[cut:]
        for r in batch:
            self._forget(r)
        return batch

    def _take_bucket(self, cap: int) -> list[Request]:
        ready = {k for k, rows in self.key_rows.items() if rows >= self.limit or rows in self.preferred}
        key = None
        for q in self.levels:
            for r in q:
                if not ready or r.key in ready:
                    key = r.key
                    break
            else:
                continue
            break
        batch, total, full = [], 0, False
        for li, q in enumerate(self.levels):
            if full or not q:
                continue
            keep = deque()
            for r in q:
                if not full and r.key == key:
                    if total + r.n <= cap or not batch:
                        batch.append(r)
                        total += r.n
                        continue
                    full = True
                keep.append(r)
            self.levels[li] = keep
        return batch

    def _forget(self, r: Request) -> None:
        self.sizes[r.level] -= 1
        self.count -= 1
        self.rows -= r.n
        if self.bucket:
            left = self.key_rows[r.key] - r.n
            if left:
                self.key_rows[r.key] = left
            else:
                del self.key_rows[r.key]

    def expire(self, now: int) -> list[Request]:
        """Handle requests whose timeout has passed: the rejected ones are removed and
        returned; the others move to the delayed level (Triton's ``DELAY`` action)."""
        out: list[Request] = []
        nxt = NEVER
        delayed = len(self.levels) - 1
        for li in range(delayed):
            q = self.levels[li]
            if not any(r.deadline <= now for r in q):
                for r in q:
                    nxt = min(nxt, r.deadline)
                continue
            keep = deque()
            for r in q:
                if r.deadline > now:
                    keep.append(r)
                    nxt = min(nxt, r.deadline)
                elif self.reject[li]:
                    self._forget(r)
                    out.append(r)
                else:
                    self.sizes[li] -= 1
                    self.sizes[delayed] += 1
                    r.level, r.deadline = delayed, NEVER
                    self.levels[delayed].append(r)
            self.levels[li] = keep
        self.next_expiry = nxt
        return out

    def clear(self) -> list[Request]:
        """Remove and return everything queued."""
        out = [r for q in self.levels for r in q]
        for q in self.levels:
            q.clear()
        self.sizes = [0] * len(self.levels)
        self.key_rows.clear()
        self.count = self.rows = 0
        self.next_expiry = NEVER
        return out


class Ragged:
    """Dynamic non-batch dims: which input axes vary per request, how to pad them, and which
    output axes to cut back.

    A dim's identity is its ONNX symbol (``"seq"``); an unnamed dynamic dim is its own symbol.
    """

    def __init__(self, inputs: Sequence[Any], outputs: Sequence[Any], pad_value: Any):
        self.syms: list[str] = []
        self.in_axes: list[tuple[str, int, int]] = []  # (input, axis, symbol index)
        for spec in inputs:
            for axis, d in enumerate(spec.shape[1:], start=1):
                if isinstance(d, int):
                    continue
                sym = d if isinstance(d, str) and d else f"{spec.name}:{axis}"
                if sym not in self.syms:
                    self.syms.append(sym)
                self.in_axes.append((spec.name, axis, self.syms.index(sym)))
        self.active = bool(self.in_axes)
        self.padded_inputs = sorted({name for name, _, _ in self.in_axes})
        self.out_axes: dict[str, list[tuple[int, int]]] = {}
        self.unmapped: list[str] = []
        for spec in outputs:
            for axis, d in enumerate(spec.shape[1:], start=1):
                if isinstance(d, int):
                    continue
                if isinstance(d, str) and d in self.syms:
                    self.out_axes.setdefault(spec.name, []).append((axis, self.syms.index(d)))
                else:
                    self.unmapped.append(f"{spec.name} dim {axis} ({d or '?'})")
        if isinstance(pad_value, dict):
            self.pad = {name: pad_value.get(name, 0) for name in self.padded_inputs}
        else:
            self.pad = {name: pad_value for name in self.padded_inputs}

    def lengths(self, feeds: dict) -> tuple[int, ...] | None:
        """The request's length per symbol; ``None`` if inputs sharing a symbol disagree."""
        lens = [-1] * len(self.syms)
        for name, axis, s in self.in_axes:
            n = feeds[name].shape[axis]
            if lens[s] == -1:
                lens[s] = n
            elif lens[s] != n:
                return None
        return tuple(lens)


def assemble(reqs: Sequence[Request], names: Sequence[str], ragged: Ragged | None) -> dict:
    """Concatenate the requests' feeds along axis 0, padding ragged dims to the longest."""
    if ragged is None or not ragged.active:
        return {name: np.concatenate([r.feeds[name] for r in reqs]) for name in names}
    longest = [max(r.lens[s] for r in reqs) for s in range(len(ragged.syms))]
    feeds = {}
    axes_of: dict[str, list[tuple[int, int]]] = {}
    for name, axis, s in ragged.in_axes:
        axes_of.setdefault(name, []).append((axis, s))
    for name in names:
        arrs = [r.feeds[name] for r in reqs]
        axes = axes_of.get(name)
        if not axes or all(a.shape[ax] == longest[s] for a in arrs for ax, s in axes):
            feeds[name] = np.concatenate(arrs)
            continue
        shape = list(arrs[0].shape)
        shape[0] = sum(a.shape[0] for a in arrs)
        for ax, s in axes:
            shape[ax] = longest[s]
        out = np.full(shape, ragged.pad[name], dtype=arrs[0].dtype)
        row = 0
        for a in arrs:
            out[(slice(row, row + a.shape[0]), *(slice(0, n) for n in a.shape[1:]))] = a
            row += a.shape[0]
        feeds[name] = out
    return feeds


def split(outs: Sequence[np.ndarray], names: Sequence[str], reqs: Sequence[Request],
          ragged: Ragged | None) -> list[dict]:
    """Each request's rows of the batch outputs, ragged axes cut back to its own lengths."""
    results, row = [], 0
    cut = ragged.out_axes if ragged is not None and ragged.active else {}
    for r in reqs:
        res = {}
        for name, o in zip(names, outs):
            axes = cut.get(name)
            if axes:
                idx = [slice(row, row + r.n)] + [slice(None)] * (o.ndim - 1)
                for ax, s in axes:
                    idx[ax] = slice(0, r.lens[s])
                res[name] = o[tuple(idx)]
            else:
                res[name] = o[row:row + r.n]
        results.append(res)
        row += r.n
    return results
