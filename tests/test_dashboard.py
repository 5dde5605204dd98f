"""The Bokeh dashboards: components fed by real engines, the page builder, the standalone
Bokeh server, the `edgebench dashboard` command, and the pages inside the Dask dashboard."""
from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from urllib.parse import urljoin

import numpy as np
import pytest

pytest.importorskip("bokeh")

import edgebench as eb
from edgebench.notebook import dashboard
from edgebench.notebook.dashboard.components import (COMPONENTS, Feed, LatencyPercentiles, ModelTable,
                                                     OperatorTime, QueueDepth, Throughput)
from edgebench.notebook.dashboard.pages import PAGES

from ._models import mlp_proto

ROUTE = "/edgebench/profile"
REPO = Path(__file__).resolve().parents[1]


def _engine(workers: int = 1, **proto_kw) -> eb.Engine:
    name = f"dash-{uuid.uuid4().hex[:8]}"
    return eb.Engine(eb.load(mlp_proto(**proto_kw), name=name), threads=1, workers=workers)


class _Driver:
    """Runs ``engine.run`` in a loop on a thread until stopped."""

    def __init__(self, engine: eb.Engine, pause_s: float = 0.0005):
        self.engine, self.pause_s = engine, pause_s
        self.x = engine.sample_feeds()
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.engine.run(self.x)
            time.sleep(self.pause_s)

    def __enter__(self) -> "_Driver":
        self._t.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._t.join(10)
        assert not self._t.is_alive()


def _get(url: str, timeout: float = 20) -> tuple[int, str]:
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.status, r.read().decode("utf-8", "replace")


def _assert_local_bokehjs(page_url: str, html: str) -> None:
    """The page loads BokehJS from the server that served it, and each script URL works."""
    assert "cdn.bokeh.org" not in html and "cdn." not in html
    srcs = re.findall(r'<script[^>]+src="([^"]+)"', html)
    assert any("static/js/bokeh.min.js" in s for s in srcs), srcs
    for src in srcs:
        url = urljoin(page_url, src)  # as a browser resolves it
        assert url.startswith(page_url.split("/", 3)[0] + "//" + page_url.split("/", 3)[2]), url
        status, body = _get(url)
        assert status == 200 and len(body) > 1000, url


def _pull(url: str):
    from bokeh.client import pull_session

    with pull_session(url=url) as session:
        return session.document


def _model_rows(doc) -> dict:
    table = next(m for m in doc.models if type(m).__name__ == "DataTable")
    return dict(table.source.data)


