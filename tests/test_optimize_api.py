"""eb.optimize end to end: never a regression, budgets, bad input, the store, live trials."""
from __future__ import annotations

import numpy as np
import pytest

import edgebench as eb
from edgebench.errors import ConfigError, DatasetError, UnknownNameError

from ._models import mlp_proto

FAST = {"latency_s": 0.15, "progress": False, "threads": 1}


@pytest.fixture(scope="module")
def tiny():
    return eb.load(mlp_proto(n_in=16, n_hidden=64, n_out=4))


def _X(n, seed=0):
    return np.random.default_rng(seed).standard_normal((n, 16)).astype(np.float32)


def _never_slower(res):
    """The contract: the winner was confirmed faster head to head, or it is the baseline."""
    if res.best_trial.candidate.is_baseline:
        assert res.best is res.baseline and res.reason.startswith("fp32 baseline kept")
    else:
        assert res.confirmed_ratio is not None and res.confirmed_ratio < 0.98
        assert res.best_trial.ok and res.best is res.best_trial.model


@pytest.mark.torch
def test_digits_search_holds_accuracy_and_never_regresses(zoo_cache, tmp_path):
    model = eb.zoo.load("digits")
    seen, started = [], []
    res = eb.optimize(model, policy="exhaustive", max_trials=6, cache_dir=tmp_path, callbacks=[
        lambda r, t: seen.append((t.index, len(r.history)))],
        on_candidate=[lambda r, c: started.append((c, r.current))], **FAST)
    assert len(started) == 5 and all(c is cur for c, cur in started)  # the baseline is measured first
    assert [i for i, _ in seen] == list(range(6)) and all(n == i + 1 for i, n in seen)  # live, in order
    assert len(res.history) == 6 and not res.running
    base = res.baseline_trial
    assert base.candidate.is_baseline and base.accuracy > 0.95 and res.gate.kind == "metric"
    _never_slower(res)
    assert res.best_trial.accuracy >= base.accuracy - 0.01 - 1e-9
    df = res.trials
    assert len(df) == 6 and {"candidate", "status", "latency_ratio", "p50_ms", "p99_ms", "accuracy",
                             "size_mb", "reason"} <= set(df.columns)
    assert set(df["status"]) <= {"ok", "rejected", "failed"}
    # the Pareto front: ok trials, none dominated by another ok trial
    front = res.pareto_trials()
    assert front and all(t.ok for t in front)
    ok = [t for t in res.history if t.ok]
    for t in front:
        assert not any(o.latency_ratio < t.latency_ratio and o.accuracy > t.accuracy
                       and o.size_bytes < t.size_bytes for o in ok)
    assert list(res.pareto.index) == [t.index for t in front]
    text = res.explain()
    assert "Accuracy gate: accuracy measured against the labels" in text and "Winner:" in text
    X, y = eb.zoo.dataset("digits", "test")
    eng = res.engine()
    assert eng.threads == res.settings["threads"] == 1
    assert float((eng.run(X)["logits"].argmax(1) == y).mean()) >= base.accuracy - 0.01 - 1e-9
    assert "OptimizeResult('digits'" in repr(res) and "6 trials" in repr(res)
    assert "<table" in res._repr_html_()
    assert res.to_dict()["trials"][0]["key"] == "[]"


def test_explicit_config_on_random_weights_uses_cosine(tiny, tmp_path):
    res = eb.optimize(tiny, eb.QuantizeConfig(mode="dynamic"), dataset=_X(100), cache_dir=tmp_path, **FAST)
    assert len(res.history) == 2 and res.policy == "explicit"
    t = res.history[1]
    assert t.describe() == "quantize(dynamic, u8s8)" and t.status in ("ok", "rejected")
    assert t.fidelity["cosine"] > 0.99
    _never_slower(res)


