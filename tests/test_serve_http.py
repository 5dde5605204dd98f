"""`edgebench serve` over real HTTP: Triton's own client, raw requests, every malformed case,
the model repository, /metrics, graceful shutdown and the command line.

Servers bind 127.0.0.1 on free ports; every test stops what it starts.
"""
from __future__ import annotations

import gzip
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import zlib

import httpx
import numpy as np
import onnx
import pytest

import edgebench as eb
from edgebench.errors import ConfigError, ServeError
from edgebench.serve import Limits
from edgebench.serve.server import is_loopback

from ._models import mlp_proto, mlp_reference, two_input_proto

http = pytest.importorskip("tritonclient.http")
from tritonclient.utils import InferenceServerException


@pytest.fixture(scope="module")
def repo_dir(tmp_path_factory):
    """A model repository: mlp (versions 1 and 2, batched, both served) and pair (unbatched, run on
    the engine's thread); and tiny.onnx beside it (given by path: unbatched, run on the event loop)."""
    root = tmp_path_factory.mktemp("repo")
    for v in (1, 2):
        (root / "mlp" / str(v)).mkdir(parents=True)
        onnx.save(mlp_proto(seed=v), root / "mlp" / str(v) / "model.onnx")
    (root / "mlp" / "config.toml").write_text(
        'threads = 1\nversion_policy = "all"\n[dynamic_batching]\nmax_batch_size = 8\nmax_queue_delay_ms = 1\n')
    (root / "pair" / "1").mkdir(parents=True)
    onnx.save(two_input_proto(), root / "pair" / "1" / "model.onnx")
    (root / "pair" / "config.json").write_text('{"dispatch": "thread"}')  # on the engine's worker thread
    tiny = root.parent / "tiny.onnx"
    onnx.save(mlp_proto(seed=7), tiny)
    return root


@pytest.fixture(scope="module")
def server(repo_dir):
    srv = eb.serve(str(repo_dir.parent / "tiny.onnx"), repository=repo_dir, port=0, threads=1,
                   limits=Limits(max_body_bytes=1 << 16, max_header_bytes=1 << 15))
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def client(server):
    c = http.InferenceServerClient(server.url.split("//")[1])
    yield c
    c.close()


def x16(n: int = 3, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 16)).astype(np.float32)


def infer_input(name: str, a: np.ndarray, binary: bool = True):
    i = http.InferInput(name, list(a.shape), {np.float32: "FP32", np.int64: "INT64"}[a.dtype.type])
    i.set_data_from_numpy(a, binary_data=binary)
    return i


