"""The live objects of this process whose request records feed dashboards and /metrics.

Engines (and later batchers, servers, graphs) register themselves here; a dashboard reads
their :class:`~edgebench.profile.metrics.RecordBuffer` s incrementally with a
:class:`Cursor`, so every view works from the same single record per request.
"""
from __future__ import annotations

import threading
import weakref
from typing import Any, Iterator

import numpy as np

__all__ = ["track", "tracked", "Cursor"]

_LIVE: "weakref.WeakSet[Any]" = weakref.WeakSet()
_LOCK = threading.Lock()


def track(obj: Any) -> None:
    """Make ``obj`` (anything with ``.records`` and a ``.name`` or ``.model.name``) visible to dashboards."""
    with _LOCK:
        _LIVE.add(obj)


def tracked() -> list[Any]:
    """The tracked objects that are still alive and not closed, oldest first."""
    with _LOCK:
        objs = list(_LIVE)
    return sorted((o for o in objs if not getattr(o, "_closed", False)), key=id)


def label(obj: Any) -> str:
    """Display name of a tracked object: ``model@backend`` for engines."""
    model = getattr(obj, "model", None)
    name = getattr(obj, "name", None) or (model.name if model is not None else type(obj).__name__)
    backend = getattr(obj, "backend", None)
    return f"{name}@{backend}" if isinstance(backend, str) else str(name)


class Cursor:
    """Reads each tracked object's new records since the last call."""

    def __init__(self) -> None:
        self._seen: "weakref.WeakKeyDictionary[Any, int]" = weakref.WeakKeyDictionary()

    def new_records(self) -> Iterator[tuple[Any, np.ndarray]]:
        """Yield ``(obj, records)`` with the records added since the previous call."""
        for obj in tracked():
            since = self._seen.get(obj, 0)
            recs = obj.records.snapshot(since)
            if len(recs):
                self._seen[obj] = int(recs[-1, 0]) + 1
            yield obj, recs
