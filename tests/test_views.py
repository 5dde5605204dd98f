"""The three display tiers of Model, Engine, BenchmarkReport and ProfileSession, and their
widgets: live updates, buttons, lazy tables, the HTML fallback, and a real kernel."""
from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
import textwrap
import threading
import time
import weakref
from html.parser import HTMLParser
from pathlib import Path

import pytest

import edgebench as eb
from edgebench.errors import EngineClosedError, UnknownNameError
from edgebench.profile.metrics import RecordBuffer

from ._models import mlp_proto

W = pytest.importorskip("ipywidgets")
pytest.importorskip("jupyter_bokeh")
from edgebench.notebook import display  # noqa: E402
from edgebench.notebook.views import EngineView, ModelView, ProfileView, ReportView  # noqa: E402

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent


@pytest.fixture(scope="module")
def model():
    return eb.load(mlp_proto(n_in=16, n_hidden=64, n_out=4), name="viewnet")


@pytest.fixture(scope="module")
def measured(model):
    """An engine with some requests, a profile of 40 requests and a short benchmark."""
    eng = eb.Engine(model, threads=1)
    x = eng.sample_feeds(batch_size=4)
    report = eb.benchmark(eng, "single_stream", duration_s=0.3, warmup_s=0.05, min_queries=10)
    # after the benchmark: a profile reads its records from the engine's ring, which a long
    # benchmark overwrites
    with eb.profile(eng) as prof:
        for _ in range(40):
            eng.run(x)
    yield eng, prof, report
    eng.close()


class _Checker(HTMLParser):
    """Balanced tags (void elements aside): enough to call an HTML card valid-ish."""

    VOID = {"br", "hr", "img", "input", "meta", "link", "col", "wbr"}

    def __init__(self):
        super().__init__()
        self.stack: list[str] = []
        self.errors: list[str] = []

    def handle_starttag(self, tag, attrs):
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag):
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes {self.stack[-1:] or 'nothing'}")
        else:
            self.stack.pop()


def _valid_html(text: str) -> bool:
    c = _Checker()
    c.feed(text)
    c.close()
    return not c.errors and not c.stack


# --------------------------------------------------------------------------------------------
# tiers 1 and 2
# --------------------------------------------------------------------------------------------
def test_reprs_do_no_io_and_html_cards_hold_the_facts(model, measured, monkeypatch):
    eng, prof, report = measured
    objs = [model, eng, prof, report]
    model.sha256  # noqa: B018  (a Model loaded from bytes hashes them once; from memory)

    def boom(*a, **k):
        raise AssertionError("I/O in __repr__")

    with monkeypatch.context() as m:
        m.setattr("builtins.open", boom)
        m.setattr(os, "stat", boom)
        m.setattr(RecordBuffer, "snapshot", boom)  # no scan of the request records either
        texts = [repr(o) for o in objs]
    assert texts[0].startswith("Model('viewnet'") and "viewnet" in texts[1] and "viewnet" in texts[2]
    assert texts[3].startswith("<BenchmarkReport single_stream viewnet")

    html = {type(o).__name__: o._repr_html_() for o in objs}
    assert all(_valid_html(h) for h in html.values()), html
    assert "viewnet" in html["Model"] and model.sha256[:12] in html["Model"] and "<code>x</code>" in html["Model"]
    assert "onnxruntime" in html["Engine"] and f"{eng.records.total} requests" in html["Engine"]
    assert ("VALID" in html["BenchmarkReport"]) and f"{report.p50_ms:.3f}" in html["BenchmarkReport"]
    assert "fc1" in html["ProfileSession"] or "fused fc1" in html["ProfileSession"]


