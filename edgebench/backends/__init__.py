"""Backends: the registry and the small protocol every backend implements.

A backend turns a :class:`~edgebench.Model` into a :class:`Session` on a device::

    @register("mybackend")
    class MyBackend:
        name = "mybackend"
        def available(self) -> tuple[bool, str | None]: ...
        def devices(self) -> list[str]: ...
        def compile(self, model, device, *, threads=None, **options) -> Session: ...

Third-party packages register through the ``edgebench.backends`` entry-point group.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from importlib import import_module
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from .._callable import make_callable
from .._registry import Registry
from .._table import Table

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

    from ..model import Model

__all__ = ["Backend", "Session", "BackendInfo", "register", "get", "names", "backends", "REGISTRY"]


@runtime_checkable
class Session(Protocol):
    """A model compiled for one device.

    ``run`` takes validated feeds and returns the outputs in ``output_names`` order.
    Sessions may also offer ``start_profiling()`` / ``end_profiling() -> list[dict]``
    (Chrome trace events) and ``memory_bytes() -> int``.
    """

    input_names: list[str]
    output_names: list[str]

    def run(self, feeds: dict[str, "np.ndarray"]) -> list["np.ndarray"]: ...


@runtime_checkable
class Backend(Protocol):
    name: str

    def available(self) -> tuple[bool, str | None]: ...

    def devices(self) -> list[str]: ...

    def compile(self, model: "Model", device: str, *, threads: int | None = None, **options: Any) -> Session: ...


REGISTRY: Registry[Any] = Registry("backend", entry_point_group="edgebench.backends")
register = REGISTRY.register

# built-in backends register themselves when their module is imported
_BUILTIN = {"onnxruntime": ".onnxruntime", "torch": ".torch"}


def get(name: str) -> Backend:
    """The backend registered as ``name`` (an instance)."""
    if name in _BUILTIN and name not in REGISTRY._items:
        import_module(_BUILTIN[name], __name__)
    obj = REGISTRY.get(name)
    return obj() if isinstance(obj, type) else obj


def names() -> list[str]:
    return sorted(set(REGISTRY.names()) | set(_BUILTIN))


@dataclass(frozen=True)
class BackendInfo:
    """One row of :func:`backends`."""

    name: str
    available: bool
    version: str | None
    devices: tuple[str, ...] = ()
    reason: str | None = None
    details: dict = field(default_factory=dict, compare=False)


def backends() -> Table:
    """Every known backend, whether it is usable here, on which devices, and why not.

    Returns a list of :class:`BackendInfo` that prints as a table (``.to_pandas()`` too).
    """
    rows = []
    for name in names():
        try:
            b = get(name)
            ok, reason = b.available()
            version = getattr(b, "version", lambda: None)()
            devs = tuple(b.devices()) if ok else ()
            details = getattr(b, "details", lambda: {})()
        except Exception as e:  # a broken third-party plugin must not break the listing
            ok, reason, version, devs, details = False, f"{type(e).__name__}: {e}", None, (), {}
        rows.append(BackendInfo(name, ok, version, devs, reason, details))
    return Table(rows, columns=("name", "available", "version", "devices", "reason"))


make_callable(__name__, "backends")
