"""The live widgets of a DynamicBatcher and of a running server: built through the display
hooks, their Bokeh sources and tables grow while real requests are served (driven from
threads), the counts agree with the batcher's and the server's own, and the background
updaters stop when the object or the widget is closed."""
from __future__ import annotations

import threading
import time

import numpy as np
import pytest

import edgebench as eb

from ._models import mlp_proto

W = pytest.importorskip("ipywidgets")
pytest.importorskip("jupyter_bokeh")
httpx = pytest.importorskip("httpx")
pytest.importorskip("uvicorn")
from edgebench.errors import InvalidInputError  # noqa: E402
from edgebench.notebook import display  # noqa: E402
from edgebench.notebook.views_serve import BatcherView, ServerView  # noqa: E402

TOKENS = {"alice": "alice-view-token-0001", "bob": "bob-view-token-0002"}
AUTH = {"tenants": {"alice": {"token": TOKENS["alice"], "models": ["*"], "priority": 1},
                    "bob": {"token": TOKENS["bob"], "models": ["b"], "priority": 2}}}


def wait_for(cond, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.02)
    return cond()


@pytest.fixture(scope="module")
def model():
    return eb.load(mlp_proto(n_in=16, n_hidden=64, n_out=4), name="vsnet")


@pytest.fixture()
def batcher(model):
    eng = eb.Engine(model, threads=1)
    b = eb.DynamicBatcher(eng, max_batch_size=8, max_queue_delay_ms=2.0)
    yield b
    b.close()
    eng.close()


