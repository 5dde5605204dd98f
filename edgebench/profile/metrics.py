"""Request timing records: one per request, the single source of every metric.

A :class:`RecordBuffer` is a fixed-size ring of tuples.  Writing one record is a counter
step and a list store, both atomic under the GIL, so engines on many threads record
without a lock (about 0.2 us per request).  Readers take a snapshot.

Record fields, all ``time.perf_counter_ns()`` stamps except the last three:

========  ==============================================================
seq       request sequence number (monotonic per buffer)
arrival   the request entered edgebench (``run``/``submit`` called)
formed    its batch was formed (== start when there is no batcher)
start     compute started
end       compute ended
done      the answer was handed back
batch     rows computed together with it (its batch size)
status    :data:`OK`, :data:`ERROR`, :data:`REJECTED`, :data:`TIMEOUT`, :data:`CANCELLED`
========  ==============================================================
"""
from __future__ import annotations

import itertools
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np
    import pandas as pd

__all__ = ["RecordBuffer", "FIELDS", "OK", "ERROR", "REJECTED", "TIMEOUT", "CANCELLED", "STATUS_NAMES"]

FIELDS = ("seq", "arrival", "formed", "start", "end", "done", "batch", "status")
OK, ERROR, REJECTED, TIMEOUT, CANCELLED = 0, 1, 2, 3, 4
STATUS_NAMES = {OK: "ok", ERROR: "error", REJECTED: "rejected", TIMEOUT: "timeout", CANCELLED: "cancelled"}


class RecordBuffer:
    """A lock-free ring buffer of request timing records.

    Parameters
    ----------
    capacity
        Number of records kept (a power of two); older ones are overwritten.
    """

    __slots__ = ("_ring", "_mask", "_counter", "capacity", "epoch_ns", "enabled")

    def __init__(self, capacity: int = 65536):
        if capacity < 1 or capacity & (capacity - 1):
            raise ValueError("capacity must be a power of two")
        self.capacity = capacity
        self._ring: list = [None] * capacity
        self._mask = capacity - 1
        self._counter = itertools.count()
        # wall clock = perf_counter_ns + epoch_ns (for dashboards and exported traces)
        self.epoch_ns = time.time_ns() - time.perf_counter_ns()
        self.enabled = True

    def add(self, arrival: int, formed: int, start: int, end: int, done: int, batch: int = 1,
            status: int = OK) -> None:
        """Append one record (thread-safe, lock-free)."""
        i = next(self._counter)
        self._ring[i & self._mask] = (i, arrival, formed, start, end, done, batch, status)

    @property
    def total(self) -> int:
        """Number of records ever added (including overwritten ones)."""
        # itertools.count's repr is the only side-effect-free way to read it
        return int(repr(self._counter)[6:-1])

    def __len__(self) -> int:
        return min(self.total, self.capacity)

    def snapshot(self, since: int = 0) -> "np.ndarray":
        """Records with ``seq >= since`` as an ``(n, 8)`` int64 array, ordered by ``seq``."""
        import numpy as np

        rows = [r for r in list(self._ring) if r is not None and r[0] >= since]
        if not rows:
            return np.empty((0, len(FIELDS)), dtype=np.int64)
        arr = np.asarray(rows, dtype=np.int64)
        return arr[np.argsort(arr[:, 0], kind="stable")]

    def to_pandas(self, since: int = 0) -> "pd.DataFrame":
        """Records as a DataFrame with durations in milliseconds.

        Columns: ``seq, arrival, queue_ms, compute_ms, post_ms, latency_ms, batch, status``,
        where ``arrival`` is a wall-clock timestamp.
        """
        import pandas as pd

        a = self.snapshot(since)
        seq, arrival, formed, start, end, done, batch, status = (a[:, i] for i in range(len(FIELDS)))
        return pd.DataFrame({
            "seq": seq,
            "arrival": pd.to_datetime(arrival + self.epoch_ns, unit="ns"),
            "queue_ms": (start - arrival) / 1e6,
            "compute_ms": (end - start) / 1e6,
            "post_ms": (done - end) / 1e6,
            "latency_ms": (done - arrival) / 1e6,
            "batch": batch,
            "status": pd.Categorical([STATUS_NAMES.get(int(s), str(s)) for s in status],
                                     categories=list(STATUS_NAMES.values())),
        })

    def clear(self) -> None:
        self._ring = [None] * self.capacity

    def __repr__(self) -> str:
        return f"<RecordBuffer {len(self)}/{self.capacity} records, {self.total} total>"