def test_low_margin_model_is_detected_and_explained(tmp_path):
    import onnx

    proto = mlp_proto(n_in=16, n_hidden=64, n_out=10)
    for t in proto.graph.initializer:  # shrink the weights: logits nearly equal, like random init
        a = onnx.numpy_helper.to_array(t) * 0.01
        t.CopyFrom(onnx.numpy_helper.from_array(a.astype(np.float32), t.name))
    res = eb.optimize(eb.load(proto), eb.SessionConfig(io_binding=True), dataset=_X(80), cache_dir=tmp_path, **FAST)
    assert res.gate.kind == "cosine"
    assert "top-1 agreement would be noise" in res.explain() and "cosine similarity >= 0.99" in res.explain()


def test_impossible_budget_returns_the_baseline_with_the_reason(tiny, tmp_path):
    res = eb.optimize(tiny, eb.QuantizeConfig(), dataset=_X(60), size_budget_mb=1e-5, cache_dir=tmp_path, **FAST)
    assert res.best is res.baseline and res.best_trial is res.baseline_trial
    assert "nothing qualifies" in res.reason and "size" in res.reason
    assert res.history[1].status == "rejected"
    res = eb.optimize(tiny, eb.QuantizeConfig(), dataset=_X(60), latency_budget_ms=1e-6, cache_dir=tmp_path, **FAST)
    assert res.best is res.baseline and "latency budget" in res.history[1].reason
    assert "the baseline itself misses a budget" in res.reason


def test_failed_pass_is_recorded_and_the_baseline_kept(tiny, tmp_path):
    res = eb.optimize(tiny, eb.PruneConfig(), dataset=_X(60), cache_dir=tmp_path, **FAST)
    assert res.history[1].status == "failed" and "PyTorch module" in res.history[1].reason
    assert res.best is res.baseline and "failed" in res.explain()


@pytest.mark.parametrize("kw, err", [
    ({"max_accuracy_drop": -0.1}, ConfigError),
    ({"latency_budget_ms": 0}, ConfigError),
    ({"max_trials": 0}, ConfigError),
    ({"batch_size": 0}, ConfigError),
    ({"policy": "genetic"}, UnknownNameError),
    ({"dataset": np.zeros((5, 3), np.float32)}, DatasetError),
    ({"dataset": (np.zeros((5, 16), np.float32), np.zeros(3))}, DatasetError),
])
def test_bad_arguments(tiny, tmp_path, kw, err):
    args = {"dataset": _X(20), "cache_dir": tmp_path, **FAST, **kw}
    with pytest.raises(err):
        eb.optimize(tiny, **args)
    with pytest.raises(ConfigError):
        eb.optimize(tiny, config="quantize", cache_dir=tmp_path, **FAST)


def test_rerun_replays_from_the_store(tiny, tmp_path):
    kw = dict(dataset=_X(60), policy="exhaustive", max_trials=4, cache_dir=tmp_path, **FAST)
    first = eb.optimize(tiny, **kw)
    assert all(t.source == "measured" for t in first.history)
    second = eb.optimize(tiny, **kw)
    assert [t.key for t in second.history] == [t.key for t in first.history]
    assert all(t.source == "store" for t in second.history[1:])
    assert [t.status for t in second.history] == [t.status for t in first.history]
    _never_slower(second)
    # other conditions (batch size) never mix with these
    third = eb.optimize(tiny, **{**kw, "batch_size": 2, "max_trials": 2})
    assert all(t.source == "measured" for t in third.history)


def test_interrupt_keeps_the_trials(tiny, tmp_path):
    def stop(res, trial):
        if trial.index == 2:
            raise KeyboardInterrupt

    res = eb.optimize(tiny, dataset=_X(60), policy="exhaustive", max_trials=6, cache_dir=tmp_path,
                      callbacks=[stop], **FAST)
    assert res.interrupted and len(res.history) == 3 and "interrupted" in res.explain()
    _never_slower(res)


def test_broken_callback_does_not_stop_the_search(tiny, tmp_path):
    res = eb.optimize(tiny, eb.SessionConfig(io_binding=True), dataset=_X(40), cache_dir=tmp_path,
                      callbacks=[lambda r, t: 1 / 0], **FAST)
    assert len(res.history) == 2 and any("ZeroDivisionError" in n for n in res.notes)