# -- Triton's client ------------------------------------------------------------------------------
def test_health_and_metadata(server, client):
    assert client.is_server_live() and client.is_server_ready()
    meta = client.get_server_metadata()
    assert meta["name"] == "edgebench" and "binary_tensor_data" in meta["extensions"]
    assert sorted(server.models) == ["mlp:1", "mlp:2", "pair:1", "tiny:1"]
    m = client.get_model_metadata("mlp")
    assert m["versions"] == ["1", "2"] and m["platform"] == "onnxruntime_onnx"
    assert m["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 16]}]
    assert m["outputs"] == [{"name": "y", "datatype": "FP32", "shape": [-1, 4]}]
    assert client.is_model_ready("mlp") and client.is_model_ready("mlp", "1") and client.is_model_ready("tiny")
    assert not client.is_model_ready("mlp", "3") and not client.is_model_ready("nope")


def test_model_config(client):
    c = client.get_model_config("mlp")
    assert c["max_batch_size"] == 8 and c["input"][0]["dims"] == [16] and c["input"][0]["data_type"] == "TYPE_FP32"
    assert c["dynamic_batching"]["max_queue_delay_microseconds"] == 1000
    assert c["version_policy"] == {"all": {}}
    p = client.get_model_config("pair")
    assert p["max_batch_size"] == 0 and "dynamic_batching" not in p
    assert [i["dims"] for i in p["input"]] == [[-1, 3], [-1, 3]] and p["input"][1]["data_type"] == "TYPE_INT64"
    assert p["parameters"]["edgebench_dispatch"]["string_value"] == "thread"
    assert client.get_model_config("tiny")["parameters"]["edgebench_dispatch"]["string_value"] == "inline"


@pytest.mark.parametrize("binary_in,binary_out", [(True, True), (False, False), (True, False), (False, True)])
def test_infer_json_and_binary(client, binary_in, binary_out):
    x = x16(3)
    res = client.infer("mlp", [infer_input("x", x, binary_in)],
                       outputs=[http.InferRequestedOutput("y", binary_data=binary_out)], request_id="r-1")
    assert res.get_response()["id"] == "r-1" and res.get_response()["model_version"] == "2"
    np.testing.assert_allclose(res.as_numpy("y"), mlp_reference(mlp_proto(seed=2), x), rtol=1e-5, atol=1e-5)


def test_versions_two_inputs_and_compression(client):
    x = x16(2, seed=1)
    for v in ("1", "2"):
        y = client.infer("mlp", [infer_input("x", x)], model_version=v).as_numpy("y")
        np.testing.assert_allclose(y, mlp_reference(mlp_proto(seed=int(v)), x), rtol=1e-5, atol=1e-5)
    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    b = np.array([[1, 2, 3], [4, 5, 6]], dtype=np.int64)
    for algo in (None, "gzip", "deflate"):
        res = client.infer("pair", [infer_input("a", a), infer_input("b", b, binary=False)],
                           request_compression_algorithm=algo)
        np.testing.assert_array_equal(res.as_numpy("sum"), a + b)


def test_many_concurrent_requests_are_batched_and_each_gets_its_own_rows(server):
    """32 threads x 4 requests of 1-3 rows: every answer is its own request's."""
    errors: list = []

    def worker(i: int) -> None:
        with httpx.Client(base_url=server.url) as c:
            for j in range(4):
                x = x16(1 + (i + j) % 3, seed=100 * i + j)
                r = c.post("/v2/models/mlp/infer", json={"inputs": [
                    {"name": "x", "datatype": "FP32", "shape": list(x.shape), "data": x.ravel().tolist()}]})
                y = np.array(r.json()["outputs"][0]["data"], np.float32).reshape(x.shape[0], 4)
                if r.status_code != 200 or not np.allclose(y, mlp_reference(mlp_proto(seed=2), x), atol=1e-4):
                    errors.append((i, j, r.status_code))
    before = server.app.repo.get("mlp").batcher.stats()
    threads = [threading.Thread(target=worker, args=(i,)) for i in range(32)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    after = server.app.repo.get("mlp").batcher.stats()
    assert not errors
    assert after["ok"] - before["ok"] == 128
    assert after["batches"] - before["batches"] < 128  # some requests shared a batch


def test_stats_and_metrics(server, client):
    from prometheus_client.parser import text_string_to_metric_families

    for _ in range(3):
        client.infer("tiny", [infer_input("x", x16(2))])
    with pytest.raises(InferenceServerException):
        client.infer("tiny", [infer_input("x", np.zeros((2, 5), np.float32))])
    s = client.get_inference_statistics("tiny")["model_stats"][0]
    assert s["name"] == "tiny" and s["inference_count"] >= 6 and s["execution_count"] >= 3
    assert s["inference_stats"]["success"]["count"] >= 3 and s["inference_stats"]["compute_infer"]["ns"] > 0
    assert {b["batch_size"] for b in s["batch_stats"]} >= {2}
    names = {m["name"] for m in client.get_inference_statistics()["model_stats"]}
    assert names == {"mlp", "pair", "tiny"}
    r = httpx.get(server.url + "/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    assert "# TYPE nv_inference_request_success counter" in r.text
    fams = {f.name: f for f in text_string_to_metric_families(r.text)}

    def value(fam: str, **labels) -> float:
        return sum(s.value for s in fams[fam].samples if all(s.labels.get(k) == v for k, v in labels.items())
                   and not s.name.endswith("_created"))
    assert value("nv_inference_request_success", model="tiny", tenant="anonymous") >= 3
    assert value("nv_inference_request_failure", model="tiny", reason="invalid") >= 1
    assert value("nv_inference_count", model="tiny") >= 6
    assert value("nv_inference_exec_count", model="tiny") >= 3
    assert value("nv_inference_compute_infer_duration_us", model="tiny") > 0
    assert "nv_inference_queue_duration_us" in fams and "nv_inference_pending_request_count" in fams
    assert value("edgebench_request_latency_seconds", model="tiny") > 0


def test_repository_index_load_unload(server, client):
    idx = {(r["name"], r.get("version")): r["state"] for r in client.get_model_repository_index()}
    assert idx == {("mlp", "1"): "READY", ("mlp", "2"): "READY", ("pair", "1"): "READY", ("tiny", "1"): "READY"}
    client.unload_model("pair")
    assert not client.is_model_ready("pair")
    with pytest.raises(InferenceServerException, match="unloaded") as e:
        client.infer("pair", [infer_input("a", np.zeros((1, 3), np.float32)),
                              infer_input("b", np.zeros((1, 3), np.int64))])
    assert e.value.status() == "404"
    assert {"name": "pair", "state": "UNAVAILABLE", "reason": "unloaded"} in client.get_model_repository_index()
    client.load_model("pair", config=json.dumps({"dynamic_batching": {"max_batch_size": 4}}))
    assert client.is_model_ready("pair") and client.get_model_config("pair")["max_batch_size"] == 4
    a = np.ones((2, 3), np.float32)
    res = client.infer("pair", [infer_input("a", a), infer_input("b", np.ones((2, 3), np.int64))])
    np.testing.assert_array_equal(res.as_numpy("sum"), a + 1)
    client.load_model("pair")  # back to its own (unbatched) config
    assert client.get_model_config("pair")["max_batch_size"] == 0
    with pytest.raises(InferenceServerException) as e:
        client.load_model("nope")
    assert e.value.status() == "404"
    with pytest.raises(InferenceServerException) as e:
        client.load_model("pair", config='{"dynamic_batching": {"max_batch_size": 0}}')
    assert e.value.status() == "400" and client.is_model_ready("pair")


# -- raw protocol: every malformed request is a 4xx JSON error and never reaches a model ----------
def _good(n: int = 1) -> dict:
    return {"inputs": [{"name": "x", "datatype": "FP32", "shape": [n, 16], "data": [0.5] * (16 * n)}]}


def _binary(size_claim: int, actual: int, header_len: int | None = None) -> tuple[bytes, dict]:
    head = json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 16],
                                   "parameters": {"binary_data_size": size_claim}}]}).encode()
    return head + b"\0" * actual, {"Inference-Header-Content-Length": str(header_len or len(head))}


