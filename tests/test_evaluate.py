"""The optimizer's data handling, quality gates and evaluator (real models, real timing)."""
from __future__ import annotations

import numpy as np
import pytest

import edgebench as eb
from edgebench.errors import DatasetError
from edgebench.optimize.base import Candidate
from edgebench.optimize.data import prepare_dataset
from edgebench.optimize.evaluate import Evaluator
from edgebench.optimize.quality import LOW_MARGIN, choose_gate, fidelity, margins

from ._models import mlp_proto, two_input_proto

FAST = {"latency_s": 0.1, "rounds": 4}


@pytest.fixture(scope="module")
def tiny():
    return eb.load(mlp_proto(n_in=16, n_hidden=64, n_out=4))


def _X(n, d=16, seed=0):
    return np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)


# --------------------------------------------------------------------------------------------
# datasets
# --------------------------------------------------------------------------------------------
def test_dataset_split_is_disjoint_and_seeded(tiny):
    X, y = _X(50), np.arange(50) % 4
    d = prepare_dataset(tiny, (X, y))
    assert d.n_calibration == 10 and d.n_eval == 40 and len(d.labels) == 40
    rows = {r.tobytes() for r in d.inputs["x"]}
    assert not rows & {r.tobytes() for r in d.calibration["x"]}
    # labels stay aligned with their inputs
    idx = [int(np.flatnonzero((X == r).all(1))[0]) for r in d.inputs["x"]]
    assert (d.labels == y[idx]).all()
    assert prepare_dataset(tiny, (X, y)).inputs["x"].tobytes() == d.inputs["x"].tobytes()


def test_dataset_forms(tiny):
    batches = [(_X(8, seed=i), np.zeros(8, np.int64)) for i in range(3)]
    d = prepare_dataset(tiny, iter(batches))
    assert d.n_eval + d.n_calibration == 24 and d.labels is not None
    d = prepare_dataset(tiny, _X(20).astype(np.float64))  # safe cast, no labels
    assert d.labels is None and d.inputs["x"].dtype == np.float32
    d = prepare_dataset(tiny, {"x": _X(20)}, calibration=_X(5, seed=9))
    assert d.n_eval == 20 and d.n_calibration == 5
    cal = np.concatenate([_X(20)[:2], _X(4, seed=7)])  # 2 also evaluated on: dropped from calibration
    d = prepare_dataset(tiny, _X(20), calibration=cal)
    assert d.n_calibration == 4 and "2 calibration samples" in " ".join(d.notes)
    with pytest.raises(DatasetError, match="every calibration sample"):
        prepare_dataset(tiny, _X(20), calibration=_X(20)[:6])
    d = prepare_dataset(tiny, None)  # not a zoo model: random inputs, said so
    assert d.labels is None and "random inputs" in d.description


@pytest.mark.parametrize("data, match", [
    ((np.zeros((0, 16), np.float32), None), "empty"),
    (_X(10, d=15), "does not fit"),
    (np.array([["a"] * 16] * 4), "does not fit"),
    ((_X(10), np.zeros(9)), "labels"),
    ((_X(1), None), "at least 2"),
    ([], "empty"),
    ([(_X(4), np.zeros(4)), _X(4)], "labels"),
    (42, "cannot use"),
    ("digits.npz", "not understood"),
])
def test_bad_datasets_raise_dataset_error(tiny, data, match):
    with pytest.raises(DatasetError, match=match):
        prepare_dataset(tiny, data)


def test_multi_input_model_needs_a_dict():
    m = eb.load(two_input_proto())
    with pytest.raises(DatasetError, match="2 inputs"):
        prepare_dataset(m, np.zeros((4, 3), np.float32))
    d = prepare_dataset(m, {"a": np.zeros((10, 3), np.float32), "b": np.ones((10, 3), np.int64)})
    assert set(d.inputs) == {"a", "b"}


@pytest.mark.torch
def test_zoo_model_uses_its_own_labelled_splits(zoo_cache):
    d = prepare_dataset(eb.zoo.load("digits"), None)
    assert d.n_eval == 360 and d.n_calibration == 180 and d.labels is not None
    assert "digits" in d.description and "disjoint" in d.description


# --------------------------------------------------------------------------------------------
# quality
# --------------------------------------------------------------------------------------------
def test_gate_detects_low_margin_outputs():
    rng = np.random.default_rng(0)
    random_like = rng.standard_normal((200, 10)).astype(np.float32) * 0.05  # tiny logits
    confident = np.eye(10, dtype=np.float32)[rng.integers(0, 10, 200)] * 12 + random_like
    g = choose_gate(random_like, False, 0.01, 0.99)
    assert g.kind == "cosine" and "noise" in g.why and "0.99" in g.why
    assert margins(random_like)["median_margin"] < LOW_MARGIN < margins(confident)["median_margin"]
    assert choose_gate(confident, False, 0.01, 0.99).kind == "top1"
    assert choose_gate(random_like, True, 0.01, 0.99).kind == "metric"
    assert choose_gate(rng.standard_normal((50, 1)).astype(np.float32), False, 0.01, 0.99).kind == "cosine"


