"""Settings: defaults < config file < ``EDGEBENCH_*`` environment variables < arguments.

The config file is TOML, at ``$EDGEBENCH_CONFIG`` or ``~/.config/edgebench/config.toml``::

    cache_dir = "/data/edgebench"
    threads = 2
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, fields
from pathlib import Path

from .errors import ConfigError

__all__ = ["Settings", "settings"]


def _default_cache_dir() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "edgebench")


@dataclass(frozen=True)
class Settings:
    """Resolved settings.

    Attributes
    ----------
    cache_dir
        Where built zoo models and other artifacts are cached (``EDGEBENCH_CACHE``).
    threads
        Default intra-op threads for engines; ``None`` lets the backend decide.
    backend
        Default backend name for :class:`edgebench.Engine`.
    record_capacity
        Size of each engine's ring buffer of request timing records (a power of two).
        16384 records hold about 6 MB and stay cache-friendly; readers (benchmarks,
        dashboards) harvest them incrementally, so a larger ring is rarely needed.
    """

    cache_dir: str = dataclasses.field(default_factory=_default_cache_dir)
    threads: int | None = None
    backend: str = "onnxruntime"
    record_capacity: int = 16384

    def __post_init__(self) -> None:
        if self.threads is not None and (not isinstance(self.threads, int) or self.threads < 1):
            raise ConfigError(f"threads must be a positive integer or None, got {self.threads!r}")
        cap = self.record_capacity
        if not isinstance(cap, int) or cap < 16 or cap & (cap - 1):
            raise ConfigError(
                f"record_capacity must be a power of two >= 16, got {cap!r}", "try 16384"
            )


# env var names that differ from EDGEBENCH_<FIELD>
_ENV_ALIASES = {"cache_dir": "EDGEBENCH_CACHE"}


def _coerce(name: str, raw: object, source: str) -> object:
    if name in ("threads", "record_capacity"):
        if raw in (None, "", "none", "None"):
            return None
        try:
            return int(raw)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            raise ConfigError(f"{name} from {source} must be an integer, got {raw!r}") from None
    return str(raw)


def _config_file() -> Path:
    env = os.environ.get("EDGEBENCH_CONFIG")
    if env:
        return Path(env)
    return Path(os.path.expanduser("~")) / ".config" / "edgebench" / "config.toml"


def settings(**overrides: object) -> Settings:
    """Resolve settings from all sources; keyword arguments win over everything else."""
    values: dict[str, object] = {}
    known = {f.name for f in fields(Settings)}
    path = _config_file()
    if path.is_file():
        import tomllib

        try:
            data = tomllib.loads(path.read_text())
        except (tomllib.TOMLDecodeError, UnicodeDecodeError, OSError) as e:
            raise ConfigError(f"config file {path} is not valid TOML: {e}", "fix or remove it") from None
        unknown = set(data) - known
        if unknown:
            raise ConfigError(
                f"config file {path} has unknown keys {sorted(unknown)}",
                f"known keys: {sorted(known)}",
            )
        values.update({k: _coerce(k, v, str(path)) for k, v in data.items()})
    for name in known:
        env = _ENV_ALIASES.get(name, f"EDGEBENCH_{name.upper()}")
        if env in os.environ:
            values[name] = _coerce(name, os.environ[env], env)
    unknown = set(overrides) - known
    if unknown:
        raise ConfigError(f"unknown settings {sorted(unknown)}", f"known: {sorted(known)}")
    values.update({k: v for k, v in overrides.items()})
    return Settings(**values)  # type: ignore[arg-type]
