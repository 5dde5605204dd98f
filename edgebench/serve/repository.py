"""The model repository: what the server serves, under which names and versions.

Models come from the command line (a path, ``zoo:NAME``, a :class:`~edgebench.Model` or an
:class:`~edgebench.Engine`; version ``1``) and from a repository directory (a folder per
model, numeric version subfolders holding ``model.onnx``, an optional ``config.json`` /
``config.toml``, see :mod:`edgebench.serve.config`).  Loading compiles an engine per version
(and a :class:`~edgebench.DynamicBatcher` when the model's config asks for one); unloading
takes the model out of routing, and the server drains and closes it.
"""
from __future__ import annotations

import itertools
import re
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ..errors import ConfigError, ModelLoadError, UnknownNameError
from .config import ModelConfig, read_model_config
from .protocol import ProtocolError, Signature
from .runner import Runner

__all__ = ["Repository", "ServedModel", "model_name_of"]

_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]{0,127}$")  # no "..", no hidden folders
INLINE_BELOW_MS = 0.5  # dispatch="auto": run on the event loop when a request takes less
_SERIAL = itertools.count()


def model_name_of(source: Any) -> str:
    """The name a model is served under: ``zoo:NAME`` -> NAME, a path -> its stem, a Model -> its name."""
    if isinstance(source, str) and source.startswith("zoo:"):
        return source[4:]
    if isinstance(source, (str, Path)):
        return Path(source).stem
    name = getattr(source, "name", None) or getattr(getattr(source, "model", None), "name", None)
    if not name:
        raise ConfigError(f"cannot tell the name of {type(source).__name__}", "pass {name: model}")
    return str(name)


def _check_name(name: str) -> str:
    if not _NAME.match(name):
        raise ConfigError(f"model name {name!r} cannot be served",
                          "use letters, digits, '_', '-' and '.' only (it becomes part of URLs)")
    return name


