"""Feed validation against a model signature: the engine's hot path, kept lean.

Safe casts are applied silently (documented in the README): float64/float16 -> float32,
any float -> wider float, ints -> wider ints of the same signedness, bool/ints -> floats.
Everything else (floats to ints, strings or objects to numbers, rank or fixed-dim
mismatches, unknown or missing names, non-arrays) is an :class:`InvalidInputError` that
names the input and the expected spec.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from .errors import InvalidInputError
from .model import TensorSpec

__all__ = ["FeedValidator", "random_feeds"]


class FeedValidator:
    """Checks and normalises feeds for one signature."""

    def __init__(self, specs: Sequence[TensorSpec]):
        self.specs = list(specs)
        self.names = [s.name for s in specs]
        self._names = set(self.names)
        self._single = self.names[0] if len(self.names) == 1 else None
        self._rules = [
            (s.name, np.dtype(s.dtype) if s.dtype != "str" else np.dtype(object), len(s.shape),
             tuple((i, d) for i, d in enumerate(s.shape) if isinstance(d, int)), s)
            for s in specs
        ]

    def __call__(self, feeds: Any) -> dict[str, np.ndarray]:
        if type(feeds) is not dict:
            feeds = self._as_dict(feeds)
        if feeds.keys() != self._names:
            self._name_error(feeds)
        out = {}
        for name, dtype, rank, fixed, spec in self._rules:
            a = feeds[name]
            if type(a) is not np.ndarray:
                a = self._as_array(name, a, spec)
            if a.dtype != dtype:
                a = self._cast(name, a, dtype, spec)
            if a.ndim != rank:
                raise InvalidInputError(
                    f"input {name!r} has rank {a.ndim} (shape {list(a.shape)}), expected rank {rank}: {spec}",
                    "reshape it, e.g. add the batch dimension with x[None]" if a.ndim == rank - 1 else None,
                )
            for axis, size in fixed:
                if a.shape[axis] != size:
                    raise InvalidInputError(
                        f"input {name!r} has shape {list(a.shape)}, but dim {axis} must be {size}: {spec}")
            if not a.flags.c_contiguous:
                a = np.ascontiguousarray(a)
            out[name] = a
        return out

    # -- slow paths ---------------------------------------------------------------------------
    def _as_dict(self, feeds: Any) -> dict:
        if isinstance(feeds, Mapping):
            return dict(feeds)
        if self._single is not None and isinstance(feeds, np.ndarray):
            return {self._single: feeds}
        expected = ", ".join(str(s) for s in self.specs)
        raise InvalidInputError(
            f"feeds must be a dict of input name -> numpy array, got {type(feeds).__name__}",
            f"expected {{{expected}}}" + ("; a bare array works for single-input models" if self._single else ""),
        )

    def _name_error(self, feeds: Mapping) -> None:
        unknown = sorted(map(str, set(feeds) - self._names))
        missing = sorted(self._names - set(feeds))
        parts = []
        if unknown:
            parts.append(f"unknown input(s) {unknown}")
        if missing:
            parts.append(f"missing input(s) {missing}")
        raise InvalidInputError("; ".join(parts), "the model takes " + ", ".join(str(s) for s in self.specs))

    def _as_array(self, name: str, a: Any, spec: TensorSpec) -> np.ndarray:
        if isinstance(a, np.ndarray):  # a subclass
            return np.asarray(a)
        hint = "convert it with np.asarray(x, dtype=np.%s)" % spec.dtype
        if type(a).__module__.startswith("torch"):
            hint = "pass x.detach().cpu().numpy()"
        raise InvalidInputError(f"input {name!r} must be a numpy array, got {type(a).__name__}: {spec}", hint)

    def _cast(self, name: str, a: np.ndarray, dtype: np.dtype, spec: TensorSpec) -> np.ndarray:
        src = a.dtype
        ok = False
        if dtype.kind == "f":
            ok = src.kind in "fiub"  # numbers into floats (float64 -> float32 included)
        elif dtype.kind in "iu":
            ok = src.kind in "iub" and np.can_cast(src, dtype, "same_kind") and (
                src.kind != "u" or dtype.kind == "u" or dtype.itemsize > src.itemsize)
        elif dtype.kind == "b":
            ok = False
        elif dtype.kind == "O":
            ok = src.kind in "US"
        if not ok:
            raise InvalidInputError(
                f"input {name!r} has dtype {src}, which cannot be safely converted to {dtype}: {spec}",
                f"pass a {dtype} array",
            )
        return a.astype(dtype)


def random_feeds(specs: Sequence[TensorSpec], batch_size: int = 1, seed: int = 0,
                 dims: Mapping[str, int] | None = None) -> dict[str, np.ndarray]:
    """Seeded random feeds matching ``specs``.

    Dim 0, when dynamic, becomes ``batch_size``; other dynamic dims take ``dims[symbol]``
    (default 1).  Integer inputs get values in ``[0, 100)``.
    """
    rng = np.random.default_rng(seed)
    dims = dict(dims or {})
    out = {}
    for s in specs:
        shape = []
        for i, d in enumerate(s.shape):
            if isinstance(d, int):
                shape.append(d)
            elif i == 0:
                shape.append(batch_size)
            else:
                shape.append(int(dims.get(d, 1)) if isinstance(d, str) else 1)
        dt = np.dtype(s.dtype) if s.dtype != "str" else np.dtype(object)
        if dt.kind == "f":
            out[s.name] = rng.standard_normal(shape).astype(dt)
        elif dt.kind in "iu":
            out[s.name] = rng.integers(0, 100, size=shape).astype(dt)
        elif dt.kind == "b":
            out[s.name] = rng.integers(0, 2, size=shape).astype(bool)
        else:
            out[s.name] = np.full(shape, "a", dtype=object)
    return out
