"""The optimizer's results store and the cost model learnt from it."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

import edgebench as eb
from edgebench.errors import EdgebenchError, OptimizeError
from edgebench.optimize import Candidate, QuantizeConfig, SessionConfig, Trial
from edgebench.optimize.costmodel import CostModel, model_features
from edgebench.optimize.store import STORE_VERSION, ResultsStore, StoredTrial, context_key

from ._models import mlp_proto

Q = Candidate.of(QuantizeConfig(mode="dynamic"))
S = Candidate.of(SessionConfig(threads=1))


@pytest.fixture(scope="module")
def mlp():
    return eb.load(mlp_proto(n_in=16, n_hidden=32, n_out=4))


def conv_proto():
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((4, 1, 3, 3)).astype(np.float32), "w")
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["y"])]
    g = helper.make_graph(nodes, "conv", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 1, 8, 8])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4, 8, 8])], [w])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def trial(cand, ratio=0.8, status="ok", drop=0.002):
    if status == "failed":
        return Trial(cand, status="failed", reason="RuntimeError: boom")
    return Trial(cand, status=status, latency_ratio=ratio, p50_ms=ratio, p99_ms=ratio * 1.2,
                 accuracy=0.9 - drop, accuracy_drop=drop, size_bytes=1000, baseline_p50_ms=1.0,
                 reason="" if status == "ok" else "accuracy drop above the budget")


# -- the store --------------------------------------------------------------------------------
def test_put_lookup_and_reopen(tmp_path, mlp):
    store = ResultsStore(tmp_path)
    assert len(store) == 0 and store.path == tmp_path / "trials.jsonl"
    t = trial(Q, 0.61)
    row = store.put(t, mlp, context="c1", hardware="hw1", isa=("avx2",))
    assert row.model == mlp.sha256 and row.candidate == Q.key() and row.latency_ratio == 0.61
    assert row.fields["QuantizeConfig.mode"] == "dynamic" and row.model_features["op_matmul"] > 0
    got = store.lookup(mlp, Q, context="c1", hardware="hw1")
    assert got.source == "store" and got.candidate == Q and got.model is None
    assert got.latency_ratio == 0.61 and got.p99_ms == pytest.approx(0.61 * 1.2) and got.status == "ok"
    # every part of the key matters
    assert store.lookup(mlp, Q, context="c2", hardware="hw1") is None
    assert store.lookup(mlp, Q, context="c1", hardware="hw2") is None
    assert store.lookup(mlp, S, context="c1", hardware="hw1") is None
    assert store.lookup("0" * 64, Q, context="c1", hardware="hw1") is None
    # a new store on the same directory reads it back; a re-measurement replaces the old one
    store.put(trial(Q, 0.7), mlp, context="c1", hardware="hw1")
    again = ResultsStore(tmp_path)
    assert len(again) == 1 and again.lookup(mlp, Q, context="c1", hardware="hw1").latency_ratio == 0.7
    assert "1 trials, 1 models" in repr(again)


def test_default_location_and_this_hardware(tmp_path, monkeypatch, mlp):
    monkeypatch.setenv("EDGEBENCH_CACHE", str(tmp_path))
    store = ResultsStore()
    assert store.path == tmp_path / "optimize" / "trials.jsonl"
    store.put(trial(S, 0.9), mlp)
    assert store.trials()[0].hardware == eb.devices.fingerprint() == store.hardware()
    assert store.lookup(mlp, S).latency_ratio == 0.9


def test_failed_and_rejected_trials_round_trip(tmp_path, mlp):
    store = ResultsStore(tmp_path)
    store.put(trial(Q, status="failed"), mlp, hardware="h")
    store.put(trial(S, 1.2, status="rejected", drop=0.05), mlp, hardware="h")
    f = ResultsStore(tmp_path).lookup(mlp, Q, hardware="h")
    assert f.status == "failed" and f.reason == "RuntimeError: boom" and f.latency_ratio is None
    r = ResultsStore(tmp_path).lookup(mlp, S, hardware="h")
    assert r.status == "rejected" and r.accuracy_drop == 0.05 and "budget" in r.reason


def test_store_from_a_newer_version_is_a_clear_error(tmp_path, mlp):
    ResultsStore(tmp_path).put(trial(Q), mlp, hardware="h")
    with open(tmp_path / "trials.jsonl", "a") as f:
        f.write(json.dumps({"v": STORE_VERSION + 1, "model": "x", "candidate": "[]", "hardware": "h"}) + "\n")
    with pytest.raises(OptimizeError, match="newer edgebench") as e:
        ResultsStore(tmp_path)
    assert isinstance(e.value, EdgebenchError) and "cache_dir" in str(e.value)


def test_corrupt_lines_are_skipped_with_a_warning(tmp_path, mlp):
    store = ResultsStore(tmp_path)
    store.put(trial(Q, 0.5), mlp, hardware="h")
    with open(store.path, "a") as f:
        f.write("{not json\n")
        f.write(json.dumps({"v": 1, "model": 3}) + "\n")  # valid JSON, not a record
        f.write('{"v": 1, "model": "m", "candidate": "[]", "hardware": "h", "status": "ok", "lat')  # torn
    with pytest.warns(RuntimeWarning, match="skipped unreadable"):
        reopened = ResultsStore(tmp_path)
    assert reopened.skipped == 2 and len(reopened) == 1  # the torn line is not read yet
    assert reopened.lookup(mlp, Q, hardware="h").latency_ratio == 0.5
    # writing after a torn line never glues the new record onto it
    with pytest.warns(RuntimeWarning):
        reopened.put(trial(S, 0.9), mlp, hardware="h")
    with pytest.warns(RuntimeWarning):
        final = ResultsStore(tmp_path)
    assert final.skipped == 3 and final.lookup(mlp, S, hardware="h").latency_ratio == 0.9


def test_context_key_is_stable_and_sensitive():
    a = context_key(batch_size=1, threads=None, metric="accuracy", max_accuracy_drop=0.01)
    assert a == context_key(metric="accuracy", max_accuracy_drop=0.01, threads=None, batch_size=1)
    assert a != context_key(batch_size=2, threads=None, metric="accuracy", max_accuracy_drop=0.01)
    assert len(a) == 16


def test_stored_trial_rejects_malformed_records():
    for bad in ({"model": 1, "candidate": "[]", "hardware": "h"},
                {"model": "m", "candidate": "[]", "hardware": "h", "status": "great"},
                {"model": "m", "candidate": "[]", "hardware": "h", "fields": []}):
        with pytest.raises(ValueError):
            StoredTrial.from_dict(bad)


# -- the cost model ---------------------------------------------------------------------------
def test_model_features_tell_matmul_from_conv(mlp):
    conv = eb.load(conv_proto())
    fm, fc = model_features(mlp), model_features(conv)
    assert fm["op_matmul"] > 0 and fm["op_conv"] == 0 and fc["op_conv"] > 0 and fc["op_matmul"] == 0
    assert fm["log_params"] == pytest.approx(math.log10(1 + mlp.n_params))


def _history(store, model, isa, hw, effect):
    """A synthetic history of one model on one machine: int8 changes latency by ``effect``."""
    rng = np.random.default_rng(len(isa))
    for threads in (1, 2):
        for mode in ("dynamic", "static"):
            for pc in (False, True):
                c = Candidate.of(QuantizeConfig(mode=mode, per_channel=pc), SessionConfig(threads=threads))
                r = effect * (0.9 if threads == 2 else 1.0) * (1 + 0.02 * rng.standard_normal())
                store.put(trial(c, r), model, hardware=hw, isa=isa)
        store.put(trial(Candidate.of(SessionConfig(threads=threads)), 0.9 if threads == 2 else 1.0),
                  model, hardware=hw, isa=isa)
    store.put(trial(Candidate(), 1.0), model, hardware=hw, isa=isa)


def test_cost_model_learns_what_the_isa_does_to_int8(tmp_path, mlp):
    """int8 paid on a VNNI machine and cost on an AVX2-only one: for a new model the cost
    model ranks int8 first on VNNI and last on AVX2."""
    store = ResultsStore(tmp_path)
    _history(store, mlp, ("avx2", "avx512f", "avx512_vnni"), "vnni-box", 0.45)
    _history(store, mlp, ("avx2",), "avx2-box", 1.4)
    cm = CostModel().fit(store.trials())
    assert cm.fitted and len(cm.models) == 1 and cm.n_trials == len(store) and "fitted" in repr(cm)
    other = eb.load(mlp_proto(n_in=24, n_hidden=48, n_out=3, seed=1))
    cands = [Candidate(), Candidate.of(SessionConfig(threads=2)),
             Candidate.of(QuantizeConfig(mode="static", per_channel=True), SessionConfig(threads=2))]
    fields = [c.params() for c in cands]
    feats = model_features(other)
    on_vnni = cm.rank(fields, feats, ("avx2", "avx512f", "avx512_vnni"))
    on_avx2 = cm.rank(fields, feats, ("avx2",))
    assert on_vnni[0] == 2 and on_avx2[-1] == 2
    p = cm.predict(fields, feats, ("avx2", "avx512f", "avx512_vnni"))
    assert math.exp(p.log_ratio[2]) < 0.6 and abs(p.log_ratio[0]) < 0.1


def test_cost_model_needs_enough_history(tmp_path, mlp):
    store = ResultsStore(tmp_path)
    store.put(trial(Q, 0.5), mlp, hardware="h")
    cm = CostModel().fit(store.trials())
    assert not cm.fitted and "unfitted" in repr(cm)
    p = cm.predict([Q.params(), S.params()], model_features(mlp), ())
    assert list(p.log_ratio) == [0, 0] and list(p.p_ok) == [1, 1]
