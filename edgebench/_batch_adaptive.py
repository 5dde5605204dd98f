"""Adaptive batching: a latency model per batch size, fitted online, picks the batch size and
the queue delay (BentoML's approach: fit ``latency(n) = a + b * n`` to measured batches).

Batching pays when the fixed cost ``a`` is large next to the per-row cost ``b`` (a small MLP:
launch and framework overhead dominate); it does not when ``b`` dominates (a conv net that
already keeps the cores busy at batch 1).  The tuner measures which case it is in:

* every batch's latency (assembly + compute) is recorded per batch size;
* every ``refit_every`` batches, a least-squares line is fitted to the per-size medians;
* the batch size chosen is the smallest whose modelled throughput ``n / latency(n)`` is within
  ``tolerance`` of the best that keeps ``2 * latency(n) + delay`` under the p99 target (a
  request may wait for the batch in flight, then run in its own);
* when that batch size buys less than ``min_gain`` over batch 1, batching is off: size 1, no
  delay.  Otherwise the delay is what the target leaves, capped by the configured maximum;
* one batch in ``explore_every`` is capped at the next size of a 1, 2, 4, ... cycle, so sizes
  other than the chosen one keep being measured and the model can change its mind.
"""
from __future__ import annotations

from collections import deque
from statistics import median
from typing import Any

__all__ = ["AdaptiveTuner"]


class AdaptiveTuner:
    """Online choice of batch size and delay from measured batch latencies.

    Parameters
    ----------
    max_batch_size
        Upper bound of the batch size (the batcher's ``max_batch_size``).
    max_delay_ns
        Upper bound of the queue delay.
    target_p99_ms
        Latency target a request should meet 99 times in 100.
    """

    def __init__(self, max_batch_size: int, max_delay_ns: int, target_p99_ms: float, *,
                 refit_every: int = 16, explore_every: int = 8, tolerance: float = 0.15,
                 min_gain: float = 1.25, window: int = 32):
        self.max_batch_size = max_batch_size
        self.max_delay_ns = max_delay_ns
        self.target_ns = int(target_p99_ms * 1e6)
        self.refit_every = refit_every
        self.explore_every = explore_every
        self.tolerance = tolerance
        self.min_gain = min_gain
        self.window = window
        self.batch_size = max_batch_size  # start from the configured values
        self.delay_ns = max_delay_ns
        self.fit: tuple[float, float] | None = None  # (a_ns, b_ns per row)
        self.gain = None
        self.batches = 0
        self.refits = 0
        self._samples: dict[int, deque] = {}
        self._explore = [1 << i for i in range(max_batch_size.bit_length()) if 1 << i <= max_batch_size]
        if self._explore[-1] != max_batch_size:
            self._explore.append(max_batch_size)
        self._explore_i = 0

    def cap(self) -> int:
        """Row cap of the next batch: the chosen size, or an exploration size now and then."""
        if self.batches % self.explore_every == self.explore_every - 1:
            self._explore_i = (self._explore_i + 1) % len(self._explore)
            return self._explore[self._explore_i]
        return self.batch_size

    def observe(self, rows: int, latency_ns: int) -> bool:
        """Record one batch; returns ``True`` when batch size or delay changed."""
        s = self._samples.get(rows)
        if s is None:
            s = self._samples[rows] = deque(maxlen=self.window)
        s.append(latency_ns)
        self.batches += 1
        if self.batches % self.refit_every:
            return False
        return self.refit()

    def refit(self) -> bool:
        pts = [(n, median(s), min(len(s), 8)) for n, s in self._samples.items() if len(s) >= 2]
        if len(pts) < 2 or max(p[0] for p in pts) < 2 * min(p[0] for p in pts):
            return False  # not enough spread in batch sizes to tell a from b yet
        sw = sum(w for _, _, w in pts)
        mx = sum(w * n for n, _, w in pts) / sw
        my = sum(w * y for _, y, w in pts) / sw
        sxx = sum(w * (n - mx) ** 2 for n, _, w in pts)
        b = sum(w * (n - mx) * (y - my) for n, y, w in pts) / sxx
        b = max(b, 1.0)  # latency never falls with more rows
        a = max(my - b * mx, 0.0)
        self.fit = (a, b)
        self.refits += 1
        old = (self.batch_size, self.delay_ns)
        self.batch_size, self.delay_ns, self.gain = self._choose(a, b)
        return (self.batch_size, self.delay_ns) != old

    def _choose(self, a: float, b: float) -> tuple[int, int, float]:
        lat = lambda n: a + b * n
        sizes = range(1, self.max_batch_size + 1)
        feasible = [n for n in sizes if 2 * lat(n) <= self.target_ns] or [1]
        best = max(n / lat(n) for n in feasible)
        n = next(n for n in feasible if n / lat(n) >= (1 - self.tolerance) * best)
        gain = (n / lat(n)) / (1 / lat(1))
        if gain < self.min_gain:
            return 1, 0, gain
        delay = int(min(self.max_delay_ns, max(0.0, self.target_ns - 2 * lat(n)) / 2))
        return n, delay, gain

    def state(self) -> dict[str, Any]:
        """What the tuner has chosen and why (for ``DynamicBatcher.stats()``)."""
        a, b = self.fit if self.fit else (None, None)
        return {
            "batch_size": self.batch_size,
            "delay_ms": self.delay_ns / 1e6,
            "target_p99_ms": self.target_ns / 1e6,
            "fixed_ms": None if a is None else a / 1e6,
            "per_row_ms": None if b is None else b / 1e6,
            "gain": self.gain,
            "batches_seen": self.batches,
            "refits": self.refits,
            "sizes_measured": sorted(self._samples),
        }