def test_bundle_is_widget_plus_our_text_and_html(model, measured):
    eng, prof, report = measured
    for obj in (model, eng, prof, report):
        b = obj._repr_mimebundle_()
        assert set(b) == {"text/plain", "text/html", display.WIDGET_MIME}
        assert b["text/plain"] == repr(obj)  # ours, not ipywidgets' repr of the VBox
        assert b["text/html"] == obj._repr_html_() or type(obj).__name__ == "Engine"
        w = display.widget(obj)
        assert b[display.WIDGET_MIME]["model_id"] == w.model_id
    only = display.mimebundle(model, include={"text/plain"})
    assert set(only) == {"text/plain"}
    assert display.WIDGET_MIME not in display.mimebundle(model, exclude={display.WIDGET_MIME})


def test_widget_is_built_once_cached_and_rebuilt_after_close(model):
    w1 = display.widget(model)
    assert isinstance(w1, ModelView) and display.widget(model) is w1
    w1.close()
    w2 = display.widget(model)
    assert w2 is not w1 and w2.comm is not None
    w3 = display.widget(model, rebuild=True)
    assert w3 is not w2 and w2.comm is None


def test_views_registry_and_unknown_objects():
    with pytest.raises(UnknownNameError, match="Known views: .*Engine"):
        display.widget(object())

    class Gadget:
        def __repr__(self):
            return "Gadget()"

        def _repr_html_(self):
            return "<b>gadget</b>"

    display.register_view("Gadget", lambda g: W.HTML("gadget widget"))
    try:
        b = display.mimebundle(Gadget())
        assert b["text/plain"] == "Gadget()" and b["text/html"] == "<b>gadget</b>" and display.WIDGET_MIME in b
    finally:
        display.VIEWS._items.pop("Gadget")
        display._lookup.clear()
    with pytest.warns(RuntimeWarning, match="no widget for Gadget"):
        assert set(display.mimebundle(Gadget())) == {"text/plain", "text/html"}


FALLBACK = textwrap.dedent("""
    import json, sys
    sys.modules[{blocked!r}] = None          # as if it were not installed
    sys.path.insert(0, {tests!r})
    import edgebench as eb
    from _models import mlp_proto
    from edgebench.notebook import display
    m = eb.load(mlp_proto(), name="fb")
    eng = eb.Engine(m, threads=1)
    with eb.profile(eng) as prof:
        for _ in range(5):
            eng.run(eng.sample_feeds())
    out = {{"bundles": {{}}}}
    for obj in (m, eng, prof):
        b = obj._repr_mimebundle_()
        out["bundles"][type(obj).__name__] = sorted(b)
        assert b["text/plain"] == repr(obj) and b["text/html"] == obj._repr_html_()
    try:
        w = display.widget(m)
        out["graph_tab"] = w.tabs.children[0].value
    except ImportError as e:
        out["error"] = [type(e).__name__, str(e)]
    print(json.dumps(out))
""")


@pytest.mark.parametrize("blocked", ["ipywidgets", "anywidget"])
def test_fallback_when_packages_are_missing(blocked):
    code = FALLBACK.format(blocked=blocked, tests=str(TESTS))
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert res.returncode == 0, res.stderr[-3000:]
    out = json.loads(res.stdout.strip().splitlines()[-1])
    if blocked == "ipywidgets":  # text and HTML only; widget() says what to install
        assert all(keys == ["text/html", "text/plain"] for keys in out["bundles"].values()), out
        assert out["error"][0] == "WidgetsUnavailableError" and "pip install" in out["error"][1]
    else:  # widgets without the graph tab, which says why
        assert all(display.WIDGET_MIME in keys for keys in out["bundles"].values()), out
        assert "needs anywidget" in out["graph_tab"]


# --------------------------------------------------------------------------------------------
# the live engine widget
# --------------------------------------------------------------------------------------------
def test_engine_view_data_grows_with_requests(model):
    with eb.Engine(model, threads=1) as eng:
        view = EngineView(eng, start=False, points_per_update=150)
        assert len(view.source.data["t"]) == 0 and view.labels["requests"] == "0"
        x = eng.sample_feeds()
        driver = threading.Thread(target=lambda: [eng.run(x) for _ in range(200)])
        driver.start()
        driver.join(30)
        assert view.update() == 200
        assert len(view.source.data["latency_ms"]) == 150  # thinned to points_per_update
        assert view.labels["requests"] == "200" and view.labels["p50"] != "–"
        assert view.labels["rate"] != "–" and "200" in view.figures.value
        assert len(view.ticks.data["t"]) == 1 and view.ticks.data["p99_ms"][0] >= view.ticks.data["p50_ms"][0]
        for _ in range(120):
            eng.run(x)
        assert view.update() == 120 and view.update() == 0
        assert len(view.source.data["latency_ms"]) == 270 and view.labels["requests"] == "320"
        lat = list(view.source.data["latency_ms"])
        assert all(0 < v < 1000 for v in lat)
        view.close()


