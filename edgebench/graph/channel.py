"""The bounded hand-off between two threads of a streaming graph.

A :class:`Channel` is a FIFO of at most ``capacity`` items with one producer and one
consumer.  It costs less per event than :class:`queue.Queue` because the consumer takes
*every* waiting item (up to a limit) in one call (micro-batching): when a stage falls behind,
the events piling up in front of it are handed over under one lock acquisition and the
producer blocked on a full channel is woken once per group, not once per event.  When the
consumer keeps up, each event still goes through on its own at once, so latency is unchanged.

Every blocking wait wakes every ``poll_s`` seconds to look at a cancel flag, so a stopping
stream never hangs on an idle or full channel.
"""
from __future__ import annotations

import threading
from collections import deque
from typing import Any

__all__ = ["Channel"]


class Channel:
    """A bounded single-producer / single-consumer FIFO with group takes.

    Parameters
    ----------
    capacity
        Most items held; :meth:`put` blocks beyond it (backpressure).
    poll_s
        How often a blocked :meth:`put` or :meth:`take` looks at its cancel flag.

    Attributes
    ----------
    max_depth
        The most items the channel ever held.
    """

    def __init__(self, capacity: int, poll_s: float = 0.05):
        self.capacity, self.poll_s = capacity, poll_s
        self._items: deque[Any] = deque()
        self._lock = threading.Lock()
        self._not_empty = threading.Condition(self._lock)
        self._not_full = threading.Condition(self._lock)
        self._consumer_waits = self._producer_waits = False
        self.max_depth = 0

    def __len__(self) -> int:
        """Items held now."""
        return len(self._items)

    def put(self, item: Any, cancel: threading.Event) -> bool:
        """Append ``item``, waiting while the channel is full; False if ``cancel`` was set."""
        items = self._items
        with self._lock:
            while len(items) >= self.capacity:
                if cancel.is_set():
                    return False
                self._producer_waits = True
                self._not_full.wait(self.poll_s)
                self._producer_waits = False
            items.append(item)
            self.max_depth = max(self.max_depth, len(items))
            if self._consumer_waits:
                self._not_empty.notify()
        return True

    def take(self, limit: int, cancel: threading.Event) -> list[Any] | None:
        """Remove and return up to ``limit`` items (all there are, at least one), waiting
        while the channel is empty; None if ``cancel`` was set first."""
        items = self._items
        with self._lock:
            while not items:
                if cancel.is_set():
                    return None
                self._consumer_waits = True
                self._not_empty.wait(self.poll_s)
                self._consumer_waits = False
            if len(items) <= limit:
                out = list(items)
                items.clear()
            else:
                out = [items.popleft() for _ in range(limit)]
            if self._producer_waits:
                self._not_full.notify()
        return out

    def __repr__(self) -> str:
        return f"Channel({len(self._items)}/{self.capacity}, max {self.max_depth})"