def test_fidelity_measures():
    a = np.random.default_rng(0).standard_normal((20, 5))
    f = fidelity([a], [a.copy()])
    assert f["cosine"] == pytest.approx(1.0) and f["top1_agreement"] == 1.0 and f["max_abs_err"] == 0.0
    f = fidelity([a], [-a])
    assert f["cosine"] == pytest.approx(-1.0) and f["top1_agreement"] < 0.5
    bad = a.copy()
    bad[3, 1] = np.nan
    f = fidelity([a], [bad])
    assert not f["finite"]
    g = choose_gate(a, False, 0.01, 0.99)
    assert g.check(0.0, f) == (False, "outputs contain NaN or inf")


# --------------------------------------------------------------------------------------------
# the evaluator
# --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_eval(tiny, tmp_path_factory):
    d = prepare_dataset(tiny, _X(120, seed=3))
    ev = Evaluator(tiny, d, threads=1, work_dir=tmp_path_factory.mktemp("ev"), **FAST)
    yield ev
    ev.close()


def test_baseline_trial(tiny_eval):
    t = tiny_eval.baseline_trial()
    assert t.ok and t.latency_ratio == 1.0 and t.accuracy_drop == 0.0
    assert 0 < t.p50_ms <= t.p99_ms and t.throughput > 0 and t.size_bytes == tiny_eval.baseline.size_bytes
    assert t.session == {"threads": 1, "options": {}}


def test_same_model_times_close_to_one(tiny_eval):
    t = tiny_eval.evaluate(Candidate.of(eb.GraphOptConfig(slim=True)))
    assert t.ok, t.reason
    assert 0.5 < t.latency_ratio < 2.0  # interleaved with the baseline: the same graph, near 1x
    assert t.fidelity["cosine"] > 0.9999 and t.wall_s > 0


def test_failed_pass_is_a_failed_trial(tiny_eval):
    t = tiny_eval.evaluate(Candidate.of(eb.PruneConfig(method="channel")))
    assert t.status == "failed" and "PyTorch module" in t.reason and t.model is None
    assert t.latency_ratio is None
    # and the evaluator is still usable
    assert tiny_eval.evaluate(Candidate.of(eb.SessionConfig(io_binding=True))).ok


def test_budgets_reject_with_reasons(tiny, tmp_path):
    d = prepare_dataset(tiny, _X(60, seed=4))
    ev = Evaluator(tiny, d, threads=1, size_budget_mb=1e-4, work_dir=tmp_path, measure_rejected=False, **FAST)
    t = ev.evaluate(Candidate.of(eb.QuantizeConfig()))
    assert t.status == "rejected" and "size" in t.reason and t.latency_ratio is None
    ev.close()
    ev = Evaluator(tiny, d, threads=1, max_accuracy_drop=0.0, min_cosine=1.0, work_dir=tmp_path, **FAST)
    t = ev.evaluate(Candidate.of(eb.PruneConfig(method="magnitude", sparsity=0.9)))
    assert t.status == "rejected" and ("cosine" in t.reason or "disagreement" in t.reason)
    assert t.latency_ratio is not None  # measured anyway, for the trial table
    ev.close()


def test_metric_callable_and_broken_metric(tiny, tmp_path):
    X = _X(60, seed=5)
    y = (X[:, 0] > 0).astype(np.int64)
    d = prepare_dataset(tiny, (X, y))
    ev = Evaluator(tiny, d, lambda yt, yp: float(np.mean(yp[:, 0] * (2 * yt - 1))), threads=1, work_dir=tmp_path,
                   **FAST)
    assert ev.gate.kind == "metric" and isinstance(ev.base_metric, float)
    ev.close()
    with pytest.raises(DatasetError, match="metric raised"):
        Evaluator(tiny, d, lambda yt, yp: 1 / 0, threads=1, work_dir=tmp_path, **FAST)


def test_check_on_calibration(tiny_eval):
    ok, why = tiny_eval.check_on_calibration(tiny_eval.baseline)
    assert ok and why
    pruned, _, _ = tiny_eval.apply(Candidate.of(eb.PruneConfig(method="magnitude", sparsity=0.9)))
    assert tiny_eval.check_on_calibration(pruned, pruned)[0]  # against itself: perfect fidelity
    ok, why = tiny_eval.check_on_calibration(pruned)  # against fp32: 90% of the weights gone
    assert not ok and why
