"""Real-browser fixtures: a private JupyterLab server and Debian's Chromium driven by playwright.

Nothing here touches the user's Jupyter state or the repository's notebooks: the server gets
fresh config / runtime / settings / workspace directories and serves a temporary copy of
``notebooks/``.  Chromium is launched through playwright's Python package with Debian's binary
(``/usr/bin/chromium``, or ``EDGEBENCH_CHROMIUM``); playwright's own browser downloads are never
used.  Without Chromium or playwright the tests skip, saying what to install
(``scripts/install-browser.sh``).

Screenshots go to each test's tmp dir, and also to ``$EDGEBENCH_SCREENSHOTS`` when set
(``EDGEBENCH_SCREENSHOTS=docs/screenshots pytest -m browser`` regenerates the README's).
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import pytest

REPO = Path(__file__).resolve().parents[2]
# the tutorials (EDGEBENCH_NOTEBOOKS_DIR points the tests at another folder of notebooks)
NOTEBOOKS = Path(os.environ.get("EDGEBENCH_NOTEBOOKS_DIR", REPO / "notebooks"))
CHROMIUM = os.environ.get("EDGEBENCH_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage"]
LOCAL_HOSTS = {"127.0.0.1", "localhost", "[::1]", "::1"}
LAB_START_TIMEOUT_S = 90
INSTALL_HINT = "run scripts/install-browser.sh (Debian chromium + the playwright Python package)"

# JupyterLab user settings: no news or update checks, no windowing (every cell stays in the DOM
# so the assertions see all outputs).
LAB_SETTINGS = {
    "@jupyterlab/apputils-extension/notification.jupyterlab-settings":
        {"fetchNews": "false", "checkForUpdates": False},
    "@jupyterlab/notebook-extension/tracker.jupyterlab-settings":
        {"windowingMode": "none"},
}


# --------------------------------------------------------------------------------------------
# availability
# --------------------------------------------------------------------------------------------
def require_browser() -> None:
    """Skip (with the reason) unless Chromium, playwright and JupyterLab are installed."""
    if not (os.path.isfile(CHROMIUM) and os.access(CHROMIUM, os.X_OK)):
        pytest.skip(f"Chromium not found at {CHROMIUM}: {INSTALL_HINT}")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        pytest.skip(f"the playwright Python package is not installed: {INSTALL_HINT}")


def require_lab() -> None:
    for mod in ("jupyterlab", "ipywidgets", "jupyter_bokeh", "anywidget"):
        pytest.importorskip(mod, reason=f"{mod} is not installed: pip install -e '.[notebook]'")


# --------------------------------------------------------------------------------------------
# JupyterLab server
# --------------------------------------------------------------------------------------------
@dataclass
class LabServer:
    """A running private JupyterLab: ``url("lab/tree/x.ipynb")`` gives a tokenized URL."""

    proc: subprocess.Popen
    base: str
    token: str
    root_dir: Path
    log: Path
    env: dict = field(repr=False, default_factory=dict)

    def url(self, path: str = "lab") -> str:
        sep = "&" if "?" in path else "?"
        return f"{self.base}{path.lstrip('/')}{sep}token={self.token}"

    def api(self, path: str, timeout: float = 5.0) -> object:
        req = urllib.request.Request(self.base + "api/" + path.lstrip("/"),
                                     headers={"Authorization": f"token {self.token}"})
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return json.loads(resp.read() or b"null")

    def log_tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return "(no log)"


def _write_json(path: Path, obj: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=1))


def start_lab(root_dir: Path, home: Path, extra_env: dict | None = None,
              timeout: float = LAB_START_TIMEOUT_S) -> LabServer:
    """Start ``jupyter lab`` on 127.0.0.1 (a free port) serving ``root_dir``; state under ``home``.

    The server runs in its own process group so :func:`stop_lab` can end it and its kernels.
    """
    dirs = {name: home / name for name in ("config", "runtime", "settings", "workspaces")}
    for d in dirs.values():
        d.mkdir(parents=True, exist_ok=True)
    for rel, value in LAB_SETTINGS.items():
        _write_json(dirs["settings"] / rel, value)
    # belt and braces: the announcements plugin off in the page config as well
    _write_json(dirs["config"] / "labconfig" / "page_config.json",
                {"disabledExtensions": {"@jupyterlab/apputils-extension:announcements": True}})
    _write_json(dirs["config"] / "jupyter_server_config.json",
                {"LabApp": {"news_url": None}, "ServerApp": {"open_browser": False}})
    token = uuid.uuid4().hex
    env = dict(os.environ)
    env.update({
        "JUPYTER_CONFIG_DIR": str(dirs["config"]),
        "JUPYTER_RUNTIME_DIR": str(dirs["runtime"]),
        "JUPYTERLAB_SETTINGS_DIR": str(dirs["settings"]),
        "JUPYTERLAB_WORKSPACES_DIR": str(dirs["workspaces"]),
        "PYDEVD_DISABLE_FILE_VALIDATION": "1",
        "PYTHONUNBUFFERED": "1",
        # kernel specs say "python": make that the interpreter running the tests (a venv's)
        "PATH": os.pathsep.join([os.path.dirname(sys.executable), env.get("PATH", "")]),
    })
    env.pop("JUPYTER_TOKEN", None)
    env.update(extra_env or {})
    cmd = [sys.executable, "-m", "jupyter", "lab", "--no-browser",
           "--ServerApp.ip=127.0.0.1", "--ServerApp.port=0", "--ServerApp.port_retries=0",
           f"--ServerApp.token={token}", "--ServerApp.allow_root=True",
           f"--ServerApp.root_dir={root_dir}",
           f"--LabApp.user_settings_dir={dirs['settings']}",
           f"--LabApp.workspaces_dir={dirs['workspaces']}",
           "--LabApp.check_for_updates_class=jupyterlab.handlers.announcements.NeverCheckForUpdate",
           "--ServerApp.jpserver_extensions={'edgebench.notebook.server_ext': True}",  # BokehJS, locally
           "--LabApp.expose_app_in_browser=True"]   # window.jupyterapp, for the tests' probes
    log = home / "jupyterlab.log"
    with open(log, "wb") as fh:
        proc = subprocess.Popen(cmd, cwd=root_dir, env=env, stdout=fh, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    server = LabServer(proc, "", token, root_dir, log, env)
    runtime_file = dirs["runtime"] / f"jpserver-{proc.pid}.json"
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"jupyter lab exited with {proc.returncode}:\n{server.log_tail()}")
            if not server.base and runtime_file.exists():
                try:
                    info = json.loads(runtime_file.read_text())
                    server.base = f"http://127.0.0.1:{info['port']}{info.get('base_url', '/')}"
                except (ValueError, KeyError):
                    pass   # written but not complete yet
            if server.base:
                try:
                    if isinstance(server.api("status", timeout=2), dict):
                        return server
                except (urllib.error.URLError, OSError, ValueError):
                    pass
            time.sleep(0.25)
        raise RuntimeError(f"jupyter lab did not answer /api/status within {timeout:.0f} s:\n"
                           f"{server.log_tail()}")
    except BaseException:
        stop_lab(server)
        raise


def stop_lab(server: LabServer, grace: float = 10.0) -> None:
    """Stop the server we started, and its kernels: ``/api/shutdown`` first, then SIGTERM and
    SIGKILL to the process group it leads (it was started in a session of its own)."""
    proc = server.proc
    if proc.poll() is None and server.base:
        try:   # a clean shutdown also shuts the kernels down
            req = urllib.request.Request(server.base + "api/shutdown", method="POST", data=b"",
                                         headers={"Authorization": f"token {server.token}"})
            urllib.request.urlopen(req, timeout=3).close()
            proc.wait(grace)
        except Exception:
            pass
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)   # the server, if still there, and any kernel left behind
        except (ProcessLookupError, PermissionError):
            break                      # the group is empty
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            continue
        time.sleep(0.5)                # the leader is gone; give stragglers a moment first
    if proc.poll() is None:
        proc.kill()
        proc.wait(5)


@pytest.fixture(scope="package")
def lab(tmp_path_factory, zoo_cache):
    """A private JupyterLab serving a temporary copy of ``notebooks/``; yields a :class:`LabServer`.

    Package-scoped: the server (and its kernels) stops when the browser tests are done.
    """
    require_browser()
    require_lab()
    home = tmp_path_factory.mktemp("jupyterlab")
    root = home / "notebooks"
    if NOTEBOOKS.is_dir():
        shutil.copytree(NOTEBOOKS, root, ignore=shutil.ignore_patterns(".ipynb_checkpoints"))
    else:
        root.mkdir()
    server = start_lab(root, home, {"EDGEBENCH_CACHE": str(zoo_cache.parent)})
    try:
        yield server
    finally:
        stop_lab(server)


# --------------------------------------------------------------------------------------------
# Chromium
# --------------------------------------------------------------------------------------------
@pytest.fixture(scope="package")
def chromium():
    """Debian's Chromium, launched (headless, fresh temporary profile) through playwright."""
    require_browser()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        # launch() gives every browser a fresh temporary user-data dir, deleted at close
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS,
                                    timeout=60_000)
        try:
            yield browser
        finally:
            browser.close()


