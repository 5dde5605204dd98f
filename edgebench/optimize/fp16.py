"""Float16: weights and activations in half precision (GPUs).  On a CPU it is measured like
anything else, so where onnxruntime lacks fast fp16 kernels the trial says it is slower."""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from ..errors import ConfigError, OptimizeError
from .base import PassConfig, PassContext, PassOutput, register_pass

if TYPE_CHECKING:  # pragma: no cover
    from ..model import Model

__all__ = ["Float16Config"]


@dataclass(frozen=True)
class Float16Config(PassConfig):
    """Convert float32 weights and compute to float16.

    Parameters
    ----------
    keep_io_types
        Keep float32 model inputs and outputs (casts at the edges), so callers are unchanged.
    op_block_list
        Operator types left in float32.
    """

    stage: ClassVar[int] = 30
    group: ClassVar[str] = "precision"

    keep_io_types: bool = True
    op_block_list: tuple | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.keep_io_types, bool):
            raise ConfigError(f"Float16Config.keep_io_types must be a bool, got {self.keep_io_types!r}")
        if self.op_block_list is not None:
            object.__setattr__(self, "op_block_list", tuple(self.op_block_list))

    def describe(self) -> str:
        parts = ["keep io types" if self.keep_io_types else "fp16 io"]
        if self.op_block_list:
            parts.append("fp32 ops=" + "/".join(self.op_block_list))
        return f"float16({', '.join(parts)})"

    @classmethod
    def space(cls, ctx: PassContext) -> dict[str, list]:
        floats = any(s.dtype == "float32" for s in ctx.baseline.inputs) or ctx.baseline.n_params > 0
        return {"keep_io_types": [True]} if floats else {}


@register_pass(Float16Config)
def _fp16(model: "Model", config: Float16Config, ctx: PassContext) -> PassOutput:
    try:
        from onnxruntime.transformers.float16 import convert_float_to_float16
    except ImportError as e:  # pragma: no cover - ships with onnxruntime
        raise OptimizeError("float16 conversion needs onnxruntime.transformers", "upgrade onnxruntime") from e
    kw = {"keep_io_types": config.keep_io_types}
    if config.op_block_list is not None:
        kw["op_block_list"] = list(config.op_block_list)
    proto = convert_float_to_float16(model.proto, **kw)
    _toposort(proto.graph)  # the converter appends its input casts at the end
    out = model.with_proto(proto)
    notes = []
    if ctx.device == "cpu":
        fp16 = "avx512_fp16" in ctx.cpu.isa
        notes.append("float16 on the CPU: onnxruntime's CPU provider has few float16 kernels "
                     f"(this CPU {'has' if fp16 else 'lacks'} AVX512-FP16), so casts may surround "
                     "most nodes; the measured latency decides")
    return PassOutput(out, {}, notes)


def _toposort(graph) -> None:
    """Reorder ``graph.node`` so every node comes after the producers of its inputs."""
    known = {i.name for i in graph.input} | {t.name for t in graph.initializer} | {""}
    pending, ordered = list(graph.node), []
    while pending:
        rest = []
        for n in pending:
            if all(i in known for i in n.input):
                ordered.append(n)
                known.update(n.output)
            else:
                rest.append(n)
        if len(rest) == len(pending):  # a cycle or a dangling input: leave the rest as they were
            ordered.extend(rest)
            break
        pending = rest
    nodes = [type(n)() for n in ordered]
    for dst, src in zip(nodes, ordered):
        dst.CopyFrom(src)
    del graph.node[:]
    graph.node.extend(nodes)
