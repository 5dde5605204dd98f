"""The synthetic testbed: the cluster's placement, routing and partitioning code on simulated
fleets of 10 to 10,000 heterogeneous nodes.

A discrete-event simulation (a heap of events in simulated time: no sleeping, no threads).
Nodes have speeds (0.5, 1 or 2), 1 or 2 threads, memory limits, and some a ``GPU`` resource;
deployments have a base service time that a node divides by its speed, with lognormal noise;
requests arrive as a Poisson process; nodes fail at random times.  Every decision goes through
:mod:`edgebench.cluster.policy`, the code the real cluster runs:

* the layout through :func:`~edgebench.cluster.policy.place_many`, re-placement of the
  replicas a failed node held through :func:`~edgebench.cluster.policy.place` and
  :func:`~edgebench.cluster.policy.commit` (and :func:`~edgebench.cluster.policy.release`);
* every request, and every retry of a request that was in flight on a failed node, through
  :func:`~edgebench.cluster.policy.choose`;
* :func:`partition_study` cuts random DAGs (:func:`edgebench.graph.dags.random_dag`) with
  :func:`~edgebench.cluster.partition.partition_costs` under simulated step costs.

Only ``placement_ms`` and ``wall_seconds`` are real (wall) times; everything else is simulated.
"""
from __future__ import annotations

import bisect
import heapq
import math
import random
import time
from collections import deque
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from ..errors import ConfigError, PlacementError
from .policy import NodeState, choose, commit, place, place_many, release

__all__ = ["SimResult", "compare_routing", "partition_study", "scale_study", "simulate"]

_MB = 1 << 20
_BASE_MS = (2.0, 5.0, 10.0, 20.0)  # per deployment, cycled
_MEMORY = (30 * _MB, 60 * _MB, 120 * _MB, 250 * _MB)
_NODE_MEMORY = (256 * _MB, 1024 * _MB, 4096 * _MB)
_SPEEDS = (0.5, 1.0, 2.0)
_DONE, _FAIL, _READY, _RECOVER = 0, 1, 2, 3


@dataclass
class SimResult:
    """One simulated run (times in simulated ms unless named wall)."""

    n_nodes: int
    requests: int
    completed: int
    lost: int
    retried: int
    p50_ms: float
    p99_ms: float
    balance: float  # coefficient of variation of busy time per thread, nodes holding replicas
    placement_ms: float  # real wall time per place() call, mean
    failures: int
    sim_seconds: float  # simulated seconds of arrivals
    wall_seconds: float
    routing: str = "p2c"
    replicas: int = 0
    layout_ms: float = 0.0  # real wall time per replica of the initial place_many layout

    def as_row(self) -> dict[str, Any]:
        return asdict(self)


class _Replica:
    __slots__ = ("dep", "draining", "healthy", "node", "outstanding", "speed")

    def __init__(self, node: int, dep: int, speed: float):
        self.outstanding = 0
        self.healthy = False  # routable once loaded
        self.draining = False
        self.speed = speed
        self.node = node
        self.dep = dep


class _Req:
    __slots__ = ("arrival", "dep", "replica", "start")

    def __init__(self, arrival: float, dep: int):
        self.arrival = arrival
        self.dep = dep
        self.replica: _Replica | None = None
        self.start = 0.0


def _fleet(n_nodes: int, rng: random.Random) -> list[NodeState]:
    nodes = []
    for i in range(n_nodes):
        gpu = rng.random() < 0.25 or i < 2  # at least two GPU nodes
        nodes.append(NodeState(address=f"sim://node-{i:05d}", nthreads=rng.choice((1, 2)),
                               resources={"GPU": 1.0} if gpu else {},
                               memory_limit=rng.choice(_NODE_MEMORY), speed=rng.choice(_SPEEDS)))
    return nodes


