"""OptimizeResult: the winner, the engine settings that make it fast, every trial, the
Pareto front and the reasons.  Trials are appended as they finish and ``on_trial``
callbacks are told, so a live view can follow a search while it runs."""
from __future__ import annotations

from dataclasses import dataclass, field
from html import escape
from typing import TYPE_CHECKING, Any, Callable

from .base import Candidate, Trial

if TYPE_CHECKING:  # pragma: no cover
    from ..engine import Engine
    from ..model import Model
    from .quality import Gate

__all__ = ["OptimizeResult"]


@dataclass(eq=False)
class OptimizeResult:
    """What :func:`edgebench.optimize` found.

    Attributes
    ----------
    baseline
        The fp32 input model.
    best
        The winning model; never slower than ``baseline`` (it *is* ``baseline`` when nothing
        beat it by more than the noise margin, and ``reason`` says so).
    best_trial, baseline_trial
        Their :class:`~edgebench.optimize.base.Trial` s.
    history
        Every trial in the order measured (grows while the search runs).
    reason
        Why the winner won (or why the baseline was kept).
    confirmed_ratio
        The winner's latency over the baseline's in the final head-to-head rounds.
    on_trial
        Callbacks ``fn(result, trial)`` called as each trial is added; ``on_candidate``
        callbacks ``fn(result, candidate)`` when one starts.
    """

    baseline: "Model"
    gate: "Gate | None" = None
    data_description: str = ""
    policy: str = ""
    hardware: str = ""
    history: list = field(default_factory=list)
    notes: list = field(default_factory=list)
    why: dict = field(default_factory=dict)
    on_trial: list = field(default_factory=list)
    on_candidate: list = field(default_factory=list)
    best_trial: Trial | None = None
    baseline_trial: Trial | None = None
    reason: str = ""
    confirmed_ratio: float | None = None
    running: bool = True
    current: Candidate | None = None
    interrupted: bool = False
    wall_s: float = 0.0
    budgets: dict = field(default_factory=dict)

    # -- live updates -----------------------------------------------------------------------
    def _start(self, cand: Candidate) -> None:
        self.current = cand
        self._notify(self.on_candidate, cand)

    def _add(self, trial: Trial) -> None:
        trial.index = len(self.history)
        self.history.append(trial)
        self.current = None
        self._notify(self.on_trial, trial)

    def _notify(self, callbacks: list, arg: Any) -> None:
        for fn in list(callbacks):
            try:
                fn(self, arg)
            except Exception as e:  # noqa: BLE001 - a broken view must not stop the search
                self.notes.append(f"callback {getattr(fn, '__qualname__', fn)!r} failed: {type(e).__name__}: {e}")
                callbacks.remove(fn)

    # -- the answer -------------------------------------------------------------------------
    @property
    def best(self) -> "Model":
        t = self.best_trial or self.baseline_trial
        return t.model if t is not None and t.model is not None else self.baseline

    @property
    def settings(self) -> dict:
        """``{"threads": ..., "options": {...}}``: the engine settings of the winner."""
        t = self.best_trial or self.baseline_trial
        return dict(t.session) if t is not None else {"threads": None, "options": {}}

    def engine(self, **overrides: Any) -> "Engine":
        """An :class:`~edgebench.Engine` of :attr:`best` with the winning session settings
        (threads, execution mode, IOBinding, ...); keyword arguments override them."""
        from ..engine import Engine

        s = self.settings
        kw = {"threads": s.get("threads"), "options": dict(s.get("options") or {}),
              "device": self.budgets.get("device", "cpu")}
        kw.update(overrides)
        return Engine(self.best, **kw)

    @property
    def trials(self) -> Any:
        """A pandas DataFrame: one row per trial (passes and parameters, latency, accuracy,
        size, status, reason)."""
        import pandas as pd

        rows = [t.row() for t in self.history]
        return pd.DataFrame(rows).set_index("trial") if rows else pd.DataFrame()

    def pareto_trials(self) -> list[Trial]:
        """The ok trials no other ok trial beats on latency, accuracy and size at once."""
        ok = [t for t in self.history if t.ok and t.latency_ratio is not None]

        def dominates(a: Trial, b: Trial) -> bool:
            ka = (a.latency_ratio, -(a.accuracy or 0.0), a.size_bytes or 0)
            kb = (b.latency_ratio, -(b.accuracy or 0.0), b.size_bytes or 0)
            return all(x <= y for x, y in zip(ka, kb)) and ka != kb

        front = [t for t in ok if not any(dominates(o, t) for o in ok if o is not t)]
        return sorted(front, key=lambda t: t.latency_ratio)

    @property
    def pareto(self) -> Any:
        """The Pareto front over latency x accuracy x size (DataFrame rows of ``trials``)."""
        df = self.trials
        idx = [t.index for t in self.pareto_trials()]
        return df.loc[idx] if len(df) else df

    def counts(self) -> dict[str, int]:
        out = {"ok": 0, "rejected": 0, "failed": 0}
        for t in self.history:
            out[t.status] += 1
        return out

    def explain(self) -> str:
        """Why the winner won and why each other candidate lost, in plain text."""
        lines = []
        b = self.baseline_trial
        w = self.best_trial
        lines.append(f"Model {self.baseline.name!r} on {self.hardware or 'this machine'}; "
                     f"{len(self.history)} trials ({self.policy} policy).")
        if self.data_description:
            lines.append(f"Data: {self.data_description}.")
        if self.gate is not None:
            lines.append(f"Accuracy gate: {self.gate.why}.")
        if b is not None and b.p50_ms is not None:
            lines.append(f"Baseline (fp32, default session): p50 {b.p50_ms:.4f} ms, "
                         f"accuracy {_pct(b.accuracy)}, {b.size_bytes / 2**20:.2f} MB.")
        lines.append("")
        lines.append(f"Winner: {self.reason}")
        if w is not None and not w.candidate.is_baseline:
            for n in w.notes:
                lines.append(f"  - {n}")
            s = self.settings
            lines.append(f"  engine settings: threads={s.get('threads')}, options={s.get('options')}")
        for n in self.notes:
            lines.append(f"Note: {n}")
        lines.append("")
        lines.append("Other candidates:")
        for t in self.history:
            if t is w or t.candidate.is_baseline:
                continue
            ratio = f"{t.latency_ratio:.2f}x" if t.latency_ratio is not None else "-"
            if t.status == "ok":
                why = "slower than the winner" if w is not None and (t.latency_ratio or 9) >= (w.latency_ratio or 1) \
                    else "not confirmed faster in the final head-to-head"
                if t.latency_ratio is not None and t.latency_ratio >= 1:
                    why = "not faster than fp32"
            else:
                why = f"{t.status}: {t.reason}"
            acc = f", accuracy {_pct(t.accuracy)}" if t.accuracy is not None else ""
            lines.append(f"  #{t.index} {t.describe()}: {ratio}{acc}: {why}")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        """A JSON-friendly report (trials without their models)."""
        return {"model": self.baseline.name, "model_sha256": self.baseline.sha256, "hardware": self.hardware,
                "policy": self.policy, "reason": self.reason, "confirmed_ratio": self.confirmed_ratio,
                "best": None if self.best_trial is None else self.best_trial.to_dict(),
                "baseline": None if self.baseline_trial is None else self.baseline_trial.to_dict(),
                "engine_settings": self.settings, "gate": None if self.gate is None else self.gate.why,
                "data": self.data_description, "budgets": self.budgets, "notes": list(self.notes),
                "trials": [t.to_dict() for t in self.history], "interrupted": self.interrupted,
                "wall_s": self.wall_s}

    # -- display ----------------------------------------------------------------------------
    def _summary(self) -> str:
        c = self.counts()
        w = self.best_trial
        state = "running, " if self.running else ""
        if w is None:
            head = "no result yet"
        elif w.candidate.is_baseline:
            head = "fp32 baseline kept"
        else:
            r = self.confirmed_ratio if self.confirmed_ratio is not None else w.latency_ratio
            head = f"best {w.describe()} at {r:.2f}x latency, accuracy {_pct(w.accuracy)}"
        return (f"{head}; {state}{len(self.history)} trials: {c['ok']} ok, {c['rejected']} rejected, "
                f"{c['failed']} failed")

    def __repr__(self) -> str:
        return f"OptimizeResult({self.baseline.name!r}: {self._summary()})"

    def _repr_html_(self) -> str:
        rows = "".join(
            f"<tr><td>{t.index}</td><td>{escape(t.describe())}</td><td>{t.status}</td>"
            f"<td>{'' if t.latency_ratio is None else f'{t.latency_ratio:.2f}x'}</td>"
            f"<td>{'' if t.p50_ms is None else f'{t.p50_ms:.4f}'}</td><td>{_pct(t.accuracy)}</td>"
            f"<td>{'' if t.size_bytes is None else f'{t.size_bytes / 2**20:.2f}'}</td>"
            f"<td>{escape(t.reason)}</td></tr>" for t in self.history)
        return (f"<div class='edgebench-card'><b>OptimizeResult</b> <code>{escape(self.baseline.name)}</code>: "
                f"{escape(self._summary())}<br><small>{escape(self.reason)}</small>"
                "<table class='edgebench-table'><tr><th>#</th><th>candidate</th><th>status</th><th>latency</th>"
                "<th>p50 ms</th><th>accuracy</th><th>MB</th><th>reason</th></tr>"
                f"{rows}</table></div>")

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None, **kwargs: Any) -> dict:
        """In Jupyter: the live optimizer widget (``repr`` and the HTML card beside it)."""
        from ..notebook.display import mimebundle

        try:
            from ..notebook import views_optimize  # noqa: F401  (registers the OptimizeResult view)
        except ImportError:  # no ipywidgets / bokeh: the text and the HTML card
            pass
        return mimebundle(self, include, exclude)


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.2f}%"


Callback = Callable[[OptimizeResult, Any], None]