def drive(b, n_threads: int = 4, per_thread: int = 60) -> None:
    """Closed-loop clients in threads, so that batches of several requests form."""
    x = b.engine.sample_feeds(1)

    def client():
        for _ in range(per_thread):
            b.run(x)

    ts = [threading.Thread(target=client) for _ in range(n_threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()


# --------------------------------------------------------------------------------------------
# DynamicBatcher
# --------------------------------------------------------------------------------------------
def test_batcher_view_follows_the_records_incrementally(batcher):
    view = BatcherView(batcher, start=False)
    try:
        assert not view.running
        assert list(view.hist.data["size"]) == list(range(1, 9)) and sum(view.hist.data["batches"]) == 0
        assert len(view.ticks.data["t"]) == 0 and view.labels["requests"] == "0"
        drive(batcher)
        assert view.update() == 240
        stats = batcher.stats()
        hist = {s: n for s, n in zip(view.hist.data["size"], view.hist.data["batches"]) if n}
        assert hist == stats["batch_sizes"], "the histogram is the batcher's own count of batches by size"
        assert max(hist) > 1, "4 closed-loop clients and a 2 ms delay form batches of several requests"
        assert len(view.ticks.data["t"]) == 1
        tick = {k: v[-1] for k, v in view.ticks.data.items()}
        assert tick["rate"] > 0 and 0 < tick["p50_ms"] <= tick["p99_ms"]
        assert tick["queue_ms"] >= 0 and tick["compute_ms"] > 0 and tick["queued"] == 0
        assert view.labels["requests"] == "240" and view.labels["state"] == "serving"
        assert view.labels["mean_batch"] == f"{stats['mean_batch_size']:.2f}"
        assert view.labels["queue_share"].endswith("%")
        # nothing new: nothing read, the histogram stays; one more tick while the rate decays
        assert view.update() == 0 and sum(view.hist.data["batches"]) == stats["batches"]
        with pytest.raises(InvalidInputError):
            batcher.run(np.zeros((1, 5), np.float32))  # refused at the door: a record, no batch
        drive(batcher, 2, 30)
        assert view.update() == 61
        assert sum(view.hist.data["batches"]) == batcher.stats()["batches"]
        assert view.labels["requests"] == "301" and view.labels["failed"] == "1"
        assert len(view.ticks.data["t"]) == 3
        assert "vsnet/batcher" in view.header.value and "max batch 8" in view.header.value
    finally:
        view.close()


def test_batcher_display_hook_and_live_updater_stop_with_the_batcher(batcher):
    bundle = batcher._repr_mimebundle_()
    assert bundle["text/plain"] == repr(batcher) and display.WIDGET_MIME in bundle
    view = display.widget(batcher)
    assert isinstance(view, BatcherView) and view.running
    assert bundle[display.WIDGET_MIME]["model_id"] == view.model_id
    done = threading.Event()
    th = threading.Thread(target=lambda: (drive(batcher, 4, 150), done.set()))
    th.start()
    assert wait_for(lambda: len(view.ticks.data["t"]) >= 2 and sum(view.hist.data["batches"]) > 0), \
        "the updater thread streams while the batcher serves"
    th.join()
    batcher.close()
    assert wait_for(lambda: not view.running), "the updater stops once the batcher is closed"
    assert view.labels["state"] == "closed" and view.labels["requests"] == "600"
    assert sum(view.hist.data["batches"]) == batcher.stats()["batches"]
    view.close()


def test_closing_the_batcher_widget_stops_its_updater(batcher):
    view = BatcherView(batcher, interval=0.05)
    assert view.running
    view.close()
    assert wait_for(lambda: not view.running, 2.0) and view.comm is None and view.plot.comm is None
    assert not batcher._closed  # closing the widget leaves the batcher serving
    assert batcher.run(batcher.engine.sample_feeds(1))


# --------------------------------------------------------------------------------------------
# Server
# --------------------------------------------------------------------------------------------
def start_server(tmp_path, model):
    import onnx

    onnx.save(mlp_proto(n_in=16, n_hidden=64, n_out=4, seed=1), tmp_path / "a.onnx")
    onnx.save(mlp_proto(n_in=16, n_hidden=64, n_out=4, seed=2), tmp_path / "b.onnx")
    return eb.serve(str(tmp_path / "a.onnx"), str(tmp_path / "b.onnx"), port=0, auth=AUTH, threads=1,
                    batching="max_batch_size=8,max_queue_delay_ms=2")


def hit(srv, who: str, model: str, n: int, bad: bool = False) -> list[int]:
    x = np.random.default_rng(0).standard_normal((1, 16)).astype(np.float32)
    data = x.ravel().tolist()[:15 if bad else 16]  # bad: shape and data length disagree (400)
    body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 16], "data": data}]}
    headers = {"Authorization": f"Bearer {TOKENS[who]}"} if who in TOKENS else {}
    with httpx.Client(base_url=srv.url, headers=headers, timeout=30) as c:
        return [c.post(f"/v2/models/{model}/infer", json=body).status_code for _ in range(n)]