def simulate(n_nodes: int, *, seed: int = 0, deployments: int = 4, replicas_per_deployment: int | None = None,
             load: float = 0.6, duration_s: float = 10.0, failure_rate_per_node_hour: float = 60.0,
             routing: str = "p2c", max_requests: int = 500_000, noise: float = 0.25,
             load_ms: float = 50.0, repair_s: float = 2.0, probes: int = 8) -> SimResult:
    """Simulate ``n_nodes`` nodes serving ``deployments`` models under Poisson load and failures.

    Parameters
    ----------
    deployments
        Models ``model0..``: base service times 2, 5, 10, 20 ms (cycled), memory 30-250 MB,
        one CPU each; ``model1`` also needs ``GPU=1`` (about a quarter of the nodes have one).
    replicas_per_deployment
        Default ``max(2, n_nodes // deployments)``, so the fleet is used; the GPU model gets at
        most one per GPU node and leaves a quarter of them free for re-placement.
    load
        Offered utilisation: each model's arrival rate is ``load`` times what its replicas'
        share of their nodes (threads x speed) can serve.
    duration_s
        Simulated seconds of arrivals, cut to ``max_requests / arrival rate`` so a run stays
        short: with the default 500,000 requests a 10,000-node run takes about 5 s of wall
        time (and covers well under a simulated second).
    failure_rate_per_node_hour
        Poisson failures (deliberately high, to exercise recovery).  A failed node loses its
        replicas and in-flight requests: the requests are retried through ``choose``, the
        replicas re-placed through ``place`` (routable after ``load_ms``); the node comes back
        empty after ``repair_s``.  A request finding no replica waits for one; it is lost
        only if none can ever be placed.
    routing
        ``choose`` policy: ``"p2c"``, ``"least_outstanding"`` or ``"round_robin"``.
    probes
        Extra uncommitted ``place`` calls after the layout, so ``placement_ms`` is measured
        even in runs without failures.
    """
    if n_nodes < 1 or deployments < 1 or not 0 < load or duration_s <= 0 or max_requests < 1:
        raise ConfigError("simulate needs n_nodes, deployments, max_requests >= 1 and positive load and duration_s")
    wall0 = time.perf_counter()
    rng = random.Random(seed)
    route_rng = random.Random(seed + 1)
    noise_rng = random.Random(seed + 2)
    nodes = _fleet(n_nodes, rng)
    names = [f"model{d}" for d in range(deployments)]
    base = [_BASE_MS[d % len(_BASE_MS)] for d in range(deployments)]
    mem = [_MEMORY[d % len(_MEMORY)] for d in range(deployments)]
    res = [{"CPU": 1.0, "GPU": 1.0} if d == 1 else {"CPU": 1.0} for d in range(deployments)]
    n_gpu = sum(1 for n in nodes if n.resources.get("GPU"))
    rpd = replicas_per_deployment or max(2, n_nodes // deployments)
    gpu_rpd = min(rpd, max(2, n_gpu - max(1, n_gpu // 4)))  # leave GPU nodes free to re-place onto
    counts = [gpu_rpd if d == 1 and replicas_per_deployment is None else rpd for d in range(deployments)]

    # -- layout: the constrained (GPU) deployment first, as an operator would
    on_node: list[list[_Replica]] = [[] for _ in nodes]
    live: list[list[_Replica]] = [[] for _ in names]
    t_layout = time.perf_counter()
    for d in sorted(range(deployments), key=lambda d: -len(res[d])):
        for node in place_many(nodes, names[d], counts[d], res[d], mem[d]):
            i = int(node.address.rsplit("-", 1)[1])
            r = _Replica(i, d, node.speed)
            r.healthy = True
            on_node[i].append(r)
            live[d].append(r)
    layout_ms = (time.perf_counter() - t_layout) * 1e3 / max(sum(counts), 1)
    place_times: list[float] = []
    for p in range(probes):
        d = p % deployments
        t0 = time.perf_counter()
        try:
            place(nodes, names[d], res[d], mem[d])
        except PlacementError:
            pass
        place_times.append(time.perf_counter() - t0)

    # -- arrival rates from what the replicas can serve
    rate = []
    for d in range(deployments):
        cap = sum(nodes[r.node].nthreads * nodes[r.node].speed / len(on_node[r.node]) for r in live[d])
        rate.append(load * cap / base[d])  # requests per simulated ms
    total_rate = sum(rate)
    cum = list(np.cumsum(rate) / total_rate)
    horizon = min(duration_s * 1e3, max_requests / total_rate)

    running: list[list[_Req]] = [[] for _ in nodes]
    queue: list[deque] = [deque() for _ in nodes]
    busy_ms = [0.0] * n_nodes
    epoch = [0] * n_nodes
    backlog: list[list[_Req]] = [[] for _ in names]
    unplaced: list[int] = []
    heap: list[tuple] = []
    seq = 0
    lat: list[float] = []
    stats = {"retried": 0, "failures": 0}

    def start(req: _Req, i: int, t: float) -> None:
        nonlocal seq
        req.start = t
        running[i].append(req)
        svc = base[req.dep] / nodes[i].speed * noise_rng.lognormvariate(0.0, noise)
        seq += 1
        heapq.heappush(heap, (t + svc, seq, _DONE, req, i, epoch[i]))

    def dispatch(req: _Req, t: float) -> None:
        reps = live[req.dep]
        if not reps:
            backlog[req.dep].append(req)
            return
        r = reps[choose(reps, route_rng, routing)]
        r.outstanding += 1
        req.replica = r
        i = r.node
        if len(running[i]) < nodes[i].nthreads:
            start(req, i, t)
        else:
            queue[i].append(req)

    def add_replica(d: int, t: float, exclude: tuple = ()) -> None:
        nonlocal seq
        t0 = time.perf_counter()
        try:
            node = place(nodes, names[d], res[d], mem[d], exclude=exclude)
        except PlacementError:
            place_times.append(time.perf_counter() - t0)
            unplaced.append(d)
            return
        place_times.append(time.perf_counter() - t0)
        commit(node, names[d], res[d], mem[d])
        i = int(node.address.rsplit("-", 1)[1])
        r = _Replica(i, d, node.speed)
        on_node[i].append(r)
        seq += 1
        heapq.heappush(heap, (t + load_ms, seq, _READY, r, i, epoch[i]))

    def fail(i: int, t: float) -> None:
        nonlocal seq
        node = nodes[i]
        stats["failures"] += 1
        node.healthy = False
        epoch[i] += 1
        for req in running[i]:
            busy_ms[i] += t - req.start
        orphans = running[i] + list(queue[i])
        running[i], queue[i] = [], deque()
        lost = on_node[i]
        on_node[i] = []
        for r in lost:
            r.healthy = False
            if r in live[r.dep]:
                live[r.dep].remove(r)
            release(node, names[r.dep], res[r.dep], mem[r.dep])
        for r in lost:
            add_replica(r.dep, t)
        for req in orphans:
            req.replica.outstanding -= 1
            stats["retried"] += 1
            dispatch(req, t)
        seq += 1
        heapq.heappush(heap, (t + repair_s * 1e3, seq, _RECOVER, None, i, epoch[i]))

    fail_rate = failure_rate_per_node_hour * n_nodes / 3.6e6  # per simulated ms
    next_fail = rng.expovariate(fail_rate) if fail_rate > 0 else math.inf
    next_arrival = rng.expovariate(total_rate)
    n_req = 0
    while True:
        t_ev = heap[0][0] if heap else math.inf
        if next_fail < horizon and next_fail <= min(next_arrival, t_ev):
            i = rng.randrange(n_nodes)
            if nodes[i].healthy:
                fail(i, next_fail)
            next_fail += rng.expovariate(fail_rate)
            continue
        if next_arrival < horizon and next_arrival <= t_ev:
            t = next_arrival
            n_req += 1
            dispatch(_Req(t, bisect.bisect_right(cum, rng.random()) if deployments > 1 else 0), t)
            next_arrival = t + rng.expovariate(total_rate)
            continue
        if not heap:
            break
        t, _, kind, obj, i, ep = heapq.heappop(heap)
        if kind == _DONE:
            if ep != epoch[i]:
                continue  # the node failed meanwhile: the request was retried elsewhere
            running[i].remove(obj)
            busy_ms[i] += t - obj.start
            obj.replica.outstanding -= 1
            lat.append(t - obj.arrival)
            if queue[i]:
                start(queue[i].popleft(), i, t)
        elif kind == _READY:
            if ep != epoch[i]:
                continue  # its node failed while loading: fail() placed it again
            obj.healthy = True
            live[obj.dep].append(obj)
            waiting, backlog[obj.dep] = backlog[obj.dep], []
            for req in waiting:
                dispatch(req, t)
        elif kind == _RECOVER:
            nodes[i].healthy = True
            retry, unplaced[:] = list(unplaced), []
            for d in retry:
                add_replica(d, t)

    held = [busy_ms[i] / nodes[i].nthreads for i in range(n_nodes) if on_node[i]]
    balance = float(np.std(held) / np.mean(held)) if held and np.mean(held) > 0 else 0.0
    lat_a = np.asarray(lat) if lat else np.zeros(1)
    return SimResult(n_nodes=n_nodes, requests=n_req, completed=len(lat), lost=sum(map(len, backlog)),
                     retried=stats["retried"], p50_ms=float(np.percentile(lat_a, 50)),
                     p99_ms=float(np.percentile(lat_a, 99)), balance=balance,
                     placement_ms=float(np.mean(place_times) * 1e3) if place_times else 0.0,
                     failures=stats["failures"], sim_seconds=horizon / 1e3,
                     wall_seconds=time.perf_counter() - wall0, routing=routing,
                     replicas=sum(len(x) for x in on_node), layout_ms=layout_ms)


def scale_study(sizes: tuple[int, ...] = (10, 100, 1000, 10000), **kw: Any):
    """:func:`simulate` at each fleet size; a pandas DataFrame, one row per size."""
    import pandas as pd

    return pd.DataFrame([simulate(n, **kw).as_row() for n in sizes])


def compare_routing(n_nodes: int = 100, policies: tuple[str, ...] = ("p2c", "least_outstanding", "round_robin"),
                    **kw: Any):
    """The same fleet, load and failures under each routing policy; one row per policy."""
    import pandas as pd

    return pd.DataFrame([simulate(n_nodes, routing=p, **kw).as_row() for p in policies])


def partition_study(seeds: tuple[int, ...] = (0, 1, 2), n_steps: int = 24, ks: tuple[Any, ...] = (1, 2, 4, 8, "auto"),
                    *, width: int = 256, batch: int = 8, model_ms: float = 2.0, fn_ms: float = 0.05,
                    **kw: Any):
    """Cut random DAGs (:func:`edgebench.graph.dags.random_dag`, real graph structure) with
    :func:`~edgebench.cluster.partition.partition_costs` under simulated step costs (model
    steps lognormal around ``model_ms``, functions ``fn_ms``; every tensor
    ``batch x width`` float32).  One row per (seed, k): bottleneck, latency, bytes cut and
    the speed-up of the bottleneck over the whole graph on one worker."""
    import pandas as pd

    from ..graph.compiler import validate
    from ..graph.dags import random_dag
    from .partition import partition_costs

    rows = []
    for seed in seeds:
        dag = random_dag(seed=seed, n_nodes=n_steps, width=8)  # the structure; costs are simulated
        order = validate(dag.graph)
        rng = random.Random(seed)
        ms = [model_ms * rng.lognormvariate(0, 0.5) if n.kind == "model" else fn_ms for n in order]
        tensors = {t for n in order for t in n.input_tensors + n.output_tensors} | set(dag.graph.constants)
        nbytes = dict.fromkeys(tensors, batch * width * 4)
        whole = None
        for k in ks:
            plan = partition_costs(ms, [n.input_tensors for n in order], [n.output_tensors for n in order], nbytes,
                                   dag.graph.inputs, dag.graph.outputs, k, step_names=[n.name for n in order],
                                   constants=list(dag.graph.constants), **kw)
            whole = whole or (plan.bottleneck_ms if plan.n_parts == 1 else None)
            rows.append({"seed": seed, "steps": len(order), "k": k, "parts": plan.n_parts,
                         "bottleneck_ms": plan.bottleneck_ms, "latency_ms": plan.latency_ms,
                         "cut_bytes": plan.total_cut_bytes,
                         "speedup": (whole / plan.bottleneck_ms) if whole else math.nan})
    return pd.DataFrame(rows)
