"""``edgebench cluster``: deploy models on a Dask cluster and load them; simulate big fleets.

    edgebench cluster run zoo:mlp zoo:digits --workers 2 --seconds 5 --kill-after 2
    edgebench cluster run model.onnx --scheduler tcp://10.0.0.5:8786
    edgebench cluster simulate --sizes 10,100,1000,10000
"""
from __future__ import annotations

import argparse
import json
import threading
import time
from collections import deque
from typing import Any

__all__ = ["add_cluster_command"]


def add_cluster_command(sub: Any) -> None:
    p = sub.add_parser("cluster", help="deploy models on a Dask cluster (local or remote) and load them; "
                                       "simulate large fleets",
                       description="Deploy models on a Dask cluster and drive them, or simulate fleets of "
                                   "10 to 10,000 nodes with the same placement and routing code.")
    cs = p.add_subparsers(dest="cluster_command", metavar="ACTION", required=True)
    r = cs.add_parser("run", help="deploy MODELs, keep requests in flight, print the tables",
                      description="Start a local cluster (or connect with --scheduler), deploy each MODEL, keep "
                                  "--inflight requests in flight per model for --seconds, optionally kill a worker "
                                  "on the way, and print deployments, workers and events.")
    r.add_argument("models", metavar="MODEL", nargs="*", default=["zoo:mlp", "zoo:digits"],
                   help="a model file or zoo:NAME (default: zoo:mlp zoo:digits)")
    r.add_argument("--scheduler", default=None, metavar="ADDRESS",
                   help="a running Dask scheduler (tcp://host:8786); default: a local cluster")
    r.add_argument("--workers", type=int, default=2, help="workers of the local cluster (default 2)")
    r.add_argument("--replicas", type=int, default=None, help="replicas per model (default: one per worker)")
    r.add_argument("--seconds", type=float, default=5.0, help="how long to send requests (default 5)")
    r.add_argument("--inflight", type=int, default=8, help="requests kept in flight per model (default 8)")
    r.add_argument("--kill-after", type=float, default=None, metavar="S",
                   help="SIGKILL one worker process after S seconds (local cluster only)")
    r.add_argument("--no-shm", dest="shm", action="store_false",
                   help="send every tensor over TCP, even to workers on this host (default: large "
                        "tensors through shared memory where the worker can map it)")
    r.add_argument("--json", action="store_true", help="print JSON instead of tables")
    r.set_defaults(func=cmd_run)
    s = cs.add_parser("simulate", help="the synthetic testbed: p99, balance and placement time vs fleet size")
    s.add_argument("--sizes", default="10,100,1000", help="fleet sizes, comma-separated (default 10,100,1000)")
    s.add_argument("--routing", default="p2c", choices=["p2c", "least_outstanding", "round_robin"])
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--json", action="store_true", help="print JSON instead of a table")
    s.set_defaults(func=cmd_simulate)


def _drive(deps: list, feeds: list, seconds: float, inflight: int, errors: list) -> list[int]:
    """Closed loop over every deployment at once; returns answers per deployment."""
    done = [0] * len(deps)
    queues = [deque(d.submit(f) for _ in range(inflight)) for d, f in zip(deps, feeds)]
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        for i, (d, f, q) in enumerate(zip(deps, feeds, queues)):
            try:
                q.popleft().result(60)
                done[i] += 1
            except Exception as e:  # reported: the command exits 1 when any request failed
                errors.append(f"{d.name}: {e}")
            q.append(d.submit(f))
    for q in queues:
        for fut in q:
            try:
                fut.result(60)
            except Exception as e:
                errors.append(str(e))
    return done


def cmd_run(args: argparse.Namespace) -> int:
    from ..cli import load_model_arg, text_table
    from ..engine import Engine
    from ..errors import ConfigError
    from .api import Cluster

    if args.seconds <= 0 or args.inflight < 1 or args.workers < 1:
        raise ConfigError("--seconds must be positive, --inflight and --workers at least 1")
    if args.kill_after is not None and args.scheduler:
        raise ConfigError("--kill-after kills a worker of the local cluster only", "drop --scheduler")
    models = [load_model_arg(m) for m in args.models]
    cl = Cluster(args.scheduler, shm=args.shm) if args.scheduler else Cluster.local(n_workers=args.workers,
                                                                                     shm=args.shm)
    try:
        n = args.replicas or max(1, len(cl.worker_addresses()))
        deps = [cl.deploy(m, replicas=n, name=m.name if [x.name for x in models].count(m.name) == 1
                          else f"{m.name}-{i}") for i, m in enumerate(models)]
        feeds = [Engine(m, threads=1, record=False).sample_feeds() for m in models]
        if args.kill_after is not None:
            threading.Timer(args.kill_after, cl.kill_worker).start()
        errors: list[str] = []
        t0 = time.perf_counter()
        done = _drive(deps, feeds, args.seconds, args.inflight, errors)
        wall = time.perf_counter() - t0
        if args.kill_after is not None:  # let the replacement join before the tables are printed
            time.sleep(1.0)
        rows = cl.deployments.to_dict("records")
        if args.json:
            print(json.dumps({"deployments": rows, "answered": dict(zip([d.name for d in deps], done)),
                              "errors": errors, "events": cl.log.list()}, default=str, indent=1))
        else:
            print(f"{len(cl.worker_addresses())} workers, {sum(done)} requests answered in {wall:.1f} s, "
                  f"{len(errors)} failed")
            print(text_table(["deployment", "replicas", "tensors by", "answered", "req/s", "p50 ms", "p99 ms",
                              "retried", "errors"],
                             [[r["deployment"], f"{r['replicas']}/{r['wanted']}", r["transport"], d, f"{d / wall:.0f}",
                               _ms(r["p50_ms"]), _ms(r["p99_ms"]), r["retried"], r["errors"]]
                              for r, d in zip(rows, done)], right=[1, *range(3, 9)]))
            ev = [e for e in cl.log.list() if e["kind"] not in ("replica_started",)]
            print("events: " + ", ".join(e["kind"] for e in ev))
        return 1 if errors else 0
    finally:
        cl.close()


def _ms(v: Any) -> str:
    return "-" if v is None else f"{v:.2f}"


def cmd_simulate(args: argparse.Namespace) -> int:
    from ..cli import text_table
    from ..errors import ConfigError
    from .testbed import scale_study

    try:
        sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    except ValueError:
        raise ConfigError(f"--sizes must be comma-separated integers, got {args.sizes!r}") from None
    if not sizes or min(sizes) < 2 or max(sizes) > 100_000:
        raise ConfigError("--sizes must be fleet sizes between 2 and 100000")
    df = scale_study(sizes=tuple(sizes), routing=args.routing, seed=args.seed)
    if args.json:
        print(df.to_json(orient="records"))
        return 0
    cols = ["n_nodes", "requests", "lost", "p50_ms", "p99_ms", "balance", "placement_ms"]
    print(text_table(cols, [[_fmt(r[c]) for c in cols] for r in df.to_dict("records")], right=range(len(cols))))
    return 0


def _fmt(v: Any) -> str:
    return f"{v:.3f}" if isinstance(v, float) else str(v)
