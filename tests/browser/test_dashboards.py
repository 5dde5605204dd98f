"""The profiling dashboard in Chromium: as a standalone Bokeh server and as a Dask dashboard page.

An engine of this process serves requests from a thread while the page is open; the page must
load BokehJS from the server it came from (no CDN), paint its figures with data, list the
engine in its table, and keep receiving new points over its websocket.
"""
from __future__ import annotations

import threading
import time
import uuid

import pytest

from .._models import mlp_proto
from .conftest import (BOKEH_SUMMARY_JS, assert_no_external_requests, bokeh_summary, painted_canvases,
                       save_screenshot)

pytestmark = [pytest.mark.browser, pytest.mark.slow]

pytest.importorskip("bokeh")

ROUTE = "/edgebench/profile"
#: figures of the profiling page that must show data under load: throughput, latency
#: percentiles, queue depth, per-operator time (after a published profile)
MIN_FIGURES = 4


class _Load:
    """``engine.run`` in a loop on a thread (a real engine, real requests) until stopped."""

    def __init__(self, engine, pause_s: float = 0.002):
        self.engine, self.pause_s = engine, pause_s
        self.x = engine.sample_feeds()
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True, name="browser-test-load")

    def _run(self) -> None:
        while not self._stop.is_set():
            self.engine.run(self.x)
            time.sleep(self.pause_s)

    def __enter__(self) -> "_Load":
        self._t.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._t.join(10)


@pytest.fixture
def engine():
    import edgebench as eb
    from edgebench.notebook import dashboard

    eng = eb.Engine(eb.load(mlp_proto(), name=f"browser-{uuid.uuid4().hex[:6]}"), threads=1)
    x = eng.sample_feeds()
    with eb.profile(eng) as prof:          # gives the per-operator view something to show
        for _ in range(20):
            eng.run(x)
    dashboard.publish_profile(prof)
    try:
        yield eng
    finally:
        eng.close()


_TOTAL_ROWS = """() => Bokeh.documents.reduce((n, d) => n + [...d.all_models]
    .filter(m => m.type === 'ColumnDataSource').reduce((k, s) => k + s.get_length(), 0), 0)"""

_TABLE_TEXT = """() => {
  const DT = Bokeh.Models.get('DataTable');
  return Bokeh.documents.flatMap(d => [...d.all_models].filter(m => m instanceof DT))
    .map(t => JSON.stringify(t.source.data.model || []));
}"""


def _requests_shown(row) -> int:
    """The ``requests`` cell of a model-table row, as displayed (``1,234`` -> 1234)."""
    cells = row.locator(".slick-cell").all_inner_texts()
    return int(cells[1].replace(",", ""))


def check_dashboard_page(page, url: str, engine, tmp_path, shot: str) -> dict:
    """Open ``url``; assert figures with data, painted canvases, the engine in the table,
    live updates and no CDN request.  Returns the Bokeh summary."""
    page.goto(url, wait_until="domcontentloaded")
    # the server session connects over a websocket, then the periodic callback streams points
    page.wait_for_function("() => window.Bokeh && Bokeh.documents.length > 0", timeout=30_000)
    page.wait_for_function(
        f"""() => {{ const s = ({BOKEH_SUMMARY_JS})();
                    return s.plots_with_data >= {MIN_FIGURES}; }}""", timeout=30_000)
    label = f"{engine.model.name}@{engine.backend}"
    row = page.locator(".bk-DataTable .slick-row", has_text=label)
    row.first.wait_for(timeout=10_000)
    rows_before, requests_before = page.evaluate(_TOTAL_ROWS), _requests_shown(row.first)
    page.wait_for_timeout(2000)    # the page ticks every 500 ms
    rows_after, requests_after = page.evaluate(_TOTAL_ROWS), _requests_shown(row.first)
    page.wait_for_timeout(500)
    summary = bokeh_summary(page)
    root = page.locator("[data-root-id] > *").first.bounding_box() or {}
    clip = ({"x": 0, "y": 0, "width": root["x"] + root["width"] + 12, "height": root["y"] + root["height"] + 12}
            if root.get("width") else None)
    save_screenshot(page, shot, tmp_path, clip=clip)

    assert summary["plots"] >= MIN_FIGURES, summary
    assert summary["plots_with_data"] >= MIN_FIGURES, f"figures without data: {summary}"
    assert rows_after > rows_before, f"no live updates in 2 s: {rows_before} -> {rows_after} rows"
    tables = page.evaluate(_TABLE_TEXT)
    assert any(label in t for t in tables), f"{label} not in the model table: {tables}"
    n_painted = painted_canvases(page)
    assert n_painted >= MIN_FIGURES, f"{n_painted} figures painted coloured glyphs: {summary}"
    # what the table shows (not only its data source) follows the engine
    assert requests_after > requests_before, (
        f"the model table's row is not repainted: it shows {requests_before} then {requests_after} "
        f"requests while the engine served {engine.records.total}")
    bad = [m for m in page.console_errors if "favicon" not in m]
    assert not bad, f"console errors: {bad[:5]}"
    assert_no_external_requests(page)
    return summary


@pytest.mark.timeout(120)
def test_standalone_dashboard_in_chromium(page, engine, tmp_path):
    from edgebench.notebook.dashboard import serve_dashboard

    srv = serve_dashboard(port=0)
    try:
        with _Load(engine):
            check_dashboard_page(page, srv.urls[ROUTE], engine, tmp_path, "dashboard-standalone")
    finally:
        srv.stop()


@pytest.mark.timeout(180)
def test_dask_dashboard_page_in_chromium(page, engine, tmp_path):
    pytest.importorskip("distributed")
    from distributed import LocalCluster

    from edgebench.notebook.dask_pages import dask_route, register_dask_pages

    register_dask_pages()    # before the scheduler starts: Dask builds its dashboard then
    with LocalCluster(processes=False, n_workers=1, threads_per_worker=1, scheduler_port=0,
                      dashboard_address="127.0.0.1:0") as cluster, _Load(engine):
        base = f"http://127.0.0.1:{cluster.scheduler.http_server.port}"
        check_dashboard_page(page, base + dask_route(ROUTE), engine, tmp_path, "dashboard-dask")
        # inside Dask's page frame, with its navigation bar
        assert page.locator("#myTopnav #dask-logo").count() == 1, "not inside Dask's page frame"
