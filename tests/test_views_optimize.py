"""The live optimizer widget, driven by real (small) eb.optimize searches: the source grows
while trials finish, the Pareto front and the winner are flagged, the explanation appears."""
from __future__ import annotations

import math
import time

import numpy as np
import pytest

import edgebench as eb

from ._models import mlp_proto

pytest.importorskip("ipywidgets")
pytest.importorskip("jupyter_bokeh")
from bokeh.core.json_encoder import serialize_json  # noqa: E402

from edgebench.notebook import display  # noqa: E402
from edgebench.notebook.views_optimize import COLUMNS, OptimizeView, live  # noqa: E402

FAST = {"latency_s": 0.15, "progress": False, "threads": 1}


@pytest.fixture(scope="module")
def tiny():
    return eb.load(mlp_proto(n_in=16, n_hidden=64, n_out=4), name="optnet")


def _X(n, seed=0):
    return np.random.default_rng(seed).standard_normal((n, 16)).astype(np.float32)


def _wait_done(view, timeout=5.0):
    t = time.monotonic() + timeout
    while view.running and time.monotonic() < t:
        time.sleep(0.05)
    return not view.running


def test_live_view_follows_a_real_search(tiny, tmp_path, monkeypatch):
    # not in a notebook, whatever IPython instance earlier tests left in this process:
    # live() then builds the view without displaying it, as outside Jupyter
    import IPython

    monkeypatch.setattr(IPython, "get_ipython", lambda: None)
    seen, started = [], []

    def probe(res, trial):  # registered after `live`: the view has already taken the trial in
        v = display.widget(res)
        seen.append((trial.index, len(v.source.data["trial"]), list(v.source.data["pareto"]),
                     v.table.value.count("<tr"), res.running))
        if trial.index == 1:
            # the browser's view draws from the pane's snapshot plus the events it receives: a
            # snapshot taken before any trial; displaying the widget (now, mid-search) renews it
            assert "fp32 baseline" not in serialize_json(v.plot.render_bundle)
            assert display.WIDGET_MIME in res._repr_mimebundle_()
            snap = serialize_json(v.plot.render_bundle)
            # (the watcher thread may already have spent one of the two re-sends)
            assert "fp32 baseline" in snap and trial.describe() in snap and v._resync_left in (1, 2)

    def on_cand(res, cand):
        v = display.widget(res)
        started.append((cand.describe(), v.current.value))

    res = eb.optimize(tiny, dataset=_X(80), policy="exhaustive", max_trials=4, cache_dir=tmp_path, store=False,
                      callbacks=[live, probe], on_candidate=[on_cand], **FAST)
    view = display.widget(res)
    assert isinstance(view, OptimizeView)
    # the view was built at the baseline trial and grew by one row per trial, live
    assert [s[0] for s in seen] == [0, 1, 2, 3]
    assert [s[1] for s in seen] == [1, 2, 3, 4]
    assert [s[3] for s in seen] == [2, 3, 4, 5]  # header row + one per trial
    assert all(s[4] for s in seen) and all(len(s[2]) == s[1] for s in seen)
    assert seen[0][2] == [True]  # the baseline alone is the front
    # the candidate being measured is named while it runs
    assert len(started) == 3
    for i, (desc, html) in enumerate(started, start=1):
        assert f"measuring #{i}" in html and desc.split("(")[0] in html
    # after the search: the watcher gives the final state, then stops
    assert _wait_done(view)
    view.update()
    data = view.source.data
    assert set(COLUMNS) <= set(data) and data["trial"] == [0, 1, 2, 3]
    front = {t.index for t in res.pareto_trials()}
    assert front and [i in front for i in data["trial"]] == list(data["pareto"])
    assert sum(data["winner"]) == 1 and data["winner"][res.best_trial.index]
    assert data["marker"][res.best_trial.index] == "star"
    for t in res.history:  # the plotted numbers are the trials'
        i = t.index
        assert data["status"][i] == t.status and data["candidate"][i] == t.describe()
        if t.latency_ratio is None:
            assert math.isnan(data["ratio"][i])
        else:
            assert data["ratio"][i] == pytest.approx(t.latency_ratio)
    # a view created now (the result shown again) draws every trial, and the final flags
    snap = serialize_json(view.plot.render_bundle)
    assert all(t.describe() in snap for t in res.history) and '"star"' in snap
    assert view._resync_left == 0 and view._final_synced
    assert sorted(view.front.data["ratio"]) == view.front.data["ratio"]
    assert len(view.front.data["ratio"]) == len(front)
    assert "state" in view.figures.value and ">done<" in view.figures.value
    assert "winner" in view.current.value and "measuring" not in view.current.value
    assert view.explanation.layout.display is None and "Winner:" in view.explanation.value
    # no labels: the fidelity gate's threshold is drawn as a line
    expected = {"cosine": res.gate.min_cosine, "top1": 1 - res.gate.max_drop}[res.gate.kind]
    assert view._spans["gate"].location == pytest.approx(expected)
    assert view._spans["fp32"].location == 1.0
    # `live` shows the view once: calling it again neither rebuilds nor redisplays
    live(res, None)
    assert display.widget(res) is view
    # displaying the result gives its repr as text and the widget
    bundle = res._repr_mimebundle_()
    assert bundle["text/plain"] == repr(res) and display.WIDGET_MIME in bundle
    assert bundle[display.WIDGET_MIME]["model_id"] == view.model_id
    view.close()