@dataclass
class RequestLog:
    """Every URL the page requested; :meth:`external` lists those that left this machine."""

    urls: list[str] = field(default_factory=list)

    def external(self) -> list[str]:
        out = []
        for url in self.urls:
            parts = urlsplit(url)
            if parts.scheme in ("data", "blob", "about", "chrome", "chrome-extension"):
                continue
            if parts.hostname in LOCAL_HOSTS or f"[{parts.hostname}]" in LOCAL_HOSTS:
                continue
            out.append(url)
        return out


@pytest.fixture
def page(chromium):
    """A fresh browser context + page; ``page.request_log`` records every request it makes.

    Also ``page.console_errors``: console messages of type ``error`` and uncaught page errors.
    """
    context = chromium.new_context(viewport={"width": 1440, "height": 900}, device_scale_factor=1)
    log = RequestLog()
    context.on("request", lambda req: log.urls.append(req.url))
    pg = context.new_page()
    pg.request_log = log
    pg.console_errors = []
    pg.on("console", lambda msg: msg.type == "error" and pg.console_errors.append(msg.text))
    pg.on("pageerror", lambda exc: pg.console_errors.append(f"pageerror: {exc} {(exc.stack or '')[:600]}"))
    pg.set_default_timeout(30_000)
    try:
        yield pg
    finally:
        context.close()