def _chunks(n: int):
    for _ in range(n):
        yield b"x" * 8192


MALFORMED_HTTP = [
    # (name, method, path, body, headers, status, words in the error)
    ("not json", "POST", "/v2/models/tiny/infer", b"{nope", {}, 400, "malformed JSON"),
    ("not utf-8", "POST", "/v2/models/tiny/infer", b"\xff\xfe\xfd", {}, 400, "malformed JSON"),
    ("empty body", "POST", "/v2/models/tiny/infer", b"", {}, 400, "malformed JSON"),
    ("json array", "POST", "/v2/models/tiny/infer", b"[]", {}, 400, "JSON object"),
    ("too deep", "POST", "/v2/models/tiny/infer", b'{"inputs": ' + b"[" * 5000 + b"]" * 5000 + b"}", {}, 400,
     "deeper"),
    ("unknown datatype", "POST", "/v2/models/tiny/infer",
     json.dumps({"inputs": [{"name": "x", "datatype": "FLOAT", "shape": [1, 16], "data": [0] * 16}]}).encode(), {},
     400, "unknown datatype"),
    ("shape vs data", "POST", "/v2/models/tiny/infer",
     json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [2, 16], "data": [0] * 16}]}).encode(), {},
     400, "needs 32 values"),
    ("huge shape", "POST", "/v2/models/tiny/infer",
     json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [2 ** 40, 16], "data": [0]}]}).encode(), {},
     400, "over the limit"),
    ("bad rank", "POST", "/v2/models/tiny/infer",
     json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [16], "data": [0] * 16}]}).encode(), {},
     400, "expects [-1,16]"),
    ("binary too short", "POST", "/v2/models/tiny/infer", *_binary(64, 60), 400, "only 60 are left"),
    ("binary too long", "POST", "/v2/models/tiny/infer", *_binary(64, 70), 400, "add up to 64"),
    ("binary size vs shape", "POST", "/v2/models/tiny/infer", *_binary(60, 60), 400, "needs 64 bytes"),
    ("header length past body", "POST", "/v2/models/tiny/infer", _binary(64, 64)[0],
     {"Inference-Header-Content-Length": "100000"}, 400, "Inference-Header-Content-Length"),
    ("header length not a number", "POST", "/v2/models/tiny/infer", _binary(64, 64)[0],
     {"Inference-Header-Content-Length": "ten"}, 400, "not a number"),
    ("body over limit", "POST", "/v2/models/tiny/infer", b"{" + b" " * 70000 + b"}", {}, 413, "over the limit"),
    ("chunked body over limit", "POST", "/v2/models/tiny/infer", _chunks(10), {}, 413, "over the limit"),
    ("gzip bomb", "POST", "/v2/models/tiny/infer", gzip.compress(b" " * 10_000_000),
     {"Content-Encoding": "gzip"}, 413, "decompressed"),
    ("bad gzip", "POST", "/v2/models/tiny/infer", b"\x1f\x8b not gzip", {"Content-Encoding": "gzip"}, 400,
     "not valid gzip"),
    ("truncated deflate", "POST", "/v2/models/tiny/infer", zlib.compress(json.dumps(_good()).encode())[:-6],
     {"Content-Encoding": "deflate"}, 400, "truncated"),
    ("unknown encoding", "POST", "/v2/models/tiny/infer", b"{}", {"Content-Encoding": "br"}, 415, "not supported"),
    ("unknown model", "POST", "/v2/models/nope/infer", json.dumps(_good()).encode(), {}, 404, "unknown model"),
    ("unknown version", "POST", "/v2/models/tiny/versions/9/infer", json.dumps(_good()).encode(), {}, 404,
     "no version"),
    ("empty model name", "POST", "/v2/models//infer", json.dumps(_good()).encode(), {}, 404, "no route"),
    ("unknown route", "GET", "/v2/nothing/here", b"", {}, 404, "no route"),
    ("wrong method", "GET", "/v2/models/tiny/infer", b"", {}, 405, "Method Not Allowed"),
    ("metadata of unknown model", "GET", "/v2/models/nope", b"", {}, 404, "unknown model"),
    ("load body not json", "POST", "/v2/repository/models/tiny/load", b"{x", {}, 400, "malformed JSON"),
    ("load with files", "POST", "/v2/repository/models/tiny/load",
     json.dumps({"parameters": {"file:1/model.onnx": "AAAA"}}).encode(), {}, 400, "not supported"),
    ("unload unknown", "POST", "/v2/repository/models/nope/unload", b"", {}, 404, "no model"),
    ("load outside the repository", "POST", "/v2/repository/models/%2E%2E/load", b"", {}, 404, "no model"),
    ("load a hidden folder", "POST", "/v2/repository/models/.git/load", b"", {}, 404, "no model"),
    ("load body over limit", "POST", "/v2/repository/models/tiny/load", _chunks(5), {}, 413, "over the limit"),
]


