"""Model and :func:`load`: ONNX files, bytes, protos and PyTorch modules, validated.

A :class:`Model` is an immutable, validated ONNX graph plus what edgebench needs to know
about it: its signature, content hash and size.  PyTorch modules are exported to ONNX on
load (the TorchScript exporter, so no onnxscript is needed) and keep a reference to the
module, so the ``torch`` backend can run the original.
"""
from __future__ import annotations

import hashlib
import os
import warnings
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

from .errors import ModelLoadError

if TYPE_CHECKING:  # pragma: no cover
    import onnx

__all__ = ["TensorSpec", "Model", "load"]

Dim = "int | str | None"
_PICKLE_SUFFIXES = {".pkl", ".pickle", ".joblib"}
_TORCH_SUFFIXES = {".pt", ".pth", ".ptl", ".bin"}


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
        return _from_proto(proto, name=name or self.name, source=source or self.source)

    # -- display --------------------------------------------------------------------------
    def __repr__(self) -> str:
        ins = ", ".join(str(s) for s in self.inputs)
        outs = ", ".join(str(s) for s in self.outputs)
        return (
            f"Model({self.name!r}, inputs=[{ins}], outputs=[{outs}], "
            f"{_human_bytes(self.size_bytes)}, sha256={self.sha256[:12]})"
        )

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


# --------------------------------------------------------------------------------------------
# load()
# --------------------------------------------------------------------------------------------
def load(
    source: Any,
    *,
    name: str | None = None,
    example_inputs: Any = None,
    input_names: Sequence[str] | None = None,
    output_names: Sequence[str] | None = None,
    dynamic_axes: Mapping[str, Mapping[int, str]] | bool = True,
    opset: int = 17,
) -> Model:
    """Load and validate a model.

    Parameters
    ----------
    source
        A path to an ``.onnx`` file (external data next to it is found), ``"zoo:NAME"``,
        ONNX bytes, an ``onnx.ModelProto``, a ``torch.nn.Module`` (needs ``example_inputs``),
        a TorchScript file, or a :class:`Model` (returned as is).
    name
        Name to give the model; defaults to the graph name or file stem.
    example_inputs
        For PyTorch: a tensor or tuple of tensors used to trace the export.
    input_names, output_names
        For PyTorch: names of the exported inputs and outputs
        (default ``input``/``output``, numbered when there are several).
    dynamic_axes
        For PyTorch: ``True`` makes dim 0 of every input and output a dynamic ``batch``;
        ``False`` keeps all shapes fixed; a mapping is passed to ``torch.onnx.export``.
    opset
        For PyTorch: the ONNX opset to export to.

    Raises
    ------
    ModelLoadError
        The source is missing, unreadable, not a model, or fails validation; the message
        says which and what to do.
    """
    if isinstance(source, Model):
        return source
    if isinstance(source, (str, os.PathLike)):
        s = os.fspath(source)
        if isinstance(s, str) and s.startswith("zoo:"):
            from . import zoo

            return zoo.load(s[4:])
        return _from_path(Path(s), name=name, example_inputs=example_inputs, input_names=input_names,
                          output_names=output_names, dynamic_axes=dynamic_axes, opset=opset)
    if isinstance(source, (bytes, bytearray, memoryview)):
        return _from_bytes(bytes(source), name=name, source="bytes")
    if type(source).__module__.startswith("onnx") and type(source).__name__ == "ModelProto":
        return _from_proto(source, name=name, source="onnx.ModelProto")
    if _is_torch_module(source):
        return _from_torch(source, example_inputs, name=name, input_names=input_names,
                           output_names=output_names, dynamic_axes=dynamic_axes, opset=opset)
    raise ModelLoadError(
        f"cannot load a model from a {type(source).__name__}",
        "pass a path to an .onnx file, ONNX bytes, an onnx.ModelProto, or a torch.nn.Module "
        "with example_inputs=(x,)",
    )


def _is_torch_module(obj: Any) -> bool:
    import sys

    torch = sys.modules.get("torch")
    return torch is not None and isinstance(obj, torch.nn.Module)


