"""What every optimization pass, the evaluator and the search policies share.

A *pass* is a frozen ``*Config`` dataclass plus a handler registered for it::

    @dataclass(frozen=True)
    class XConfig(PassConfig):
        stage: ClassVar[int] = 30          # where it goes in a pipeline (lower first)
        group: ClassVar[str] = "precision" # at most one config of a group in a candidate
        level: int = 1

        @classmethod
        def space(cls, ctx) -> dict[str, list]: return {"level": [1, 2]}

    @register_pass(XConfig)
    def _x(model: Model, config: XConfig, ctx: PassContext) -> PassOutput: ...

A :class:`Candidate` is a pipeline of configs applied in order; the empty pipeline is the
fp32 baseline with default session settings.  The evaluator turns a candidate into a
:class:`Trial`; search policies only ``suggest()`` candidates and ``record()`` trials (they
know the :class:`SearchSpace`, never the passes' internals).

Policies (``edgebench.optimize.policies.POLICIES``) are constructed as
``factory(space: SearchSpace, ctx: PassContext, *, max_trials: int | None, store=None,
seed: int = 0)`` and implement ``suggest() -> Candidate | None`` (``None``: done) and
``record(trial: Trial) -> None``.
"""
from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Iterator, Mapping

import numpy as np

from .._registry import Registry
from ..errors import ConfigError

if TYPE_CHECKING:  # pragma: no cover
    from ..cpu import CPUInfo
    from ..model import Model

__all__ = ["PASSES", "CONFIGS", "PassConfig", "PassContext", "PassOutput", "Candidate", "register_pass",
           "handler_for", "config_class", "load_passes"]  # + Trial, SearchSpace (see __getattr__)

#: config class name -> handler ``(model, config, ctx) -> PassOutput``
PASSES: Registry[Callable[..., "PassOutput"]] = Registry("optimization pass", "edgebench.passes")
#: config class name -> config class (to rebuild candidates from their keys)
CONFIGS: Registry[type] = Registry("pass config")

_PASS_MODULES = ("graph", "quantize", "mixed", "fp16", "prune", "session")


def load_passes() -> None:
    """Import the built-in pass modules so their configs and handlers are registered."""
    from importlib import import_module

    for m in _PASS_MODULES:
        import_module(f".{m}", __package__)


def register_pass(config_cls: type) -> Callable[[Callable], Callable]:
    """Decorator registering ``handler`` for ``config_cls`` (and the class itself in CONFIGS)."""

    def deco(handler: Callable) -> Callable:
        CONFIGS.register(config_cls.__name__, config_cls)
        PASSES.register(config_cls.__name__, handler)
        return handler

    return deco


def handler_for(config: Any) -> Callable[..., "PassOutput"]:
    """The handler registered for ``config``'s class."""
    return PASSES.get(type(config).__name__)


def config_class(name: str) -> type:
    """The config class called ``name`` (``"QuantizeConfig"``)."""
    if name not in CONFIGS._items:
        load_passes()
    return CONFIGS.get(name)


