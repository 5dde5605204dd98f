"""The tutorials (notebooks/) as stored, the nbval sanitize file, and `edgebench lab`.

Running the notebooks themselves is nbval's job:
``python -m pytest --nbval --nbval-current-env --nbval-sanitize-with notebooks/sanitize.cfg notebooks/``.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from edgebench.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = ROOT / "notebooks"
TUTORIALS = sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))
MAX_BYTES = 200 * 1024
BOKEHJS_LOAD = "application/vnd.bokehjs_load.v0+json"
NBVAL_MARKERS = ("NBVAL_IGNORE_OUTPUT", "NBVAL_SKIP", "NBVAL_RAISES_EXCEPTION", "NBVAL_CHECK_OUTPUT")
NBVAL_TAGS = ("nbval-ignore-output", "nbval-skip", "raises-exception", "nbval-check-output")


def _read(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def _code_cells(nb: dict) -> list[dict]:
    return [c for c in nb["cells"] if c["cell_type"] == "code"]


def _source(cell: dict) -> str:
    src = cell["source"]
    return "".join(src) if isinstance(src, list) else src


# --------------------------------------------------------------------------------------------
# the stored notebooks
# --------------------------------------------------------------------------------------------
def test_the_series_starts_with_quickstart_and_profiling():
    names = [p.name for p in TUTORIALS]
    assert names[:2] == ["01_quickstart.ipynb", "02_profiling_and_benchmarks.ipynb"], names
    numbers = [int(n[:2]) for n in names]
    assert numbers == list(range(1, len(numbers) + 1)), f"gaps or duplicates in the numbering: {names}"


@pytest.mark.parametrize("path", TUTORIALS, ids=lambda p: p.name)
def test_notebook_is_small_executed_and_clean(path):
    size = path.stat().st_size
    assert size < MAX_BYTES, f"{path.name} is {size / 1024:.0f} KB: inline JavaScript or widget state stored?"
    nb = _read(path)
    assert nb["metadata"]["kernelspec"]["name"] == "python3"
    assert "widgets" not in nb["metadata"], "widget state is stored (execute with store_widget_state=False)"
    cells = _code_cells(nb)
    assert cells
    counts = [c["execution_count"] for c in cells]
    assert all(isinstance(n, int) for n in counts), f"{path.name}: cells never executed: {counts}"
    assert counts == sorted(counts) and counts[0] == 1, f"{path.name}: not executed top to bottom: {counts}"
    for c in cells:
        for out in c["outputs"]:
            assert out["output_type"] != "error", f"{path.name}: stored error in {_source(c)[:60]!r}"
            if out["output_type"] == "stream":
                assert out["name"] != "stderr" or "Warning" not in out["text"], out["text"]
            loader = out.get("data", {}).get(BOKEHJS_LOAD)
            if loader is not None:
                text = "".join(loader) if isinstance(loader, list) else loader
                assert len(text) < 10_000, "BokehJS stored inline: it must load from the Jupyter server"
                assert "cdn" not in text.lower()
        assert "execution" not in c["metadata"], "timestamps stored (execute with record_timing=False)"


@pytest.mark.parametrize("path", TUTORIALS, ids=lambda p: p.name)
def test_most_outputs_are_compared(path):
    """nbval markers only where the output is a measurement through and through."""
    cells = _code_cells(_read(path))
    marked = [c for c in cells
              if any(t in c["metadata"].get("tags", []) for t in NBVAL_TAGS)
              or any(m in _source(c) for m in NBVAL_MARKERS)]
    assert not any("nbval-skip" in c["metadata"].get("tags", []) or "NBVAL_SKIP" in _source(c) for c in cells)
    assert len(marked) <= len(cells) // 3, [_source(c)[:40] for c in marked]
    with_output = [c for c in cells if c["outputs"] and c not in marked]
    assert len(with_output) >= len(cells) // 2


def test_readme_lists_every_tutorial():
    text = (NOTEBOOKS / "README.md").read_text(encoding="utf-8")
    for p in TUTORIALS:
        assert f"]({p.name})" in text, f"notebooks/README.md does not link {p.name}"


def test_quickstart_checks_accuracy_and_tutorials_link_forward():
    q = "".join(_source(c) for c in _read(NOTEBOOKS / "01_quickstart.ipynb")["cells"])
    assert 'eb.zoo.load("digits")' in q and "eb.devices()" in q and "eb.backends()" in q
    assert "02_profiling_and_benchmarks.ipynb" in q
    p = "".join(_source(c) for c in _read(NOTEBOOKS / "02_profiling_and_benchmarks.ipynb")["cells"])
    for needle in ("eb.profile(", "%%edgebench profile", "GraphView(", "dashboard.show()",
                   "single_stream", "multi_stream", "server", "offline"):
        assert needle in p, needle


# --------------------------------------------------------------------------------------------
# sanitize.cfg: masks what changes by nature, and nothing else
# --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def sanitize():
    nbval_plugin = pytest.importorskip("nbval.plugin")
    patterns = nbval_plugin.get_sanitize_patterns((NOTEBOOKS / "sanitize.cfg").read_text(encoding="utf-8"))
    assert len(patterns) >= 8
    compiled = [(re.compile(rx), rep) for rx, rep in patterns]

    def apply(s: str) -> str:
        for rx, rep in compiled:  # as nbval does: re.sub in file order
            s = rx.sub(rep, s)
        return s

    return apply


@pytest.mark.parametrize("a, b", [
    ("p50 0.013 ms &middot; p99 0.381 ms &middot; 3091/s", "p50 0.2 ms &middot; p99 12 ms &middot; 17/s"),
    ("Model('digits', 150.7 KB, sha256=53f84b4b7a3a)", "Model('digits', 151 KB, sha256=0123456789ab)"),
    ("<ProfileSession digits: 50 requests, 452 trace events>", "<ProfileSession digits: 50 requests, 460 trace events>"),
    ("<GraphView digits: 9 of 9 nodes, 6 nodes timed>", "<GraphView digits: 9 of 9 nodes, 7 nodes timed>"),
    ("{'docs_json': {'43369b23-c12f-4c98-8dc3-904ea81b25d3': {'version': '3.9.2'",
     "{'docs_json': {'00000000-1111-2222-3333-444444444444': {'version': '3.10.0'"),
    ("BokehJS 3.9.2 (bokeh) loaded", "BokehJS 3.10.1 (bokeh) loaded"),
    ("http://127.0.0.1:5006/edgebench", "http://127.0.0.1:40123/edgebench"),
    ("<object at 0x7f0e2c3b1d90>", "<object at 0x55aa00>"),
    ("served 1,234.5 samples/s and 200 qps", "served 98.1 samples/s and 3 qps"),
])
def test_sanitize_masks_what_changes_by_nature(sanitize, a, b):
    assert a != b and sanitize(a) == sanitize(b)


@pytest.mark.parametrize("a, b", [
    ("360 test images, accuracy above 95%: True", "360 test images, accuracy above 95%: False"),
    ("202 requests, 0 errors, p50 <= p99: True", "201 requests, 0 errors, p50 <= p99: True"),
    ("{'logits': (1, 10)}", "{'logits': (1, 9)}"),
    ("<ProfileSession digits: 50 requests, 452 trace events>", "<ProfileSession digits: 49 requests, 452 trace events>"),
    ("Engine('digits', backend='onnxruntime', device='cpu', threads=1, 0 requests)",
     "Engine('digits', backend='torch', device='cpu', threads=1, 0 requests)"),
    ("<GraphView digits: 9 of 9 nodes, 6 nodes timed>", "<GraphView digits: 8 of 9 nodes, 6 nodes timed>"),
    ("single_stream  queries >= 100: True, headline metric: p90_ms",
     "single_stream  queries >= 100: False, headline metric: p90_ms"),
])
def test_sanitize_keeps_the_facts(sanitize, a, b):
    assert sanitize(a) != sanitize(b)


# --------------------------------------------------------------------------------------------
# edgebench lab
# --------------------------------------------------------------------------------------------
def _lab_parser() -> argparse.ArgumentParser:
    from edgebench.notebook.lab import add_lab_command

    class Quiet(argparse.ArgumentParser):
        def error(self, message):
            raise ValueError(message)

    p = Quiet(prog="edgebench")
    add_lab_command(p.add_subparsers(dest="command", required=True))
    return p


def test_lab_command_line():
    from edgebench.notebook.lab import lab_command, tutorials_dir

    assert tutorials_dir() == NOTEBOOKS
    cmd = lab_command()
    assert cmd[:3] == [sys.executable, "-m", "jupyterlab"]
    assert "--ServerApp.ip=127.0.0.1" in cmd
    assert f"--ServerApp.root_dir={NOTEBOOKS}" in cmd
    assert "--LabApp.news_url=None" in cmd
    assert "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate" in cmd
    assert ("--ServerApp.allow_root=True" in cmd) == (os.geteuid() == 0)
    assert "--no-browser" not in cmd and not any(a.startswith("--ServerApp.port") for a in cmd)
    cmd = lab_command(ROOT / "tests", port=8899, browser=False)
    assert f"--ServerApp.root_dir={ROOT / 'tests'}" in cmd
    assert "--ServerApp.port=8899" in cmd and "--no-browser" in cmd


def test_lab_arguments():
    p = _lab_parser()
    a = p.parse_args(["lab", "--port", "9000", "--no-browser", "somewhere"])
    assert (a.port, a.no_browser, a.dir) == (9000, True, "somewhere")
    assert a.func.__name__ == "cmd_lab"
    a = p.parse_args(["lab"])
    assert (a.port, a.no_browser, a.dir) == (None, False, None)
    for bad in (["lab", "--port", "x"], ["lab", "--port", "70000"], ["lab", "a", "b"]):
        with pytest.raises(ValueError):
            p.parse_args(bad)


def test_lab_missing_folder_is_one_clear_error(tmp_path):
    from edgebench.notebook.lab import lab_command

    with pytest.raises(ConfigError, match="no such folder") as e:
        lab_command(tmp_path / "nope")
    assert "edgebench lab DIR" in str(e.value)
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(ConfigError):
        lab_command(tmp_path / "file.txt")


def test_lab_is_a_cli_command(capsys):
    from edgebench import cli

    assert "lab" in cli.COMMANDS.names(), "wire edgebench.notebook.lab.add_lab_command into cli.COMMANDS"
    assert cli.main(["lab", "--help"]) == 0
    out = capsys.readouterr().out
    assert "--no-browser" in out and "--port" in out
    assert cli.main(["lab", "/no/such/folder"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no such folder" in err[0]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_lab_serves_the_tutorials_on_localhost(tmp_path):
    pytest.importorskip("jupyterlab")
    port = _free_port()
    env = dict(os.environ, JUPYTER_RUNTIME_DIR=str(tmp_path / "runtime"),
               JUPYTERLAB_WORKSPACES_DIR=str(tmp_path / "workspaces"),
               JUPYTERLAB_SETTINGS_DIR=str(tmp_path / "settings"))
    proc = subprocess.Popen([sys.executable, "-m", "edgebench", "lab", "--no-browser", "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                            start_new_session=True)
    try:
        deadline, status = time.monotonic() + 60, None
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                # without the token, /lab redirects to the login page: the server is up
                req = urllib.request.Request(f"http://127.0.0.1:{port}/lab")
                status = urllib.request.urlopen(req, timeout=2).status
                break
            except urllib.error.HTTPError as e:
                status = e.code
                break
            except OSError:
                time.sleep(0.2)
        assert proc.poll() is None, proc.stdout.read()
        assert status in (200, 302), status
        # the contents API lists the tutorials (token from the server's runtime file)
        info = next((tmp_path / "runtime").glob("jpserver-*.json"))
        token = json.loads(info.read_text())["token"]
        assert json.loads(info.read_text())["root_dir"] == str(NOTEBOOKS)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/contents?token={token}", timeout=10) as r:
            listing = {c["name"] for c in json.load(r)["content"]}
        assert {p.name for p in TUTORIALS} <= listing
        for ip in _other_addresses():  # bound to 127.0.0.1 only: not reachable on another address
            with pytest.raises(OSError):
                socket.create_connection((ip, port), timeout=2).close()
    finally:
        _stop(proc)


def _other_addresses() -> list[str]:
    import psutil

    return [a.address for addrs in psutil.net_if_addrs().values() for a in addrs
            if a.family == socket.AF_INET and not a.address.startswith("127.")]


def _stop(proc: subprocess.Popen) -> None:
    """SIGTERM the process group this test started (JupyterLab and its kernels), then wait."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        try:
            proc.wait(timeout=20)
            break
        except subprocess.TimeoutExpired:
            continue
    proc.wait()
    proc.stdout.close()