def _from_path(path: Path, *, name: str | None, **torch_kw: Any) -> Model:
    if not path.exists():
        raise ModelLoadError(
            f"no such file: {path}",
            "check the path; built-in models load with eb.zoo.load(NAME) or 'zoo:NAME'",
        )
    if path.is_dir():
        onnx_files = sorted(p.name for p in path.glob("*.onnx"))
        hint = f"it holds {', '.join(onnx_files)}; pass one of them" if onnx_files else "pass an .onnx file"
        raise ModelLoadError(f"{path} is a directory, not a model file", hint)
    suffix = path.suffix.lower()
    if suffix in _PICKLE_SUFFIXES:
        raise ModelLoadError(
            f"{path.name} is a pickle file; edgebench never unpickles arbitrary objects",
            "export the model to ONNX (torch.onnx.export) or pass the module itself to eb.load",
        )
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ModelLoadError(f"cannot read {path}: {e.strerror or e}", "check permissions") from None
    stem_name = name or path.stem
    if suffix in _TORCH_SUFFIXES or data[:4] == b"PK\x03\x04" or data[:1] == b"\x80":
        return _from_torch_file(path, data, name=stem_name, **torch_kw)
    return _from_bytes(data, name=name, source=str(path), base_dir=path.parent, default_name=path.stem,
                       path=path)


def _from_bytes(data: bytes, *, name: str | None, source: str, base_dir: Path | None = None,
                default_name: str | None = None, path: Path | None = None) -> Model:
    where = source if source != "bytes" else "the bytes given"
    if not data:
        raise ModelLoadError(f"{where} is empty (0 bytes)", "re-export or re-download the model")
    if data[:1] == b"\x80" or data[:4] == b"PK\x03\x04":
        raise ModelLoadError(
            f"{where} looks like a pickle / PyTorch archive, not ONNX",
            "save it to a .pt file and load that path (only weights-only-safe content is read), "
            "or export it to ONNX",
        )
    import onnx
    from google.protobuf.message import DecodeError

    proto = onnx.ModelProto()
    try:
        proto.ParseFromString(data)
    except (DecodeError, RuntimeError, ValueError) as e:
        kind = "text" if _looks_like_text(data) else "binary data"
        raise ModelLoadError(
            f"{where} is not an ONNX model: it is {kind} that does not parse as an ONNX protobuf "
            f"({e}); the file may be truncated or corrupt",
            "re-export the model with torch.onnx.export or check the download",
        ) from None
    if not proto.HasField("graph") or proto.ir_version <= 0 or not proto.opset_import:
        kind = "text" if _looks_like_text(data) else "data"
        raise ModelLoadError(
            f"{where} holds {kind} that is not an ONNX model (no graph, IR version or opset)",
            "pass an .onnx file exported by torch.onnx.export, tf2onnx or similar",
        )
    if _has_external_data(proto):
        if base_dir is None:
            raise ModelLoadError(
                "the model stores weights in external data files, which cannot be found from bytes",
                "load it from its path so the files next to it are found",
            )
        from onnx.external_data_helper import load_external_data_for_model

        try:
            load_external_data_for_model(proto, str(base_dir))
        except (OSError, ValueError, onnx.checker.ValidationError) as e:
            raise ModelLoadError(
                f"external data of {where} is missing or unreadable: {e}",
                "keep the external data file(s) next to the .onnx file, with their original names",
            ) from None
        data = proto.SerializeToString()
        path = None  # the file alone is not the model: keep the weights-inlined bytes
    return _from_proto(proto, name=name or proto.graph.name or default_name, source=source, data=data,
                       path=path)


def _looks_like_text(data: bytes) -> bool:
    head = data[:512]
    try:
        head.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return all(b in b"\t\n\r" or 32 <= b < 127 or b >= 128 for b in head)


def _has_external_data(proto: Any) -> bool:
    from onnx import TensorProto

    return any(t.data_location == TensorProto.EXTERNAL for t in proto.graph.initializer)


