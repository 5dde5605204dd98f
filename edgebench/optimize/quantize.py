"""Int8 quantization with onnxruntime.quantization: dynamic, or static (QDQ / QOperator)
with MinMax / Entropy / Percentile calibration on the calibration inputs."""
from __future__ import annotations

import contextlib
import functools
import hashlib
import io
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Mapping

import numpy as np

from ..errors import ConfigError, OptimizeError
from .base import PassConfig, PassContext, PassOutput, register_pass

if TYPE_CHECKING:  # pragma: no cover
    from ..model import Model

__all__ = ["QuantizeConfig", "quantize_model", "prepare_for_quantization", "quantized_nodes"]

_TYPES = ("u8s8", "s8s8", "u8u8")
_CALIB = ("minmax", "entropy", "percentile")
# ops whose int8 kernels do the arithmetic (the rest only move int8 data around)
_COMPUTE = {"Conv", "MatMul", "Gemm", "Attention", "LSTM", "ConvTranspose"}
_DYNAMIC_OPS = {"Conv", "MatMul", "Attention", "LSTM", "Gather", "EmbedLayerNormalization"}


@dataclass(frozen=True)
class QuantizeConfig(PassConfig):
    """Quantize weights (and activations) to 8 bits.

    Parameters
    ----------
    mode
        ``"static"``: activation ranges calibrated on the calibration inputs ahead of time;
        ``"dynamic"``: ranges computed per request (no calibration; MatMul-heavy models).
    format
        Static only: ``"qdq"`` (QuantizeLinear/DequantizeLinear pairs that onnxruntime fuses)
        or ``"qoperator"`` (QLinearConv, QLinearMatMul, ...).
    types
        Activation and weight types: ``"u8s8"``, ``"s8s8"`` or ``"u8u8"`` (dynamic: activations
        are always uint8, so ``u8s8`` or ``u8u8``).
    per_channel
        One scale per output channel of each weight.
    reduce_range
        7-bit weights: avoids saturation in u8s8 kernels on x86 CPUs without VNNI.
    calibration
        Static only: ``"minmax"``, ``"entropy"`` or ``"percentile"``.
    nodes_to_exclude
        Node names left in float32.
    op_types
        Operator types to quantize (default: all onnxruntime supports).
    calibration_samples
        At most this many calibration samples are used.
    """

    stage: ClassVar[int] = 30
    group: ClassVar[str] = "precision"

    mode: str = "static"
    format: str = "qdq"
    types: str = "u8s8"
    per_channel: bool = False
    reduce_range: bool = False
    calibration: str = "minmax"
    nodes_to_exclude: tuple = ()
    op_types: tuple | None = None
    calibration_samples: int = 128

    def __post_init__(self) -> None:
        def bad(field: str, allowed: Any) -> ConfigError:
            return ConfigError(f"QuantizeConfig.{field} must be one of {allowed}, got {getattr(self, field)!r}")

        if self.mode not in ("static", "dynamic"):
            raise bad("mode", ("static", "dynamic"))
        if self.format not in ("qdq", "qoperator"):
            raise bad("format", ("qdq", "qoperator"))
        if self.types not in _TYPES:
            raise bad("types", _TYPES)
        if self.calibration not in _CALIB:
            raise bad("calibration", _CALIB)
        if not isinstance(self.calibration_samples, int) or self.calibration_samples < 1:
            raise ConfigError(f"QuantizeConfig.calibration_samples must be a positive integer, "
                              f"got {self.calibration_samples!r}")
        if self.mode == "dynamic":
            if self.types == "s8s8":
                raise ConfigError("dynamic quantization computes uint8 activations, so types='s8s8' is impossible",
                                  "use types='u8s8' or 'u8u8', or mode='static'")
            if self.calibration != "minmax" or self.format != "qdq":
                raise ConfigError("calibration and format apply to static quantization only",
                                  "drop them, or use mode='static'")
        object.__setattr__(self, "nodes_to_exclude", tuple(self.nodes_to_exclude))
        if self.op_types is not None:
            object.__setattr__(self, "op_types", tuple(self.op_types))

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> "QuantizeConfig":
        p = dict(params)
        if p.get("mode") == "dynamic":
            for k in ("format", "calibration", "calibration_samples"):
                p.pop(k, None)
            if p.get("types") == "s8s8":
                p["types"] = "u8s8"
        return cls(**p)

    @classmethod
    def space(cls, ctx: PassContext) -> dict[str, list]:
        ops = set(ctx.baseline.op_counts)
        if not ops & _COMPUTE:
            return {}
        modes = []
        if ops & (_DYNAMIC_OPS | {"Gemm"}):
            modes.append("dynamic")
        if ctx.calibration is not None:
            modes.append("static")
        if not modes:
            return {}
        sp: dict[str, list] = {"mode": modes, "format": ["qdq", "qoperator"], "types": ["u8s8", "s8s8"],
                               "per_channel": [False, True], "calibration": ["minmax", "entropy"]}
        if ctx.cpu.arch.lower() in ("x86_64", "amd64") and not ctx.cpu.has_vnni:
            sp["reduce_range"] = [False, True]  # u8s8 saturates in pre-VNNI kernels
        if ctx.cpu.arch.lower() not in ("x86_64", "amd64"):
            sp["types"].append("u8u8")
        return sp

    def describe(self) -> str:
        if self.mode == "dynamic":
            parts = ["dynamic", self.types]
        else:
            parts = ["static", self.format, self.types, self.calibration]
        parts += [k for k in ("per_channel", "reduce_range") if getattr(self, k)]
        if self.nodes_to_exclude:
            parts.append(f"{len(self.nodes_to_exclude)} nodes fp32")
        if self.op_types:
            parts.append("ops=" + "/".join(self.op_types))
        return f"quantize({', '.join(parts)})"


