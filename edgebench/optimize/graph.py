"""Graph optimization: onnxruntime's optimizer run offline (the optimized model saved and
used as the new model) and onnxslim's simplification (constant folding, dead code, fusions)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from ..errors import ConfigError, OptimizeError
from .base import PassConfig, PassContext, PassOutput, register_pass

if TYPE_CHECKING:  # pragma: no cover
    from ..model import Model

__all__ = ["GraphOptConfig"]

_LEVELS = ("basic", "extended", "all")


@dataclass(frozen=True)
class GraphOptConfig(PassConfig):
    """Rewrite the graph ahead of time.

    Parameters
    ----------
    level
        onnxruntime optimization level applied offline: ``"basic"`` and ``"extended"`` give
        a portable model; ``"all"`` adds layout transforms specific to this CPU (the model
        then only runs well here).
    offline
        Run onnxruntime's optimizer and keep the optimized graph (``optimized_model_path``).
    slim
        Simplify with onnxslim first (constant folding, dead nodes, shape-op cleanup).
    """

    stage: ClassVar[int] = 20
    group: ClassVar[str] = "graph"

    level: str = "extended"
    offline: bool = True
    slim: bool = False

    def __post_init__(self) -> None:
        if self.level not in _LEVELS:
            raise ConfigError(f"GraphOptConfig.level must be one of {_LEVELS}, got {self.level!r}")
        if not self.offline and not self.slim:
            raise ConfigError("GraphOptConfig with offline=False and slim=False does nothing",
                              "set offline=True, slim=True or both")

    def describe(self) -> str:
        parts = ([f"ort {self.level} offline"] if self.offline else []) + (["onnxslim"] if self.slim else [])
        return f"graph({', '.join(parts)})"

    @classmethod
    def space(cls, ctx: PassContext) -> dict[str, list]:
        # Only onnxslim is searched: onnxruntime applies the same graph optimizations when a
        # session is created, so saving them offline changes load time, not latency, and an
        # offline-fused graph (FusedGemm, NCHWc) can no longer be quantized.
        return {"offline": [False], "slim": [True]} if _have_onnxslim() else {}


def _have_onnxslim() -> bool:
    from importlib.util import find_spec

    return find_spec("onnxslim") is not None


@register_pass(GraphOptConfig)
def _graph(model: "Model", config: GraphOptConfig, ctx: PassContext) -> PassOutput:
    notes: list[str] = []
    if config.slim:
        if not _have_onnxslim():
            raise OptimizeError("GraphOptConfig(slim=True) needs onnxslim, which is not installed",
                                "pip install onnxslim, or use slim=False")
        import onnxslim

        before = sum(model.op_counts.values())
        proto = onnxslim.slim(model.proto)
        model = model.with_proto(proto)
        notes.append(f"onnxslim: {before} -> {sum(model.op_counts.values())} nodes")
    if config.offline:
        from ..backends import get as get_backend
        from ..model import load

        path = ctx.path(f"graph-{config.level}-{model.sha256[:12]}.onnx")
        before = sum(model.op_counts.values())
        get_backend("onnxruntime").compile(model, "cpu", threads=1, graph_optimization_level=config.level,
                                           optimized_model_path=str(path))
        optimized = load(path.read_bytes(), name=model.name)
        optimized.source = model.source
        notes.append(f"onnxruntime {config.level} optimization offline: {before} -> "
                     f"{sum(optimized.op_counts.values())} nodes")
        model = optimized
    session: dict[str, Any] = {}
    return PassOutput(model, session, notes)