def _from_proto(proto: Any, *, name: str | None, source: str, data: bytes | None = None,
                path: Path | None = None) -> Model:
    if data is None:
        try:
            data = proto.SerializeToString()
        except ValueError as e:  # > 2 GB
            raise ModelLoadError(f"cannot serialize the model: {e}", "models over 2 GB are not supported yet") from None
    validate(proto, where=source, data=data)
    model = Model(None if path is not None else data, path=path, name=name, source=source, proto=proto)
    model.sha256  # noqa: B018 - hash now, while the bytes are at hand
    model.drop_proto()
    return model


# --------------------------------------------------------------------------------------------
# validation
# --------------------------------------------------------------------------------------------
def validate(proto: Any, *, where: str = "model", data: bytes | None = None) -> None:
    """Check a ``ModelProto``: opsets, onnx.checker, strict shape inference, operator support.

    ``data``, the proto serialized, saves the checker a copy.

    Raises :class:`ModelLoadError` naming the problem.
    """
    import onnx

    max_opset = onnx.defs.onnx_opset_version()
    for op in proto.opset_import:
        if op.domain in ("", "ai.onnx") and op.version > max_opset:
            raise ModelLoadError(
                f"{where} uses ONNX opset {op.version}, newer than this installation supports "
                f"(onnx {onnx.__version__} knows up to opset {max_opset})",
                "upgrade onnx and onnxruntime, or re-export with a lower opset_version",
            )
    _check_operators(proto, where)
    try:
        # full_check: strict type and shape inference too, in C++, on the bytes we already have
        onnx.checker.check_model(data if data is not None else proto, full_check=True)
    except onnx.checker.ValidationError as e:
        msg = str(e).strip().splitlines()[0] if str(e).strip() else repr(e)
        raise ModelLoadError(f"{where} is not a valid ONNX graph: {msg}", "fix or re-export the model") from None
    except onnx.shape_inference.InferenceError as e:
        msg = str(e).strip().splitlines()[0]
        raise ModelLoadError(
            f"{where} fails ONNX shape/type inference: {msg}",
            "the graph connects tensors of incompatible types or shapes; fix or re-export it",
        ) from None
    except ValueError as e:  # e.g. > 2GB protos
        raise ModelLoadError(f"{where} could not be checked: {e}") from None


_BACKEND_OPS: set[tuple[str, str]] | None = None


def _backend_ops() -> set[tuple[str, str]]:
    """(domain, op_type) pairs onnxruntime has kernels for (listing them costs ~6 MB, so lazily)."""
    global _BACKEND_OPS
    if _BACKEND_OPS is None:
        known: set[tuple[str, str]] = set()
        try:
            from onnxruntime.capi import _pybind_state as C

            for k in C.get_all_opkernel_def():
                known.add((k.domain if k.domain != "ai.onnx" else "", k.op_name))
        except (ImportError, AttributeError):  # pragma: no cover - onnxruntime is a core dependency
            pass
        _BACKEND_OPS = known
    return _BACKEND_OPS


def _check_operators(proto: Any, where: str) -> None:
    """Refuse, by name, an operator that no installed backend can run.

    Standard ONNX operators are checked against onnx's schemas (onnxruntime implements the
    standard set up to its opset; a gap surfaces as a compile error naming the node); any
    other domain against onnxruntime's kernel registry and the model's local functions.
    """
    import onnx

    local = {(f.domain, f.name) for f in proto.functions}
    for node in _iter_nodes(proto.graph):
        dom = "" if node.domain in ("", "ai.onnx") else node.domain
        if (dom, node.op_type) in local:
            continue
        if dom == "" and onnx.defs.has(node.op_type, ""):
            continue
        if dom != "" and (dom, node.op_type) in _backend_ops():
            continue
        label = f"{dom}::{node.op_type}" if dom else node.op_type
        raise ModelLoadError(
            f"{where} uses operator {label!s} (node {node.name or '?'!r}) that no installed backend supports",
            "install a backend that implements it (e.g. a newer onnxruntime) or replace the operator",
        )


# --------------------------------------------------------------------------------------------
# PyTorch
# --------------------------------------------------------------------------------------------
def _import_torch(what: str) -> Any:
    try:
        import torch
    except ImportError:
        raise ModelLoadError(
            f"{what} needs PyTorch, which is not installed",
            "pip install torch==2.13.0 (or export the model to ONNX elsewhere)",
        ) from None
    return torch


