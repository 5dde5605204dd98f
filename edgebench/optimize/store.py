"""The results store: every finished trial, kept across runs.

One JSON object per line in ``<cache_dir>/optimize/trials.jsonl``, keyed by the model's
sha256, the candidate's key, the hardware fingerprint (:func:`edgebench.devices.fingerprint`)
and a *context* key (the evaluation conditions: batch size, threads, dataset, metric,
budgets; see :func:`context_key`).  A re-run of the same search is answered from it without
measuring, an interrupted search resumes from it, and :mod:`.costmodel` learns from all of it,
across models.

The file is append-only: a line is written whole, in one call, as soon as a trial finishes,
so a crash loses at most the trial in flight.  A line that cannot be read is skipped with a
warning; a line written by a newer store format stops the load with a clear error rather than
being misread.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

from ..errors import OptimizeError

__all__ = ["STORE_VERSION", "StoredTrial", "ResultsStore", "context_key"]

#: Format of a store line.  Bump when a field changes meaning; older readers then refuse it.
STORE_VERSION = 1
_FILENAME = "trials.jsonl"


@dataclass(frozen=True)
class StoredTrial:
    """One finished trial as the store keeps it (numbers only, never the model itself).

    Attributes
    ----------
    model, candidate, hardware, context
        The key: model sha256, ``Candidate.key()``, hardware fingerprint, context key.
    status
        ``"ok"``, ``"rejected"`` or ``"failed"``.
    latency_ratio, accuracy_drop
        Copied out of ``trial`` for the cost model (``None`` where not measured).
    fields
        The candidate's passes and parameters, flat (``Candidate.params()``).
    model_features
        Op mix, size and parameter count of the model (:func:`.costmodel.model_features`).
    isa
        ISA flags of the CPU that measured it.
    time
        When it was stored (seconds since the epoch).
    trial
        ``Trial.to_dict()``: everything :meth:`to_trial` needs to rebuild the trial.
    """

    model: str
    candidate: str
    hardware: str
    context: str = ""
    status: str = "ok"
    latency_ratio: float | None = None
    accuracy_drop: float | None = None
    fields: dict = field(default_factory=dict)
    model_features: dict = field(default_factory=dict)
    isa: tuple = ()
    time: float = 0.0
    trial: dict = field(default_factory=dict)

    @property
    def key(self) -> tuple[str, str, str, str]:
        return (self.model, self.candidate, self.hardware, self.context)

    def to_trial(self) -> Any:
        """The stored :class:`~edgebench.optimize.base.Trial` (``source="store"``, no model)."""
        from .trial import Trial

        d = dict(self.trial)
        d.setdefault("key", self.candidate)
        d.setdefault("status", self.status)
        d["source"] = "store"
        return Trial.from_dict(d)

    def to_json(self) -> str:
        d = {"v": STORE_VERSION, **{k: _jsonable(v) for k, v in dataclasses.asdict(self).items()}}
        return json.dumps(d, allow_nan=False)

    @classmethod
    def from_dict(cls, d: dict) -> "StoredTrial":
        known = {f.name for f in dataclasses.fields(cls)}
        kw = {k: v for k, v in d.items() if k in known}
        for k in ("model", "candidate", "hardware"):
            if not isinstance(kw.get(k), str):
                raise ValueError(f"missing or invalid {k!r}")
        if kw.get("status", "ok") not in ("ok", "rejected", "failed"):
            raise ValueError(f"unknown status {kw.get('status')!r}")
        for k in ("fields", "model_features", "trial"):
            if not isinstance(kw.get(k, {}), dict):
                raise ValueError(f"{k!r} is not an object")
        kw["isa"] = tuple(kw.get("isa") or ())
        for k in ("latency_ratio", "accuracy_drop", "time"):
            if kw.get(k) is not None:
                kw[k] = float(kw[k])
        return cls(**kw)


def _jsonable(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple, set, frozenset)):
        return [_jsonable(x) for x in v]
    if isinstance(v, (str, int, float, bool)) or v is None:
        return v
    if hasattr(v, "item"):  # numpy scalars
        return _jsonable(v.item())
    return str(v)


def context_key(**conditions: Any) -> str:
    """A short stable hash of the evaluation conditions (batch size, threads, dataset hash,
    metric name, budgets...): trials measured under different conditions never mix."""
    blob = json.dumps(_jsonable(conditions), sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


class ResultsStore:
    """Finished trials, on disk, keyed by model + candidate + hardware + context.

    Parameters
    ----------
    path
        A directory (the file ``trials.jsonl`` inside it) or a ``.jsonl`` file.  Defaults to
        ``settings().cache_dir / "optimize"``.

    Raises
    ------
    OptimizeError
        The store was written by a newer edgebench (its format version is higher than
        :data:`STORE_VERSION`), or the path cannot be used.
    """

    def __init__(self, path: str | os.PathLike | None = None):
        if path is None:
            from ..config import settings

            path = Path(settings().cache_dir) / "optimize"
        p = Path(path)
        self.path = p if p.suffix == ".jsonl" else p / _FILENAME
        self._rows: dict[tuple[str, str, str, str], StoredTrial] = {}
        self._size = 0  # bytes already read
        self._lines = 0  # lines already read
        self.skipped = 0  # unreadable lines seen
        self._fingerprint: str | None = None
        self._load()

    # -- reading --------------------------------------------------------------------------
    def _load(self) -> None:
        try:
            with open(self.path, "rb") as f:
                f.seek(self._size)
                data = f.read()
        except FileNotFoundError:
            return
        except OSError as e:
            raise OptimizeError(f"cannot read the optimizer results store {self.path}: {e}",
                                "pass another cache_dir, or fix the file's permissions") from None
        end = data.rfind(b"\n") + 1  # a trailing partial line is read when it is finished
        for raw in data[:end].split(b"\n")[:-1]:
            self._lines += 1
            self._parse(raw)
        self._size += end

    def _parse(self, raw: bytes) -> None:
        if not raw.strip():
            return
        try:
            d = json.loads(raw)
            if not isinstance(d, dict):
                raise ValueError("not a JSON object")
            v = d.get("v")
            if not isinstance(v, int):
                raise ValueError("no format version")
        except (ValueError, UnicodeDecodeError) as e:
            self._skip(f"line {self._lines} ({e})")
            return
        if v > STORE_VERSION:
            raise OptimizeError(
                f"the optimizer results store {self.path} was written by a newer edgebench "
                f"(store format {v}; this edgebench reads up to {STORE_VERSION})",
                "upgrade edgebench, or pass another cache_dir= to start a separate store",
            )
        try:
            row = StoredTrial.from_dict(d)
        except (TypeError, ValueError) as e:
            self._skip(f"record on line {self._lines} ({e})")
            return
        self._rows[row.key] = row  # a later measurement of the same key wins

    def _skip(self, what: str) -> None:
        self.skipped += 1
        warnings.warn(f"optimizer results store {self.path}: skipped unreadable {what}",
                      RuntimeWarning, stacklevel=4)

    def refresh(self) -> None:
        """Read lines appended since (by another process, say)."""
        self._load()

    def get(self, model: str, candidate: str, hardware: str, context: str = "") -> StoredTrial | None:
        """The stored trial for this key, or ``None``."""
        return self._rows.get((model, candidate, hardware, context))

    def trials(self, *, model: str | None = None, hardware: str | None = None,
               context: str | None = None) -> list[StoredTrial]:
        """Stored trials, optionally only those of one model / hardware / context, oldest first."""
        rows = [r for r in self._rows.values()
                if (model is None or r.model == model) and (hardware is None or r.hardware == hardware)
                and (context is None or r.context == context)]
        return sorted(rows, key=lambda r: r.time)

    def __len__(self) -> int:
        return len(self._rows)

    def __iter__(self) -> Iterator[StoredTrial]:
        return iter(self.trials())

    def __repr__(self) -> str:
        models = len({r.model for r in self._rows.values()})
        return f"ResultsStore({str(self.path)!r}, {len(self)} trials, {models} models)"

    # -- writing --------------------------------------------------------------------------
    def add(self, row: StoredTrial) -> StoredTrial:
        """Append one trial (one write, flushed) and index it."""
        if not row.time:
            row = dataclasses.replace(row, time=time.time())
        line = (row.to_json() + "\n").encode()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "ab") as f:
                if f.tell() and not self._ends_with_newline():
                    line = b"\n" + line  # never glue a record onto a torn line
                f.write(line)
                f.flush()
        except OSError as e:
            raise OptimizeError(f"cannot write the optimizer results store {self.path}: {e}",
                                "pass a writable cache_dir") from None
        self._load()  # picks up this line (and any a concurrent writer appended)
        self._rows[row.key] = row
        return row

    def add_many(self, rows: Iterable[StoredTrial]) -> None:
        for r in rows:
            self.add(r)

    def _ends_with_newline(self) -> bool:
        with open(self.path, "rb") as f:
            f.seek(-1, os.SEEK_END)
            return f.read(1) == b"\n"

    def put(self, trial: Any, model: Any, *, context: str = "", hardware: str | None = None,
            isa: Iterable[str] | None = None) -> StoredTrial:
        """Store an evaluated ``Trial`` of ``model`` (its numbers, not its optimized model).

        Parameters
        ----------
        trial
            A :class:`~edgebench.optimize.base.Trial`.
        model
            The baseline :class:`~edgebench.Model` the trial started from (its sha256 is the
            key, its op mix and size are the cost model's features).
        context
            :func:`context_key` of the evaluation conditions.
        hardware, isa
            Default: this machine's :func:`~edgebench.devices.fingerprint` and ISA flags.
        """
        from .costmodel import model_features

        hw, isa = self._hardware(hardware, isa)
        row = StoredTrial(
            model=model.sha256, candidate=trial.candidate.key(), hardware=hw, context=context,
            status=trial.status, latency_ratio=_num(trial.latency_ratio),
            accuracy_drop=_num(trial.accuracy_drop), fields=_jsonable(trial.candidate.params()),
            model_features=model_features(model), isa=tuple(isa), trial=trial.to_dict(),
        )
        return self.add(row)

    def lookup(self, model: Any, candidate: Any, *, context: str = "", hardware: str | None = None) -> Any:
        """The stored ``Trial`` of ``candidate`` on ``model`` (a Model or its sha256) measured
        on this hardware under ``context``, or ``None``."""
        sha = model if isinstance(model, str) else model.sha256
        key = candidate if isinstance(candidate, str) else candidate.key()
        row = self.get(sha, key, hardware or self.hardware(), context)
        return None if row is None else row.to_trial()

    def hardware(self) -> str:
        """This machine's hardware fingerprint (:func:`edgebench.devices.fingerprint`), cached."""
        return self._hardware(None, ())[0]

    def _hardware(self, hardware: str | None, isa: Iterable[str] | None) -> tuple[str, tuple]:
        if hardware is None:
            if self._fingerprint is None:
                from ..devices import fingerprint

                self._fingerprint = fingerprint()
            hardware = self._fingerprint
        if isa is None:
            from ..cpu import cpu_info

            isa = cpu_info().isa
        return hardware, tuple(isa)


def _num(v: Any) -> float | None:
    if v is None:
        return None
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None