def test_every_malformed_request_is_a_4xx_json_error(server):
    tiny = server.app.repo.get("tiny")
    before = tiny.records.total
    with httpx.Client(base_url=server.url, timeout=30) as c:
        for name, method, path, body, headers, status, words in MALFORMED_HTTP:
            r = c.request(method, path, content=body, headers=headers)
            assert r.status_code == status, (name, r.status_code, r.text[:200])
            assert r.headers["content-type"].startswith("application/json"), name
            assert words in r.json()["error"], (name, r.json())
        # none reached the model, the server is alive and still answers
        assert tiny.records.total == before
        assert c.get("/v2/health/live").status_code == 200
        r = c.post("/v2/models/tiny/infer", json=_good(2))
        assert r.status_code == 200 and r.json()["outputs"][0]["shape"] == [2, 4]
    assert tiny.records.total == before + 1


def test_queue_timeout_and_priority_parameters(server):
    """Triton's request parameters reach the batcher: an expired timeout is a 504."""
    with httpx.Client(base_url=server.url, timeout=30) as c:
        r = c.post("/v2/models/mlp/infer", json={**_good(), "parameters": {"timeout": 1}})  # 1 us
        assert r.status_code == 504 and "timeout" in r.json()["error"]
        r = c.post("/v2/models/mlp/infer", json={**_good(), "parameters": {"priority": 7, "timeout": 10_000_000}})
        assert r.status_code == 200  # priorities past the model's levels are its lowest level
        fail = c.get("/metrics").text
    assert 'nv_inference_request_failure{model="mlp",reason="timeout",tenant="anonymous",version="2"}' in fail


def test_a_client_that_goes_away_does_not_hurt(server):
    """Half-sent bodies and dropped connections: the server keeps serving."""
    host, port = server.url.split("//")[1].split(":")
    for payload in (b"POST /v2/models/tiny/infer HTTP/1.1\r\nHost: x\r\nContent-Length: 500\r\n\r\n{\"inp",
                    b"POST /v2/models/tiny/infer HTTP/1.1\r\nHost: x\r\nContent-Len",
                    b"GARBAGE\r\n\r\n"):
        with socket.create_connection((host, int(port))) as s:
            s.sendall(payload)
    assert httpx.post(server.url + "/v2/models/tiny/infer", json=_good()).status_code == 200


