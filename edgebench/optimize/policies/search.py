"""``search``: model-based search over the candidates the configs span.

Bayesian optimisation on a finite set: a Gaussian process (:mod:`._surrogate`) models the log
latency ratio of every candidate from the ones measured so far, a second one models the
chance that a candidate passes (inside the accuracy and size budgets, not failed), and the
next candidate is the one with the largest expected improvement times that chance.

1. the baseline, then any seeds (the rules' proposals for ``auto``);
2. without history, a covering design: single passes that between them show every searched
   value once (the effects before the interactions);
3. expected improvement until nothing left is expected to gain more than ``tol`` for
   ``patience`` proposals in a row;
4. before stopping, the best candidate without each of its passes (a pass that pays alone can
   cost in combination: int8 kernels often scale worse with threads).

On synthetic tables (spaces of 75-260 candidates, random per-pass effects and interactions,
failures, accuracy rejections, 2-5% noise) it found the exhaustive best within 5% in 398 of
400 runs, with 12% (large spaces) to 26% (small ones) of the trials on average, never more
than 35%; ``max_trials`` is a ceiling.

Learning across runs: with a results store, a :class:`~edgebench.optimize.costmodel.CostModel`
fitted on the other models' trials gives the prior mean of both processes and the first
candidates to measure, so a new model starts where similar models ended.  Trials already
stored for this model (same hardware and ``context``) are proposed first, so an interrupted
search resumes and a repeated one replays from the store without measuring.
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from . import POLICIES, PolicyBase
from ._surrogate import GP, encode, expected_improvement

if TYPE_CHECKING:  # pragma: no cover
    from ..base import Candidate, PassContext, SearchSpace, Trial
    from ..costmodel import CostModel

__all__ = ["SearchPolicy"]

_P_OK_PRIOR = 0.75  # without history: most candidates pass


@POLICIES.register("search")
class SearchPolicy(PolicyBase):
    """Gaussian-process search with expected improvement, seeded by past runs.

    Parameters
    ----------
    space, ctx, max_trials, store, seed
        As for every policy (see :class:`~edgebench.optimize.policies.PolicyBase`).
        ``max_trials=None`` allows 35% of the space, at most 100 trials (the search usually
        converges well before).
    seeds
        Candidates (or ``(candidate, reason)`` pairs) to measure first, e.g. the rules'.
    context
        Context key of this run's evaluation conditions: with ``store``, the trials stored
        for this model, hardware and context are proposed first (resume / replay).
    cost_model
        A fitted cost model; default: fitted on ``store``'s trials of *other* models.
    n_prior
        How many of the cost model's top-ranked candidates to measure first.
    tol, patience
        Stop once no candidate left has an expected improvement (in log latency, times its
        chance to pass) above ``tol`` for more than ``patience`` proposals in a row, and the
        best candidate without each of its passes has been measured.
    max_candidates
        Larger spaces are subsampled (seeded) to this many candidates.
    """

    name = "search"

    def __init__(self, space: "SearchSpace", ctx: "PassContext | None" = None, *,
                 max_trials: int | None = None, store: Any = None, seed: int = 0,
                 seeds: Sequence[Any] = (), context: str | None = None,
                 cost_model: "CostModel | None" = None, n_prior: int = 3, tol: float = 0.001,
                 patience: int = 4, max_candidates: int = 4000):
        super().__init__(space, ctx, max_trials=max_trials, store=store, seed=seed)
        from ..base import Candidate

        rng = np.random.default_rng(seed)
        cands = list(space.enumerate())
        if len(cands) > max_candidates:
            keep = rng.choice(np.arange(1, len(cands)), size=max_candidates - 1, replace=False)
            cands = [cands[0]] + [cands[i] for i in sorted(keep)]
        self.candidates: list[Candidate] = cands
        self._index = {c.key(): i for i, c in enumerate(cands)}
        fields = {n: list(f) for n, f in space.families.items()}
        self._X, groups = encode(cands, fields)
        self._C = encode(cands, fields, share=False)[0]  # what the covering design must show
        self._lat = GP(self._X, groups)
        self._feas = GP(self._X, groups)
        self._order = rng.permutation(len(cands))  # tie-break among equals, reproducibly
        self._y: dict[int, float] = {}  # log latency ratio of measured candidates
        self._ok: dict[int, float] = {}  # 1 passed, 0 rejected / failed
        self.tol = tol
        self.patience = patience
        self._calm = 0  # proposals in a row with expected gain below tol
        self.stop_reason = ""
        if self.max_trials is None:  # a ceiling; the search normally converges well before it
            self.max_trials = max(min(len(cands), 3), min(int(0.35 * len(cands)), 100))
        self.min_trials = min(len(cands), 2 + 2 * len(np.unique(groups)))

        self._queue: list[tuple[Candidate, str]] = [(Candidate(), "the fp32 baseline is always measured")]
        stored = self._stored(context)
        self._queue += stored
        self._replayed = bool(stored)
        for s in seeds:
            cand, why = s if isinstance(s, tuple) else (s, "seed")
            self._queue.append((cand, why))
        self.cost_model = cost_model if cost_model is not None else self._fit_cost_model()
        self._prior_lat = np.zeros(len(cands))
        self._prior_ok = np.full(len(cands), _P_OK_PRIOR)
        self._covers = 0
        self._max_covers = 0
        if self.cost_model is not None and self.cost_model.fitted and ctx is not None:
            self._use_prior(n_prior)
        else:  # a covering design of single passes, bounded: about one per value of each pass's widest field
            self._max_covers = 3 + sum(max((len(v) for v in f.values()), default=1) for f in space.families.values())

    # -- history --------------------------------------------------------------------------
    def _stored(self, context: str | None) -> list[tuple["Candidate", str]]:
        if self.store is None or self.ctx is None or context is None:
            return []
        from ..base import Candidate

        rows = self.store.trials(model=self.ctx.baseline.sha256, context=context)
        if rows:  # (the fingerprint probes the devices: only when there is something to match)
            hw = self.store.hardware()
            rows = [r for r in rows if r.hardware == hw]
        out = []
        for r in rows:
            try:
                out.append((Candidate.from_key(r.candidate), "stored from an earlier run of this search"))
            except Exception:  # noqa: BLE001 - a pass no longer installed: measure afresh instead
                continue
        return out

    def _fit_cost_model(self) -> "CostModel | None":
        if self.store is None:
            return None
        from ..costmodel import CostModel

        own = self.ctx.baseline.sha256 if self.ctx is not None else None
        history = [t for t in self.store.trials() if t.model != own]
        cm = CostModel(seed=self.seed)
        return cm.fit(history) if len(history) >= cm.min_trials else cm  # (no scikit-learn import for nothing)

    def _use_prior(self, n_prior: int) -> None:
        from ..costmodel import model_features

        pred = self.cost_model.predict([c.params() for c in self.candidates],
                                       model_features(self.ctx.baseline), self.ctx.cpu.isa)
        self._prior_lat = np.asarray(pred.log_ratio, dtype=float)
        self._prior_ok = np.clip(np.asarray(pred.p_ok, dtype=float), 0.05, 0.95)
        n_models = len(self.cost_model.models)
        for i in np.argsort(pred.score(), kind="stable")[:n_prior]:
            why = (f"cost model ({self.cost_model.n_trials} past trials on {n_models} other models) "
                   f"predicts {math.exp(self._prior_lat[i]):.2f}x, P(passes) {self._prior_ok[i]:.0%}")
            self._queue.append((self.candidates[int(i)], why))

    def _cover(self) -> "Candidate | None":
        """Without history, first measure a few candidates that between them show every
        searched value of every field (a greedy covering design of single passes), so no
        region of the space is judged before something like it was measured.  A covering
        trial that fails shows nothing, so its settings are covered again (a bounded number
        of times)."""
        failed = {i for i, ok in self._ok.items() if not ok and i not in self._y}
        shown = [i for i, c in enumerate(self.candidates) if c.configs and self.seen(c) and i not in failed]
        todo = (self._C[shown].max(0) if shown else np.zeros(self._C.shape[1])) < 1
        if not todo.any() or self._covers >= self._max_covers:
            return None
        unseen = np.array([i for i in self._order if not self.seen(self.candidates[i])], dtype=int)
        if not len(unseen):
            return None
        gain = self._C[unseen][:, todo].sum(1)
        single = np.array([len(self.candidates[i].configs) == 1 for i in unseen])
        if (gain * single).max() > 0:  # each pass alone first: the effects before the interactions
            gain = gain * single
        j = int(np.argmax(gain))
        if gain[j] == 0:
            return None
        self._covers += 1
        return self._propose(self.candidates[int(unseen[j])],
                             "covering design: shows every searched setting once before the surrogate is trusted")

    # -- protocol -------------------------------------------------------------------------
    def _observe(self, trial: "Trial") -> None:
        i = self._index.get(trial.candidate.key())
        if i is None:  # not in the space (an explicit candidate): counts for best only
            return
        r = trial.latency_ratio
        if trial.status != "failed" and r is not None and r > 0 and math.isfinite(r):
            self._y[i] = math.log(r)
            passed = [self._y[k] for k, ok in self._ok.items() if ok and k in self._y]
            if trial.status == "ok" and passed and self._y[i] < min(passed) - self.tol:
                self._calm = 0  # a new best: the surrogate was wrong somewhere, keep looking
        self._ok[i] = 1.0 if trial.status == "ok" else 0.0

    def _next(self) -> "Candidate | None":
        while self._queue:
            cand, why = self._queue.pop(0)
            if not self.seen(cand):
                return self._propose(cand, why)
        if self._replayed:  # a finished search replayed from the store stops where it stopped
            self._replayed = False
            self._calm = max(self._calm, self.patience)
        cover = self._cover()
        if cover is not None:
            return cover
        left = np.array([i for i in self._order if not self.seen(self.candidates[i])], dtype=int)
        if not len(left):
            self.stop_reason = "every candidate of the space was measured"
            return None
        acq, mu, p_ok = self._acquisition(left)
        j = int(np.argmax(acq))  # first of the maxima in the seeded order
        self._calm = self._calm + 1 if acq[j] < self.tol else 0
        if self.n_trials >= self.min_trials and self._calm > self.patience:
            ablation = self._ablation()
            if ablation is not None:
                return ablation
            self.stop_reason = (f"converged after {self.n_trials} trials: no candidate left is expected "
                                f"to improve on the best by more than {self.tol:.1%}")
            return None
        i = int(left[j])
        why = (f"model-based search: predicted {math.exp(mu[j]):.2f}x the baseline's latency, "
               f"P(passes) {p_ok[j]:.0%}, expected gain {acq[j]:.1%}")
        return self._propose(self.candidates[i], why)

    def _ablation(self) -> "Candidate | None":
        """Before stopping, the best candidate without each of its passes: a pass that pays
        alone can cost in combination (int8 kernels that scale worse with threads), which an
        additive surrogate does not expect."""
        best = self.best
        if best is None:
            return None
        from ..base import Candidate

        for k in range(len(best.candidate.configs)):
            cand = Candidate(best.candidate.configs[:k] + best.candidate.configs[k + 1:])
            if cand.key() in self._index and not self.seen(cand):
                return self._propose(cand, f"checks the best candidate without its "
                                           f"{best.candidate.configs[k].describe()}")
        return None

    def suggest(self) -> "Candidate | None":
        cand = super().suggest()
        if cand is None and not self.stop_reason:
            self.stop_reason = f"the budget of {self.max_trials} trials is spent"
        return cand

    def _acquisition(self, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Expected improvement in log latency times P(passes), and the predictions, at ``idx``."""
        ys = sorted(self._y)
        self._lat.fit(ys, [self._y[i] - self._prior_lat[i] for i in ys])
        mu, sd = self._lat.predict(idx)
        mu = mu + self._prior_lat[idx]
        oks = sorted(self._ok)
        self._feas.fit(oks, [self._ok[i] - self._prior_ok[i] for i in oks])
        p_ok = np.clip(self._feas.predict(idx)[0] + self._prior_ok[idx], 0.0, 1.0)
        passed = [self._y[i] for i in ys if self._ok.get(i)]
        best = min(passed) if passed else 0.0  # the baseline's log ratio is 0
        return expected_improvement(mu, sd, best) * p_ok, mu, p_ok

    def predictions(self) -> list[tuple["Candidate", float, float]]:
        """``(candidate, predicted latency ratio, P(passes))`` for every candidate, best first."""
        idx = np.arange(len(self.candidates))
        _, mu, p = self._acquisition(idx)
        order = np.argsort(mu - np.log(np.maximum(p, 1e-3)), kind="stable")
        return [(self.candidates[i], float(math.exp(mu[i])), float(p[i])) for i in order]
