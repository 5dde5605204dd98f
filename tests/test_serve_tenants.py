"""Tenants on a real server: tokens (401), model lists (403), rate limits (429 + Retry-After),
admin-only repository control, per-tenant metrics, tokens never shown, and one tenant flooding
while another keeps its latency."""
from __future__ import annotations

import http.client
import json
import logging
import os
import subprocess
import sys
import threading
import time

import httpx
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import edgebench as eb

from ._models import mlp_proto, mlp_reference

triton = pytest.importorskip("tritonclient.http")
from tritonclient.utils import InferenceServerException

TOKENS = {"acme": "acme-secret-token-1", "globex": "globex-secret-token-2", "slow": "slow-secret-token-3"}
ADMIN = "admin-secret-token-0"
AUTH = {"tenants": {
    "acme": {"token": TOKENS["acme"], "models": ["mlp", "tiny"], "priority": 1},
    "globex": {"token": TOKENS["globex"], "models": ["tiny"], "rate_limit_rps": 5, "priority": 2},
    "slow": {"token": TOKENS["slow"], "models": ["*"], "quota": {"requests": 2, "window_s": 3600}}},
    "admin_token": ADMIN}


def bearer(who: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKENS.get(who, who)}"}


def body(n: int = 1, seed: int = 0) -> tuple[dict, np.ndarray]:
    x = np.random.default_rng(seed).standard_normal((n, 16)).astype(np.float32)
    return {"inputs": [{"name": "x", "datatype": "FP32", "shape": [n, 16], "data": x.ravel().tolist()}]}, x


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    d = tmp_path_factory.mktemp("tenants")
    onnx.save(mlp_proto(seed=1), d / "mlp.onnx")
    onnx.save(mlp_proto(seed=2), d / "tiny.onnx")
    (d / "auth.json").write_text(json.dumps(AUTH))
    srv = eb.serve(str(d / "mlp.onnx"), str(d / "tiny.onnx"), auth=str(d / "auth.json"), port=0, threads=1,
                   batching="max_batch_size=8,max_queue_delay_ms=1", log_level="debug")
    yield srv
    srv.stop()


def test_tokens(server):
    b, x = body()
    with httpx.Client(base_url=server.url) as c:
        for headers in ({}, {"Authorization": "Bearer wrong-token-xyz"}, {"Authorization": TOKENS["acme"]},
                        {"Authorization": f"Basic {TOKENS['acme']}"}, {"Authorization": "Bearer"}):
            r = c.post("/v2/models/mlp/infer", json=b, headers=headers)
            assert r.status_code == 401 and "error" in r.json() and r.headers["www-authenticate"].startswith("Bearer")
        r = c.post("/v2/models/mlp/infer", json=b, headers=bearer("acme"))
        assert r.status_code == 200
        y = np.array(r.json()["outputs"][0]["data"], np.float32).reshape(1, 4)
        np.testing.assert_allclose(y, mlp_reference(mlp_proto(seed=1), x), atol=1e-5)
        # health needs no token; everything else does
        assert c.get("/v2/health/live").status_code == 200 and c.get("/v2/health/ready").status_code == 200
        for path in ("/v2", "/v2/models/mlp", "/v2/models/mlp/config", "/v2/models/stats", "/metrics"):
            assert c.get(path).status_code == 401, path
            assert c.get(path, headers=bearer("acme")).status_code == 200, path
        assert c.post("/v2/repository/index").status_code == 401


def test_model_lists(server):
    b, _ = body()
    with httpx.Client(base_url=server.url) as c:
        r = c.post("/v2/models/mlp/infer", json=b, headers=bearer("globex"))
        assert r.status_code == 403 and "may not use model 'mlp'" in r.json()["error"]
        # a tenant learns nothing of models it may not use: 403 whether or not they exist
        assert c.post("/v2/models/secret/infer", json=b, headers=bearer("globex")).status_code == 403
        assert c.get("/v2/models/mlp", headers=bearer("globex")).status_code == 403
        assert c.get("/v2/models/mlp/ready", headers=bearer("globex")).status_code == 403
        assert c.post("/v2/models/tiny/infer", json=b, headers=bearer("globex")).status_code == 200
        index = c.post("/v2/repository/index", headers=bearer("globex")).json()
        assert [r["name"] for r in index] == ["tiny"]
        stats = c.get("/v2/models/stats", headers=bearer("globex")).json()["model_stats"]
        assert [s["name"] for s in stats] == ["tiny"]
        assert c.post("/v2/models/nope/infer", json=b, headers=bearer("slow")).status_code == 404


