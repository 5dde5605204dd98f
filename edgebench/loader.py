"""load(): ONNX files, bytes, protos, TorchScript files and PyTorch modules, validated.

Bad input of every kind (missing, a directory, empty, truncated, random bytes, text, a
protobuf that is no model, a future opset, missing external data, pickles) is refused with
a :class:`~edgebench.errors.ModelLoadError` that says what to do.  Pickle-based files are
never unpickled beyond what ``torch.load(weights_only=True)`` allows.
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any, Mapping, Sequence

from .errors import ModelLoadError
from .model import Model
from .validate import validate

__all__ = ["load"]

_PICKLE_SUFFIXES = {".pkl", ".pickle", ".joblib"}
_TORCH_SUFFIXES = {".pt", ".pth", ".ptl", ".bin"}


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
