"""How a candidate's outputs are judged: the accuracy gate (labels), top-1 agreement with
fp32, or cosine similarity when the fp32 model's own margins make top-1 agreement noise."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..errors import OptimizeError

__all__ = ["Gate", "choose_gate", "fidelity", "margins", "LOW_MARGIN"]

#: a model whose median top-1 softmax margin (p1 - p2) is below this decides top-1 by tiny
#: differences (typical of random weights), so top-1 agreement with it is noise
LOW_MARGIN = 0.1


def _class_scores(out: np.ndarray) -> np.ndarray | None:
    if out.ndim != 2 or out.shape[1] < 2 or not np.issubdtype(out.dtype, np.floating):
        return None
    return out


def _probabilities(z: np.ndarray) -> np.ndarray:
    z = z.astype(np.float64)
    if (z >= 0).all() and np.allclose(z.sum(1), 1.0, atol=1e-3):
        return z  # already probabilities
    z = z - z.max(1, keepdims=True)
    p = np.exp(z)
    return p / p.sum(1, keepdims=True)


def margins(out: np.ndarray) -> dict | None:
    """The fp32 model's top-1 margin distribution (softmax p1 - p2) and how much its outputs
    depend on the input; ``None`` when the output is not class scores."""
    z = _class_scores(out)
    if z is None or len(z) < 2:
        return None
    s = np.sort(_probabilities(z), axis=1)
    gap = s[:, -1] - s[:, -2]
    total = float(z.std())
    spread = float(z.std(axis=0).mean() / total) if total > 0 else 0.0
    return {"median_margin": float(np.median(gap)), "p10_margin": float(np.percentile(gap, 10)),
            "fragile": float((gap < LOW_MARGIN).mean()), "input_spread": spread,
            "classes": int(z.shape[1])}


def fidelity(ref: list[np.ndarray], out: list[np.ndarray]) -> dict:
    """Top-1 agreement (class-score outputs), mean per-sample cosine similarity and max abs
    error of ``out`` against the fp32 ``ref`` (all outputs, flattened per sample)."""
    if len(ref) != len(out) or any(a.shape != b.shape for a, b in zip(ref, out)):
        raise OptimizeError("the optimized model's outputs differ in number or shape from the baseline's: "
                            f"{[list(a.shape) for a in ref]} vs {[list(b.shape) for b in out]}")
    n = len(ref[0])
    a = np.concatenate([r.reshape(n, -1).astype(np.float64) for r in ref], axis=1)
    b = np.concatenate([o.reshape(n, -1).astype(np.float64) for o in out], axis=1)
    res: dict = {"finite": bool(np.isfinite(b).all())}
    if not res["finite"]:
        return {**res, "cosine": float("nan"), "max_abs_err": float("inf"), "top1_agreement": 0.0}
    na, nb = np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=1)
    denom = na * nb
    cos = np.where(denom > 0, (a * b).sum(1) / np.where(denom > 0, denom, 1), (na == nb).astype(float))
    res["cosine"] = float(cos.mean())
    res["max_abs_err"] = float(np.abs(a - b).max())
    z = _class_scores(ref[0])
    if z is not None:
        res["top1_agreement"] = float((ref[0].argmax(1) == out[0].argmax(1)).mean())
    return res


@dataclass
class Gate:
    """The rule a candidate's outputs must pass.

    ``kind`` is ``"metric"`` (drop of the labelled metric <= ``max_drop``), ``"top1"`` (top-1
    disagreement with fp32 <= ``max_drop``) or ``"cosine"`` (mean cosine similarity to fp32
    >= ``min_cosine``); ``why`` says why this rule was chosen.
    """

    kind: str
    max_drop: float
    min_cosine: float
    why: str
    stats: dict | None = field(default=None)

    def score(self, fid: dict) -> tuple[float, float]:
        """(accuracy, drop) reported for a fidelity gate."""
        if self.kind == "cosine":
            c = fid.get("cosine", float("nan"))
            return c, 1.0 - c
        agree = fid.get("top1_agreement", 0.0)
        return agree, 1.0 - agree

    def check(self, drop: float | None, fid: dict) -> tuple[bool, str]:
        if not fid.get("finite", True):
            return False, "outputs contain NaN or inf"
        if self.kind == "cosine":
            c = fid["cosine"]
            if not c >= self.min_cosine:
                return False, (f"cosine similarity to fp32 {c:.4f} < {self.min_cosine:g} "
                               "(the fidelity threshold for this low-margin model)")
            return True, ""
        what = "accuracy drop" if self.kind == "metric" else "top-1 disagreement with fp32"
        if drop is None or drop > self.max_drop + 1e-9:
            return False, f"{what} {100 * drop:.2f} points > budget {100 * self.max_drop:g} points"
        return True, ""

    def for_calibration(self) -> "Gate":
        """The same budget as fidelity to fp32 (what can be checked on calibration inputs)."""
        if self.kind == "metric":
            decisive = self.stats is not None and self.stats["median_margin"] >= LOW_MARGIN
            kind = "top1" if decisive else "cosine"
            return Gate(kind, self.max_drop, self.min_cosine, self.why, self.stats)
        return self

    def summary(self, fid: dict) -> str:
        if self.kind == "cosine":
            return f"cosine {fid.get('cosine', float('nan')):.4f}"
        return f"top-1 agreement {100 * fid.get('top1_agreement', 0.0):.2f}%"


def choose_gate(out: np.ndarray, labelled: bool, max_drop: float, min_cosine: float) -> Gate:
    """The gate for a baseline whose first output over the evaluation inputs is ``out``."""
    stats = margins(out)
    if labelled:
        return Gate("metric", max_drop, min_cosine, "accuracy measured against the labels", stats)
    if stats is None:
        return Gate("cosine", max_drop, min_cosine,
                    f"no labels and the output is not class scores: gating on mean cosine similarity "
                    f">= {min_cosine:g} to the fp32 outputs", None)
    if stats["median_margin"] < LOW_MARGIN:
        extra = ""
        if stats["input_spread"] < 1e-3:
            extra = f"; its outputs barely depend on the input (spread {stats['input_spread']:.1e})"
        return Gate("cosine", max_drop, min_cosine,
                    f"no labels, and the fp32 model's median top-1 softmax margin is {stats['median_margin']:.3g} "
                    f"(< {LOW_MARGIN:g}; {100 * stats['fragile']:.0f}% of samples below it){extra}: its top-1 is "
                    "decided by tiny differences, as with random weights, so top-1 agreement would be noise; "
                    f"gating on mean cosine similarity >= {min_cosine:g} to the fp32 outputs instead", stats)
    return Gate("top1", max_drop, min_cosine,
                f"no labels: top-1 agreement with fp32 on held-out inputs (the fp32 median top-1 softmax "
                f"margin is {stats['median_margin']:.3g} >= {LOW_MARGIN:g}, so its predictions are decisive)", stats)