def test_engine_view_updates_live_from_a_thread_and_stops_with_the_engine(model):
    eng = eb.Engine(model, threads=1)
    view = display.widget(eng)  # built as for display: its updater thread runs
    assert isinstance(view, EngineView) and view.running
    stop = threading.Event()
    x = eng.sample_feeds()

    def drive():
        while not stop.is_set():
            try:
                eng.run(x)
            except EngineClosedError:
                return
            time.sleep(0.0005)

    driver = threading.Thread(target=drive, daemon=True)
    driver.start()
    try:
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and len(view.ticks.data["t"]) < 3:
            time.sleep(0.05)
        n1, t1 = len(view.source.data["t"]), len(view.ticks.data["t"])
        assert n1 > 0 and t1 >= 3, "the updater thread did not stream the engine's requests"
        first = view.labels["requests"]
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and len(view.ticks.data["t"]) <= t1:
            time.sleep(0.05)
        assert len(view.source.data["t"]) > n1 and len(view.ticks.data["t"]) > t1
        assert int(view.labels["requests"].replace(",", "")) > int(first.replace(",", ""))
    finally:
        stop.set()
        eng.close()
        driver.join(10)
    view._thread.join(5)
    assert not view.running and view.labels["state"] == "closed"
    assert view.run_button.disabled and view.warmup_button.disabled


def test_engine_view_buttons_and_closing(model):
    with eb.Engine(model, threads=1) as eng:
        view = EngineView(eng, interval=0.05)
        view.n_requests.value = 60
        view.run_button.click()
        view._worker.join(30)
        assert eng.records.total == 60 and "ran 60 requests" in view.output.outputs[-1]["text"]
        view.warmup_button.click()
        view._worker.join(30)
        assert eng.records.total == 60 and "warmed up" in view.output.outputs[-1]["text"]  # untimed
        assert not view.run_button.disabled
        view.close()  # closing the widget stops its updater
        view._thread.join(5)
        assert not view.running and view.comm is None and view.plot.comm is None


def test_engine_view_does_not_keep_the_engine_alive(model):
    eng = eb.Engine(model, threads=1)
    view = EngineView(eng, interval=0.05)
    ref = weakref.ref(eng)
    eng.close()
    del eng
    gc.collect()
    assert ref() is None and view.engine is None
    view._thread.join(5)
    assert not view.running
    view.close()


# --------------------------------------------------------------------------------------------
# reports, profiles, models
# --------------------------------------------------------------------------------------------
def test_report_view(measured):
    _, _, report = measured
    view = ReportView(report)
    head = view.header.value
    assert ("VALID" in head) and report.scenario in head and report.cpu[:20] in head
    hist = view.plot._model.select_one({"name": "histogram"})
    assert sum(hist.data["top"]) == len(report.latencies_ms)
    # the tables are built when opened, not before
    assert "opening" in view.tables.children[0].value
    view.tables.selected_index = 0
    table = view.tables.children[0].value
    assert "<table" in table and "latency_ms" in table and f"{report.n_queries:,} rows" in table
    assert "<table" in view.tables.build(1).value
    view.close()


