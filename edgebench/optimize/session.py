"""Session tuning: intra/inter-op threads, execution mode, graph level, memory pattern, IOBinding.

The model is left as it is; the pass only asks for engine options, which the evaluator
merges into the :class:`~edgebench.Engine` it measures (and ``res.engine()`` reuses).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Mapping

from ..errors import ConfigError
from .base import PassConfig, PassContext, PassOutput, register_pass

if TYPE_CHECKING:  # pragma: no cover
    from ..model import Model

__all__ = ["SessionConfig"]

_LEVELS = ("disable", "basic", "extended", "all")


@dataclass(frozen=True)
class SessionConfig(PassConfig):
    """Engine settings for onnxruntime.

    Parameters
    ----------
    threads
        Intra-op threads; ``None`` keeps the default (the user's ``threads``, else the backend's).
    inter_op_threads
        Threads between independent nodes (used with ``execution_mode="parallel"``).
    execution_mode
        ``"sequential"`` or ``"parallel"`` (independent branches run concurrently).
    graph_level
        onnxruntime graph optimization level; ``None`` keeps ``"all"``.
    mem_pattern
        onnxruntime's memory pattern planning; ``None`` keeps the default (on).
    io_binding
        Run through IOBinding with preallocated outputs.
    """

    stage: ClassVar[int] = 90
    group: ClassVar[str] = "session"

    threads: int | None = None
    inter_op_threads: int | None = None
    execution_mode: str = "sequential"
    graph_level: str | None = None
    mem_pattern: bool | None = None
    io_binding: bool = False

    def __post_init__(self) -> None:
        for name in ("threads", "inter_op_threads"):
            v = getattr(self, name)
            if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 1):
                raise ConfigError(f"SessionConfig.{name} must be a positive integer or None, got {v!r}")
        if self.execution_mode not in ("sequential", "parallel"):
            raise ConfigError(f"SessionConfig.execution_mode must be 'sequential' or 'parallel', "
                              f"got {self.execution_mode!r}")
        if self.graph_level is not None and self.graph_level not in _LEVELS:
            raise ConfigError(f"SessionConfig.graph_level must be one of {_LEVELS} or None, got {self.graph_level!r}")
        if self.inter_op_threads is not None and self.execution_mode != "parallel":
            raise ConfigError("SessionConfig.inter_op_threads only applies to execution_mode='parallel'",
                              "set execution_mode='parallel' or drop inter_op_threads")

    @classmethod
    def irrelevant(cls, params: Mapping[str, Any]) -> set[str]:
        return set() if params.get("execution_mode") == "parallel" else {"inter_op_threads"}

    @classmethod
    def space(cls, ctx: PassContext) -> dict[str, list]:
        if ctx.device != "cpu":
            return {"io_binding": [False, True]}
        cores = max(1, ctx.cpu.physical_cores)
        # the user's thread count is a constraint, not a choice
        threads = [None] if ctx.threads is not None else sorted({1, cores, max(1, cores // 2)})
        sp: dict[str, list] = {"threads": threads, "io_binding": [False, True]}
        if _has_branches(ctx.baseline) and cores > 1:
            sp["execution_mode"] = ["sequential", "parallel"]
        return sp

    def is_noop(self) -> bool:
        return not self.params()

    def describe(self) -> str:
        parts = [] if self.threads is None else [f"threads={self.threads}"]
        if self.execution_mode == "parallel":
            parts.append("parallel" + (f"x{self.inter_op_threads}" if self.inter_op_threads else ""))
        if self.graph_level is not None:
            parts.append(f"graph={self.graph_level}")
        if self.mem_pattern is not None:
            parts.append("mem_pattern" if self.mem_pattern else "no mem_pattern")
        if self.io_binding:
            parts.append("iobinding")
        return f"session({', '.join(parts) or 'default'})"

    def options(self) -> dict[str, Any]:
        """The ``Engine(options=...)`` this config asks for."""
        opts: dict[str, Any] = {}
        if self.execution_mode != "sequential":
            opts["execution_mode"] = self.execution_mode
        if self.inter_op_threads is not None:
            opts["inter_op_threads"] = self.inter_op_threads
        if self.graph_level is not None:
            opts["graph_optimization_level"] = self.graph_level
        if self.mem_pattern is not None:
            opts["enable_mem_pattern"] = self.mem_pattern
        if self.io_binding:
            opts["io_binding"] = True
        return opts


def _has_branches(model: "Model") -> bool:
    """Whether some node output feeds two or more nodes (parallel execution can pay only then)."""
    uses: dict[str, int] = {}
    for n in model.proto.graph.node:
        for i in n.input:
            uses[i] = uses.get(i, 0) + 1
    inits = {t.name for t in model.proto.graph.initializer}
    return any(c > 1 for name, c in uses.items() if name not in inits)


@register_pass(SessionConfig)
def _session(model: "Model", config: SessionConfig, ctx: PassContext) -> PassOutput:
    session: dict[str, Any] = {"options": config.options()}
    if config.threads is not None:
        if ctx.threads is not None and config.threads != ctx.threads:
            raise ConfigError(f"SessionConfig.threads={config.threads} contradicts threads={ctx.threads} "
                              "asked for the optimization", "drop one of them")
        session["threads"] = config.threads
    return PassOutput(model, session, [])