def test_view_of_a_finished_result_with_a_failed_trial(tiny, tmp_path):
    # PruneConfig needs a PyTorch module: on an ONNX-only model it is a failed trial
    res = eb.optimize(tiny, [eb.PruneConfig()], dataset=_X(40), cache_dir=tmp_path, store=False, **FAST)
    assert res.history[1].status == "failed"
    view = OptimizeView(res, start=False)
    assert not view.running  # nothing to watch
    data = view.source.data
    assert data["trial"] == [0, 1] and data["status"] == ["ok", "failed"]
    assert math.isnan(data["ratio"][1]) and data["marker"][1] == "x" and data["pareto"] == [True, False]
    assert data["winner"] == [True, False]  # the baseline kept
    assert "fp32 kept" in view.figures.value and "failed" in view.table.value
    assert "PyTorch module" in view.table.value
    assert view.update() == 0  # nothing new
    view.close()


def test_latency_budget_is_drawn_and_closed_view_stops_following(tiny, tmp_path):
    res = eb.optimize(tiny, eb.SessionConfig(io_binding=True), dataset=_X(40), latency_budget_ms=5.0,
                      cache_dir=tmp_path, store=False, **FAST)
    view = OptimizeView(res, start=False)
    base = res.baseline_trial
    assert view._spans["latency"].location == pytest.approx(5.0 / base.p50_ms)
    assert "p50 ≤ 5 ms" in view.header.value
    n = len(res.on_trial)
    view.close()
    res.on_trial[0](res, res.history[-1])  # the view's callback: harmless once closed
    assert len(res.on_trial) == n


@pytest.mark.torch
def test_digits_accuracy_gate_line(zoo_cache, tmp_path):
    model = eb.zoo.load("digits")
    res = eb.optimize(model, policy="exhaustive", max_trials=3, cache_dir=tmp_path, store=False,
                      callbacks=[live], **FAST)
    view = display.widget(res)
    _wait_done(view)
    view.update()
    base = res.baseline_trial
    assert res.gate.kind == "metric" and base.accuracy > 0.95
    assert view._spans["gate"].location == pytest.approx(base.accuracy - 0.01)
    assert view.source.data["score"][0] == pytest.approx(base.accuracy)
    assert "accuracy" in view._fig.yaxis[0].axis_label
    assert "%" in view.table.value
    view.close()
