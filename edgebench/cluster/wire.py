"""How tensors travel in Dask messages.

Dask's ``to_serialize`` gives each numpy array its own header and frames: right for large
arrays (no copy), but about 0.2 ms a request each way for small ones.  A small array travels
instead as ``[dtype, shape, bytes]`` inside the msgpack message itself, which is what the
hot path of a batch-1 request needs; arrays above :data:`FRAME_BYTES` keep ``to_serialize``.
"""
from __future__ import annotations

from typing import Any

import numpy as np
from distributed.protocol import to_serialize

__all__ = ["FRAME_BYTES", "pack", "shm_view", "unpack"]

#: arrays at least this large travel as their own frames (zero copy)
FRAME_BYTES = 64 << 10


def pack(arrays: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for k, v in arrays.items():
        a = np.asarray(v)
        if a.nbytes >= FRAME_BYTES or a.dtype.hasobject:
            out[k] = to_serialize(a)
        else:
            out[k] = [a.dtype.str, list(a.shape), np.ascontiguousarray(a).tobytes()]
    return out


def unpack(msg: dict[str, Any], writable: bool = False, maps: dict | None = None) -> dict[str, Any]:
    """The arrays of a message; ``writable`` copies small ones out of the message buffer
    (what a user is handed), otherwise they are read-only views (what a model reads).
    ``maps`` are the shared-memory segments a worker has mapped (see :mod:`.shm`)."""
    out = {}
    for k, v in msg.items():
        if isinstance(v, (list, tuple)) and len(v) == 3 and isinstance(v[2], (bytes, bytearray, memoryview)):
            a = np.frombuffer(v[2], dtype=np.dtype(v[0])).reshape(v[1])
            out[k] = a.copy() if writable else a
        elif maps is not None and isinstance(v, (list, tuple)) and len(v) == 5 and v[0] == "shm":
            out[k] = shm_view(maps, v)
        else:
            out[k] = v
    return out


def shm_view(maps: dict[str, Any], ref: list) -> np.ndarray:
    """The read-only array ``["shm", key, offset, dtype, shape]`` names in a worker's mapped
    shared-memory segments (see :mod:`.shm`)."""
    _, key, off, dtype, shape = ref
    mm = maps.get(key)
    if mm is None:
        raise KeyError(f"shared-memory segment {key!r} is not mapped on this worker")
    a = np.ndarray(shape, np.dtype(dtype), buffer=mm, offset=off)
    a.flags.writeable = False
    return a