def load(srv, spec: list[tuple]) -> list[list[int]]:
    out: list[list[int]] = [[] for _ in spec]

    def one(i, who, model, n, bad=False):
        out[i] = hit(srv, who, model, n, bad)

    ts = [threading.Thread(target=one, args=(i, *s)) for i, s in enumerate(spec)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    return out


def test_server_view_models_tenants_rates_and_errors(tmp_path, model):
    srv = start_server(tmp_path, model)
    try:
        view = ServerView(srv, start=False)
        assert set(view.model_sources) == {"a:1", "b:1"} and set(view.tenant_sources) == {"alice", "bob"}
        assert [(r["model"], r["version"], r["state"]) for r in view.models] == [("a", "1", "READY"), ("b", "1", "READY")]
        assert all(r["dispatch"].startswith("batched (max 8") for r in view.models)
        assert view.labels["state"] == "running" and view.labels["models"] == "2/2"
        statuses = load(srv, [("alice", "a", 60), ("alice", "b", 60), ("bob", "b", 60)])
        assert all(s == 200 for run in statuses for s in run)
        # refused at the door (no tenant, or not its model), and refused by validation (a
        # tenant's failure: the server counts it, the model never sees it)
        assert load(srv, [("nobody", "a", 2), ("bob", "a", 1), ("bob", "b", 3, True)]) == [[401, 401], [403],
                                                                                          [400, 400, 400]]
        time.sleep(0.05)
        view.update()
        rows = {r["model"]: r for r in view.models}
        assert rows["a"]["ok"] == 60 and rows["b"]["ok"] == 120 and rows["a"]["failed"] == 0
        assert rows["a"]["ok"] == srv.app.repo.get("a").batcher.stats()["ok"]
        assert 0 < rows["b"]["p50_ms"] <= rows["b"]["p99_ms"] and rows["b"]["rate"] > 0
        assert rows["b"]["mean_batch"] >= 1.0
        tenants = {t["tenant"]: t for t in view.tenants}
        assert tenants["alice"]["ok"] == 120 and tenants["bob"]["ok"] == 60
        assert tenants["bob"]["failed"] == 3 and tenants["alice"]["failed"] == 0
        assert tenants["alice"]["rate"] > 0 and tenants["bob"]["rate"] > 0
        assert view.labels["requests"] == "180" and view.labels["refused"] == "2" and view.labels["errors"] == "3"
        for key in ("a:1", "b:1", "alice", "bob"):  # each line got a point with traffic
            src = {**view.model_sources, **view.tenant_sources}[key]
            assert len(src.data["t"]) >= 1 and max(src.data["rate"]) > 0, key
        p99 = view.model_sources["b:1"].data["p99_ms"]
        assert p99[-1] == pytest.approx(rows["b"]["p99_ms"])
        html = view.tables.value
        for needle in ("<code>a</code>", "<code>b</code>", "READY", "alice", "bob", "batched (max 8, 2 ms)"):
            assert needle in html, needle
        assert srv.url in view.header.value and "2 tenant(s)" in view.header.value
        assert all(tok not in view.header.value + view.tables.value + view.figures.value for tok in TOKENS.values())
        # a model loaded later gets its row and line, and the figures are rendered again with it
        import onnx

        onnx.save(mlp_proto(n_in=16, n_hidden=64, n_out=4, seed=3), tmp_path / "c.onnx")
        srv.app.repo.add(str(tmp_path / "c.onnx"), "c")
        srv.app.repo.load("c")
        assert "c:1" not in view.plot.render_bundle["docs_json"].__repr__()
        assert load(srv, [("alice", "c", 5)]) == [[200] * 5]
        view.update()
        assert "c:1" in view.model_sources and max(view.model_sources["c:1"].data["rate"]) > 0
        assert {r["model"]: r["ok"] for r in view.models}["c"] == 5 and view.labels["models"] == "3/3"
        assert "c:1" in repr(view.plot.render_bundle["docs_json"])
        view.close()
    finally:
        srv.stop()


def test_server_widget_live_and_its_stop_button(tmp_path, model):
    srv = start_server(tmp_path, model)
    try:
        bundle = srv._repr_mimebundle_()
        assert bundle["text/plain"] == repr(srv) and display.WIDGET_MIME in bundle
        view = display.widget(srv)
        assert isinstance(view, ServerView), "the display hook shows the views_serve widget"
        assert view.running and not view.stop_button.disabled
        th = threading.Thread(target=load, args=(srv, [("alice", "a", 300), ("bob", "b", 300)]))
        th.start()
        assert wait_for(lambda: len(view.model_sources["a:1"].data["t"]) >= 2
                        and len(view.tenant_sources["bob"].data["t"]) >= 1), "the updater streams while serving"
        th.join()
        view.stop_button.click()  # stops gracefully, in a thread
        assert view.stop_button.disabled
        assert wait_for(lambda: not srv.running and not view.running, 15), "the updater stops with the server"
        assert view.labels["state"] == "stopped" and view.labels["models"] == "0/2"
        assert view.labels["requests"] == "600", "what was answered stays shown after the models close"
        assert {r["state"] for r in view.models} == {"UNAVAILABLE"}
        view.close()
        assert view.comm is None
    finally:
        srv.stop()
