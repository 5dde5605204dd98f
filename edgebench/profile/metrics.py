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

__all__ = ["RecordBuffer", "records_to_pandas", "FIELDS", "OK", "ERROR", "REJECTED", "TIMEOUT", "CANCELLED", "STATUS_NAMES"]

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

    def __init__(self, capacity: int = 16384):
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

    def read(self, start: int, stop: int | None = None) -> "np.ndarray":
        """Records ``start <= seq < stop`` still in the ring, as an ``(n, 8)`` int64 array.

        Cheap (one C-level pass over the slots, no sort).  Records already overwritten are
        skipped, and so are slots whose writer has taken its seq but not stored the record
        yet: check ``arr[:, 0]`` against the range to see what is missing.
        """
        import numpy as np

        total = self.total if stop is None else min(stop, self.total)
        start = max(start, total - self.capacity, 0)
        n = total - start
        if n <= 0:
            return np.empty((0, len(FIELDS)), dtype=np.int64)
        cap, ring = self.capacity, self._ring
        i = start & self._mask
        rows = ring[i:i + n] if i + n <= cap else ring[i:] + ring[:i + n - cap]
        try:
            arr = np.fromiter(itertools.chain.from_iterable(rows), np.int64, n * len(FIELDS))
        except TypeError:  # a slot never written (None)
            rows = [r if r is not None else (-1,) * len(FIELDS) for r in rows]
            arr = np.fromiter(itertools.chain.from_iterable(rows), np.int64, n * len(FIELDS))
        arr = arr.reshape(n, len(FIELDS))
        return arr[(arr[:, 0] >= start) & (arr[:, 0] < total)]

    def snapshot(self, since: int = 0) -> "np.ndarray":
        """Records with ``seq >= since`` as an ``(n, 8)`` int64 array, ordered by ``seq``."""
        arr = self.read(since)
        if len(arr) > 1 and (arr[1:, 0] < arr[:-1, 0]).any():
            import numpy as np

            arr = arr[np.argsort(arr[:, 0], kind="stable")]
        return arr

    def to_pandas(self, since: int = 0) -> "pd.DataFrame":
        """Records as a DataFrame with durations in milliseconds (see :func:`records_to_pandas`)."""
        return records_to_pandas(self.snapshot(since), self.epoch_ns)

    def clear(self) -> None:
        self._ring = [None] * self.capacity

    def __repr__(self) -> str:
        return f"<RecordBuffer {len(self)}/{self.capacity} records, {self.total} total>"


def records_to_pandas(a: "np.ndarray", epoch_ns: int) -> "pd.DataFrame":
    """An ``(n, 8)`` record array as a DataFrame with durations in milliseconds.

    Columns: ``seq, arrival, queue_ms, compute_ms, post_ms, latency_ms, batch, status``,
    where ``arrival`` is a wall-clock timestamp (``epoch_ns`` converts the perf counter).
    """
    import pandas as pd

    seq, arrival, formed, start, end, done, batch, status = (a[:, i] for i in range(len(FIELDS)))
    return pd.DataFrame({
        "seq": seq,
        "arrival": pd.to_datetime(arrival + epoch_ns, unit="ns"),
        "queue_ms": (start - arrival) / 1e6,
        "compute_ms": (end - start) / 1e6,
        "post_ms": (done - end) / 1e6,
        "latency_ms": (done - arrival) / 1e6,
        "batch": batch,
        "status": pd.Categorical([STATUS_NAMES.get(int(s), str(s)) for s in status],
                                 categories=list(STATUS_NAMES.values())),
    })