def test_profile_view(measured):
    eng, prof, _ = measured
    view = ProfileView(prof, top=2)
    ops = prof.operators()
    bars = view.plot._model.select_one({"name": "operators"})
    assert len(bars.data["op"]) == min(2, len(ops))
    assert max(bars.data["total_ms"]) == pytest.approx(ops["total_ms"].max())
    assert ">40<" in view.header.value  # requests
    graph = view.sections.build(3)
    assert graph.info["profiled"] and graph.heat
    ops_table = view.sections.build(0).value
    assert str(ops["op"].iloc[0]) in ops_table
    view.close()
    with eb.profile(eng, operators=False) as bare:
        eng.run(eng.sample_feeds())
    quiet = ProfileView(bare)
    assert isinstance(quiet.plot, W.HTML) and "No operator data" in quiet.plot.value
    quiet.close()


def test_model_view(model):
    view = ModelView(model)
    assert model.sha256[:12] in view.header.value and "<code>x</code>" in view.header.value
    assert view.tabs.titles == ("graph", "operators") and view.tabs.selected_index == 0
    assert sum(n["kind"] == "op" for n in view.graph.nodes) == 3  # built at once: a small graph
    assert 1 not in view.tabs.built
    counts = view.tabs.build(1)._model.select_one({"name": "op_counts"})
    assert dict(zip(counts.data["op"], counts.data["count"])) == model.op_counts
    view.close()


def test_bokehjs_loads_locally():
    assert display.load_bokehjs() is False  # not in a kernel: nothing to publish
    served = display.bokehjs_script()  # default: fetched from the notebook's Jupyter server
    assert "edgebench/bokehjs/js/bokeh.min.js" in served and len(served) < 5_000
    inline = display.bokehjs_script(mode="inline")
    for js in (served, inline):
        assert "cdn.bokeh.org" not in js and "<script" not in js
        assert "window.Bokeh.version ===" in js  # skipped when the page already has it
    assert len(inline) > 500_000


# --------------------------------------------------------------------------------------------
# a real kernel: BokehJS published once, the widget bundle, tqdm's widget progress bar
# --------------------------------------------------------------------------------------------
def _execute(kc, code: str, timeout: float = 60) -> list[dict]:
    msg_id = kc.execute(code)
    out = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        msg = kc.get_iopub_msg(timeout=max(0.1, deadline - time.monotonic()))
        if msg["parent_header"].get("msg_id") != msg_id:
            continue
        if msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
            return out
        out.append(msg)
    raise TimeoutError(code)


def test_in_a_kernel():
    jc = pytest.importorskip("jupyter_client")
    km = jc.KernelManager(kernel_name="python3")
    km.start_kernel(cwd=str(ROOT), env={**os.environ, "PYTHONPATH": str(TESTS)})
    kc = km.client()
    kc.start_channels()
    try:
        kc.wait_for_ready(timeout=60)
        msgs = _execute(kc, "import edgebench as eb\nfrom _models import mlp_proto\n"
                            "eng = eb.Engine(eb.load(mlp_proto(), name='k'), threads=1)\neng")
        errors = [m["content"] for m in msgs if m["msg_type"] == "error"]
        assert not errors, errors
        datas = [m["content"]["data"] for m in msgs if m["msg_type"] in ("display_data", "execute_result")]
        assert display.LOAD_MIME in datas[0] and "cdn.bokeh.org" not in datas[0][display.LOAD_MIME]
        result = datas[-1]
        assert display.WIDGET_MIME in result and result["text/plain"].startswith("Engine('k'")
        assert "text/html" in result
        again = _execute(kc, "eng")  # BokehJS is published once per kernel
        assert not any(display.LOAD_MIME in m["content"].get("data", {}) for m in again)
        bench = _execute(kc, "r = eb.benchmark(eng, duration_s=0.2, warmup_s=0.05, progress=True)")
        bars = [m for m in bench if m["msg_type"] == "display_data"
                and display.WIDGET_MIME in m["content"]["data"]]
        assert bars, "tqdm.auto should show a widget progress bar in a kernel"
        stop = _execute(kc, "eng.close(); import time; time.sleep(0.8)\n"
                            "print(eb.notebook.widget(eng).running, eb.notebook.widget(eng).labels['state'])")
        text = "".join(m["content"].get("text", "") for m in stop if m["msg_type"] == "stream")
        assert "closed" in text
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)
