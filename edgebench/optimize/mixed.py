"""Mixed precision: int8 everywhere except the layers that cost the accuracy.

Each quantizable compute node gets a sensitivity (how far its quantization moves the
outputs, measured on the calibration inputs); the most sensitive ones stay in float32, as
few as needed for the model to hold the budget on the calibration inputs.  This is how an
int8 model gets back inside the budget where all-int8 misses it.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Mapping

import numpy as np

from ..errors import ConfigError, OptimizeError
from .base import PassConfig, PassContext, PassOutput, register_pass
from .quantize import _COMPUTE, QuantizeConfig, _Reader, prepare_for_quantization, quantize_model

if TYPE_CHECKING:  # pragma: no cover
    from pathlib import Path

    from ..model import Model

__all__ = ["MixedPrecisionConfig", "sensitivities"]

_METHODS = ("auto", "single", "sqnr")


@dataclass(frozen=True)
class MixedPrecisionConfig(PassConfig):
    """Quantize as ``quantize`` says, but keep the most sensitive compute nodes in float32.

    Parameters
    ----------
    quantize
        How the rest of the model is quantized.
    keep_fp32
        How many of the most sensitive nodes stay float32; ``None``: as few as needed for the
        model to hold the accuracy budget on the calibration inputs (fidelity to fp32).
    sensitivity
        ``"single"``: quantize one node at a time and measure how far the outputs move
        (direct, one quantization per node); ``"sqnr"``: one quantization, ranked by the
        signal-to-quantization-noise each node loses (onnxruntime's ``qdq_loss_debug``; static
        QDQ only); ``"auto"``: ``single`` up to 16 nodes, else ``sqnr`` where it applies.
    """

    stage: ClassVar[int] = 30
    group: ClassVar[str] = "precision"

    quantize: QuantizeConfig = field(default_factory=QuantizeConfig)
    keep_fp32: int | None = None
    sensitivity: str = "auto"

    def __post_init__(self) -> None:
        if not isinstance(self.quantize, QuantizeConfig):
            raise ConfigError(f"MixedPrecisionConfig.quantize must be a QuantizeConfig, got {type(self.quantize).__name__}")
        if self.keep_fp32 is not None and (not isinstance(self.keep_fp32, int) or self.keep_fp32 < 0):
            raise ConfigError(f"MixedPrecisionConfig.keep_fp32 must be a non-negative integer or None, "
                              f"got {self.keep_fp32!r}")
        if self.sensitivity not in _METHODS:
            raise ConfigError(f"MixedPrecisionConfig.sensitivity must be one of {_METHODS}, got {self.sensitivity!r}")
        if self.quantize.nodes_to_exclude:
            raise ConfigError("MixedPrecisionConfig chooses the fp32 nodes itself",
                              "drop nodes_to_exclude from its QuantizeConfig, or use QuantizeConfig alone")

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> "MixedPrecisionConfig":
        q = {k.split(".", 1)[1]: v for k, v in params.items() if k.startswith("quantize.")}
        rest = {k: v for k, v in params.items() if not k.startswith("quantize.")}
        return cls(quantize=QuantizeConfig.from_params(q), **rest)

    @classmethod
    def space(cls, ctx: PassContext) -> dict[str, list]:
        qs = QuantizeConfig.space(ctx)
        n = sum(c for op, c in ctx.baseline.op_counts.items() if op in _COMPUTE)
        if not qs or n < 2 or ctx.calibration is None:
            return {}
        return {"keep_fp32": [None], "quantize.mode": qs["mode"], "quantize.types": qs["types"],
                "quantize.per_channel": [False, True]}

    def params(self) -> dict[str, Any]:
        p = super().params()
        p.pop("quantize", None)
        p.update({f"quantize.{k}": v for k, v in self.quantize.params().items()})
        return p

    def describe(self) -> str:
        keep = "auto" if self.keep_fp32 is None else self.keep_fp32
        return f"mixed({self.quantize.describe()}, fp32 kept: {keep})"


def _compute_nodes(model: "Model", config: QuantizeConfig) -> list[str]:
    ops = set(config.op_types) if config.op_types else _COMPUTE
    return [n.name for n in model.proto.graph.node if n.op_type in ops]


@register_pass(MixedPrecisionConfig)
def _mixed(model: "Model", config: MixedPrecisionConfig, ctx: PassContext) -> PassOutput:
    from ..model import load

    notes: list[str] = []
    q = config.quantize
    src = prepare_for_quantization(model, ctx, q.mode, notes)
    prepared = load(src.read_bytes(), name=model.name)
    nodes = _compute_nodes(prepared, q)
    if not nodes:
        raise OptimizeError(f"{model.name!r} has no node {q.describe()} can quantize")
    if config.keep_fp32 is None and ctx.fidelity_check is None:
        raise OptimizeError("MixedPrecisionConfig(keep_fp32=None) needs the optimizer's budget check",
                            "run it through eb.optimize, or set keep_fp32")
    ranked, method = sensitivities(src, prepared, nodes, config, ctx)
    notes.append(f"sensitivity ({method}), most sensitive first: " +
                 ", ".join(f"{n} {v:.3g}" for n, v in ranked[:5]) + (" ..." if len(ranked) > 5 else ""))
    order = [n for n, _ in ranked]

    def build(k: int) -> "Model":
        cfg = dataclasses.replace(q, nodes_to_exclude=tuple(order[:k]))
        return quantize_model(src, model.name, cfg, ctx)

    if config.keep_fp32 is not None:
        k = min(config.keep_fp32, len(order))
        out = build(k)
    else:
        # smallest k that holds the budget on calibration inputs: all-int8 first, then a
        # binary search (k = all nodes is float32 again)
        detail: dict[int, str] = {}
        out = build(0)
        ok, detail[0] = ctx.fidelity_check(out, model)
        k = 0
        if not ok:
            lo, hi, best = 1, len(order), None
            while lo < hi:
                mid = (lo + hi) // 2
                m = build(mid)
                ok, detail[mid] = ctx.fidelity_check(m, model)
                if ok:
                    hi, best = mid, m
                else:
                    lo = mid + 1
            k = lo
            out = best if best is not None and k == hi else build(k)
        if k == 0:
            notes.append(f"all-int8 already holds the budget on the calibration inputs ({detail.get(0, '')})")
        elif k >= len(order):
            raise OptimizeError("no compute node can be int8 inside the accuracy budget on the calibration "
                                f"inputs (even one int8 node: {detail.get(len(order) - 1, 'fails')})",
                                "the model stays float32 under this quantization")
        else:
            notes.append(f"all-int8 misses the budget on the calibration inputs ({detail.get(0, 'checked')}); "
                         f"keeping {k} of {len(order)} compute nodes in float32 holds it")
    if k:
        notes.append(f"float32 nodes: {', '.join(order[:k])}")
    out.source = model.source
    return PassOutput(out, {}, notes)


def sensitivities(src: "Path", prepared: "Model", nodes: list[str], config: MixedPrecisionConfig,
                  ctx: PassContext) -> tuple[list[tuple[str, float]], str]:
    """``[(node, sensitivity)]``, most sensitive first, and the method used."""
    q = config.quantize
    method = config.sensitivity
    sqnr_ok = q.mode == "static" and q.format == "qdq"
    if method == "auto":
        method = "single" if len(nodes) <= 16 or not sqnr_ok else "sqnr"
    if method == "sqnr" and not sqnr_ok:
        raise OptimizeError("sensitivity='sqnr' needs static QDQ quantization", "use sensitivity='single'")
    if ctx.calibration is None:
        raise OptimizeError("mixed precision needs calibration inputs to rank the layers", "pass a dataset")
    if method == "single":
        return _single(src, prepared, nodes, q, ctx), method
    return _sqnr(src, nodes, q, ctx), method


def _outputs(model: "Model", ctx: PassContext, feeds: list[dict]) -> np.ndarray:
    from ..engine import Engine

    eng = Engine(model, "onnxruntime", "cpu", 1, record=False)
    try:
        return np.concatenate([np.concatenate([np.asarray(v).reshape(len(next(iter(f.values()))), -1)
                                               for v in eng.run(f).values()], axis=1) for f in feeds])
    finally:
        eng.close()


def _single(src: "Path", prepared: "Model", nodes: list[str], q: QuantizeConfig, ctx: PassContext) -> list:
    """Quantize each node alone; sensitivity = 1 - cosine similarity of the outputs to fp32."""
    feeds = list(ctx.calibration_batches(16 if ctx.dynamic_batch else 1, limit=64))
    ref = _outputs(prepared, ctx, feeds)
    scores = []
    for n in nodes:
        others = tuple(x for x in nodes if x != n)
        m = quantize_model(src, prepared.name, dataclasses.replace(q, nodes_to_exclude=others), ctx)
        out = _outputs(m, ctx, feeds)
        num = (ref * out).sum(1)
        den = np.linalg.norm(ref, axis=1) * np.linalg.norm(out, axis=1)
        cos = float(np.mean(np.where(den > 0, num / np.where(den > 0, den, 1), 1.0)))
        scores.append((n, 1.0 - cos if np.isfinite(cos) else float("inf")))
    return sorted(scores, key=lambda t: -t[1])


def _sqnr(src: "Path", nodes: list[str], q: QuantizeConfig, ctx: PassContext) -> list:
    """One static QDQ quantization; a node's sensitivity is the SQNR (dB, quantized model
    against float model) lost between its input activation and its output
    (onnxruntime.quantization.qdq_loss_debug); 0 where it cannot be measured."""
    from onnxruntime.quantization import qdq_loss_debug as dbg

    from ..model import load

    qm = quantize_model(src, "sqnr", q, ctx)
    qpath = ctx.path(f"sqnr-{qm.sha256[:12]}.onnx")
    qm.save(qpath)
    fa, qa = ctx.path(f"sqnr-float-{qm.sha256[:8]}.onnx"), ctx.path(f"sqnr-qdq-{qm.sha256[:8]}.onnx")
    dbg.modify_model_output_intermediate_tensors(str(src), str(fa))
    dbg.modify_model_output_intermediate_tensors(str(qpath), str(qa))
    feeds = list(ctx.calibration_batches(1, limit=8))  # every activation of every sample is kept
    f_act = dbg.collect_activations(str(fa), _Reader(feeds))
    q_act = dbg.collect_activations(str(qa), _Reader(feeds))
    err = dbg.compute_activation_error(dbg.create_activation_matching(q_act, f_act))
    sq = {t: v.get("xmodel_err", float("nan")) for t, v in err.items()}
    graph = load(src.read_bytes()).proto.graph
    by_name = {n.name: n for n in graph.node}
    consumers: dict[str, list] = {}
    for n in graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)

    def measured_after(tensor: str) -> float:
        # a Conv fused with its Relu is quantized after the Relu: follow single consumers
        for _ in range(6):
            if tensor in sq:
                return sq[tensor]
            nxt = consumers.get(tensor, [])
            if len(nxt) != 1 or nxt[0].op_type in _COMPUTE:
                break
            tensor = nxt[0].output[0]
        return float("nan")

    scores = []
    for name in nodes:
        node = by_name[name]
        out_db = measured_after(node.output[0])
        in_db = sq.get(node.input[0], float("nan"))
        loss = in_db - out_db if np.isfinite(in_db) else -out_db
        scores.append((name, float(loss) if np.isfinite(loss) else 0.0))
    return sorted(scores, key=lambda t: -t[1])