# --------------------------------------------------------------------------------------------
# components
# --------------------------------------------------------------------------------------------
def test_importing_the_dashboard_package_loads_no_bokeh():
    code = ("import sys, edgebench.notebook.dashboard as d; assert '/edgebench/profile' in d.PAGES; "
            "print(sorted(m for m in ('bokeh', 'pandas', 'distributed', 'ipywidgets') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_components_update_from_engine_driven_in_a_thread():
    eng = _engine()
    feed = Feed()
    thr, lat, table = Throughput(feed), LatencyPercentiles(feed), ModelTable(feed)
    short = Throughput(feed, rollover=3)
    label = f"{eng.model.name}@onnxruntime"
    lengths, times = [], []
    try:
        with _Driver(eng):
            for _ in range(6):
                time.sleep(0.06)
                times.append(feed.poll().time_ms)
                for c in (thr, lat, table, short):
                    c.update()
                lengths.append(len(thr.source.data["time"]))
        assert lengths == [1, 2, 3, 4, 5, 6]           # one point per tick: the source grows
        assert list(short.source.data["time"]) == times[-3:]  # rollover keeps the newest 3
        ok = np.array(thr.source.data["ok"])
        assert (ok > 0).all() and not np.array(thr.source.data["errors"]).any()
        p50, p90, p99 = (np.array(lat.source.data[k]) for k in ("p50", "p90", "p99"))
        assert np.isfinite(p50).all() and (p50 > 0).all() and (p50 <= p90).all() and (p90 <= p99).all()
        # the engine is idle now: one more tick sees the rest, and the counts are exact
        feed.poll()
        table.update()
        assert sum(t.ok for t in feed.ticks) == eng.records.total > 0
        rows = table.source.data
        i = list(rows["model"]).index(label)
        assert rows["requests"][i] == eng.records.total and rows["errors"][i] == 0
        assert 0 < rows["p50_ms"][i] <= rows["p99_ms"][i] and rows["rate"][i] > 0
        # a rejected request is an error in the table and in that tick's throughput
        with pytest.raises(eb.errors.InvalidInputError):
            eng.run({"x": np.zeros((1, 3), np.float32)})
        tick = feed.poll()
        thr.update()
        table.update()
        assert (tick.ok, tick.errors) == (0, 1) and thr.source.data["errors"][-1] > 0
        assert table.source.data["errors"][list(table.source.data["model"]).index(label)] == 1
    finally:
        eng.close()
    # a closed engine leaves the table
    table.update()
    assert label not in list(table.source.data["model"])


def test_component_without_feed_polls_its_own():
    eng = _engine()
    try:
        comp = Throughput()
        with _Driver(eng):
            for _ in range(3):
                time.sleep(0.05)
                comp.update()
        assert len(comp.source.data["ok"]) == 3 and comp.feed.count == 3
    finally:
        eng.close()


def test_queue_depth_counts_requests_in_flight_exactly():
    # one worker and a burst of slow-ish requests: a real queue forms inside the engine
    eng = _engine(workers=1, n_in=256, n_hidden=4096, n_out=16)
    feed = Feed()
    comp = QueueDepth(feed)
    x = {"x": np.random.default_rng(0).standard_normal((128, 256)).astype(np.float32)}
    first_shown: dict[float, int] = {}
    try:
        eng.run(x)
        t0 = time.perf_counter()
        eng.run(x)
        one = time.perf_counter() - t0
        n = int(min(400, max(40, 0.4 / max(one, 1e-5))))   # about 0.4 s of queued work
        futures = [eng.submit(x) for _ in range(n)]
        while not all(f.done() for f in futures):
            time.sleep(0.02)
            feed.poll()
            comp.update()
            for t, d in zip(comp.source.data["time"], comp.source.data["depth"]):
                first_shown.setdefault(t, d)
        for _ in range(2):
            feed.poll()
            comp.update()
        recs = eng.records.snapshot()
    finally:
        eng.close()
    arrival, done = recs[:, 1], recs[:, 5]
    expected = {t.time_ms: int(((arrival <= t.t_ns) & (t.t_ns < done)).sum()) for t in feed.ticks}
    got = feed.depth(feed.ticks[0].index, feed.count)
    assert list(got) == [expected[t.time_ms] for t in feed.ticks]
    assert max(expected.values()) > 1                      # a queue really was seen
    # the component shows every settled tick with its final value (late ones were patched)
    shown = dict(zip(comp.source.data["time"], comp.source.data["depth"]))
    assert len(shown) == len(feed.ticks) - 1
    assert all(shown[t] == expected[t] for t in shown)
    assert any(shown[t] > first_shown[t] for t in first_shown)   # some were patched


def test_operator_view_shows_the_published_profile():
    eng = _engine()
    dashboard._latest[:] = [0, None]  # forget profiles published by earlier tests
    comp = OperatorTime()
    try:
        comp.update()
        assert comp.source.data["op"] == [] and "no profile" in comp.root.title.text
        x = eng.sample_feeds()
        with eb.profile(eng) as prof:  # published when the block ends
            for _ in range(10):
                eng.run(x)
        assert dashboard.latest_profile()[0] == 1
        assert dashboard.publish_profile(prof) is prof
        comp.update()
    finally:
        eng.close()
    ops = prof.operators()
    assert len(comp.source.data["op"]) == min(len(ops), comp.top) > 0
    assert comp.source.data["total_ms"] == list(ops["total_ms"].head(comp.top))
    assert set(comp.root.y_range.factors) == set(comp.source.data["op"])
    assert eng.model.name in comp.root.title.text
    # what is published keeps no engine alive
    import gc
    import weakref

    ref = weakref.ref(eng)
    del eng, prof
    gc.collect()
    assert ref() is None and dashboard.latest_profile()[1] is not None


# --------------------------------------------------------------------------------------------
# the page
# --------------------------------------------------------------------------------------------
def test_profiling_page_builds_a_document_with_every_component():
    from bokeh.document import Document

    assert ROUTE in PAGES and PAGES.get(ROUTE) is dashboard.profiling_doc
    doc = Document()
    PAGES.get(ROUTE)(doc)
    assert doc.title == "edgebench: profiling"
    assert [r.name for r in doc.roots] == ["edgebench-profile"]
    (page,) = doc.edgebench_pages
    kinds = {type(c) for c in page.components}
    assert kinds == {Throughput, LatencyPercentiles, QueueDepth, ModelTable, OperatorTime}
    in_doc = set(doc.roots[0].references())
    for c in page.components:
        assert c.root in in_doc and c.source in in_doc and c.feed is page.feed
    (cb,) = doc.session_callbacks
    assert cb.period == 500
    # the registry stays open for later pages
    assert set(COMPONENTS.values()) == kinds


def test_dashboard_in_a_notebook_updates_from_its_thread():
    pytest.importorskip("jupyter_bokeh")
    eng = _engine()
    dash = dashboard.Dashboard(ROUTE, start=False)
    events = []
    dash.doc.on_change(lambda event: events.append(type(event).__name__))
    widget = dash.widget()
    assert type(widget).__name__ == "BokehModel" and widget.render_bundle["docs_json"]
    thr = next(c for c in dash.doc.edgebench_pages[0].components if isinstance(c, Throughput))
    try:
        with _Driver(eng):
            dash.start()
            assert dash.running and "running" in repr(dash)
            deadline = time.monotonic() + 10
            while len(thr.source.data["time"]) < 4 and time.monotonic() < deadline:
                time.sleep(0.1)
            dash.stop()
        assert not dash.running and "stopped" in repr(dash)
    finally:
        eng.close()
        dash.close()
    assert len(thr.source.data["time"]) >= 4 and max(thr.source.data["ok"]) > 0
    # these document events are what BokehModel forwards to the browser
    assert "ColumnsStreamedEvent" in events
    assert dash.errors == 0


_KERNEL_CELL = """
import sys, threading, time
sys.path.insert(0, "tests")
import edgebench as eb
from _models import mlp_proto
from edgebench.notebook import dashboard
eng = eb.Engine(eb.load(mlp_proto()), threads=1)
d = dashboard.show()
x = eng.sample_feeds()
end = time.monotonic() + 1.5
while time.monotonic() < end:
    eng.run(x)
    time.sleep(0.001)
time.sleep(0.6)
d
"""


def _execute(kc, code: str) -> list[dict]:
    msg_id = kc.execute(code)
    msgs = []
    while True:
        m = kc.get_iopub_msg(timeout=60)
        if m["parent_header"].get("msg_id") != msg_id:
            continue
        msgs.append(m)
        if m["msg_type"] == "status" and m["content"]["execution_state"] == "idle":
            return msgs


def test_dashboard_in_a_real_kernel_sends_live_patches():
    pytest.importorskip("jupyter_bokeh")
    from jupyter_client.manager import start_new_kernel

    km, kc = start_new_kernel(kernel_name="python3", cwd=str(REPO))
    try:
        msgs = _execute(kc, _KERNEL_CELL)
        errors = [m["content"]["traceback"] for m in msgs if m["msg_type"] == "error"]
        assert not errors, errors
        shown = [m["content"]["data"] for m in msgs if m["msg_type"] in ("display_data", "execute_result")]
        # BokehJS loaded locally (no CDN), then one widget view: `d` as the last line adds no second one
        loads = [d for d in shown if "application/vnd.bokehjs_load.v0+json" in d]
        views = [d for d in shown if "application/vnd.jupyter.widget-view+json" in d]
        assert loads and len(views) == 1 and len(loads) + len(views) == len(shown)
        js = "".join(d["application/vnd.bokehjs_load.v0+json"] for d in loads)
        assert "cdn.bokeh.org" not in js and "Bokeh" in js and "edgebench/bokehjs/" in js
        # the engine ran while the cell ran: the dashboard thread streamed patches to the view
        patches = [m for m in msgs if m["msg_type"] == "comm_msg"
                   and m["content"]["data"].get("content", {}).get("msg") == "patch"]
        assert len(patches) >= 5
        # shown again from a later cell: a new view of the same widget
        again = [m for m in _execute(kc, "d.stop(); d") if m["msg_type"] == "display_data"]
        assert len(again) == 1 and "application/vnd.jupyter.widget-view+json" in again[0]["content"]["data"]
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)