class ServedModel:
    """One version of one model, loaded: engine, optional batcher, protocol signature."""

    def __init__(self, name: str, version: str, engine: Any, config: ModelConfig, *,
                 owns_engine: bool = True, priority_levels: int = 1):
        from ..batching import DynamicBatcher

        self.name, self.version, self.engine, self.config = name, version, engine, config
        self.serial = next(_SERIAL)  # tells a reloaded version from the one it replaced
        self.owns_engine = owns_engine
        model = engine.model
        batching = config.batching
        if batching is not None:
            first = model.inputs[0] if model.inputs else None
            if first is None or not first.shape or isinstance(first.shape[0], int):
                raise ConfigError(f"model {name!r} cannot be batched: dim 0 of its first input is fixed",
                                  "serve it without batching, or export it with a dynamic batch dimension")
            kw = batching.kwargs()
            kw["priority_levels"] = max(kw["priority_levels"], priority_levels)
            self.batcher = DynamicBatcher(engine, name=f"{name}:{version}", **kw)
        else:
            self.batcher = None
        self.signature = Signature.from_specs(model.inputs, model.outputs, config.max_batch_size)
        self.runner = Runner(engine, self.batcher, inline=self._inline())
        self.priority_levels = self.batcher.priority_levels if self.batcher is not None and hasattr(
            self.batcher, "priority_levels") else (batching.priority_levels if batching else 1)
        self.inflight = 0
        self.ready = True
        self.loaded_at = time.time()
        self.last_inference_ms = 0

    def _inline(self) -> bool:
        if self.batcher is not None or self.config.dispatch == "thread":
            return False
        if self.config.dispatch == "inline":
            return True
        feeds = self.engine._validate(self.engine.sample_feeds(1))
        run = self.engine.session.run
        for _ in range(3):
            run(feeds)
        times = []
        for _ in range(9):
            t = time.perf_counter()
            run(feeds)
            times.append(time.perf_counter() - t)
        return sorted(times)[len(times) // 2] * 1e3 < INLINE_BELOW_MS

    @property
    def records(self) -> Any:
        """The request records of this model version (the batcher's, else the engine's)."""
        return (self.batcher or self.engine).records

    @property
    def platform(self) -> str:
        backend = self.engine.backend
        return "onnxruntime_onnx" if backend == "onnxruntime" else f"edgebench_{backend}"

    def close(self) -> None:
        self.ready = False
        if self.batcher is not None:
            self.batcher.close(drain=True)
        if self.owns_engine:
            self.engine.close()

    def __repr__(self) -> str:
        return f"ServedModel({self.name!r}, version={self.version}, {self.runner.mode})"


class Repository:
    """Names -> versions -> :class:`ServedModel`, plus what can be loaded and why something is not.

    Parameters
    ----------
    root
        A repository directory, or ``None``.
    defaults
        Config of models without a config file of their own.
    priority_levels
        At least this many batcher priority levels (the tenants' priorities).
    """

    def __init__(self, root: str | Path | None = None, defaults: ModelConfig | None = None,
                 priority_levels: int = 1):
        self.root = Path(root) if root is not None else None
        if self.root is not None and not self.root.is_dir():
            raise ConfigError(f"model repository {self.root} is not a directory", "pass an existing folder")
        self.defaults = defaults or ModelConfig()
        self.priority_levels = priority_levels
        self._sources: dict[str, Any] = {}
        self._live: dict[str, dict[str, ServedModel]] = {}
        self._reasons: dict[str, str] = {}
        self._lock = threading.Lock()

    # -- what exists -------------------------------------------------------------------------------
    def add(self, source: Any, name: str | None = None) -> str:
        """Register a model given on the command line or from Python (not loaded yet)."""
        name = _check_name(name or model_name_of(source))
        if name in self._sources:
            raise ConfigError(f"two models would be served as {name!r}", "give them distinct names")
        self._sources[name] = source
        return name

    def available(self) -> list[str]:
        """Every name that can be loaded: the given models and the repository's folders."""
        names = set(self._sources)
        if self.root is not None:
            names |= {p.name for p in self.root.iterdir() if p.is_dir() and _NAME.match(p.name)
                      and self._versions_on_disk(p)}
        return sorted(names)

    @staticmethod
    def _versions_on_disk(folder: Path) -> dict[int, Path]:
        out = {}
        for v in folder.iterdir():
            if v.is_dir() and v.name.isdigit() and int(v.name) > 0:
                files = [v / "model.onnx"] if (v / "model.onnx").exists() else sorted(v.glob("*.onnx"))
                if files:
                    out[int(v.name)] = files[0]
        return out

    # -- loading -----------------------------------------------------------------------------------
    def load(self, name: str, config: ModelConfig | None = None) -> list[ServedModel]:
        """Load (or reload) ``name``; returns what it replaced, for the caller to drain and close."""
        from ..model import load as load_model

        if name not in self._sources and (self.root is None or not _NAME.match(name)
                                          or not (self.root / name).is_dir()):
            raise UnknownNameError(f"no model {name!r} to load; known: {self.available()}")
        built: dict[str, ServedModel] = {}
        try:
            if name in self._sources:
                src = self._sources[name]
                cfg = config or self.defaults
                if hasattr(src, "_run") and hasattr(src, "model"):  # an Engine the caller owns
                    built["1"] = ServedModel(name, "1", src, cfg, owns_engine=False,
                                             priority_levels=self.priority_levels)
                else:
                    model = load_model(src, name=name) if not isinstance(src, str) or not src.startswith("zoo:") \
                        else load_model(src)
                    built["1"] = self._build(name, "1", model, cfg)
            else:
                folder = self.root / name
                cfg = config or read_model_config(folder) or self.defaults
                on_disk = self._versions_on_disk(folder)
                if not on_disk:
                    raise ModelLoadError(f"{folder} has no version folder with a model.onnx",
                                         "add e.g. 1/model.onnx")
                for v in self._pick_versions(on_disk, cfg.version_policy, name):
                    built[str(v)] = self._build(name, str(v), load_model(on_disk[v], name=name), cfg)
        except Exception as e:
            for m in built.values():
                m.close()
            self._reasons[name] = f"load failed: {e}"
            raise
        with self._lock:
            old = self._live.get(name, {})
            self._live[name] = built
            self._reasons.pop(name, None)
        return list(old.values())

    def _build(self, name: str, version: str, model: Any, cfg: ModelConfig) -> ServedModel:
        from ..engine import Engine

        engine = Engine(model, backend=cfg.backend, device=cfg.device, threads=cfg.threads)
        try:
            return ServedModel(name, version, engine, cfg, priority_levels=self.priority_levels)
        except Exception:
            engine.close()
            raise

    @staticmethod
    def _pick_versions(on_disk: dict[int, Path], policy: Any, name: str) -> list[int]:
        if policy == "latest":
            return [max(on_disk)]
        if policy == "all":
            return sorted(on_disk)
        missing = sorted(set(policy) - set(on_disk))
        if missing:
            raise ModelLoadError(f"model {name!r} has no version(s) {missing} on disk; it has {sorted(on_disk)}")
        return sorted(policy)

    def unload(self, name: str, reason: str = "unloaded") -> list[ServedModel]:
        """Take ``name`` out of routing; returns its versions for the caller to drain and close."""
        with self._lock:
            if name not in self._live and name not in self.available():
                raise UnknownNameError(f"no model {name!r}; known: {self.available()}")
            old = self._live.pop(name, {})
            self._reasons[name] = reason
        for m in old.values():
            m.ready = False
        return list(old.values())

    # -- lookups -----------------------------------------------------------------------------------
    def get(self, name: str, version: str | None = None) -> ServedModel:
        """The served model for a request, or a 404 :class:`ProtocolError`."""
        versions = self._live.get(name)
        if not versions:
            why = self._reasons.get(name)
            raise ProtocolError(404, f"unknown model {name!r}" + (f" ({why})" if why else "")
                                + (f"; served: {sorted(self._live)}" if self._live else ""))
        if not version:
            return versions[max(versions, key=int)]
        m = versions.get(version)
        if m is None:
            raise ProtocolError(404, f"model {name!r} has no version {version!r}; served: {sorted(versions, key=int)}")
        return m

    def versions(self, name: str) -> list[str]:
        return sorted(self._live.get(name, {}), key=int)

    def served(self) -> list[ServedModel]:
        """Every loaded model version."""
        with self._lock:
            return [m for vs in self._live.values() for m in vs.values()]

    def index(self, names: Iterable[str] | None = None) -> list[dict[str, Any]]:
        """Triton's repository index: name, version, state and (when unavailable) the reason."""
        out = []
        allowed = set(names) if names is not None else None
        for name in sorted(set(self.available()) | set(self._live)):
            if allowed is not None and name not in allowed:
                continue
            vs = self._live.get(name)
            if vs:
                out += [{"name": name, "version": v, "state": "READY" if m.ready else "UNAVAILABLE"}
                        for v, m in sorted(vs.items(), key=lambda kv: int(kv[0]))]
            else:
                out.append({"name": name, "state": "UNAVAILABLE", "reason": self._reasons.get(name, "not loaded")})
        return out

    def close(self) -> None:
        for m in self.served():
            m.close()
        with self._lock:
            self._live.clear()

    @staticmethod
    def config_from_json(name: str, overrides: Any) -> ModelConfig:
        """Triton's load-time ``config`` (a JSON string or object): replaces the model's config."""
        import json

        if isinstance(overrides, str):
            try:
                overrides = json.loads(overrides)
            except ValueError as e:
                raise ConfigError(f"the config given to load {name!r} is not JSON: {e}") from None
        return ModelConfig.from_dict(overrides, f"config of {name!r}")
