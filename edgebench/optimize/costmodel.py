"""A cost model that learns, from every stored trial across models, what a candidate does.

The seed's MLBasedPolicy, made concrete: features are the model's op mix, size and parameter
count, the candidate's passes and parameters, and the CPU's ISA flags; targets are the log of
the latency ratio to the fp32 baseline measured in the same run (ratios transfer between
models and machines, milliseconds do not), the accuracy drop, and whether the trial passed
(status ``"ok"``: inside the budgets, not failed).
Gradient-boosted trees (scikit-learn) capture the interactions that matter ("int8 pays on a
MatMul-heavy model with VNNI, not on a Conv-heavy one with AVX2 only").

The search uses its predictions for a new model as a prior: the candidates it ranks first are
measured first, and the surrogate fits only what the prior got wrong.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

import numpy as np

from .store import StoredTrial

__all__ = ["CostModel", "Prediction", "model_features", "isa_features", "featurize"]

_OP_GROUPS = {
    "matmul": {"MatMul", "Gemm", "MatMulInteger", "QLinearMatMul", "FusedMatMul", "Einsum"},
    "conv": {"Conv", "ConvTranspose", "QLinearConv", "ConvInteger", "FusedConv"},
    "norm": {"BatchNormalization", "LayerNormalization", "InstanceNormalization",
             "SkipLayerNormalization", "GroupNormalization"},
    "attention": {"Softmax", "Attention", "MultiHeadAttention"},
    "pool": {"MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool"},
    "shape": {"Reshape", "Transpose", "Flatten", "Squeeze", "Unsqueeze", "Concat", "Gather",
              "Shape", "Slice", "Split", "Expand"},
}
_ISA = {
    "avx2": ("avx2",), "avx512": ("avx512f",), "vnni": ("avx512_vnni", "avx_vnni"),
    "amx": ("amx_int8", "amx_tile"), "neon": ("neon", "asimd"), "dotprod": ("asimddp",),
    "i8mm": ("i8mm",), "fp16": ("avx512_fp16", "asimdhp"),
}


def model_features(model: Any) -> dict[str, float]:
    """Op mix (share of nodes per op family), log10 size, parameters and node count of ``model``."""
    counts: dict[str, int] = dict(getattr(model, "op_counts", {}) or {})
    total = max(1, sum(counts.values()))
    feats = {f"op_{g}": sum(n for op, n in counts.items() if op in ops) / total
             for g, ops in _OP_GROUPS.items()}
    feats["log_size"] = math.log10(max(1.0, float(getattr(model, "size_bytes", 1) or 1)))
    feats["log_params"] = math.log10(1.0 + float(getattr(model, "n_params", 0) or 0))
    feats["log_nodes"] = math.log10(float(total))
    return feats


def isa_features(isa: Iterable[str]) -> dict[str, float]:
    """0/1 flags for the ISA extensions that decide whether int8 / fp16 pays."""
    have = set(isa)
    return {f"isa_{k}": float(any(f in have for f in flags)) for k, flags in _ISA.items()}


def featurize(fields: dict[str, Any], model_feats: dict[str, float], isa: Iterable[str]) -> dict[str, float]:
    """One feature dict: candidate fields (one-hot for text, numbers as numbers) + model + ISA."""
    out: dict[str, float] = {}
    for k, v in fields.items():
        if isinstance(v, bool):
            out[k] = float(v)
        elif isinstance(v, (int, float)):
            out[k] = float(v)
            out[f"{k}={v}"] = 1.0  # thread counts etc. act as levels too
        else:
            out[f"{k}={v if isinstance(v, str) else json.dumps(v)}"] = 1.0
    out.update({f"m_{k}": float(v) for k, v in model_feats.items()})
    out.update(isa_features(isa))
    return out


@dataclass(frozen=True)
class Prediction:
    """Cost-model predictions for a list of candidates (arrays aligned with it)."""

    log_ratio: np.ndarray  # predicted log(p50 / baseline p50)
    accuracy_drop: np.ndarray  # predicted accuracy drop (0 where nothing was learnt)
    p_ok: np.ndarray  # predicted chance that it passes (not failed, inside the budgets)

    def score(self, penalty: float = 1.0) -> np.ndarray:
        """Lower is better: log ratio plus a penalty for likely rejections and failures."""
        return self.log_ratio + penalty * (1.0 - self.p_ok)


class CostModel:
    """Gradient-boosted trees over (model, candidate, ISA) features, fit on stored trials.

    Parameters
    ----------
    min_trials
        Fewer usable trials than this and the model stays unfitted (``fitted`` is False).
    seed
        Seed of the tree ensembles (fitting is deterministic).

    Examples
    --------
    >>> cm = CostModel().fit(store.trials())          # doctest: +SKIP
    >>> order = cm.rank(candidate_fields_list, model_features(m), cpu_info().isa)  # doctest: +SKIP
    """

    def __init__(self, *, min_trials: int = 8, seed: int = 0):
        self.min_trials = min_trials
        self.seed = seed
        self.fitted = False
        self.n_trials = 0
        self.models: set[str] = set()
        self._vec: Any = None
        self._lat: Any = None
        self._drop: Any = None
        self._ok: Any = None

    def __repr__(self) -> str:
        state = f"fitted on {self.n_trials} trials of {len(self.models)} models" if self.fitted else "unfitted"
        return f"CostModel({state})"

    def fit(self, trials: Iterable[StoredTrial]) -> "CostModel":
        """Fit on stored trials (any models, any hardware); returns ``self``."""
        from sklearn.ensemble import GradientBoostingRegressor
        from sklearn.feature_extraction import DictVectorizer

        trials = [t for t in trials if t.model_features]
        lat = [(t, math.log(t.latency_ratio)) for t in trials
               if t.status != "failed" and t.latency_ratio and t.latency_ratio > 0]
        self.n_trials = len(trials)
        self.models = {t.model for t in trials}
        self.fitted = len(lat) >= self.min_trials
        if not self.fitted:
            return self
        rows = [featurize(t.fields, t.model_features, t.isa) for t in trials]
        self._vec = DictVectorizer(sparse=False).fit(rows)
        X = self._vec.transform(rows)
        index = {id(t): i for i, t in enumerate(trials)}

        def gbr() -> Any:
            return GradientBoostingRegressor(n_estimators=150, max_depth=3, learning_rate=0.1,
                                             min_samples_leaf=2, random_state=self.seed)

        li = [index[id(t)] for t, _ in lat]
        self._lat = gbr().fit(X[li], [y for _, y in lat])
        di = [i for i, t in enumerate(trials) if t.accuracy_drop is not None and t.status != "failed"]
        self._drop = gbr().fit(X[di], [trials[i].accuracy_drop for i in di]) if len(di) >= self.min_trials else None
        ok = np.array([t.status == "ok" for t in trials], dtype=float)
        self._ok = gbr().fit(X, ok) if 0 < ok.sum() < len(ok) else None
        return self

    def predict(self, fields: Sequence[dict[str, Any]], model_feats: dict[str, float],
                isa: Iterable[str]) -> Prediction:
        """Predict for each candidate's flat fields (``Candidate.params()``)."""
        n = len(fields)
        if not self.fitted or n == 0:
            return Prediction(np.zeros(n), np.zeros(n), np.ones(n))
        isa = tuple(isa)
        X = self._vec.transform([featurize(f, model_feats, isa) for f in fields])
        drop = self._drop.predict(X) if self._drop is not None else np.zeros(n)
        ok = np.clip(self._ok.predict(X), 0.0, 1.0) if self._ok is not None else np.ones(n)
        return Prediction(self._lat.predict(X), drop, ok)

    def rank(self, fields: Sequence[dict[str, Any]], model_feats: dict[str, float],
             isa: Iterable[str]) -> list[int]:
        """Indices of ``fields``, most promising first (predicted fastest, likely to pass)."""
        score = self.predict(fields, model_feats, isa).score()
        return [int(i) for i in np.argsort(score, kind="stable")]
