"""Each tutorial, opened in a real JupyterLab in Chromium, runs top to bottom and renders.

For every ``notebooks/NN_*.ipynb``: open it, Run > Run All Cells, wait for every code cell to
have run, then check in the DOM that the widget views rendered (ipywidgets, anywidget),
the Bokeh figures painted their data, nothing shows an error, and no request left the
machine (BokehJS and the widget code must come from the local server, not a CDN).
"""
from __future__ import annotations

import re
import time
import uuid
from pathlib import Path

import pytest

from .conftest import (NOTEBOOKS, assert_no_external_requests, bokeh_summary, painted_canvases,
                       save_screenshot)

pytestmark = [pytest.mark.browser, pytest.mark.slow]

RUN_TIMEOUT_S = 120
TUTORIALS = sorted(p.name for p in NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))
#: the tutorial whose view is the README's screenshot (docs/screenshots/workbench.png)
README_SHOT = "02_profiling_and_benchmarks.ipynb"

#: minimum counts per tutorial (notebooks not listed get the generic checks only):
#: ipywidgets views, progress bars, Bokeh figures drawn with data, graph-view nodes
EXPECT: dict[str, dict[str, int]] = {
    # model card (with its graph tab) and the live engine widget (latency + rate figures)
    "01_quickstart.ipynb": {"ipywidgets": 1, "figures": 2, "graph_nodes": 5},
    # profile, GraphView, four benchmark progress bars, two reports, %%edgebench profile, dashboard
    "02_profiling_and_benchmarks.ipynb": {"ipywidgets": 1, "progress": 4, "figures": 6, "graph_nodes": 5},
    # the live optimizer widgets (scatter with the Pareto front)
    "03_optimize.ipynb": {"ipywidgets": 1, "figures": 2},
    # the server and batcher views
    "04_batching_and_serving.ipynb": {"ipywidgets": 1, "figures": 2},
    # the compiled graph (anywidget) and the stream's live view
    "05_graphs.ipynb": {"ipywidgets": 1, "graph_nodes": 5},
    # the live cluster widget (rate / p99 figure) while a worker is killed
    "06_cluster.ipynb": {"ipywidgets": 1, "figures": 1},
}

# --- JavaScript run in the page ----------------------------------------------------------------
_PANEL = "window.jupyterapp && window.jupyterapp.shell.currentWidget"

_KERNEL_IDLE = f"""() => {{
  const panel = {_PANEL};
  if (!panel || !panel.sessionContext) return false;
  const k = panel.sessionContext.session && panel.sessionContext.session.kernel;
  return !!k && k.connectionStatus === 'connected' && k.status === 'idle';
}}"""

# progress of Run All, read from the notebook model: code cells run, running, error outputs
_STATE = f"""() => {{
  const panel = {_PANEL};
  const k = panel.sessionContext.session && panel.sessionContext.session.kernel;
  const cells = panel.content.widgets.filter(
      c => c.model.type === 'code' && c.model.sharedModel.getSource().trim());
  const errors = [];
  cells.forEach((c, i) => c.model.outputs.toJSON().forEach(o => {{
    if (o.output_type === 'error') errors.push(`code cell ${{i + 1}}: ${{o.ename}}: ${{o.evalue}}`);
  }}));
  return {{
    kernel: k ? k.status : 'none',
    total: cells.length,
    done: cells.filter(c => c.model.executionCount !== null && c.model.executionState !== 'running').length,
    widget_outputs: cells.reduce((n, c) => n + c.model.outputs.toJSON().filter(
        o => o.data && o.data['application/vnd.jupyter.widget-view+json']).length, 0),
    errors,
  }};
}}"""

# problems visible in the DOM: error / traceback / warning text, widget error views
_DOM_PROBLEMS = r"""() => {
  const out = [];
  for (const el of document.querySelectorAll(
      '.jp-Notebook .jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stderr"]')) {
    const t = el.textContent.trim();
    if (t) out.push('stderr: ' + t.slice(0, 300));
  }
  for (const el of document.querySelectorAll('.jp-Notebook .jupyter-widgets-error-widget'))
    out.push('widget error view: ' + el.textContent.trim().slice(0, 200));
  for (const el of document.querySelectorAll('.jp-Notebook .jp-OutputArea-output'))
    if (/Error displaying widget|Failed to load (model|view) class/.test(el.textContent))
      out.push('widget: ' + el.textContent.trim().slice(0, 200));
  return out;
}"""