def assert_no_external_requests(page) -> None:
    ext = page.request_log.external()
    assert not ext, f"{len(ext)} request(s) left 127.0.0.1 (CDN or internet): {ext[:10]}"


# --------------------------------------------------------------------------------------------
# screenshots
# --------------------------------------------------------------------------------------------
SCREENSHOT_LIMIT = 300_000   # bytes: the README's screenshots stay small


def save_screenshot(page, name: str, tmp_path: Path, *, full_page: bool = True,
                    clip: dict | None = None) -> Path:
    """Save ``name``.png under ``tmp_path`` (the test's artifact) and, when
    ``$EDGEBENCH_SCREENSHOTS`` is set (relative paths are taken from the repo root), a copy
    there made smaller than :data:`SCREENSHOT_LIMIT` (256 colours, scaled down if need be)."""
    out = tmp_path / f"{name}.png"
    page.screenshot(path=str(out), full_page=full_page and clip is None, clip=clip)
    target = os.environ.get("EDGEBENCH_SCREENSHOTS")
    if target:
        folder = Path(target)
        if not folder.is_absolute():
            folder = REPO / folder
        folder.mkdir(parents=True, exist_ok=True)
        small_png(out, folder / out.name)
    return out


def small_png(src: Path, dst: Path, limit: int = SCREENSHOT_LIMIT) -> Path:
    """Write ``src`` to ``dst`` as a palette PNG under ``limit`` bytes (UI screenshots have few
    colours); the image is scaled down by steps of 0.85 only if that is not enough."""
    from PIL import Image

    img = Image.open(src).convert("RGB")
    scale = 1.0
    while True:
        im = img if scale == 1.0 else img.resize((int(img.width * scale), int(img.height * scale)),
                                                 Image.Resampling.LANCZOS)
        im.quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(
            dst, optimize=True)
        if dst.stat().st_size <= limit or scale < 0.3:
            return dst
        scale *= 0.85