def test_rate_limit_and_quota(server):
    b, _ = body()
    with httpx.Client(base_url=server.url) as c:
        codes = [c.post("/v2/models/tiny/infer", json=b, headers=bearer("globex")) for _ in range(12)]
        limited = [r for r in codes if r.status_code == 429]
        assert limited and sum(r.status_code == 200 for r in codes) <= 7  # a bucket of 5 (+ refill)
        assert int(limited[0].headers["retry-after"]) >= 1 and "rate limit" in limited[0].json()["error"]
        # another tenant is not affected
        assert c.post("/v2/models/tiny/infer", json=b, headers=bearer("acme")).status_code == 200
        q = [c.post("/v2/models/tiny/infer", json=b, headers=bearer("slow")).status_code for _ in range(3)]
        assert q == [200, 200, 429]


def test_tritonclient_with_a_token_and_admin_only_repository_control(server):
    c = triton.InferenceServerClient(server.url.split("//")[1])
    try:
        x = np.ones((2, 16), np.float32)
        inp = triton.InferInput("x", [2, 16], "FP32")
        inp.set_data_from_numpy(x)
        res = c.infer("mlp", [inp], headers=bearer("acme"))
        np.testing.assert_allclose(res.as_numpy("y"), mlp_reference(mlp_proto(seed=1), x), atol=1e-5)
        with pytest.raises(InferenceServerException) as e:
            c.infer("mlp", [inp])
        assert e.value.status() == "401"
        assert c.get_model_metadata("mlp", headers=bearer("acme"))["name"] == "mlp"
        with pytest.raises(InferenceServerException, match="admin token") as e:
            c.unload_model("tiny", headers=bearer("acme"))
        assert e.value.status() == "403"
        c.unload_model("tiny", headers=bearer(ADMIN))
        assert not c.is_model_ready("tiny", headers=bearer("acme"))
        c.load_model("tiny", headers=bearer(ADMIN))
        assert c.is_model_ready("tiny", headers=bearer("acme"))
    finally:
        c.close()


def test_per_tenant_metrics_and_tokens_never_shown(server, caplog):
    from prometheus_client.parser import text_string_to_metric_families

    caplog.set_level(logging.DEBUG)
    b, _ = body()
    with httpx.Client(base_url=server.url) as c:
        for who in ("acme", "acme", "globex"):
            c.post("/v2/models/tiny/infer", json=b, headers=bearer(who))
        c.post("/v2/models/tiny/infer", json=b, headers={"Authorization": "Bearer not-a-token-at-all"})
        text = c.get("/metrics", headers=bearer("acme")).text
    fams = {f.name: f for f in text_string_to_metric_families(text)}
    ok = {s.labels["tenant"]: s.value for s in fams["nv_inference_request_success"].samples
          if s.labels["model"] == "tiny"}
    assert ok["acme"] >= 2 and ok["globex"] >= 1
    assert any(s.labels.get("reason") == "rate_limited" and s.labels["tenant"] == "globex"
               for s in fams["nv_inference_request_failure"].samples)
    assert fams["edgebench_auth_failures"].samples[0].value >= 1
    assert {s.labels["tenant"] for s in fams["edgebench_tenant_pending_request_count"].samples} == set(TOKENS)
    shown = text + caplog.text + repr(server) + server._repr_html_() + repr(server.app.auth.config)
    for secret in [*TOKENS.values(), ADMIN, "not-a-token-at-all"]:
        assert secret not in shown