# widget outputs (lm-Panel outputs) and how many hold a real rendered view
_WIDGET_VIEWS = r"""() => {
  const outs = [...document.querySelectorAll('.jp-Notebook .jp-OutputArea-output.lm-Panel')];
  const rendered = outs.filter(o => {
    const v = o.firstElementChild;
    return v && !v.querySelector('.jupyter-widgets-error-widget') && v.getBoundingClientRect().height > 0;
  });
  return {outputs: outs.length, rendered: rendered.length};
}"""


def open_notebook(page, lab, name: str) -> None:
    """Open ``name`` in JupyterLab and wait until its kernel is idle (the racy part: retried).

    Each test gets a fresh, empty JupyterLab workspace, so no tab of a previous test reopens
    (and starts its kernel again).
    """
    workspace = f"{Path(name).stem}-{uuid.uuid4().hex[:6]}"
    from playwright.sync_api import Error as PlaywrightError

    page.goto(lab.url(f"lab/workspaces/{workspace}/tree/{name}"), wait_until="domcontentloaded")
    for attempt in range(2):
        try:
            page.wait_for_function(f"() => {{ const p = {_PANEL}; return p && p.context && "
                                   f"p.context.path.endsWith({name!r}) && p.content; }}",
                                   timeout=60_000)
            page.evaluate(f"async () => {{ await {_PANEL}.context.ready; }}")
            # a notebook without kernel metadata asks which kernel: take the default
            dialog = page.locator(".jp-Dialog .jp-mod-accept")
            if dialog.count():
                dialog.first.click()
            page.wait_for_function(_KERNEL_IDLE, timeout=45_000)
            return
        except PlaywrightError:
            if attempt:
                raise
            page.reload(wait_until="domcontentloaded")


def run_all(page, timeout: float = RUN_TIMEOUT_S) -> dict:
    """Run > Run All Cells; wait until every code cell has run and the kernel is idle.

    Fails as soon as a cell shows an error (Run All stops there, so waiting longer is pointless).
    """
    page.locator(".lm-MenuBar-itemLabel", has_text=re.compile(r"^Run$")).click()
    page.locator(".lm-Menu-itemLabel", has_text=re.compile(r"^Run All Cells$")).click()
    deadline = time.monotonic() + timeout
    state: dict = {}
    while time.monotonic() < deadline:
        state = page.evaluate(_STATE)
        assert not state["errors"], f"a cell raised: {state['errors']}"
        if state["done"] == state["total"] and state["kernel"] == "idle":
            return state
        time.sleep(0.5)
    raise AssertionError(f"Run All did not finish within {timeout:.0f} s: {state}")


def shutdown_kernel(page) -> None:
    """Shut the notebook's kernel down, so its live views stop using the CPU the next
    tutorial needs."""
    from playwright.sync_api import Error as PlaywrightError

    try:
        page.evaluate(f"async () => {{ await {_PANEL}.sessionContext.shutdown(); }}")
    except PlaywrightError:
        pass  # the server's shutdown at teardown stops it anyway


def settle(page, check: str, timeout_ms: int = 20_000) -> None:
    """Wait for the front end to finish rendering (widget views and plots render async)."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    try:
        page.wait_for_function(check, timeout=timeout_ms)
    except PlaywrightTimeout:
        pass  # the assertions that follow say what is missing


def collapse_left_area(page) -> None:
    page.evaluate("() => { const a = window.jupyterapp; if (!a.shell.leftCollapsed) "
                  "a.commands.execute('application:toggle-left-area'); }")
    page.wait_for_timeout(300)


def full_notebook_screenshot(page, name: str, tmp_path: Path) -> Path:
    """Screenshot of the whole notebook: the viewport grows to the notebook's height first."""
    collapse_left_area(page)
    height = page.evaluate("""() => {
      const s = document.querySelector('.jp-NotebookPanel:not(.lm-mod-hidden) .jp-WindowedPanel-outer');
      return s ? s.scrollHeight + s.getBoundingClientRect().top + 40 : 900;
    }""")
    size = page.viewport_size
    page.set_viewport_size({"width": size["width"], "height": int(min(max(height, 900), 12_000))})
    page.wait_for_timeout(500)
    page.evaluate("""() => document.querySelectorAll('.jp-WindowedPanel-outer')
                                 .forEach(s => { s.scrollTop = 0; })""")
    page.wait_for_timeout(300)
    try:
        return save_screenshot(page, Path(name).stem, tmp_path, full_page=False)
    finally:
        page.set_viewport_size(size)