# --------------------------------------------------------------------------------------------
# configs
# --------------------------------------------------------------------------------------------
class PassConfig:
    """Base of the ``*Config`` dataclasses (frozen, validated in ``__post_init__``).

    Class attributes
    ----------------
    stage
        Position in a pipeline: prune 10, graph 20, precision 30, session 90.
    group
        Candidates hold at most one config per group (quantize, mixed precision and fp16 are
        all ``"precision"``).
    """

    stage: ClassVar[int] = 50
    group: ClassVar[str] = ""

    @classmethod
    def space(cls, ctx: "PassContext") -> dict[str, list]:
        """Discrete choices of this config's fields that are meaningful on ``ctx``'s model and
        hardware; ``{}`` means the pass does not apply.  Fields absent keep their defaults."""
        return {}

    @classmethod
    def irrelevant(cls, params: Mapping[str, Any]) -> set[str]:
        """Fields that mean nothing given the other ``params`` (dropped by :meth:`from_params`)."""
        return set()

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> "PassConfig":
        """Build from search-space values, dropping the ones :meth:`irrelevant` names, so any
        combination drawn from :meth:`space` is valid and equal settings give equal keys."""
        drop = cls.irrelevant(params)
        return cls(**{k: v for k, v in params.items() if k not in drop})

    def is_noop(self) -> bool:
        """Whether applying this config changes nothing (search spaces skip such configs)."""
        return False

    def params(self) -> dict[str, Any]:
        """The fields that differ from their defaults (JSON-friendly), in field order."""
        out = {}
        for f in dataclasses.fields(self):
            if not f.compare:
                continue
            v = getattr(self, f.name)
            default = f.default if f.default is not dataclasses.MISSING else (
                f.default_factory() if f.default_factory is not dataclasses.MISSING else dataclasses.MISSING)
            if v != default:
                out[f.name] = _jsonable(v)
        return out

    def describe(self) -> str:
        """Short readable form: ``quantize(static, qdq, u8s8, per_channel)``."""
        name = type(self).__name__.removesuffix("Config").lower()
        parts = [f"{k}={v}" if not isinstance(v, bool) else (k if v else f"no {k}")
                 for k, v in self.params().items()]
        return f"{name}({', '.join(parts)})" if parts else name


def _jsonable(v: Any) -> Any:
    if isinstance(v, PassConfig):
        return {"type": type(v).__name__, **v.params()}
    if isinstance(v, (tuple, list)):
        return [_jsonable(x) for x in v]
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    if callable(v):
        return getattr(v, "__qualname__", type(v).__name__)
    if isinstance(v, np.generic):
        return v.item()
    return v


def _from_jsonable(cls: type, params: dict) -> Any:
    kw = {}
    for k, v in params.items():
        if isinstance(v, dict) and "type" in v:
            v = _from_jsonable(config_class(v["type"]), {a: b for a, b in v.items() if a != "type"})
        elif isinstance(v, list):
            v = tuple(v)
        kw[k] = v
    return cls.from_params(kw)


