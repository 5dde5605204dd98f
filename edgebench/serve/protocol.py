"""KServe v2 / Open Inference Protocol REST bodies, as Triton reads and writes them.

Requests are JSON, optionally followed by the binary tensor extension: the JSON header's
length is in the ``Inference-Header-Content-Length`` HTTP header, and every input whose
``parameters.binary_data_size`` is set takes that many bytes, in input order, from the rest of
the body.  Outputs are sent back as binary when the request asks (per output with
``parameters.binary_data`` or for all with ``parameters.binary_data_output``).

Answers are written by :mod:`edgebench.serve.encode`.  Everything a client sends is checked here, before it can reach a model: JSON depth and size,
datatype names, shapes against the model's signature and the configured limits, data length
against the shape, and binary sizes against the body.  Each failure is a
:class:`ProtocolError` carrying the HTTP status and a message that says what was wrong.
"""
from __future__ import annotations

import json
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = [
    "DATATYPES",
    "InferRequest",
    "Limits",
    "ProtocolError",
    "Signature",
    "datatype_of",
    "loads_checked",
    "parse_infer_request",
]

#: KServe v2 datatype name -> numpy dtype (BYTES are object arrays of ``bytes``)
DATATYPES: dict[str, np.dtype] = {
    "BOOL": np.dtype(bool), "UINT8": np.dtype(np.uint8), "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32), "UINT64": np.dtype(np.uint64), "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16), "INT32": np.dtype(np.int32), "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16), "FP32": np.dtype(np.float32), "FP64": np.dtype(np.float64),
    "BYTES": np.dtype(object),
}
_NAMES = {"bool": "BOOL", "uint8": "UINT8", "uint16": "UINT16", "uint32": "UINT32", "uint64": "UINT64",
          "int8": "INT8", "int16": "INT16", "int32": "INT32", "int64": "INT64", "float16": "FP16",
          "float32": "FP32", "float64": "FP64", "str": "BYTES", "object": "BYTES", "bytes": "BYTES"}
_CONTAINERS = (list, dict)
_U32 = struct.Struct("<I")
_BY_DTYPE = {np.dtype(k): v for k, v in _NAMES.items() if k not in ("str", "object", "bytes")}


def datatype_of(dtype: Any) -> str:
    """The KServe datatype name of a numpy dtype or dtype name (``"float32"`` -> ``"FP32"``)."""
    key = dtype if isinstance(dtype, str) else np.dtype(dtype).name
    try:
        return _NAMES[key]
    except KeyError:
        raise ValueError(f"no KServe v2 datatype for {dtype!r}") from None


