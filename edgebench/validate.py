"""Model validation: opsets, onnx's checker with strict shape inference, operator support."""
from __future__ import annotations

from typing import Any

from .errors import ModelLoadError
from .model import _iter_nodes

__all__ = ["validate"]


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