# --------------------------------------------------------------------------------------------
# candidates
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Candidate:
    """A pipeline of pass configs, applied in order; ``Candidate()`` is the fp32 baseline.

    Hashable; :meth:`key` is a stable string (the results store's key), :meth:`describe`
    a readable one.
    """

    configs: tuple = ()

    def __post_init__(self) -> None:
        configs = tuple(self.configs)
        groups = [c.group for c in configs if isinstance(c, PassConfig) and c.group]
        if not all(isinstance(c, PassConfig) for c in configs):
            bad = [type(c).__name__ for c in configs if not isinstance(c, PassConfig)]
            raise ConfigError(f"a candidate holds pass configs only, got {bad}",
                              "use eb.QuantizeConfig(...), eb.SessionConfig(...), ...")
        if len(groups) != len(set(groups)):
            raise ConfigError(f"a candidate holds at most one config of each group, got {groups}",
                              "combine quantize, mixed precision and fp16 in separate candidates")
        object.__setattr__(self, "configs", configs)

    @classmethod
    def of(cls, *configs: PassConfig) -> "Candidate":
        """A candidate with ``configs`` put in canonical order (by their ``stage``)."""
        return cls(tuple(sorted(configs, key=lambda c: c.stage)))

    @property
    def is_baseline(self) -> bool:
        return not self.configs

    def key(self) -> str:
        """Stable identity: ``[["QuantizeConfig", {...}], ...]`` as compact, sorted JSON."""
        return json.dumps([[type(c).__name__, c.params()] for c in self.configs],
                          sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_key(cls, key: str) -> "Candidate":
        """Rebuild a candidate from :meth:`key` (callables such as fine-tune hooks are lost)."""
        try:
            items = json.loads(key)
            return cls(tuple(_from_jsonable(config_class(n), p) for n, p in items))
        except (ValueError, TypeError) as e:
            raise ConfigError(f"not a candidate key: {key[:80]!r} ({e})") from None

    def params(self) -> dict[str, Any]:
        """Flat ``{"QuantizeConfig.mode": "static", ...}`` (features for tables and cost models)."""
        out: dict[str, Any] = {}
        for c in self.configs:
            name = type(c).__name__
            out[name] = True
            for k, v in c.params().items():
                out[f"{name}.{k}"] = v if not isinstance(v, (list, dict)) else json.dumps(v, sort_keys=True)
        return out

    def find(self, config_cls: type) -> Any:
        """The config of class ``config_cls`` in this pipeline, or ``None``."""
        return next((c for c in self.configs if isinstance(c, config_cls)), None)

    def describe(self) -> str:
        return " -> ".join(c.describe() for c in self.configs) if self.configs else "fp32 baseline"

    def __repr__(self) -> str:
        return f"Candidate({self.describe()})"


# --------------------------------------------------------------------------------------------
# pass context and output
# --------------------------------------------------------------------------------------------
@dataclass
class PassContext:
    """What a pass may know: the baseline, calibration inputs, the device and the CPU.

    Attributes
    ----------
    baseline
        The fp32 input model.
    calibration
        Calibration inputs (``{input name: array}``, samples stacked on dim 0), disjoint from
        the evaluation data; ``None`` when there is none.
    device
        ``"cpu"``, ``"cuda"``, ...
    cpu
        :func:`edgebench.devices.cpu_info` (ISA flags decide what is meaningful to try).
    cache_dir
        ``<cache>/optimize``: persistent across runs.
    work_dir
        Per-run scratch directory for intermediate model files.
    threads, batch_size
        What the user asked for (``threads=None``: the session may choose).
    fidelity_check
        ``fn(model, reference=None) -> (ok, detail)``: whether ``model`` holds the accuracy
        budget on the calibration inputs, as fidelity to ``reference``'s outputs (default the
        fp32 baseline's); lets mixed precision find how many layers to keep in fp32 without
        looking at the evaluation data.
    fine_tune
        Optional ``fn(torch_module) -> None`` run after pruning, before export.
    """

    baseline: "Model"
    calibration: dict[str, np.ndarray] | None
    device: str = "cpu"
    cpu: "CPUInfo | None" = None
    cache_dir: Path | None = None
    work_dir: Path | None = None
    threads: int | None = None
    batch_size: int = 1
    fidelity_check: Callable[..., tuple[bool, str]] | None = None
    fine_tune: Callable[[Any], None] | None = None
    extras: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.cpu is None:
            from ..cpu import cpu_info

            self.cpu = cpu_info()
        if self.work_dir is None:
            import tempfile

            self.work_dir = Path(tempfile.mkdtemp(prefix="edgebench-opt-"))
        self.work_dir = Path(self.work_dir)

    @property
    def n_calibration(self) -> int:
        if not self.calibration:
            return 0
        return len(next(iter(self.calibration.values())))

    def calibration_batches(self, batch_size: int = 1, limit: int | None = None) -> Iterator[dict[str, np.ndarray]]:
        """Calibration inputs as feeds of ``batch_size`` rows (at most ``limit`` samples)."""
        n = self.n_calibration if limit is None else min(limit, self.n_calibration)
        for i in range(0, n, batch_size):
            yield {k: np.ascontiguousarray(v[i:min(i + batch_size, n)]) for k, v in self.calibration.items()}

    @property
    def dynamic_batch(self) -> bool:
        """Whether dim 0 of every input is dynamic (so batches of any size can be fed)."""
        return all(s.shape and not isinstance(s.shape[0], int) for s in self.baseline.inputs)

    def path(self, name: str) -> Path:
        """A file path in the work directory."""
        return self.work_dir / name


@dataclass
class PassOutput:
    """What a handler returns: the new model, engine options it wants, notes for explain()."""

    model: "Model"
    session: dict = field(default_factory=dict)
    notes: list = field(default_factory=list)


def __getattr__(name: str) -> Any:
    # Trial and SearchSpace live in their own modules (which import this one); importable
    # from here too
    if name in ("Trial", "STATUSES"):
        from . import trial

        return getattr(trial, name)
    if name == "SearchSpace":
        from .space import SearchSpace

        return SearchSpace
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