# --------------------------------------------------------------------------------------------
# the handler and its building blocks (mixed precision reuses them)
# --------------------------------------------------------------------------------------------
@register_pass(QuantizeConfig)
def _quantize(model: "Model", config: QuantizeConfig, ctx: PassContext) -> PassOutput:
    notes: list[str] = []
    src = prepare_for_quantization(model, ctx, config.mode, notes)
    out = quantize_model(src, model.name, config, ctx)
    q = quantized_nodes(out)
    if not q:
        notes.append("onnxruntime quantized no compute node of this model (nothing to gain)")
    else:
        notes.append(f"{len(q)} compute nodes int8 ({', '.join(sorted(set(q.values())))})")
    out.source = model.source
    return PassOutput(out, {}, notes)


def prepare_for_quantization(model: "Model", ctx: PassContext, mode: str, notes: list[str]) -> Path:
    """Name every node; for static mode run onnxruntime's quantization pre-processing (shape
    inference and basic optimization); for dynamic mode turn Gemm into MatMul+Add (dynamic
    quantization has no Gemm kernel).  Returns the path of the prepared model."""
    import onnx

    proto = onnx.ModelProto()
    proto.CopyFrom(model.proto)
    seen: set[str] = set()
    for i, n in enumerate(proto.graph.node):
        if not n.name or n.name in seen:
            n.name = f"{n.op_type}_{i}"
        seen.add(n.name)
    digest = hashlib.sha256(proto.SerializeToString()).hexdigest()[:16]
    raw, pre = ctx.path(f"prep-{digest}-raw.onnx"), ctx.path(f"prep-{digest}.onnx")
    out = ctx.path(f"prep-{digest}-{mode}.onnx")
    if out.is_file():
        notes.extend(_PREP_NOTES.get(str(out), []))
        return out
    mine: list[str] = []
    onnx.save(proto, raw)
    if mode == "dynamic":
        # Dynamic quantization needs no shapes, and measured, the pre-processed graph runs
        # slower once quantized (tiny-bert: 8.2 ms vs 6.5 ms): quantize the model as it is.
        src = raw
    else:
        # In a child process, in the work dir: when symbolic shape inference gives up, onnxruntime
        # writes sym_shape_infer_temp.onnx and its data files into the current directory.
        import subprocess
        import sys

        proc = subprocess.run([sys.executable, "-m", "onnxruntime.quantization.preprocess",
                               "--input", str(raw), "--output", str(pre)],
                              cwd=str(raw.parent), capture_output=True, text=True, timeout=600)
        if proc.returncode == 0 and pre.is_file():
            src = pre
        else:  # pre-processing is an improvement, not a requirement
            last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            mine.append(f"quantization pre-processing skipped ({last[:160]})")
            src = raw
    prepared = onnx.load(str(src))
    if mode == "dynamic":
        k = _gemm_to_matmul(prepared)
        if k:
            mine.append(f"{k} Gemm nodes rewritten as MatMul+Add for dynamic quantization")
    onnx.save(prepared, out)
    _PREP_NOTES[str(out)] = mine
    notes.extend(mine)
    return out


_PREP_NOTES: dict[str, list[str]] = {}


