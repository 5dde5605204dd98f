"""``edgebench serve MODEL... [--repository DIR] [--host H] [--port P] [--auth auth.json] [--batching ...]``.

This module imports nothing heavy: the parser is built for every ``edgebench`` call.
"""
from __future__ import annotations

import argparse
from typing import Any

__all__ = ["add_serve_command", "cmd_serve"]


def add_serve_command(sub: Any) -> None:
    """Add the ``serve`` subcommand to an argparse ``subparsers`` object."""
    p = sub.add_parser(
        "serve", help="serve models over KServe v2 HTTP (Triton's protocol), with dynamic batching and tenants",
        description="Serve MODELs (paths or zoo:NAME, served under NAME) and/or a model repository over "
                    "KServe v2 REST, exactly as Triton serves it: tritonclient.http works unchanged. "
                    "/metrics has Prometheus metrics. Ctrl-C stops gracefully (requests in flight are answered).")
    p.add_argument("models", metavar="MODEL", nargs="*", help="a model file, or zoo:NAME")
    p.add_argument("--repository", metavar="DIR", default=None,
                   help="model repository: a folder per model with numeric version folders (1/model.onnx) "
                        "and an optional config.json / config.toml")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000; 0 picks a free one)")
    p.add_argument("--auth", metavar="auth.json", default=None,
                   help='tenants: {"tenants": {"NAME": {"token": ..., "models": [...], "rate_limit_rps": N, '
                        '"priority": 1, "max_queue": N}}}')
    p.add_argument("--batching", metavar="SPEC", default=None,
                   help="dynamic batching of the MODELs: 'on', or key=value pairs such as "
                        "max_batch_size=32,max_queue_delay_ms=2,preferred_batch_sizes=8/16,instances=1")
    p.add_argument("--threads", type=int, default=None, metavar="N", help="intra-op threads of each engine")
    p.add_argument("--backend", default=None, help="backend of the MODELs (default onnxruntime)")
    p.add_argument("--device", default="cpu", help="device of the MODELs (default cpu)")
    p.add_argument("--insecure", action="store_true",
                   help="allow binding a non-loopback address without --auth")
    p.add_argument("--ssl-certfile", default=None, help="serve HTTPS with this certificate (PEM)")
    p.add_argument("--ssl-keyfile", default=None, help="the certificate's private key (PEM)")
    p.add_argument("--log-level", default="warning", choices=["critical", "error", "warning", "info", "debug"])
    p.set_defaults(func=cmd_serve)


def cmd_serve(args: argparse.Namespace) -> int:
    import signal
    import threading

    from .server import serve

    srv = serve(*args.models, repository=args.repository, host=args.host, port=args.port, auth=args.auth,
                batching=args.batching, threads=args.threads, backend=args.backend, device=args.device,
                insecure=args.insecure, ssl_certfile=args.ssl_certfile, ssl_keyfile=args.ssl_keyfile,
                log_level=args.log_level)
    stop = threading.Event()

    def on_signal(signum: int, frame: Any) -> None:
        stop.set()

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        print(f"edgebench serve: {srv.url} serving {', '.join(srv.models)}"
              + (f" for {len(srv.app.auth.tenants)} tenants" if srv.app.auth.enabled else ""), flush=True)
        while not stop.is_set() and srv.running:
            stop.wait(0.5)
        print("edgebench serve: stopping (answering requests in flight)", flush=True)
    finally:
        srv.stop()
        for s, h in old.items():
            signal.signal(s, h)
    return 0


def main(argv: Any = None) -> int:
    """``python -m edgebench.serve.cli ...``: the ``serve`` command on its own."""
    import sys

    from ..cli import _one_line, _Parser
    from ..errors import EdgebenchError

    parser = _Parser(prog="edgebench")
    add_serve_command(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["serve", *(sys.argv[1:] if argv is None else argv)])
    try:
        return args.func(args)
    except EdgebenchError as e:
        print(f"edgebench: error: {_one_line(e)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
