"""Trial: one evaluated candidate, with everything measured about it."""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any, Mapping

from ..errors import ConfigError
from .base import Candidate, _jsonable

__all__ = ["Trial", "STATUSES"]

STATUSES = ("ok", "rejected", "failed")


# --------------------------------------------------------------------------------------------
@dataclass
class Trial:
    """One evaluated candidate.

    Attributes
    ----------
    candidate
        The pipeline.
    status
        ``"ok"`` (measured and inside every budget), ``"rejected"`` (measured, broke a budget:
        ``reason`` says which) or ``"failed"`` (a pass or the run raised: ``reason`` holds it).
    model
        The optimized model (``None`` when failed, or loaded from the store).
    session
        Engine settings: ``{"threads": n, "options": {...}}`` for :class:`edgebench.Engine`.
    p50_ms, p99_ms, throughput
        Latency percentiles at the requested batch size, requests per second.
    latency_ratio
        Median latency over the baseline's, timed in interleaved rounds in this process:
        what decides (< 1 is faster).
    accuracy, accuracy_drop
        Metric on the labelled evaluation data, or the fidelity score gated on; drop versus
        the baseline (positive: worse).
    fidelity
        ``{"top1_agreement", "cosine", "max_abs_err"}`` against fp32 outputs.
    size_bytes, peak_memory
        Serialized model size; resident memory the session added (bytes).
    wall_s
        Seconds spent on this trial (passes, accuracy, latency).
    notes
        What the passes said (nodes kept fp32, size-only pruning, ...).
    source
        ``"measured"`` or ``"store"`` (replayed from a previous run on this hardware).
    """

    candidate: Candidate
    status: str = "ok"
    reason: str = ""
    model: Any = field(default=None, repr=False, compare=False)
    session: dict = field(default_factory=dict)
    p50_ms: float | None = None
    p99_ms: float | None = None
    throughput: float | None = None
    latency_ratio: float | None = None
    baseline_p50_ms: float | None = None
    accuracy: float | None = None
    accuracy_drop: float | None = None
    fidelity: dict = field(default_factory=dict)
    size_bytes: int | None = None
    peak_memory: int | None = None
    wall_s: float = 0.0
    notes: list = field(default_factory=list)
    index: int = -1
    source: str = "measured"

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ConfigError(f"trial status must be one of {STATUSES}, got {self.status!r}")

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def key(self) -> str:
        return self.candidate.key()

    @property
    def objective(self) -> float | None:
        """What policies minimise: the latency ratio of an ok trial, ``None`` otherwise."""
        return self.latency_ratio if self.ok else None

    def describe(self) -> str:
        return self.candidate.describe()

    def row(self) -> dict[str, Any]:
        """A flat dict: one row of the trials table."""
        r = {"trial": self.index, "candidate": self.describe(), "status": self.status,
             "latency_ratio": self.latency_ratio, "p50_ms": self.p50_ms, "p99_ms": self.p99_ms,
             "throughput": self.throughput, "accuracy": self.accuracy, "accuracy_drop": self.accuracy_drop,
             "size_mb": None if self.size_bytes is None else self.size_bytes / 2**20,
             "peak_memory_mb": None if self.peak_memory is None else self.peak_memory / 2**20,
             "cosine": self.fidelity.get("cosine"), "top1_agreement": self.fidelity.get("top1_agreement"),
             "reason": self.reason, "wall_s": self.wall_s, "source": self.source, "key": self.key}
        r.update(self.candidate.params())
        return r

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly (no model): what the results store keeps."""
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in ("model", "candidate")}
        d["key"] = self.key
        return json.loads(json.dumps(d, default=_jsonable))

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Trial":
        names = {f.name for f in dataclasses.fields(cls)} - {"model", "candidate"}
        kw = {k: v for k, v in d.items() if k in names}
        return cls(Candidate.from_key(d["key"]), **kw)