def readme_screenshot(page, tmp_path: Path) -> Path:
    """The README's view: file browser closed, the benchmark progress bars at the top, the
    benchmark report with its Bokeh plots below them."""
    collapse_left_area(page)
    size = page.viewport_size
    page.set_viewport_size({"width": 1440, "height": 1150})
    page.wait_for_timeout(300)
    page.evaluate("""() => {
      const bar = document.querySelector('.jp-Notebook .widget-hprogress')
               || document.querySelector('.jp-Notebook .bk-Figure');
      const cell = bar && bar.closest('.jp-Cell');
      const out = cell && (cell.querySelector('.jp-Cell-outputWrapper') || cell);
      if (out) out.scrollIntoView({block: 'start'});
    }""")
    page.wait_for_timeout(500)
    try:
        return save_screenshot(page, "workbench", tmp_path, full_page=False)
    finally:
        page.set_viewport_size(size)


@pytest.mark.timeout(240)
@pytest.mark.parametrize("name", TUTORIALS)
def test_tutorial_runs_and_renders(lab, page, tmp_path, name):
    expect = EXPECT.get(name, {})
    min_figs = expect.get("figures", 0)
    t0 = time.monotonic()
    try:
        open_notebook(page, lab, name)
        t_open = time.monotonic() - t0
        state = run_all(page)
        t_run = time.monotonic() - t0 - t_open
        assert state["total"] > 0, f"{name} has no code cell"
        settle(page, f"""() => {{
          const w = ({_WIDGET_VIEWS})();
          const figs = typeof Bokeh === 'undefined' ? 0 : Bokeh.index.roots.length;
          return w.rendered >= w.outputs && figs >= Math.min(1, {min_figs});
        }}""")
        page.wait_for_timeout(1000)  # let Bokeh paint the last frames

        # -- nothing left the machine, nothing went wrong --------------------------------------
        assert_no_external_requests(page)
        problems = page.evaluate(_DOM_PROBLEMS)
        assert not problems, f"{name}: outputs show errors: {problems}; console: {page.console_errors[:5]}"
        bad_console = [m for m in page.console_errors
                       if re.search(r"Could not create a view|Failed to load|widget|[Bb]okeh|pageerror", m)]
        assert not bad_console, f"{name}: console errors: {bad_console[:5]}"

        # -- every widget output became a live view ---------------------------------------------
        views = page.evaluate(_WIDGET_VIEWS)
        assert views["outputs"] >= state["widget_outputs"], f"{name}: widget outputs missing: {views} {state}"
        if expect:
            assert state["widget_outputs"] > 0, f"{name}: no widget output at all"
        assert views["rendered"] == views["outputs"], f"{name}: widget outputs not rendered: {views}"
        n_ipyw = page.locator(".jp-Notebook .jupyter-widgets").count()
        assert n_ipyw >= expect.get("ipywidgets", 0), f"{name}: {n_ipyw} ipywidgets views"
        n_prog = page.locator(".jp-Notebook .widget-hprogress").count()
        assert n_prog >= expect.get("progress", 0), f"{name}: {n_prog} progress bars"

        # -- Bokeh: figures with data, painted (locators pierce Bokeh's shadow DOM) ------------
        bk = bokeh_summary(page)
        if min_figs:
            assert bk["bokehjs"], f"{name}: BokehJS did not load"
            assert bk["plots_with_data"] >= min_figs, f"{name}: Bokeh figures with data: {bk}"
            n_painted = painted_canvases(page, ".jp-Notebook")
            assert n_painted >= min_figs, f"{name}: {n_painted} Bokeh canvases show coloured glyphs: {bk}"

        # -- the anywidget graph view drew the ONNX graph ---------------------------------------
        if expect.get("graph_nodes"):
            nodes = page.locator(".jp-Notebook .eb-graph svg .eb-graph-node")
            edges = page.locator(".jp-Notebook .eb-graph svg .eb-graph-edge")
            assert nodes.count() >= expect["graph_nodes"], f"{name}: {nodes.count()} graph nodes"
            assert edges.count() >= 1, f"{name}: the graph view drew no edges"
        print(f"{name}: opened in {t_open:.1f} s, ran in {t_run:.1f} s, {state['total']} code cells, "
              f"{views['outputs']} widget views, {bk['plots_with_data']} figures with data")
    finally:
        try:   # the artifacts, also (above all) when something failed
            full_notebook_screenshot(page, name, tmp_path)
            if name == README_SHOT:
                readme_screenshot(page, tmp_path)
        except Exception as e:  # never hide the test's own failure
            print(f"{name}: no screenshot: {e}")
        shutdown_kernel(page)