# -- isolation under load ---------------------------------------------------------------------------
def slow_proto(width: int = 1024, layers: int = 6) -> onnx.ModelProto:
    """About 1 ms a batch of up to 4 rows on one thread (memory-bound: 24 MB of weights)."""
    rng = np.random.default_rng(0)
    inits, nodes, prev = [], [], "x"
    for i in range(layers):
        inits.append(numpy_helper.from_array(
            (rng.standard_normal((width, width)) / np.sqrt(width)).astype(np.float32), f"w{i}"))
        nodes += [helper.make_node("MatMul", [prev, f"w{i}"], [f"h{i}"]), helper.make_node("Relu", [f"h{i}"], [f"r{i}"])]
        prev = f"r{i}"
    nodes.append(helper.make_node("Identity", [prev], ["y"]))
    graph = helper.make_graph(nodes, "slow", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", width])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", width])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


_FLOOD = """
import http.client, json, sys, threading, time
port, token, seconds, width, n = int(sys.argv[1]), sys.argv[2], float(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
x = bytes(4 * width)
head = json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, width],
                               "parameters": {"binary_data_size": len(x)}}]}).encode()
headers = {"Inference-Header-Content-Length": str(len(head)), "Authorization": "Bearer " + token}
out, end = [], time.monotonic() + seconds
def loop():
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    while time.monotonic() < end:
        t = time.perf_counter()
        conn.request("POST", "/v2/models/slow/infer", head + x, headers)
        r = conn.getresponse()
        r.read()
        out.append((r.status, time.perf_counter() - t, r.getheader("Retry-After")))
    conn.close()
threads = [threading.Thread(target=loop) for _ in range(n)]
for t in threads: t.start()
for t in threads: t.join()
print(json.dumps(out))
"""


def _steady(port: int, token: str, seconds: float, width: int) -> list:
    """One request at a time on a keep-alive connection: (status, latency s) of each."""
    x = np.ones((1, width), np.float32).tobytes()
    head = json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, width],
                                   "parameters": {"binary_data_size": len(x)}}]}).encode()
    headers = {"Inference-Header-Content-Length": str(len(head)), "Authorization": f"Bearer {token}"}
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    out, end = [], time.monotonic() + seconds
    try:
        while time.monotonic() < end:
            t = time.perf_counter()
            conn.request("POST", "/v2/models/slow/infer", head + x, headers)
            r = conn.getresponse()
            r.read()
            out.append((r.status, time.perf_counter() - t))
    finally:
        conn.close()
    return out


def test_max_queue_holds_a_tenant_back_then_429(tmp_path):
    """max_queue 1, max_waiting 1: one request at the model, one in line, the third is refused."""
    onnx.save(mlp_proto(seed=5), tmp_path / "m.onnx")
    auth = {"tenants": {"t": {"token": "tenant-token-1", "models": ["m"], "max_queue": 1, "max_waiting": 1},
                        "u": {"token": "tenant-token-2", "models": ["m"]}}}
    srv = eb.serve(str(tmp_path / "m.onnx"), auth=auth, port=0, threads=1,
                   batching="max_batch_size=8,max_queue_delay_ms=300")
    try:
        b, x = body()
        results: list = [None] * 3

        def one(i: int, token: str) -> None:
            results[i] = httpx.post(srv.url + "/v2/models/m/infer", json=b, timeout=30,
                                    headers={"Authorization": f"Bearer {token}"})
        tenant = srv.app.auth.tenants["t"]
        first = threading.Thread(target=one, args=(0, "tenant-token-1"))
        first.start()
        deadline = time.monotonic() + 10
        while tenant.inflight < 1 and time.monotonic() < deadline:
            time.sleep(0.002)
        second = threading.Thread(target=one, args=(1, "tenant-token-1"))
        second.start()
        while tenant.waiting < 1 and time.monotonic() < deadline:
            time.sleep(0.002)
        assert (tenant.inflight, tenant.waiting) == (1, 1)
        one(2, "tenant-token-1")
        assert results[2].status_code == 429 and results[2].headers["retry-after"] == "1"
        assert "max_waiting" in results[2].json()["error"]
        other = httpx.post(srv.url + "/v2/models/m/infer", json=b, timeout=30,
                           headers={"Authorization": "Bearer tenant-token-2"})
        assert other.status_code == 200  # another tenant is not held back
        first.join(30)
        second.join(30)
        assert [r.status_code for r in results[:2]] == [200, 200]
        assert (tenant.inflight, tenant.waiting) == (0, 0)
        y = np.array(results[1].json()["outputs"][0]["data"], np.float32).reshape(1, 4)
        np.testing.assert_allclose(y, mlp_reference(mlp_proto(seed=5), x), atol=1e-5)
    finally:
        srv.stop()


