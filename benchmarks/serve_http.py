"""`edgebench serve` vs a bare Starlette + uvicorn endpoint that calls session.run directly.

zoo mlp (784-512-256-10), one intra-op thread, KServe v2 requests of one row with the binary
tensor extension (what tritonclient sends), answered with binary outputs.  Each server runs in
its own process; the same client (raw keep-alive sockets, one process, one thread, a selector
over C connections) measures requests/s at concurrency 1 and 16, in alternating rounds.

Targets: serve (no batching) >= 0.8x the bare endpoint at concurrency 1;
serve with dynamic batching >= 1.5x the bare endpoint at concurrency 16.
"""
from __future__ import annotations

import argparse
import json
import os
import selectors
import socket
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(__file__))

ROWS = 1


# ------------------------------------------------------------------------------------------------
# the bare endpoint (run with --bare-server PORT_FILE)
# ------------------------------------------------------------------------------------------------
def bare_server(port_file: str) -> None:
    import numpy as np
    import onnxruntime as ort
    import uvicorn
    from starlette.applications import Starlette
    from starlette.responses import Response
    from starlette.routing import Route

    import edgebench as eb

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    session = ort.InferenceSession(eb.zoo.load("mlp").to_bytes(), so, providers=["CPUExecutionProvider"])

    async def infer(request):
        body = await request.body()
        hl = int(request.headers["inference-header-content-length"])
        inp = json.loads(body[:hl])["inputs"][0]
        x = np.frombuffer(body[hl:], dtype=np.float32).reshape(inp["shape"])
        out = session.run(None, {"input": x})[0]
        blob = out.tobytes()
        head = json.dumps({"model_name": "mlp", "model_version": "1", "outputs": [
            {"name": "logits", "datatype": "FP32", "shape": list(out.shape),
             "parameters": {"binary_data_size": len(blob)}}]}, separators=(",", ":")).encode()
        return Response(head + blob, media_type="application/octet-stream",
                        headers={"Inference-Header-Content-Length": str(len(head))})

    app = Starlette(routes=[Route("/v2/models/mlp/infer", infer, methods=["POST"])])
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    with open(port_file + ".tmp", "w") as f:
        f.write(str(sock.getsockname()[1]))
    os.replace(port_file + ".tmp", port_file)
    config = uvicorn.Config(app, log_level="warning", access_log=False, server_header=False)
    uvicorn.Server(config).run(sockets=[sock])


# ------------------------------------------------------------------------------------------------
# the client (run with --client PORT CONCURRENCY SECONDS)
# ------------------------------------------------------------------------------------------------
def request_bytes(port: int) -> bytes:
    import numpy as np

    x = np.random.default_rng(0).standard_normal((ROWS, 784)).astype(np.float32).tobytes()
    head = json.dumps({"inputs": [{"name": "input", "shape": [ROWS, 784], "datatype": "FP32",
                                   "parameters": {"binary_data_size": len(x)}}],
                       "outputs": [{"name": "logits", "parameters": {"binary_data": True}}]}).encode()
    body = head + x
    return (f"POST /v2/models/mlp/infer HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            f"Content-Type: application/octet-stream\r\nInference-Header-Content-Length: {len(head)}\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode() + body


def _complete(buf: bytearray) -> int:
    """Length of the first whole response in ``buf``, or -1."""
    i = buf.find(b"\r\n\r\n")
    if i < 0:
        return -1
    head = bytes(buf[:i]).lower()
    j = head.find(b"\r\ncontent-length:")
    k = head.find(b"\r\n", j + 2)
    n = int(head[j + 17:k if k > 0 else None])
    return i + 4 + n if len(buf) >= i + 4 + n else -1


def client(port: int, concurrency: int, seconds: float) -> dict:
    req = request_bytes(port)
    sel = selectors.DefaultSelector()
    for _ in range(concurrency):
        s = socket.create_connection(("127.0.0.1", port))
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.setblocking(False)
        sel.register(s, selectors.EVENT_READ, bytearray())
    # warm-up: a few requests per connection, not counted
    for key in list(sel.get_map().values()):
        for _ in range(3):
            key.fileobj.setblocking(True)
            key.fileobj.sendall(req)
            buf = bytearray()
            while _complete(buf) < 0:
                buf += key.fileobj.recv(65536)
            key.fileobj.setblocking(False)
    ok = bad = 0
    t0 = time.perf_counter()
    end = t0 + seconds
    for key in list(sel.get_map().values()):
        key.fileobj.sendall(req)
    while sel.get_map():
        for key, _ in sel.select(1.0):
            s, buf = key.fileobj, key.data
            chunk = s.recv(65536)
            if not chunk:
                raise SystemExit("the server closed a connection")
            buf += chunk
            n = _complete(buf)
            if n < 0:
                continue
            if buf.startswith(b"HTTP/1.1 200"):
                ok += 1
            else:
                bad += 1
            del buf[:n]
            if time.perf_counter() < end:
                s.sendall(req)
            else:
                sel.unregister(s)
                s.close()
    dt = time.perf_counter() - t0
    return {"rps": ok / dt, "ok": ok, "errors": bad}


# ------------------------------------------------------------------------------------------------
# orchestration
# ------------------------------------------------------------------------------------------------
def start(kind: str, tmp: str) -> tuple[subprocess.Popen, int]:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    if kind == "bare":
        port_file = os.path.join(tmp, "bare.port")
        p = subprocess.Popen([sys.executable, __file__, "--bare-server", port_file], env=env)
        deadline = time.time() + 60
        while not os.path.exists(port_file):
            if p.poll() is not None or time.time() > deadline:
                raise SystemExit("the bare server did not start")
            time.sleep(0.05)
        with open(port_file) as f:
            port = int(f.read())
        os.remove(port_file)
    else:
        from edgebench.cli import COMMANDS

        # `edgebench serve` itself (python -m edgebench.serve.cli is the same command on its own)
        entry = ["edgebench", "serve"] if "serve" in COMMANDS.names() else ["edgebench.serve.cli"]
        cmd = [sys.executable, "-m", *entry, "zoo:mlp", "--port", "0", "--threads", "1"]
        if kind == "batched":
            cmd += ["--batching", "max_batch_size=16,max_queue_delay_ms=0"]
        p = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, text=True)
        line = p.stdout.readline()
        if "http://" not in line:
            raise SystemExit(f"edgebench serve did not start: {line!r}")
        port = int(line.split("http://")[1].split()[0].rsplit(":", 1)[1])
    deadline = time.time() + 30
    while True:  # wait until it answers
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            if time.time() > deadline:
                raise
            time.sleep(0.05)
    return p, port