# --------------------------------------------------------------------------------------------
# the standalone Bokeh server
# --------------------------------------------------------------------------------------------
def test_standalone_server_serves_the_page_with_local_bokehjs(monkeypatch):
    monkeypatch.setenv("BOKEH_RESOURCES", "cdn")   # the server must ignore it
    eng = _engine()
    for _ in range(20):
        eng.run(eng.sample_feeds())
    srv = dashboard.serve_dashboard(port=0)
    try:
        assert srv.url.startswith("http://127.0.0.1:") and srv.port > 0
        url = srv.urls[ROUTE]
        status, html = _get(url)
        assert status == 200 and "<title>edgebench: profiling</title>" in html and "data-root-id" in html
        assert "/static/js/bokeh.min.js" in html
        _assert_local_bokehjs(url, html)
        doc = _pull(url)   # the document itself, over the websocket
        assert doc.title == "edgebench: profiling" and [r.name for r in doc.roots] == ["edgebench-profile"]
        rows = _model_rows(doc)
        assert f"{eng.model.name}@onnxruntime" in rows["model"]
    finally:
        srv.stop()
        eng.close()
    assert not srv.running
    with pytest.raises(urllib.error.URLError):
        _get(srv.urls[ROUTE], timeout=3)


def test_dashboard_command_serves_a_live_model(tmp_path):
    import onnx

    path = tmp_path / "dashmlp.onnx"
    onnx.save(mlp_proto(), path)
    cmd = [sys.executable, "-m", "edgebench.notebook.dashboard.server", "--port", "0", "--model", str(path),
           "--load", "200", "--threads", "1", "--duration", "60"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO)
    try:
        url = None
        for line in proc.stdout:
            m = re.search(r"(http://127\.0\.0\.1:\d+)/edgebench/profile", line)
            if m:
                url = m.group(1) + ROUTE
            if url and "load:" in line:
                break
        assert url, "no URL printed"
        status, html = _get(url)
        assert status == 200
        _assert_local_bokehjs(url, html)
        deadline = time.monotonic() + 20
        while True:
            rows = _model_rows(_pull(url))
            if "tiny_mlp@onnxruntime" in rows["model"]:
                i = list(rows["model"]).index("tiny_mlp@onnxruntime")
                if rows["requests"][i] > 0 and rows["rate"][i] > 0:
                    break
            assert time.monotonic() < deadline, rows
            time.sleep(0.3)
    finally:
        proc.terminate()           # SIGTERM: the server shuts down cleanly
        rc = proc.wait(30)
    assert rc == 0