def _from_torch_file(path: Path, data: bytes, *, name: str, example_inputs: Any = None, **kw: Any) -> Model:
    torch = _import_torch(f"loading {path.name}")
    import io
    import zipfile

    is_zip = zipfile.is_zipfile(io.BytesIO(data))
    if is_zip:
        names = zipfile.ZipFile(io.BytesIO(data)).namelist()
        if any("/code/" in n or n.startswith("code/") for n in names):
            try:
                module = torch.jit.load(io.BytesIO(data), map_location="cpu")
            except (RuntimeError, ValueError) as e:
                raise ModelLoadError(f"{path.name} is a broken TorchScript archive: {e}") from None
            return _from_torch(module, example_inputs, name=name, source=f"torchscript:{path}", **kw)
    elif data[:1] != b"\x80":
        raise ModelLoadError(
            f"{path.name} is neither a PyTorch archive nor a pickle (unknown format)",
            "pass an .onnx file, a TorchScript file, or the torch.nn.Module itself",
        )
    try:
        obj = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as e:  # UnpicklingError, RuntimeError, EOFError ... all mean the same to the user
        raise ModelLoadError(
            f"refusing to load {path.name}: it is not weights-only content "
            f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); "
            "edgebench never unpickles arbitrary objects",
            "save a TorchScript module (torch.jit.save) or export to ONNX, or build the module in code "
            "and pass it to eb.load with example_inputs",
        ) from None
    raise ModelLoadError(
        f"{path.name} holds a {type(obj).__name__} of weights (a state dict), not a model",
        "build the module in code, call module.load_state_dict(torch.load(path, weights_only=True)), "
        "then eb.load(module, example_inputs=(x,))",
    )


def _from_torch(module: Any, example_inputs: Any, *, name: str | None, input_names: Sequence[str] | None,
                output_names: Sequence[str] | None, dynamic_axes: Any, opset: int,
                source: str | None = None) -> Model:
    torch = _import_torch("exporting a PyTorch module")
    import io

    if example_inputs is None:
        raise ModelLoadError(
            f"exporting {type(module).__name__} to ONNX needs example inputs",
            "pass example_inputs=(x,) with a tensor of the shape the model takes",
        )
    if not isinstance(example_inputs, tuple):
        example_inputs = (example_inputs,)
    if not all(isinstance(x, torch.Tensor) for x in example_inputs):
        raise ModelLoadError("example_inputs must be torch tensors", "e.g. example_inputs=(torch.zeros(1, 784),)")
    module = module.eval()
    with torch.inference_mode():
        try:
            out = module(*example_inputs)
        except Exception as e:
            raise ModelLoadError(
                f"{type(module).__name__} fails on the example inputs: {type(e).__name__}: {e}",
                "check the example input shapes and dtypes",
            ) from None
    n_out = len(out) if isinstance(out, (tuple, list)) else 1
    in_names = list(input_names) if input_names else (
        ["input"] if len(example_inputs) == 1 else [f"input_{i}" for i in range(len(example_inputs))])
    out_names = list(output_names) if output_names else (
        ["output"] if n_out == 1 else [f"output_{i}" for i in range(n_out)])
    if dynamic_axes is True:
        axes = {n: {0: "batch"} for n in in_names + out_names}
    elif dynamic_axes is False or dynamic_axes is None:
        axes = None
    else:
        axes = dict(dynamic_axes)
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(module, example_inputs, buf, input_names=in_names, output_names=out_names,
                              dynamic_axes=axes, opset_version=opset, do_constant_folding=True, dynamo=False)
        except Exception as e:
            raise ModelLoadError(
                f"torch.onnx.export failed for {type(module).__name__}: {type(e).__name__}: {str(e).splitlines()[0]}",
                "simplify the forward (no data-dependent Python control flow) or export it yourself",
            ) from None
    model = _from_bytes(buf.getvalue(), name=name or type(module).__name__,
                        source=source or f"torch:{type(module).__name__}")
    model._torch_module = module
    return model
