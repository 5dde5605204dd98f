"""The optimizer's data: calibration inputs and evaluation inputs (with labels or not),
checked against the model's signature and kept disjoint."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterable, Mapping

import numpy as np

from .._feeds import FeedValidator, random_feeds
from ..errors import DatasetError, InvalidInputError

if TYPE_CHECKING:  # pragma: no cover
    from ..model import Model

__all__ = ["Dataset", "prepare_dataset"]

_RANDOM_CAL, _RANDOM_EVAL = 64, 128


@dataclass
class Dataset:
    """Calibration inputs and evaluation inputs (+ labels), validated against a model.

    Attributes
    ----------
    calibration
        ``{input name: array}`` used by calibrating passes only.
    inputs
        ``{input name: array}`` the candidates are evaluated on (never calibrated on).
    labels
        Array of ``len(inputs)`` labels, or ``None`` (fidelity to fp32 is used instead).
    description
        Where the data came from, for ``explain()``.
    """

    calibration: dict[str, np.ndarray]
    inputs: dict[str, np.ndarray]
    labels: np.ndarray | None = None
    description: str = ""
    notes: list = field(default_factory=list)

    @property
    def n_eval(self) -> int:
        return len(next(iter(self.inputs.values())))

    @property
    def n_calibration(self) -> int:
        return len(next(iter(self.calibration.values()))) if self.calibration else 0

    def batches(self, batch_size: int) -> Iterable[tuple[int, dict[str, np.ndarray]]]:
        """(start index, feeds) over the evaluation inputs."""
        for i in range(0, self.n_eval, batch_size):
            yield i, {k: v[i:i + batch_size] for k, v in self.inputs.items()}


def prepare_dataset(model: "Model", dataset: Any = None, *, calibration: Any = None, seed: int = 0,
                    max_eval: int | None = None, calibration_fraction: float = 0.2,
                    max_calibration: int = 256) -> Dataset:
    """Turn what the user gave into a :class:`Dataset` for ``model``.

    Parameters
    ----------
    dataset
        ``(X, y)`` with ``X`` an array (single-input models) or ``{input name: array}`` and ``y``
        labels or ``None``; ``X`` alone; an iterable of such batches; ``"zoo:NAME"`` (its
        calibration and test splits); or ``None``: a zoo model's own data set, else seeded
        random inputs (fidelity on random inputs only; said in ``explain()``).
    calibration
        Inputs to calibrate on; when omitted a seeded fifth of ``dataset`` (at most
        ``max_calibration`` samples) is set aside and never evaluated on.

    Raises
    ------
    DatasetError
        Empty data, inputs whose names, shapes or dtypes do not fit the model, labels whose
        length differs from the inputs'.
    """
    notes: list[str] = []
    if dataset is None:
        dataset, calibration, desc = _default(model, calibration, seed)
        if dataset is None:
            return _random(model, seed)
    elif isinstance(dataset, str):
        dataset, calibration, desc = _zoo(dataset, calibration)
    else:
        desc = "the dataset given"
    X, y = _split_xy(dataset)
    X = _as_inputs(model, X, "dataset")
    n = len(next(iter(X.values())))
    if y is not None:
        y = np.asarray(y)
        if y.ndim == 0 or len(y) != n:
            raise DatasetError(f"the dataset has {n} inputs but {y.shape[0] if y.ndim else 'a scalar of'} labels",
                               "pass one label per sample: (X, y) with len(y) == len(X)")
    if calibration is not None:
        cal = _as_inputs(model, _split_xy(calibration)[0], "calibration data")
        cal, dropped = _drop_overlap(cal, X)
        if dropped:
            notes.append(f"{dropped} calibration samples also in the evaluation data were dropped from calibration")
        if not cal:
            raise DatasetError("every calibration sample also appears in the evaluation data",
                               "calibrate and evaluate on different samples")
    else:
        if n < 2:
            raise DatasetError(f"the dataset has {n} sample; calibration and evaluation need at least 2 "
                               "disjoint samples", "pass more samples, or calibration=... separately")
        k = min(max_calibration, max(1, int(round(n * calibration_fraction))))
        order = np.random.RandomState(seed).permutation(n)
        ci, ei = np.sort(order[:k]), np.sort(order[k:])
        cal = {name: a[ci] for name, a in X.items()}
        X = {name: a[ei] for name, a in X.items()}
        y = None if y is None else y[ei]
        notes.append(f"{k} of the {n} samples set aside for calibration (seeded), {n - k} for evaluation")
    if max_eval is not None and len(next(iter(X.values()))) > max_eval:
        X = {k: v[:max_eval] for k, v in X.items()}
        y = None if y is None else y[:max_eval]
        notes.append(f"evaluation capped at {max_eval} samples")
    labelled = "labelled" if y is not None else "unlabelled"
    ne = len(next(iter(X.values())))
    nc = len(next(iter(cal.values())))
    return Dataset(cal, X, y, f"{desc}: {ne} {labelled} evaluation samples, {nc} calibration samples (disjoint)",
                   notes)


# --------------------------------------------------------------------------------------------
def _default(model: "Model", calibration: Any, seed: int) -> tuple[Any, Any, str]:
    if not str(model.source).startswith("zoo:"):
        return None, calibration, ""
    from .. import zoo

    try:
        entry = zoo.info(model.source[4:])
    except Exception:  # noqa: BLE001 - a renamed zoo model falls back to random inputs
        return None, calibration, ""
    if entry.dataset is None:
        return None, calibration, ""
    return _zoo("zoo:" + entry.dataset, calibration)


def _zoo(spec: str, calibration: Any) -> tuple[Any, Any, str]:
    from .. import zoo

    if not spec.startswith("zoo:"):
        raise DatasetError(f"dataset {spec!r} is not understood",
                           "pass (X, y), an array, an iterable of batches, or 'zoo:NAME'")
    name = spec[4:]
    test = zoo.dataset(name, "test")
    if calibration is None:
        calibration = zoo.dataset(name, "calibration")
    return test, calibration, f"zoo data set {name!r} (test split; calibration split for calibration)"


def _random(model: "Model", seed: int) -> Dataset:
    cal = random_feeds(model.inputs, batch_size=_RANDOM_CAL, seed=seed + 1)
    ev = random_feeds(model.inputs, batch_size=_RANDOM_EVAL, seed=seed + 2)
    return Dataset(cal, ev, None, f"no dataset given: {_RANDOM_EVAL} seeded random inputs for evaluation, "
                   f"{_RANDOM_CAL} others for calibration; fidelity on random inputs says little about "
                   "accuracy on real data", ["pass dataset=(X, y) for a real accuracy check"])


def _split_xy(d: Any) -> tuple[Any, Any]:
    if isinstance(d, tuple) and len(d) == 2 and not isinstance(d[0], (int, float)):
        return d[0], d[1]
    if isinstance(d, (np.ndarray, Mapping)):
        return d, None
    if isinstance(d, Iterable) and not isinstance(d, (str, bytes)):
        xs, ys = [], []
        for item in d:
            x, y = _split_xy(item)
            xs.append(x)
            ys.append(y)
        if not xs:
            raise DatasetError("the dataset is empty", "pass at least two samples")
        if any(y is None for y in ys) and not all(y is None for y in ys):
            raise DatasetError("some batches of the dataset have labels and others not",
                               "label every batch or none")
        if isinstance(xs[0], Mapping):
            X = {k: np.concatenate([np.asarray(x[k]) for x in xs]) for k in xs[0]}
        else:
            X = np.concatenate([np.asarray(x) for x in xs])
        return X, None if ys[0] is None else np.concatenate([np.atleast_1d(np.asarray(y)) for y in ys])
    raise DatasetError(f"cannot use a {type(d).__name__} as a dataset",
                       "pass (X, y), an array, a dict of input name -> array, or an iterable of batches")


def _as_inputs(model: "Model", X: Any, what: str) -> dict[str, np.ndarray]:
    specs = model.inputs
    if not isinstance(X, Mapping):
        if len(specs) != 1:
            raise DatasetError(f"the model takes {len(specs)} inputs ({', '.join(s.name for s in specs)}) but "
                               f"the {what} is a single array", "pass a dict of input name -> array")
        X = {specs[0].name: X}
    X = {k: np.asarray(v) for k, v in X.items()}
    if any(v.ndim == 0 for v in X.values()):
        raise DatasetError(f"the {what} holds a scalar where arrays of samples are expected",
                           "stack samples along dim 0")
    sizes = {k: len(v) for k, v in X.items()}
    if not sizes or min(sizes.values()) == 0:
        raise DatasetError(f"the {what} is empty", "pass at least two samples")
    if len(set(sizes.values())) > 1:
        raise DatasetError(f"the inputs of the {what} have different numbers of samples: {sizes}")
    try:
        return FeedValidator(specs)(X)
    except InvalidInputError as e:
        raise DatasetError(f"the {what} does not fit model {model.name!r}: {e}",
                           "give arrays shaped (n_samples, ...) with the model's input shapes and dtypes") from None


def _row_hashes(X: Mapping[str, np.ndarray]) -> list[str]:
    arrays = [X[k] for k in sorted(X)]
    n = len(arrays[0])
    out = []
    for i in range(n):
        h = hashlib.blake2b(digest_size=16)
        for a in arrays:
            h.update(np.ascontiguousarray(a[i]).tobytes())
        out.append(h.hexdigest())
    return out


def _drop_overlap(cal: dict[str, np.ndarray], X: dict[str, np.ndarray]) -> tuple[dict, int]:
    ev = set(_row_hashes(X))
    keep = np.array([h not in ev for h in _row_hashes(cal)])
    if keep.all():
        return cal, 0
    if not keep.any():
        return {}, int(len(keep))
    return {k: v[keep] for k, v in cal.items()}, int((~keep).sum())