def batch_size_formed(port: int) -> float:
    """Requests per execution, from the server's own /metrics."""
    import http.client

    from prometheus_client.parser import text_string_to_metric_families

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request("GET", "/metrics")
    text = conn.getresponse().read().decode()
    conn.close()
    total = {f.name: sum(x.value for x in f.samples) for f in text_string_to_metric_families(text)}
    return total["nv_inference_request_success"] / max(1.0, total["nv_inference_exec_count"])


def measure(port: int, concurrency: int, seconds: float) -> dict:
    out = subprocess.run([sys.executable, __file__, "--client", str(port), str(concurrency), str(seconds)],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=3.0, help="measured seconds per point")
    ap.add_argument("--rounds", type=int, default=3, help="alternating rounds (the median is reported)")
    ap.add_argument("--bare-server", metavar="PORT_FILE", help=argparse.SUPPRESS)
    ap.add_argument("--client", nargs=3, metavar=("PORT", "C", "S"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.bare_server:
        bare_server(args.bare_server)
        return 0
    if args.client:
        print(json.dumps(client(int(args.client[0]), int(args.client[1]), float(args.client[2]))))
        return 0

    import tempfile

    import numpy as np
    from _common import banner, verdict

    import edgebench as eb

    banner("edgebench serve vs bare Starlette+uvicorn (session.run in the handler): zoo mlp, 1 row, "
           "binary tensors, 1 intra-op thread")
    eb.zoo.load("mlp")  # build the cache once, outside the measurement
    kinds = ("bare", "serve", "batched")
    results: dict[tuple[str, int], list[float]] = {}
    tmp = tempfile.mkdtemp()
    servers = {k: start(k, tmp) for k in kinds}
    try:
        for r in range(args.rounds):
            order = kinds if r % 2 == 0 else tuple(reversed(kinds))
            for conc in (1, 16):
                for k in order:
                    res = measure(servers[k][1], conc, args.seconds)
                    if res["errors"]:
                        raise SystemExit(f"{k}: {res['errors']} failed requests")
                    results.setdefault((k, conc), []).append(res["rps"])
        mean_batch = batch_size_formed(servers["batched"][1])
    finally:
        for p, _ in servers.values():
            p.terminate()
        for p, _ in servers.values():
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
    med = {key: float(np.median(v)) for key, v in results.items()}
    print(f"\n{'server':<34}{'conc 1 req/s':>14}{'conc 16 req/s':>15}")
    names = {"bare": "bare Starlette endpoint", "serve": "edgebench serve (no batching)",
             "batched": "edgebench serve --batching"}
    for k in kinds:
        print(f"{names[k]:<34}{med[(k, 1)]:>14,.0f}{med[(k, 16)]:>15,.0f}")
    print(f"(the batched server formed batches of {mean_batch:.1f} requests on average over all its runs)")
    r1 = med[("serve", 1)] / med[("bare", 1)]
    r1b = med[("batched", 1)] / med[("bare", 1)]
    r16 = med[("batched", 16)] / med[("bare", 16)]
    r16s = med[("serve", 16)] / med[("bare", 16)]
    print(f"\nserve / bare at concurrency 1:            {r1:.2f}x  (target >= 0.80)  {verdict(r1 >= 0.8)}")
    print(f"serve --batching / bare at concurrency 1: {r1b:.2f}x  (for information)")
    print(f"serve (no batching) / bare at 16:         {r16s:.2f}x  (for information)")
    print(f"serve --batching / bare at 16:            {r16:.2f}x  (target >= 1.50)  {verdict(r16 >= 1.5)}")
    return 0 if r1 >= 0.8 and r16 >= 1.5 else 1


if __name__ == "__main__":
    sys.exit(main())
