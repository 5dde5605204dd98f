"""Served-model settings: what a repository's ``config.json`` / ``config.toml`` or ``--batching`` says.

A model folder in a repository::

    models/
      mlp/
        config.toml        # optional
        1/model.onnx
        2/model.onnx       # the highest version is served (version_policy = "latest")

``config.toml`` (or the same keys in ``config.json``)::

    backend = "onnxruntime"      # default: settings().backend
    device = "cpu"
    threads = 1                  # intra-op threads of each engine
    version_policy = "latest"    # "latest", "all" or a list of versions
    [dynamic_batching]           # present: requests go through a DynamicBatcher
    max_batch_size = 32
    max_queue_delay_ms = 2.0
    preferred_batch_sizes = [8, 16]
    max_queue_size = 1024
    timeout_ms = 100
    instances = 1
    adaptive = false

Triton's spellings are read too: ``max_batch_size`` at the top level,
``dynamic_batching.max_queue_delay_microseconds``, ``preferred_batch_size`` and
``instance_group = [{count = 2}]``.
"""
from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from ..errors import ConfigError

__all__ = ["BatchingConfig", "ModelConfig", "parse_batching", "read_model_config"]


@dataclass
class BatchingConfig:
    """Arguments of :class:`~edgebench.DynamicBatcher` for one served model (Triton's semantics)."""

    max_batch_size: int = 32
    max_queue_delay_ms: float = 2.0
    preferred_batch_sizes: list[int] | None = None
    max_queue_size: int = 1024
    timeout_ms: float | None = None
    priority_levels: int = 1
    instances: int = 1
    adaptive: bool = False

    def __post_init__(self) -> None:
        for k in ("max_batch_size", "max_queue_size", "priority_levels", "instances"):
            v = getattr(self, k)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ConfigError(f"batching {k} must be a positive integer, got {v!r}")
        if not isinstance(self.max_queue_delay_ms, (int, float)) or self.max_queue_delay_ms < 0:
            raise ConfigError(f"batching max_queue_delay_ms must be >= 0, got {self.max_queue_delay_ms!r}")
        if self.timeout_ms is not None and (not isinstance(self.timeout_ms, (int, float)) or self.timeout_ms <= 0):
            raise ConfigError(f"batching timeout_ms must be a positive number, got {self.timeout_ms!r}")
        if self.preferred_batch_sizes is not None:
            sizes = list(self.preferred_batch_sizes)
            if any(not isinstance(s, int) or not 1 <= s <= self.max_batch_size for s in sizes):
                raise ConfigError(f"preferred_batch_sizes must be integers in 1..max_batch_size, got {sizes!r}")
            self.preferred_batch_sizes = sizes

    def kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``DynamicBatcher(engine, **kwargs)``."""
        return asdict(self)


@dataclass
class ModelConfig:
    """How one model is served.

    Attributes
    ----------
    backend, device, threads
        As for :class:`~edgebench.Engine`.
    batching
        ``None``: each request runs on its own; else a :class:`BatchingConfig`.
    version_policy
        ``"latest"`` (the highest numeric version), ``"all"``, or a list of versions.
    dispatch
        Without batching: ``"inline"`` runs the model on the server's event loop (no thread
        hop; right for models of well under a millisecond), ``"thread"`` on the engine's worker
        thread, ``"auto"`` picks by the latency measured at load.
    """

    backend: str | None = None
    device: str = "cpu"
    threads: int | None = None
    batching: BatchingConfig | None = None
    version_policy: Any = "latest"
    dispatch: str = "auto"
    extra: dict = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if self.dispatch not in ("auto", "inline", "thread"):
            raise ConfigError(f"dispatch must be 'auto', 'inline' or 'thread', got {self.dispatch!r}")
        vp = self.version_policy
        if not (vp in ("latest", "all") or (isinstance(vp, list) and vp and all(isinstance(v, int) for v in vp))):
            raise ConfigError(f"version_policy must be 'latest', 'all' or a list of versions, got {vp!r}")
        if self.threads is not None and (not isinstance(self.threads, int) or self.threads < 1):
            raise ConfigError(f"threads must be a positive integer, got {self.threads!r}")

    @property
    def max_batch_size(self) -> int:
        return self.batching.max_batch_size if self.batching else 0

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], where: str = "model config") -> ModelConfig:
        """From the keys of a config file (edgebench's or Triton's spelling)."""
        if not isinstance(d, Mapping):
            raise ConfigError(f"{where} must be a table/object of settings")
        d = dict(d)
        d.pop("name", None)
        d.pop("platform", None)
        batching = d.pop("dynamic_batching", None)
        if batching is None:
            batching = d.pop("batching", None)
        mbs = d.pop("max_batch_size", None)
        groups = d.pop("instance_group", None)
        if batching is not None:
            b = _batching_from(batching, where)
            if mbs:
                b["max_batch_size"] = int(mbs)
            if groups:
                b["instances"] = int(sum(g.get("count", 1) for g in groups))
            try:
                d["batching"] = BatchingConfig(**b)
            except TypeError as e:
                raise ConfigError(f"{where}: {e}") from None
        known = {f.name for f in fields(cls)} - {"extra", "batching"}
        unknown = sorted(set(d) - known - {"batching"})
        if unknown:
            raise ConfigError(f"{where}: unknown setting(s) {unknown}", f"known: {sorted(known | {'dynamic_batching'})}")
        return cls(**d)


def _batching_from(b: Any, where: str) -> dict[str, Any]:
    if b is True or b == {}:
        return {}
    if not isinstance(b, Mapping):
        raise ConfigError(f"{where}: dynamic_batching must be a table/object")
    b = dict(b)
    if "max_queue_delay_microseconds" in b:
        b["max_queue_delay_ms"] = b.pop("max_queue_delay_microseconds") / 1000
    if "preferred_batch_size" in b:
        b["preferred_batch_sizes"] = b.pop("preferred_batch_size")
    known = {f.name for f in fields(BatchingConfig)}
    unknown = sorted(set(b) - known)
    if unknown:
        raise ConfigError(f"{where}: unknown dynamic_batching setting(s) {unknown}", f"known: {sorted(known)}")
    return b


def parse_batching(spec: str | bool | Mapping[str, Any] | BatchingConfig | None) -> BatchingConfig | None:
    """``--batching``: ``"off"``, ``"on"`` (defaults) or ``"max_batch_size=32,max_queue_delay_ms=1"``."""
    if spec is None or spec is False or spec == "off":
        return None
    if isinstance(spec, BatchingConfig):
        return replace(spec)
    if spec is True or spec == "on":
        return BatchingConfig()
    if isinstance(spec, Mapping):
        return BatchingConfig(**_batching_from(spec, "batching"))
    out: dict[str, Any] = {}
    for part in str(spec).split(","):
        if not part.strip():
            continue
        key, sep, val = part.partition("=")
        if not sep:
            raise ConfigError(f"bad --batching item {part!r}", "write key=value pairs, e.g. max_batch_size=32,max_queue_delay_ms=1")
        key, val = key.strip(), val.strip()
        if key == "preferred_batch_sizes":
            out[key] = [int(v) for v in val.replace("/", " ").replace(";", " ").split()]
            continue
        try:
            out[key] = json.loads(val)
        except ValueError:
            out[key] = val
    try:
        return BatchingConfig(**_batching_from(out, "--batching"))
    except TypeError as e:
        raise ConfigError(f"--batching: {e}") from None


def read_model_config(folder: Path) -> ModelConfig | None:
    """The ``config.json`` or ``config.toml`` of a repository model folder, or ``None``."""
    for fname in ("config.json", "config.toml"):
        path = folder / fname
        if not path.exists():
            continue
        try:
            if fname.endswith(".json"):
                data = json.loads(path.read_text())
            else:
                try:
                    import tomllib
                except ImportError:  # Python 3.10
                    import tomli as tomllib  # type: ignore[no-redef]
                data = tomllib.loads(path.read_text())
        except (ValueError, OSError) as e:
            raise ConfigError(f"cannot read {path}: {e}", "fix the file's syntax") from None
        return ModelConfig.from_dict(data, str(path))
    return None
