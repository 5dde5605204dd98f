"""A small Gaussian process over candidates, for the ``search`` policy.

Candidates are encoded as 0/1 vectors (one column per ``Config`` present and per non-default
``Config.field=value``), each column belonging to the candidate's pass group (graph,
precision, session, ...).  The kernel mixes an additive part (one RBF per group, averaged:
"the session's effect is about the same whatever the precision") with a full RBF over all
columns (the interactions), which is what latency looks like: roughly multiplicative effects
per pass, so roughly additive in log latency.  Hyperparameters are picked by marginal
likelihood on a small grid (deterministic; a few milliseconds).
"""
from __future__ import annotations

import itertools
import json
import math
from typing import Any, Sequence

import numpy as np

__all__ = ["encode", "GP", "expected_improvement"]


def encode(candidates: Sequence[Any], fields: dict[str, Sequence[str]] | None = None,
           share: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """0/1 features of ``candidates`` and, per column, the index of its pass group.

    Columns: one per config class present, one per group absent ("no precision pass"), and
    one per field value.  ``fields`` (config class name -> searched field names) gives every
    searched field a column for its value, defaults included, so ``mode=static`` is as
    distinct from ``mode=dynamic`` as the reverse; other non-default fields get columns too.
    With ``share``, a setting of a nested config (``quantize.mode`` of a mixed-precision
    config) shares the column of the same setting of that config on its own.
    """
    fields = fields or {}
    tokens: dict[str, int] = {}
    token_group: list[str] = []

    def col(tok: str, group: str) -> int:
        if tok not in tokens:
            tokens[tok] = len(tokens)
            token_group.append(group)
        return tokens[tok]

    present = [{getattr(c, "group", "") or type(c).__name__: c for c in cand.configs} for cand in candidates]
    all_groups = sorted({g for p in present for g in p})
    rows: list[list[int]] = []
    for groups_here in present:
        row = [col(f"no {g}", g) for g in all_groups if g not in groups_here]
        for group, cfg in groups_here.items():
            name = type(cfg).__name__
            searched = list(fields.get(name, ()))
            items = {k: v for k, v in cfg.params().items()
                     if not any(f == k or f.startswith(k + ".") for f in searched)}
            items.update({f: _resolve(cfg, f) for f in searched})
            row.append(col(name, group))
            row += [col(f"{_owner(cfg, k) if share else name + '.' + k}={json.dumps(v, sort_keys=True, default=str)}",
                        group)
                    for k, v in items.items()]
        rows.append(row)
    X = np.zeros((len(candidates), max(1, len(tokens))))
    for i, row in enumerate(rows):
        X[i, row] = 1.0
    names = sorted(set(token_group))
    groups = np.array([names.index(g) for g in token_group] or [0])
    return X, groups


def _owner(cfg: Any, dotted: str) -> str:
    """``"QuantizeConfig.mode"`` for ``mode`` of a QuantizeConfig and for ``quantize.mode`` of a
    config holding one, so the same setting shares its column across passes."""
    *path, leaf = dotted.split(".")
    for part in path:
        cfg = getattr(cfg, part, None)
    return f"{type(cfg).__name__}.{leaf}"


def _resolve(obj: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        obj = getattr(obj, part, None)
    return obj


def _sqdist(A: np.ndarray, B: np.ndarray) -> np.ndarray:
    # 0/1 features: squared distance is the number of differing columns
    return np.maximum(A.sum(1)[:, None] + B.sum(1)[None, :] - 2.0 * A @ B.T, 0.0)


class GP:
    """GP regression on residuals from a prior mean, with a grid-fitted kernel.

    Parameters
    ----------
    X, groups
        From :func:`encode` (all candidates; observations are rows of it).

    The kernel's signal variance, lengthscale, additive share and noise come from a grid, by
    marginal likelihood.  The additive part weighs the groups: equally, or one group at 70% (the grid picks by
    marginal likelihood, so "only the precision pass decides whether the accuracy holds" is
    learnt from a handful of trials).
    """

    _GRID = {"s2": (0.02, 0.08, 0.3, 1.0), "ls": (0.8, 1.5, 3.0), "alpha": (0.0, 0.6, 0.9),
             "noise": (2e-4, 2e-3)}

    def __init__(self, X: np.ndarray, groups: np.ndarray):
        self.X = X
        self.groups = groups
        self.params: tuple | None = None
        self.obs = np.zeros(0, dtype=int)
        self._G = [np.flatnonzero(groups == g) for g in np.unique(groups)]
        n = len(self._G)
        self._weights = [np.full(n, 1.0 / n)]
        if n > 1:
            for g in range(n):
                w = np.full(n, 0.3 / (n - 1))
                w[g] = 0.7
                self._weights.append(w)

    def _dists(self, a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
        A, B = self.X[a], self.X[b]
        return _sqdist(A, B), [_sqdist(A[:, c], B[:, c]) for c in self._G]

    @staticmethod
    def _k(D: np.ndarray, Dg: list[np.ndarray], s2: float, ls: float, alpha: float, w: np.ndarray) -> np.ndarray:
        full = np.exp(-D / (2 * ls * ls))
        if alpha == 0.0:
            return s2 * full
        add = sum(wg * np.exp(-d / (2 * ls * ls)) for wg, d in zip(w, Dg))
        return s2 * (alpha * add + (1 - alpha) * full)

    def fit(self, obs: Sequence[int], residuals: Sequence[float]) -> "GP":
        """Condition on residuals ``y - prior`` observed at candidate indices ``obs``."""
        self.obs = np.asarray(obs, dtype=int)
        r = np.asarray(residuals, dtype=float)
        self.r = r
        if not len(r):
            self.params = (0.08, 1.5, 0.6, 2e-3, self._weights[0])
            return self
        D, Dg = self._dists(self.obs, self.obs)
        grid = [(p, w) for p in itertools.product(*self._GRID.values()) for w in self._weights
                if p[2] > 0 or w is self._weights[0]]  # weights only matter to the additive part
        # much noise on the diagonal: only for data no point of the grid can fit
        best = self._best(D, Dg, r, grid) or self._best(D, Dg, r, [((1.0, 1.5, 0.0, 0.1), self._weights[0])])
        _, self.params, self._L, self._a = best
        return self

    def _best(self, D: np.ndarray, Dg: list[np.ndarray], r: np.ndarray, grid: list) -> tuple | None:
        best = None
        for (s2, ls, alpha, noise), w in grid:
            K = self._k(D, Dg, s2, ls, alpha, w) + noise * np.eye(len(r))
            try:
                L = np.linalg.cholesky(K)
            except np.linalg.LinAlgError:
                continue
            a = np.linalg.solve(L.T, np.linalg.solve(L, r))
            ll = -0.5 * r @ a - np.log(np.diag(L)).sum()
            if best is None or ll > best[0] + 1e-9:
                best = (ll, (s2, ls, alpha, noise, w), L, a)
        return best

    def predict(self, idx: Sequence[int] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Posterior mean residual and standard deviation at candidate indices ``idx``."""
        idx = np.arange(len(self.X)) if idx is None else np.asarray(idx, dtype=int)
        s2, ls, alpha, noise, w = self.params
        if len(self.obs) == 0:
            return np.zeros(len(idx)), np.full(len(idx), math.sqrt(s2))
        D, Dg = self._dists(idx, self.obs)
        Ks = self._k(D, Dg, s2, ls, alpha, w)
        mu = Ks @ self._a
        v = np.linalg.solve(self._L, Ks.T)
        var = np.maximum(s2 - (v * v).sum(0), 1e-12)
        return mu, np.sqrt(var)


def expected_improvement(mu: np.ndarray, sd: np.ndarray, best: float) -> np.ndarray:
    """Expected amount by which a value ~ N(mu, sd) falls below ``best`` (minimisation)."""
    from math import erf

    z = (best - mu) / sd
    cdf = 0.5 * (1.0 + np.vectorize(erf)(z / math.sqrt(2.0)))
    pdf = np.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)
    return np.maximum(sd * (z * cdf + pdf), 0.0)