def test_dashboard_command_rejects_load_without_model():
    from edgebench.errors import ConfigError
    from edgebench.notebook.dashboard.server import main

    with pytest.raises(ConfigError, match="--model"):
        main(["--load", "5"])


def test_load_generator_is_bounded_and_near_its_rate():
    from edgebench.notebook.dashboard.server import LoadGenerator

    eng = _engine()
    try:
        gen = LoadGenerator(eng, qps=200, max_inflight=4).start()
        time.sleep(1.0)
        gen.stop()
    finally:
        eng.close()  # waits for the queued requests
    assert 60 <= gen.sent <= 400
    assert eng.records.total == gen.sent


# --------------------------------------------------------------------------------------------
# the Dask dashboard
# --------------------------------------------------------------------------------------------
def test_dask_preload_adds_the_pages_to_the_dask_dashboard(tmp_path):
    pytest.importorskip("distributed")
    import onnx

    onnx.save(mlp_proto(), tmp_path / "m.onnx")
    cmd = [sys.executable, "-m", "distributed.cli.dask_scheduler", "--host", "127.0.0.1", "--port", "0",
           "--dashboard-address", "127.0.0.1:0", "--preload", "edgebench.notebook.dask_pages",
           "--edgebench-model", str(tmp_path / "m.onnx"), "--edgebench-load", "100"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO)
    try:
        base, log = None, []
        deadline = time.monotonic() + 60
        for line in proc.stdout:
            log.append(line)
            m = re.search(r"dashboard at:\s+(http://127\.0\.0\.1:\d+)", line)
            base = base or (m.group(1) if m else None)
            if base and "edgebench load:" in line:
                break
            assert time.monotonic() < deadline, "".join(log)
        assert base and any("edgebench dashboard pages: " in x for x in log), "".join(log)
        url = base + "/edgebench-profile"
        status, html = _get(url)
        assert status == 200 and "data-root-id" in html and "Dask" in html   # inside Dask's page frame
        _assert_local_bokehjs(url, html)
        doc = _pull(url)
        assert [r.name for r in doc.roots] == ["edgebench-profile"]
        # the demo load runs in the scheduler's process: its engine is on the page
        assert "tiny_mlp@onnxruntime" in _model_rows(doc)["model"]
        plots = json.loads(_get(base + "/individual-plots.json")[1])
        assert "/individual-edgebench-profile" in plots.values()
        assert {f"/individual-{n}" for n in COMPONENTS} <= set(plots.values())
        assert _get(base + "/individual-edgebench-throughput")[0] == 200
    finally:
        proc.terminate()
        rest = proc.communicate(timeout=30)[0]
    assert "Run preload teardown" in rest and "Traceback" not in rest, rest


def test_register_dask_pages_in_process_local_cluster():
    pytest.importorskip("distributed")
    from distributed import LocalCluster

    from edgebench.notebook.dask_pages import dask_route, register_dask_pages

    routes = register_dask_pages()
    assert dask_route(ROUTE) == "/edgebench-profile" and "/edgebench-profile" in routes
    eng = _engine()
    for _ in range(10):
        eng.run(eng.sample_feeds())
    try:
        with LocalCluster(processes=False, n_workers=1, threads_per_worker=1, scheduler_port=0,
                          dashboard_address="127.0.0.1:0") as cluster:
            base = f"http://127.0.0.1:{cluster.scheduler.http_server.port}"
            status, html = _get(base + "/edgebench-profile")
            assert status == 200 and "data-root-id" in html
            rows = _model_rows(_pull(base + "/edgebench-profile"))
            assert f"{eng.model.name}@onnxruntime" in rows["model"]   # the client's engine, same process
    finally:
        eng.close()
