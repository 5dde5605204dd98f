"""One registry mechanism for everything that is looked up by name.

A module-level dict, a ``register`` decorator, an entry-point fallback, and an error listing
the known names (the pattern of dask's ``distributed/comm/registry.py``).
"""
from __future__ import annotations

from typing import Callable, Generic, TypeVar

from .errors import UnknownNameError

T = TypeVar("T")


class Registry(Generic[T]):
    """Named things of one kind.

    Parameters
    ----------
    kind
        What is registered, for error messages ("backend", "scenario", ...).
    entry_point_group
        Entry-point group searched for names that are not registered yet.
    """

    def __init__(self, kind: str, entry_point_group: str | None = None):
        self.kind = kind
        self.entry_point_group = entry_point_group
        self._items: dict[str, T] = {}

    def register(self, name: str, obj: T | None = None) -> Callable[[T], T] | T:
        """Register ``obj`` under ``name``; usable as a decorator when ``obj`` is omitted."""
        if obj is not None:
            self._items[name] = obj
            return obj

        def decorator(o: T) -> T:
            self._items[name] = o
            return o

        return decorator

    def _from_entry_point(self, name: str) -> T | None:
        if not self.entry_point_group:
            return None
        from importlib.metadata import entry_points

        for ep in entry_points(group=self.entry_point_group):
            if ep.name == name:
                obj = ep.load()
                self._items.setdefault(name, obj)
                return self._items[name]
        return None

    def names(self) -> list[str]:
        """Registered names, plus those advertised by entry points."""
        names = set(self._items)
        if self.entry_point_group:
            from importlib.metadata import entry_points

            names.update(ep.name for ep in entry_points(group=self.entry_point_group))
        return sorted(names)

    def get(self, name: str) -> T:
        """The object registered as ``name``; ``UnknownNameError`` lists the known names."""
        try:
            return self._items[name]
        except KeyError:
            pass
        obj = self._from_entry_point(name) if isinstance(name, str) else None
        if obj is None:
            raise UnknownNameError(
                f"unknown {self.kind} {name!r}",
                f"known {self.kind}s: {', '.join(self.names()) or '(none)'}",
            )
        return obj

    def __contains__(self, name: object) -> bool:
        return name in self._items or (isinstance(name, str) and name in self.names())

    def __repr__(self) -> str:
        return f"<Registry {self.kind}: {', '.join(self.names())}>"