class ProtocolError(Exception):
    """A request the server answers with ``{"error": message}`` and an HTTP error status."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


@dataclass(frozen=True)
class Limits:
    """What one request may hold; checked before anything reaches a model.

    Attributes
    ----------
    max_body_bytes
        Whole request body (after decompression); larger -> 413.
    max_header_bytes
        The JSON part of the body; larger -> 413.
    max_json_depth
        Nesting of JSON arrays and objects; deeper -> 400.
    max_rank, max_elements
        Rank and element count of one tensor; more -> 400.
    max_inputs
        Tensors in one request (inputs or requested outputs); more -> 400.
    """

    max_body_bytes: int = 64 << 20
    max_header_bytes: int = 16 << 20
    max_json_depth: int = 32
    max_rank: int = 8
    max_elements: int = 1 << 26
    max_inputs: int = 64

    def __post_init__(self) -> None:
        for k, v in self.__dict__.items():
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                from ..errors import ConfigError

                raise ConfigError(f"Limits.{k} must be a positive integer, got {v!r}")


class Signature:
    """A served model's tensors as the protocol sees them.

    ``inputs``/``outputs`` are ``(name, datatype, dims)`` with ``-1`` for a dynamic dim, the
    batch dim included.  ``max_batch_size > 0`` makes dim 0 the batch, limited to it.
    """

    def __init__(self, inputs: Sequence[tuple[str, str, tuple]], outputs: Sequence[tuple[str, str, tuple]],
                 max_batch_size: int = 0):
        self.inputs = [(n, dt, tuple(d)) for n, dt, d in inputs]
        self.outputs = [(n, dt, tuple(d)) for n, dt, d in outputs]
        self.max_batch_size = max_batch_size
        self._by_name = {n: (dt, DATATYPES[dt], d) for n, dt, d in self.inputs}
        self.output_names = [n for n, _, _ in self.outputs]

    @classmethod
    def from_specs(cls, inputs: Sequence[Any], outputs: Sequence[Any], max_batch_size: int = 0) -> Signature:
        """From :class:`~edgebench.TensorSpec` lists (dynamic dims become ``-1``)."""
        def conv(specs: Sequence[Any]) -> list[tuple[str, str, tuple]]:
            return [(s.name, datatype_of(s.dtype), tuple(d if isinstance(d, int) else -1 for d in s.shape))
                    for s in specs]
        return cls(conv(inputs), conv(outputs), max_batch_size)


@dataclass
class InferRequest:
    """A checked request: feeds for the model and what to send back."""

    id: str | None
    feeds: dict[str, np.ndarray]
    outputs: list[tuple[str, bool, int]]  # (name, binary, classification top-k or 0)
    priority: int
    timeout_us: int | None
    batch: int


# ------------------------------------------------------------------------------------------------
# parsing
# ------------------------------------------------------------------------------------------------
def loads_checked(data: bytes, limits: Limits) -> Any:
    """``json.loads`` with the size and depth limits; a :class:`ProtocolError` (400/413) otherwise."""
    if len(data) > limits.max_header_bytes:
        raise ProtocolError(413, f"JSON of {len(data)} bytes is over the limit of {limits.max_header_bytes} bytes")
    try:
        obj = json.loads(data)
    except RecursionError:
        raise ProtocolError(400, f"JSON nested deeper than the limit of {limits.max_json_depth}") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise ProtocolError(400, f"malformed JSON in request body: {e}") from None
    if data.count(b"[") + data.count(b"{") > limits.max_json_depth:  # else it cannot be too deep
        _check_depth(obj, limits.max_json_depth)
    return obj


def _check_depth(obj: Any, limit: int) -> None:
    stack = [(obj, 1)]
    pop, push = stack.pop, stack.append
    while stack:
        o, d = pop()
        if d > limit:
            raise ProtocolError(400, f"JSON nested deeper than the limit of {limit}")
        for v in (o.values() if type(o) is dict else o):
            if type(v) in _CONTAINERS:
                push((v, d + 1))


def parse_infer_request(body: bytes, header_length: int | None, sig: Signature, model: str,
                        limits: Limits) -> InferRequest:
    """Check and decode one ``POST .../infer`` body against ``sig``.

    Raises
    ------
    ProtocolError
        400 for anything malformed or not matching the model, 413 for sizes over ``limits``.
    """
    if header_length is None:
        header, binary = body, b""
    else:
        if not 0 < header_length <= len(body):
            raise ProtocolError(400, f"Inference-Header-Content-Length is {header_length} but the body has "
                                     f"{len(body)} bytes")
        header, binary = body[:header_length], memoryview(body)[header_length:]
    req = loads_checked(header, limits)
    if type(req) is not dict:
        raise ProtocolError(400, "the inference request must be a JSON object")
    params = _params(req, "request")
    inputs = req.get("inputs")
    if type(inputs) is not list or not inputs:
        raise ProtocolError(400, "the inference request needs a non-empty 'inputs' list")
    if len(inputs) > limits.max_inputs:
        raise ProtocolError(400, f"{len(inputs)} inputs are over the limit of {limits.max_inputs}")
    feeds: dict[str, np.ndarray] = {}
    offset, batch = 0, None
    for t in inputs:
        name, arr, used = _parse_input(t, sig, model, limits, binary, offset)
        if name in feeds:
            raise ProtocolError(400, f"input {name!r} is given twice")
        feeds[name] = arr
        offset += used
        if sig.max_batch_size:
            b = arr.shape[0]
            if batch is not None and b != batch:
                raise ProtocolError(400, f"inputs disagree on the batch size ({batch} vs {b} for {name!r})")
            batch = b
    if offset != len(binary):
        raise ProtocolError(400, f"the binary tensor data is {len(binary)} bytes but the inputs' binary_data_size "
                                 f"add up to {offset}")
    missing = [n for n, _, _ in sig.inputs if n not in feeds]
    if missing:
        raise ProtocolError(400, f"model {model!r} expects input(s) {missing}, which the request lacks")
    request_id = req.get("id")
    if request_id is not None and type(request_id) is not str:
        raise ProtocolError(400, "'id' must be a string")
    if batch is None:  # not batched: the rows of the first input when its dim 0 is dynamic
        first, _, dims = sig.inputs[0]
        batch = feeds[first].shape[0] if dims and dims[0] == -1 else 1
    return InferRequest(request_id, feeds, _requested_outputs(req, params, sig, model, limits),
                        _int_param(params, "priority", 0), _timeout(params), batch)


def _params(obj: dict, what: str) -> dict:
    p = obj.get("parameters")
    if p is None:
        return {}
    if type(p) is not dict:
        raise ProtocolError(400, f"'parameters' of the {what} must be a JSON object")
    return p


def _int_param(params: dict, key: str, default: int) -> int:
    v = params.get(key, default)
    if type(v) is not int or v < 0:
        raise ProtocolError(400, f"parameter {key!r} must be a non-negative integer, got {v!r}")
    return v


def _timeout(params: dict) -> int | None:
    return _int_param(params, "timeout", 0) or None if "timeout" in params else None


def _parse_input(t: Any, sig: Signature, model: str, limits: Limits, binary: memoryview | bytes,
                 offset: int) -> tuple[str, np.ndarray, int]:
    if type(t) is not dict:
        raise ProtocolError(400, "each input must be a JSON object with name, datatype, shape and data")
    name = t.get("name")
    if type(name) is not str:
        raise ProtocolError(400, "an input lacks a string 'name'")
    spec = sig._by_name.get(name)
    if spec is None:
        raise ProtocolError(400, f"unexpected inference input {name!r} for model {model!r}; it takes "
                                 f"{[n for n, _, _ in sig.inputs]}")
    want_dt, np_dt, dims = spec
    dt = t.get("datatype")
    if dt not in DATATYPES:
        raise ProtocolError(400, f"input {name!r} has unknown datatype {dt!r}; known: {sorted(DATATYPES)}")
    if dt != want_dt:
        raise ProtocolError(400, f"input {name!r} has datatype {dt}, but model {model!r} expects {want_dt}")
    shape = _shape(t.get("shape"), name, dims, sig.max_batch_size, limits)
    n = 1
    for d in shape:
        n *= d
    if n > limits.max_elements:
        raise ProtocolError(400, f"input {name!r} of shape {list(shape)} has {n} elements, over the limit of "
                                 f"{limits.max_elements}")
    params = _params(t, f"input {name!r}")
    size = params.get("binary_data_size")
    has_data = "data" in t
    if size is not None:
        if has_data:
            raise ProtocolError(400, f"input {name!r} has both 'data' and binary_data_size")
        if type(size) is not int or size < 0:
            raise ProtocolError(400, f"binary_data_size of input {name!r} must be a non-negative integer")
        if offset + size > len(binary):
            raise ProtocolError(400, f"input {name!r} needs {size} bytes of binary data at offset {offset}, but "
                                     f"only {len(binary) - offset} are left in the body")
        return name, _from_binary(binary[offset:offset + size], np_dt, shape, name), size
    if not has_data:
        raise ProtocolError(400, f"input {name!r} has neither 'data' nor parameters.binary_data_size")
    return name, _from_json(t["data"], np_dt, shape, n, name), 0


def _shape(shape: Any, name: str, dims: tuple, max_batch: int, limits: Limits) -> tuple[int, ...]:
    if type(shape) is not list or any(type(d) is not int or d < 0 for d in shape):
        raise ProtocolError(400, f"input {name!r} needs 'shape', a list of non-negative integers; got {shape!r}")
    if len(shape) > limits.max_rank:
        raise ProtocolError(400, f"input {name!r} has rank {len(shape)}, over the limit of {limits.max_rank}")
    if len(shape) != len(dims) or any(w != -1 and w != d for w, d in zip(dims, shape)):
        want = "[" + ",".join("-1" if d == -1 else str(d) for d in dims) + "]"
        raise ProtocolError(400, f"input {name!r} has shape {shape}, but the model expects {want}")
    if max_batch and not 1 <= shape[0] <= max_batch:
        raise ProtocolError(400, f"input {name!r} has batch size {shape[0]}; this model takes 1 to {max_batch}")
    return tuple(shape)


def _from_binary(buf: memoryview | bytes, np_dt: np.dtype, shape: tuple, name: str) -> np.ndarray:
    n = 1
    for d in shape:
        n *= d
    if np_dt.kind != "O":
        if len(buf) != n * np_dt.itemsize:
            raise ProtocolError(400, f"input {name!r} of shape {list(shape)} needs {n * np_dt.itemsize} bytes of "
                                     f"binary data, got {len(buf)}")
        arr = np.frombuffer(buf, dtype=np_dt).reshape(shape)
        if np_dt.kind == "b" and arr.view(np.uint8).max(initial=0) > 1:
            raise ProtocolError(400, f"BOOL input {name!r} holds bytes other than 0 and 1")
        return arr
    items, pos, end = [], 0, len(buf)
    raw = bytes(buf)
    while pos < end:
        if pos + 4 > end:
            raise ProtocolError(400, f"BYTES input {name!r}: truncated element length at byte {pos}")
        (ln,) = _U32.unpack_from(raw, pos)
        pos += 4
        if pos + ln > end:
            raise ProtocolError(400, f"BYTES input {name!r}: element of {ln} bytes runs past its binary data")
        items.append(raw[pos:pos + ln])
        pos += ln
    if len(items) != n:
        raise ProtocolError(400, f"BYTES input {name!r} of shape {list(shape)} needs {n} elements, got {len(items)}")
    arr = np.empty(n, dtype=object)
    arr[:] = items
    return arr.reshape(shape)


def _from_json(data: Any, np_dt: np.dtype, shape: tuple, n: int, name: str) -> np.ndarray:
    if type(data) is not list:
        data = [data]
    try:
        if np_dt.kind == "O":
            flat = np.asarray(data, dtype=object).ravel()
            if not all(type(v) is str for v in flat):
                raise ValueError("BYTES data must be strings")
            arr = np.empty(flat.size, dtype=object)
            arr[:] = [v.encode() for v in flat]
        else:
            arr = np.asarray(data)
            if arr.size == 0:
                arr = arr.astype(np_dt)
            if arr.dtype.kind not in "biuf" or (np_dt.kind in "iub" and arr.dtype.kind == "f") or (
                    np_dt.kind == "b" and arr.dtype.kind != "b"):
                raise ValueError(f"{np.asarray(data).dtype.name} values do not fit")
            if arr.dtype != np_dt:
                if arr.dtype.kind in "iu" and arr.size and np_dt.kind in "iu":
                    info = np.iinfo(np_dt)
                    if arr.min() < info.min or arr.max() > info.max:
                        raise ValueError(f"values out of range for {np_dt.name}")
                arr = arr.astype(np_dt)
    except (ValueError, TypeError, OverflowError) as e:
        raise ProtocolError(400, f"input {name!r}: data does not match its datatype: {e}") from None
    if arr.size != n:
        raise ProtocolError(400, f"input {name!r} of shape {list(shape)} needs {n} values, got {arr.size}")
    return arr.reshape(shape)


def _requested_outputs(req: dict, params: dict, sig: Signature, model: str,
                       limits: Limits) -> list[tuple[str, bool, int]]:
    default_binary = params.get("binary_data_output", False)
    if type(default_binary) is not bool:
        raise ProtocolError(400, "parameter 'binary_data_output' must be true or false")
    outs = req.get("outputs")
    if outs is None:
        return [(n, default_binary, 0) for n in sig.output_names]
    if type(outs) is not list or len(outs) > limits.max_inputs:
        raise ProtocolError(400, f"'outputs' must be a list of at most {limits.max_inputs} objects")
    chosen = []
    for o in outs:
        if type(o) is not dict or type(o.get("name")) is not str:
            raise ProtocolError(400, "each requested output must be an object with a string 'name'")
        if o["name"] not in sig.output_names:
            raise ProtocolError(400, f"unexpected inference output {o['name']!r} for model {model!r}; it has "
                                     f"{sig.output_names}")
        p = _params(o, f"output {o['name']!r}")
        binary = p.get("binary_data", default_binary)
        if type(binary) is not bool:
            raise ProtocolError(400, f"binary_data of output {o['name']!r} must be true or false")
        chosen.append((o["name"], binary, _int_param(p, "classification", 0)))
    return chosen
