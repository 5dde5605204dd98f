"""The Jupyter server extension serves BokehJS from bokeh's own files (no CDN, no inlining)."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

pytest.importorskip("jupyter_server")
pytest.importorskip("bokeh")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_config_file_enables_the_extension():
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with open(os.path.join(here, "jupyter-config", "jupyter_server_config.d", "edgebench.json")) as f:
        cfg = json.load(f)
    assert cfg["ServerApp"]["jpserver_extensions"] == {"edgebench.notebook.server_ext": True}


def test_jupyter_server_serves_bokehjs(tmp_path):
    from bokeh import __version__ as version

    port, token = _free_port(), "edgebench-test"
    env = dict(os.environ, JUPYTER_RUNTIME_DIR=str(tmp_path / "rt"), JUPYTER_CONFIG_DIR=str(tmp_path / "cfg"))
    proc = subprocess.Popen(
        [sys.executable, "-m", "jupyter_server", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
         f"--IdentityProvider.token={token}", "--ServerApp.allow_root=True", f"--ServerApp.root_dir={tmp_path}",
         "--ServerApp.jpserver_extensions={'edgebench.notebook.server_ext': True}",
         "--ServerApp.base_url=/base/"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    try:
        url = f"http://127.0.0.1:{port}/base/edgebench/bokehjs/js/bokeh.min.js?v={version}"
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(url, timeout=5) as r:
                    body = r.read()
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise
                time.sleep(0.3)
        assert len(body) > 500_000 and version.encode() in body
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/base/edgebench/bokehjs/../../etc/passwd", timeout=5)
        assert info.value.code in (403, 404)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