def _gauge(port: int, token: str, name: str, tenant: str) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(f"http://127.0.0.1:{port}/metrics", headers={"Authorization": f"Bearer {token}"}).text
    return sum(s.value for f in text_string_to_metric_families(text) if f.name == name
               for s in f.samples if s.labels.get("tenant") == tenant)


@pytest.mark.slow
def test_a_flooding_tenant_cannot_starve_another(tmp_path):
    """`flood` keeps 32 requests going from another process (max_queue 4, priority 2) while
    `steady` sends one at a time (priority 1).  Without the two, steady waits behind flood's
    32 queued requests (about 8x its latency alone on this model); with them, it keeps close to
    its latency alone and flood waits in its own line."""
    width = 1024
    onnx.save(slow_proto(width), tmp_path / "slow.onnx")
    tokens = {"flood": "flood-token-1234", "steady": "steady-token-5678"}
    (tmp_path / "auth.json").write_text(json.dumps({"tenants": {
        "flood": {"token": tokens["flood"], "models": ["slow"], "priority": 2, "max_queue": 4, "max_waiting": 64},
        "steady": {"token": tokens["steady"], "models": ["slow"], "priority": 1, "max_queue": 4}}}))
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    p = subprocess.Popen([sys.executable, "-m", "edgebench.serve.cli", str(tmp_path / "slow.onnx"), "--port", "0",
                          "--threads", "1", "--auth", str(tmp_path / "auth.json"),
                          "--batching", "max_batch_size=4,max_queue_delay_ms=0.5"],
                         stdout=subprocess.PIPE, text=True, env=env)
    flooder = None
    try:
        line = p.stdout.readline()
        assert "serving slow:1" in line, line
        port = int(line.split()[2].rsplit(":", 1)[1])
        alone = _steady(port, tokens["steady"], 1.0, width)
        flooder = subprocess.Popen([sys.executable, "-c", _FLOOD, str(port), tokens["flood"], "3", str(width), "32"],
                                   stdout=subprocess.PIPE, text=True)
        time.sleep(0.5)  # the flood is on
        waiting = _gauge(port, tokens["steady"], "edgebench_tenant_waiting_request_count", "flood")
        at_model = _gauge(port, tokens["steady"], "edgebench_tenant_pending_request_count", "flood")
        steady = _steady(port, tokens["steady"], 2.0, width)
        flood = json.loads(flooder.communicate(timeout=60)[0])
    finally:
        if flooder is not None and flooder.poll() is None:
            flooder.kill()
            flooder.wait()
        p.terminate()
        p.wait(30)
    solo_p50 = float(np.median([s for _, s in alone]))
    assert {c for c, _ in steady} == {200}, "steady was refused"
    assert {c for c, _, _ in flood} == {200} and len(flood) > 200  # flood is served too, held in line
    assert at_model <= 4 and waiting > 10, (at_model, waiting)
    steady_lat = np.array([s for _, s in steady])
    flood_lat = np.array([s for _, s, _ in flood])
    assert len(steady) >= 200, len(steady)  # steady kept going
    assert np.median(steady_lat) < np.median(flood_lat) / 2, (np.median(steady_lat), np.median(flood_lat))
    assert np.percentile(steady_lat, 90) < 3 * solo_p50 + 0.003, (np.percentile(steady_lat, 90), solo_p50)