def quantize_model(src: Path, name: str, config: QuantizeConfig, ctx: PassContext) -> "Model":
    """Quantize the prepared model file ``src`` as ``config`` says; returns the new Model."""
    from onnxruntime import quantization as q

    from ..model import load

    _quiet()
    key = hashlib.sha256((str(src) + config.describe() + repr(config)).encode()).hexdigest()[:16]
    dst = ctx.path(f"quant-{key}.onnx")
    act = {"u": q.QuantType.QUInt8, "s": q.QuantType.QInt8}[config.types[0]]
    wt = {"u": q.QuantType.QUInt8, "s": q.QuantType.QInt8}[config.types[2]]
    common = dict(op_types_to_quantize=list(config.op_types) if config.op_types else None,
                  per_channel=config.per_channel, reduce_range=config.reduce_range,
                  nodes_to_exclude=list(config.nodes_to_exclude) or None)
    try:
        if config.mode == "dynamic":
            q.quantize_dynamic(str(src), str(dst), weight_type=wt, **common)
        else:
            if ctx.calibration is None:
                raise OptimizeError("static quantization needs calibration inputs and none were given",
                                    "pass a dataset, or use QuantizeConfig(mode='dynamic')")
            method = {"minmax": q.CalibrationMethod.MinMax, "entropy": q.CalibrationMethod.Entropy,
                      "percentile": q.CalibrationMethod.Percentile}[config.calibration]
            fmt = q.QuantFormat.QDQ if config.format == "qdq" else q.QuantFormat.QOperator
            batch = 16 if ctx.dynamic_batch else 1
            reader = _Reader(list(ctx.calibration_batches(batch, limit=config.calibration_samples)))
            # tensor ranges depend on the model, method, op types and samples only, not on the
            # nodes excluded: calibrate once, reuse (mixed precision quantizes many times)
            ck = hashlib.sha256(f"{src.name}|{config.calibration}|{config.op_types}|{config.calibration_samples}|{batch}"
                                .encode()).hexdigest()[:16]
            if _has_calibration_cache():
                common["calibration_cache_path"] = str(ctx.path(f"calib-{ck}.json"))
            with contextlib.redirect_stdout(io.StringIO()):  # entropy calibration print()s its progress
                q.quantize_static(str(src), str(dst), reader, quant_format=fmt, activation_type=act,
                                  weight_type=wt, calibrate_method=method, **common)
    except OptimizeError:
        raise
    except Exception as e:
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise OptimizeError(f"onnxruntime could not quantize {name!r} with {config.describe()}: "
                            f"{type(e).__name__}: {msg[:300]}", "this candidate is skipped") from e
    return load(dst.read_bytes(), name=name)


@functools.lru_cache(maxsize=1)
def _has_calibration_cache() -> bool:
    """onnxruntime >= 1.23 can save and reuse calibration ranges."""
    import inspect

    from onnxruntime.quantization import quantize_static

    return "calibration_cache_path" in inspect.signature(quantize_static).parameters


class _Reader:
    """onnxruntime's CalibrationDataReader over a list of feeds (rewindable)."""

    def __init__(self, feeds: list[dict[str, np.ndarray]]):
        self.feeds = feeds
        self._it = iter(feeds)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._it, None)

    def rewind(self) -> None:
        self._it = iter(self.feeds)

    def __iter__(self):  # qdq_loss_debug.collect_activations iterates
        return iter(self.feeds)


def quantized_nodes(model: "Model") -> dict[str, str]:
    """``{node name: op type}`` of the compute nodes that run in int8 in ``model``.

    QOperator/dynamic models show integer ops (QLinearConv, MatMulInteger, ...); in QDQ models a
    compute node counts when a DequantizeLinear feeds its weight.
    """
    g = model.proto.graph
    out: dict[str, str] = {}
    producers = {o: n for n in g.node for o in n.output}
    for n in g.node:
        if n.op_type.startswith("QLinear") and n.op_type[7:] in _COMPUTE | {"Gemm"} or \
                n.op_type in ("MatMulInteger", "ConvInteger", "QGemm", "DynamicQuantizeMatMul", "QAttention",
                              "MatMulIntegerToFloat", "DynamicQuantizeLSTM"):
            out[n.name] = n.op_type
        elif n.op_type in _COMPUTE and len(n.input) > 1:
            p = producers.get(n.input[1])
            if p is not None and p.op_type == "DequantizeLinear":
                out[n.name] = n.op_type
    return out


def _gemm_to_matmul(proto: Any) -> int:
    """Rewrite plain Gemm (alpha=beta=1, no transA, constant B) as MatMul (+ Add): dynamic
    quantization only has a MatMul kernel.  Returns how many were rewritten."""
    from onnx import helper, numpy_helper

    inits = {t.name: t for t in proto.graph.initializer}
    new_nodes, count = [], 0
    for n in proto.graph.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in n.attribute}
        if (n.op_type != "Gemm" or attrs.get("transA", 0) or attrs.get("alpha", 1.0) != 1.0
                or attrs.get("beta", 1.0) != 1.0 or n.input[1] not in inits):
            new_nodes.append(n)
            continue
        b = n.input[1]
        if attrs.get("transB", 0):
            w = numpy_helper.to_array(inits[b]).T.copy()
            b = f"{b}_T_{count}"
            proto.graph.initializer.append(numpy_helper.from_array(w, b))
        has_c = len(n.input) > 2 and n.input[2]
        mm_out = n.output[0] + "_mm" if has_c else n.output[0]
        new_nodes.append(helper.make_node("MatMul", [n.input[0], b], [mm_out], name=n.name + "_MatMul"))
        if has_c:
            new_nodes.append(helper.make_node("Add", [mm_out, n.input[2]], [n.output[0]], name=n.name + "_Add"))
        count += 1
    if count:
        del proto.graph.node[:]
        proto.graph.node.extend(new_nodes)
        used = {i for n in proto.graph.node for i in n.input}
        keep = [t for t in proto.graph.initializer if t.name in used]
        del proto.graph.initializer[:]
        proto.graph.initializer.extend(keep)
    return count


def _quiet() -> None:
    """onnxruntime.quantization logs each step at INFO/WARNING; keep it to errors."""
    for name in ("onnxruntime.quantization", "root"):
        logging.getLogger(name).setLevel(logging.ERROR)
