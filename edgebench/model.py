"""Model and :func:`load`: ONNX files, bytes, protos and PyTorch modules, validated.

A :class:`Model` is an immutable, validated ONNX graph plus what edgebench needs to know
about it: its signature, content hash and size.  PyTorch modules are exported to ONNX on
load (the TorchScript exporter, so no onnxscript is needed) and keep a reference to the
module, so the ``torch`` backend can run the original.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

from .errors import ModelLoadError

if TYPE_CHECKING:  # pragma: no cover
    import onnx

__all__ = ["TensorSpec", "Model", "load"]


@dataclass(frozen=True)
class TensorSpec:
    """Name, dtype and shape of one model input or output.

    ``dtype`` is a numpy dtype name (``"float32"``, ``"int64"``, ``"bool"``, ``"str"``);
    a dynamic dimension is ``None`` (unnamed) or a ``str`` (its symbolic name).
    """

    name: str
    dtype: str
    shape: tuple  # tuple[int | str | None, ...]

    @property
    def is_dynamic(self) -> bool:
        return any(not isinstance(d, int) for d in self.shape)

    @property
    def rank(self) -> int:
        return len(self.shape)

    def __str__(self) -> str:
        dims = ",".join("?" if d is None else str(d) for d in self.shape)
        return f"{self.name}: {self.dtype}[{dims}]"


class Model:
    """A validated ONNX model.  Create one with :func:`edgebench.load`.

    Attributes
    ----------
    name
        Graph name, file stem or the name given to :func:`load`.
    inputs, outputs
        Lists of :class:`TensorSpec`.
    sha256
        Hex digest of the serialized model: its identity across processes and machines.
    size_bytes
        Size of the serialized model, weights included.
    source
        Where it came from (a path, ``"bytes"``, ``"torch:ClassName"``, ``"zoo:name"``).
    """

    def __init__(
        self,
        data: bytes | None,
        *,
        path: str | os.PathLike | None = None,
        name: str | None = None,
        source: str = "bytes",
        description: str = "",
        torch_module: Any = None,
        torch_factory: Callable[[], Any] | None = None,
        proto: "onnx.ModelProto | None" = None,
    ):
        if data is None and path is None:
            raise ValueError("Model needs data or a path")
        # A model read from a self-contained file keeps only its path: the weights are held
        # once, by the backend session, not a second and third time here.
        self._data = bytes(data) if data is not None else None
        self.path = Path(path) if path is not None else None
        self._proto = proto
        self.source = source
        self.description = description
        self._torch_module = torch_module
        self._torch_factory = torch_factory
        self._sig: dict[str, Any] = {}
        if proto is not None:
            self._read_signature(proto)
        self.name = name or self._signature("graph_name") or "model"

    def _read_signature(self, proto: "onnx.ModelProto") -> None:
        """Everything edgebench asks of a model, read once so the proto can be dropped."""
        import numpy as np

        init = {i.name for i in proto.graph.initializer}
        counts: dict[str, int] = {}
        for n in _iter_nodes(proto.graph):
            counts[n.op_type] = counts.get(n.op_type, 0) + 1
        self._sig = {
            "inputs": [_spec(v) for v in proto.graph.input if v.name not in init],
            "outputs": [_spec(v) for v in proto.graph.output],
            "opset": {(o.domain or "ai.onnx"): o.version for o in proto.opset_import},
            "op_counts": dict(sorted(counts.items(), key=lambda kv: -kv[1])),
            "n_params": int(sum(int(np.prod(t.dims)) for t in proto.graph.initializer)),
            "graph_name": proto.graph.name,
        }

    def drop_proto(self) -> None:
        """Release the parsed proto (it is parsed again from the bytes when asked for)."""
        self._proto = None

    # -- identity -------------------------------------------------------------------------
    @cached_property
    def sha256(self) -> str:
        return hashlib.sha256(self.to_bytes()).hexdigest()

    @cached_property
    def size_bytes(self) -> int:
        return len(self._data) if self._data is not None else os.path.getsize(self.path)

    def to_bytes(self) -> bytes:
        """The serialized ONNX model (what backends compile)."""
        if self._data is not None:
            return self._data
        try:
            return self.path.read_bytes()
        except OSError as e:
            raise ModelLoadError(f"the file of model {self.name!r} ({self.path}) is no longer readable: {e}",
                                 "keep the file in place while the model is in use, or load it again") from None

    @property
    def proto(self) -> "onnx.ModelProto":
        if self._proto is None:
            import onnx

            proto = onnx.load_model_from_string(self.to_bytes())
            if "inputs" not in self.__dict__:
                self._read_signature(proto)
            self._proto = proto
        return self._proto

    # -- signature (read once, at load time) ----------------------------------------------
    def _signature(self, key: str) -> Any:
        if key not in self._sig:
            self._read_signature(self.proto)
        return self._sig[key]

    @property
    def inputs(self) -> list[TensorSpec]:
        return self._signature("inputs")

    @property
    def outputs(self) -> list[TensorSpec]:
        return self._signature("outputs")

    @property
    def opset(self) -> dict[str, int]:
        return self._signature("opset")

    @property
    def op_counts(self) -> dict[str, int]:
        return self._signature("op_counts")

    @property
    def n_params(self) -> int:
        return self._signature("n_params")

    @property
    def torch_module(self) -> Any:
        """The PyTorch module this model was exported from, or ``None``."""
        if self._torch_module is None and self._torch_factory is not None:
            self._torch_module = self._torch_factory()
        return self._torch_module

    # -- persistence ----------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> Path:
        """Write the model as an ONNX file (weights inline) and return its path."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_bytes(self.to_bytes())
        os.replace(tmp, path)
        return path

    def with_proto(self, proto: "onnx.ModelProto", *, name: str | None = None, source: str | None = None) -> "Model":
        """A new model from a changed proto (used by optimization passes), validated."""
        from .loader import _from_proto

        return _from_proto(proto, name=name or self.name, source=source or self.source)

    # -- display --------------------------------------------------------------------------
    def __repr__(self) -> str:
        ins = ", ".join(str(s) for s in self.inputs)
        outs = ", ".join(str(s) for s in self.outputs)
        return (
            f"Model({self.name!r}, inputs=[{ins}], outputs=[{outs}], "
            f"{_human_bytes(self.size_bytes)}, sha256={self.sha256[:12]})"
        )

    def _repr_mimebundle_(self, include=None, exclude=None, **kwargs):
        from .notebook.display import mimebundle  # the widget; text and HTML without ipywidgets

        return mimebundle(self, include, exclude)

    def _repr_html_(self) -> str:
        from html import escape

        def rows(specs: Sequence[TensorSpec], kind: str) -> str:
            return "".join(
                f"<tr><td>{kind}</td><td><code>{escape(s.name)}</code></td><td>{s.dtype}</td>"
                f"<td>[{escape(', '.join('?' if d is None else str(d) for d in s.shape))}]</td></tr>"
                for s in specs
            )

        ops = ", ".join(f"{k}&times;{v}" for k, v in list(self.op_counts.items())[:8])
        return (
            f"<div class='edgebench-card'><b>Model</b> <code>{escape(self.name)}</code> "
            f"&middot; {_human_bytes(self.size_bytes)} &middot; {self.n_params:,} parameters "
            f"&middot; opset {self.opset.get('ai.onnx', '?')} &middot; sha256 <code>{self.sha256[:12]}</code>"
            "<table><tr><th></th><th>name</th><th>dtype</th><th>shape</th></tr>"
            f"{rows(self.inputs, 'input')}{rows(self.outputs, 'output')}</table>"
            f"<small>ops: {ops}</small>"
            + (f"<br><small>{escape(self.description)}</small>" if self.description else "")
            + "</div>"
        )


def _human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"


def _spec(value_info: Any) -> TensorSpec:
    from onnx import helper

    t = value_info.type
    if t.HasField("tensor_type"):
        tt = t.tensor_type
        try:
            dtype = helper.tensor_dtype_to_np_dtype(tt.elem_type).name
        except (KeyError, ValueError, TypeError):
            dtype = f"onnx:{tt.elem_type}"
        if dtype == "object":
            dtype = "str"
        if tt.HasField("shape"):
            shape = tuple(
                d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in tt.shape.dim
            )
        else:
            shape = ()
        return TensorSpec(value_info.name, dtype, shape)
    return TensorSpec(value_info.name, f"onnx:{t.WhichOneof('value')}", ())


def _iter_nodes(graph: Any):
    from onnx import AttributeProto

    for node in graph.node:
        yield node
        for attr in node.attribute:
            if attr.type == AttributeProto.GRAPH:
                yield from _iter_nodes(attr.g)
            elif attr.type == AttributeProto.GRAPHS:
                for g in attr.graphs:
                    yield from _iter_nodes(g)


from .loader import load  # noqa: E402  (re-exported: eb.load lives with the Model it makes)