# --------------------------------------------------------------------------------------------
# Bokeh in the page
# --------------------------------------------------------------------------------------------
BOKEH_SUMMARY_JS = """() => {
  if (typeof window.Bokeh === 'undefined') return {bokehjs: null, plots: 0, plots_with_data: 0, sources: []};
  const Plot = Bokeh.Models.get('Plot');
  const seen = new Set(), plots = [];
  // the documents of views still on the page (Bokeh.index.roots: the live root views; not
  // Object.values(Bokeh.index): a model shown twice makes that proxy list duplicate keys)
  const docs = new Set(Bokeh.index.roots.map(v => v.model.document).filter(d => d));
  for (const d of (docs.size ? docs : Bokeh.documents))
    for (const m of d.all_models)
      if (m instanceof Plot && !seen.has(m.id)) { seen.add(m.id); plots.push(m); }
  const rows = plots.map(p => {
    const lens = p.renderers.filter(r => r.data_source).map(r => r.data_source.get_length() || 0);
    return {title: p.title ? p.title.text : '', renderers: lens.length, max_rows: Math.max(0, ...lens)};
  });
  return {bokehjs: Bokeh.version, plots: plots.length,
          plots_with_data: rows.filter(r => r.max_rows > 0).length, sources: rows};
}"""


def bokeh_summary(page) -> dict:
    """BokehJS's view of the page: ``bokehjs`` (version or None), ``plots``, ``plots_with_data``
    (plots with a renderer whose data source has rows) and per-plot ``sources``."""
    return page.evaluate(BOKEH_SUMMARY_JS)


# coloured (not grey/white/black) pixels on a canvas: glyphs, not axes, grids or background
_CHROMATIC = """c => {
  try {
    const ctx = c.getContext('2d');
    if (!ctx || !c.width || !c.height) return 0;
    const d = ctx.getImageData(0, 0, c.width, c.height).data;
    let n = 0;
    for (let i = 0; i < d.length; i += 4) {
      const [r, g, b, a] = [d[i], d[i + 1], d[i + 2], d[i + 3]];
      if (a > 128 && Math.max(r, g, b) - Math.min(r, g, b) > 40) n++;
    }
    return n;
  } catch (e) { return -1; }
}"""


def painted_canvases(page, scope: str = "body", min_pixels: int = 30) -> int:
    """How many Bokeh figures under ``scope`` painted coloured glyphs on their canvas.

    Playwright's CSS locators pierce open shadow roots, so ``.bk-Figure canvas`` reaches the
    canvases Bokeh 3 renders inside ``.bk-Figure`` > shadow > ``.bk-Canvas`` > shadow.
    """
    n = 0
    figures = page.locator(f"{scope} .bk-Figure")
    for i in range(figures.count()):
        canvases = figures.nth(i).locator("canvas")
        if any(canvases.nth(j).evaluate(_CHROMATIC) >= min_pixels for j in range(canvases.count())):
            n += 1
    return n