def test_refuses_non_loopback_without_auth(tmp_path):
    assert is_loopback("127.0.0.1") and is_loopback("localhost") and is_loopback("::1") and is_loopback("127.1.2.3")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.2") and not is_loopback("example.com")
    onnx.save(mlp_proto(), tmp_path / "m.onnx")
    for host in ("0.0.0.0", "::", "10.1.2.3"):
        with pytest.raises(ConfigError, match="without authentication"):
            eb.serve(str(tmp_path / "m.onnx"), host=host, port=0)
    with pytest.raises(ConfigError, match="no model to serve"):
        eb.serve(port=0)


def test_port_in_use(server, repo_dir):
    with pytest.raises(ServeError, match="cannot listen"):
        eb.serve(str(repo_dir.parent / "tiny.onnx"), port=server.port)


# -- graceful shutdown ----------------------------------------------------------------------------
def _read_response(sock: socket.socket) -> tuple[int, dict]:
    buf = b""
    while b"\r\n\r\n" not in buf:
        buf += sock.recv(65536)
    head, rest = buf.split(b"\r\n\r\n", 1)
    lines = head.decode().split("\r\n")
    n = int(next(v for k, v in (ln.split(": ", 1) for ln in lines[1:]) if k.lower() == "content-length"))
    while len(rest) < n:
        rest += sock.recv(65536)
    return int(lines[0].split()[1]), json.loads(rest[:n])


def test_stop_answers_every_request_in_flight(tmp_path):
    """24 requests wait in the batcher (a 1 s delay) when stop() is called: all 24 are answered."""
    onnx.save(mlp_proto(seed=3), tmp_path / "m.onnx")
    srv = eb.serve(str(tmp_path / "m.onnx"), port=0, threads=1,
                   batching="max_batch_size=64,max_queue_delay_ms=1000")
    xs = [x16(1, seed=i) for i in range(24)]
    socks = [socket.create_connection(("127.0.0.1", srv.port), timeout=30) for _ in xs]
    try:
        for s, x in zip(socks, xs):
            b = json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 16],
                                        "data": x.ravel().tolist()}]}).encode()
            s.sendall(b"POST /v2/models/m/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                      b"Content-Length: %d\r\n\r\n%s" % (len(b), b))
        deadline = time.monotonic() + 20
        while srv.app.inflight < 24 and time.monotonic() < deadline:  # all received, waiting in the batcher
            time.sleep(0.002)
        assert srv.app.inflight == 24
        t0 = time.monotonic()
        srv.stop()
        assert time.monotonic() - t0 < 10
        for s, x in zip(socks, xs):
            status, doc = _read_response(s)
            assert status == 200
            y = np.array(doc["outputs"][0]["data"], np.float32)
            np.testing.assert_allclose(y, mlp_reference(mlp_proto(seed=3), x)[0], atol=1e-4)
    finally:
        for s in socks:
            s.close()
        srv.stop()
    with pytest.raises(httpx.ConnectError):
        httpx.get(srv.url + "/v2/health/live")
    assert not srv.running and "stopped" in repr(srv)


# -- the command line -----------------------------------------------------------------------------
def test_serve_command(tmp_path):
    import argparse

    from edgebench.serve.cli import add_serve_command

    parser = argparse.ArgumentParser()
    add_serve_command(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["serve", "zoo:mlp", "a.onnx", "--port", "0", "--batching", "on", "--insecure"])
    assert args.models == ["zoo:mlp", "a.onnx"] and args.port == 0 and args.insecure and args.batching == "on"

    onnx.save(mlp_proto(seed=4), tmp_path / "m.onnx")
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    p = subprocess.Popen([sys.executable, "-m", "edgebench.serve.cli", str(tmp_path / "m.onnx"), "--port", "0",
                          "--batching", "max_batch_size=4"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True, env=env)
    try:
        line = p.stdout.readline()
        assert "serving m:1" in line, line + p.stderr.read()
        url = line.split()[2]
        assert httpx.get(url + "/v2/health/ready").status_code == 200
        r = httpx.post(url + "/v2/models/m/infer", json=_good())
        assert r.status_code == 200
        p.send_signal(signal.SIGINT)
        assert p.wait(30) == 0
        assert "stopping" in p.stdout.read()
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    bad = subprocess.run([sys.executable, "-m", "edgebench.serve.cli", "--port", "0"], capture_output=True,
                         text=True, env=env, timeout=60, check=False)
    assert bad.returncode == 2 and "no model to serve" in bad.stderr
