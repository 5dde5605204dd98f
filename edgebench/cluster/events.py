"""The cluster's event log: workers joining and leaving, replicas placed, lost, re-created,
migrated, scaled; what the autoscaler decided.  ``cl.events`` shows it as a DataFrame."""
from __future__ import annotations

import threading
import time
from collections import deque
from typing import Any

__all__ = ["EventLog"]


class EventLog:
    """A bounded, thread-safe list of events (the newest ``capacity`` are kept)."""

    COLUMNS = ["time", "kind", "deployment", "replica", "worker", "detail"]

    def __init__(self, capacity: int = 10000):
        self._events: deque[dict[str, Any]] = deque(maxlen=capacity)
        self._lock = threading.Lock()
        self._listeners: list = []

    def add(self, kind: str, *, deployment: str | None = None, replica: str | None = None,
            worker: str | None = None, detail: str = "") -> dict[str, Any]:
        ev = {"time": time.time(), "kind": kind, "deployment": deployment, "replica": replica,
              "worker": worker, "detail": detail}
        with self._lock:
            self._events.append(ev)
        for fn in list(self._listeners):
            try:
                fn(ev)
            except Exception:  # a view's callback must never break the cluster
                pass
        return ev

    def subscribe(self, fn) -> None:
        """Call ``fn(event)`` for every new event (from whichever thread adds it)."""
        self._listeners.append(fn)

    def list(self, kind: str | None = None) -> list[dict[str, Any]]:
        with self._lock:
            evs = list(self._events)
        return [e for e in evs if kind is None or e["kind"] == kind]

    def count(self, kind: str) -> int:
        return len(self.list(kind))

    def to_pandas(self):
        import pandas as pd

        df = pd.DataFrame(self.list(), columns=self.COLUMNS)
        df["time"] = pd.to_datetime(df["time"], unit="s")
        return df

    def __len__(self) -> int:
        return len(self._events)
