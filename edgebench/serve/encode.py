"""KServe v2 inference responses: JSON, or the binary tensor extension, as Triton writes them.

Outputs go out as JSON ``data`` (row-major, flattened) or, when the request asked for
``binary_data``, as raw little-endian bytes after the JSON header (BYTES elements each with a
4-byte length), the header's length in ``Inference-Header-Content-Length``.  Triton's
classification extension (``parameters.classification: k``) turns an output into the top ``k``
``"score:index"`` strings of each row.
"""
from __future__ import annotations

import json
from typing import Any

import numpy as np

from .protocol import _BY_DTYPE, _U32, ProtocolError

__all__ = ["encode_infer_response"]

_ENCODER = json.JSONEncoder(separators=(",", ":"))

def encode_infer_response(model: str, version: str, request_id: str | None,
                          outputs: list[tuple[str, bool, int]], results: dict[str, np.ndarray]) -> tuple[bytes, int | None]:
    """The response body and, when any output is binary, the JSON header's length."""
    meta, blobs = [], []
    for name, binary, topk in outputs:
        arr = results[name]
        if topk:
            arr = _classify(arr, topk, name)
        dt = _BY_DTYPE.get(arr.dtype)
        if dt is None and arr.dtype.kind in "OSU":
            dt = "BYTES"
        elif dt is None:
            raise ProtocolError(500, f"output {name!r} has dtype {arr.dtype}, which KServe v2 cannot carry")
        entry: dict[str, Any] = {"name": name, "datatype": dt, "shape": list(arr.shape)}
        if binary:
            blob = _bytes_blob(arr) if dt == "BYTES" else np.ascontiguousarray(arr).tobytes()
            entry["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            entry["data"] = ([v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v) for v in arr.ravel()]
                             if dt == "BYTES" else arr.ravel().tolist())
        meta.append(entry)
    head: dict[str, Any] = {"model_name": model, "model_version": version, "outputs": meta}
    if request_id:
        head = {"id": request_id, **head}
    header = _ENCODER.encode(head).encode()
    if not blobs:
        return header, None
    return b"".join([header, *blobs]), len(header)


def _bytes_blob(arr: np.ndarray) -> bytes:
    parts = []
    for v in arr.ravel():
        b = v if isinstance(v, bytes) else str(v).encode()
        parts += [_U32.pack(len(b)), b]
    return b"".join(parts)


def _classify(arr: np.ndarray, k: int, name: str) -> np.ndarray:
    """Triton's classification extension: the top ``k`` of each row as ``"score:index"``."""
    if arr.dtype.kind not in "iuf" or arr.ndim < 1:
        raise ProtocolError(400, f"classification needs a numeric output; {name!r} is {arr.dtype}")
    rows = arr.reshape(-1, arr.shape[-1]) if arr.ndim > 1 else arr[None]
    k = min(k, rows.shape[1])
    idx = np.argsort(-rows, axis=1, kind="stable")[:, :k]
    out = np.empty(idx.shape, dtype=object)
    for r in range(idx.shape[0]):
        for j, i in enumerate(idx[r]):
            out[r, j] = f"{float(rows[r, i]):f}:{int(i)}".encode()
    return out.reshape((*arr.shape[:-1], k)) if arr.ndim > 1 else out[0]
