"""Placement, routing and autoscaling decisions: pure functions over plain node/replica state.

The real cluster (Dask workers) and the synthetic testbed (:mod:`edgebench.cluster.testbed`)
both call these, so what the simulation measures at 10,000 nodes is the code that runs here.

* :func:`place` / :func:`commit` / :func:`release` / :func:`place_many`: where a replica goes.
  Spread: the fitting node with the fewest replicas of the deployment, then the fewest
  replicas in total, then the lowest memory fraction, then the address.
* :func:`choose`: which replica serves the next request (power of two choices by default).
* :func:`autoscale_target`: how many workers a deployment wants, from p99 and queue depth.
"""
from __future__ import annotations

import heapq
import math
import random
import weakref
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..errors import ConfigError, NoReplicaError, PlacementError

__all__ = [
    "POLICIES",
    "NodeState",
    "autoscale_target",
    "capacity",
    "choose",
    "commit",
    "fits",
    "place",
    "place_many",
    "release",
]

POLICIES = ("p2c", "least_outstanding", "round_robin")
_MB = 1 << 20
_EPS = 1e-9


@dataclass
class NodeState:
    """One worker, as placement sees it: a real Dask worker or a simulated node."""

    address: str
    nthreads: int = 1
    #: declared resources (``dask worker --resources``); ``"CPU"`` defaults to ``nthreads``
    resources: dict[str, float] = field(default_factory=dict)
    memory_limit: int = 0  # bytes; 0 = unknown -> no memory check
    memory_used: int = 0  # bytes already taken on the node
    speed: float = 1.0  # relative compute speed (the simulator uses it; real workers 1.0)
    healthy: bool = True
    draining: bool = False  # being retired: never place here
    used: dict[str, float] = field(default_factory=dict)  # resources held by edgebench replicas
    replicas: dict[str, int] = field(default_factory=dict)  # deployment name -> replicas here


def capacity(node: NodeState, resource: str) -> float:
    """How much of ``resource`` the node declares (``CPU``: ``nthreads`` unless declared)."""
    cap = node.resources.get(resource)
    if cap is None:
        return float(node.nthreads) if resource == "CPU" else 0.0
    return float(cap)


def _mb(n: float) -> str:
    return f"{n / _MB:.0f} MB"


def fits(node: NodeState, resources: Mapping[str, float], memory: int) -> str | None:
    """``None`` if a replica asking ``resources`` and ``memory`` bytes fits on ``node``,
    else a short reason (``"has GPU=0 of 1 needed"``, ``"has 50 MB free, needs 120 MB"``,
    ``"is draining"``, ``"is unhealthy"``)."""
    if not node.healthy:
        return "is unhealthy"
    if node.draining:
        return "is draining"
    for r, amount in resources.items():
        if amount > 0:
            free = capacity(node, r) - node.used.get(r, 0.0)
            if free < amount - _EPS:
                return f"has {r}={max(free, 0.0):g} of {amount:g} needed"
    if memory > 0 and node.memory_limit > 0:
        free_mem = node.memory_limit - node.memory_used
        if free_mem < memory:
            return f"has {_mb(max(free_mem, 0))} free, needs {_mb(memory)}"
    return None


def _key(node: NodeState, deployment: str) -> tuple:
    frac = node.memory_used / node.memory_limit if node.memory_limit > 0 else 0.0
    return (node.replicas.get(deployment, 0), sum(node.replicas.values()), frac, node.address)


def place(nodes: Sequence[NodeState], deployment: str, resources: Mapping[str, float], memory: int,
          *, exclude: Collection[str] = ()) -> NodeState:
    """The node a new replica of ``deployment`` should go to (does not commit: see :func:`commit`).

    Among nodes that fit and are not in ``exclude`` (addresses): the fewest replicas of this
    deployment, then the fewest replicas in total, then the lowest memory fraction, then the
    address.  One pass over ``nodes`` (O(n)).

    Raises
    ------
    PlacementError
        No node fits; the message counts the reasons (no such resource, resource used up,
        too little memory, draining, unhealthy, excluded) and says what to do.
    """
    excl = exclude if isinstance(exclude, (set, frozenset, dict)) else set(exclude)
    wants = [(r, float(a)) for r, a in resources.items() if a > 0]
    best: NodeState | None = None
    best_key: tuple | None = None
    for node in nodes:
        if not node.healthy or node.draining:
            continue
        if excl and node.address in excl:
            continue
        ok = True
        for r, amount in wants:
            cap = node.resources.get(r)
            if cap is None:
                cap = node.nthreads if r == "CPU" else 0.0
            if cap - node.used.get(r, 0.0) < amount - _EPS:
                ok = False
                break
        if not ok:
            continue
        if memory > 0 and node.memory_limit > 0 and node.memory_limit - node.memory_used < memory:
            continue
        reps = node.replicas
        mine = reps.get(deployment, 0)
        if best_key is not None and mine > best_key[0]:
            continue
        key = (mine, sum(reps.values()) if reps else 0,
               node.memory_used / node.memory_limit if node.memory_limit > 0 else 0.0, node.address)
        if best_key is None or key < best_key:
            best, best_key = node, key
    if best is None:
        raise _no_fit(nodes, deployment, resources, memory, excl)
    return best


def _no_fit(nodes: Sequence[NodeState], deployment: str, resources: Mapping[str, float], memory: int,
            excl: Collection[str]) -> PlacementError:
    """The aggregated reason why no node fits (a second pass, only on failure)."""
    need = ", ".join(f"{r}={a:g}" for r, a in resources.items() if a > 0) or "no resources"
    if memory > 0:
        need += f", {_mb(memory)}"
    if not nodes:
        return PlacementError(f"no worker can hold a replica of {deployment!r} (needs {need}): the cluster has no workers",
                              "start workers (`dask worker <scheduler>`) or scale the cluster up")
    missing: dict[str, int] = {}
    used_up: dict[str, int] = {}
    low_mem: list[int] = []
    counts = {"excluded": 0, "draining": 0, "unhealthy": 0}
    wants = [(r, float(a)) for r, a in resources.items() if a > 0]
    for node in nodes:
        if excl and node.address in excl:
            counts["excluded"] += 1
        elif not node.healthy:
            counts["unhealthy"] += 1
        elif node.draining:
            counts["draining"] += 1
        else:
            for r, amount in wants:
                cap = capacity(node, r)
                if cap - node.used.get(r, 0.0) < amount - _EPS:
                    bucket = missing if cap < amount - _EPS else used_up
                    bucket[r] = bucket.get(r, 0) + 1
                    break
            else:
                if memory > 0 and node.memory_limit > 0 and node.memory_limit - node.memory_used < memory:
                    low_mem.append(max(node.memory_limit - node.memory_used, 0))

    def workers(n: int) -> str:
        return f"{n} worker{'s' if n != 1 else ''}"

    parts, hints = [], []
    for r, n in sorted(missing.items()):
        parts.append(f"{workers(n)} {'have' if n != 1 else 'has'} no {r} resource "
                     f"(start workers with `dask worker --resources {r}={resources[r]:g}`)")
    for r, n in sorted(used_up.items()):
        parts.append(f"{workers(n)} {'have' if n != 1 else 'has'} all {r} in use")
        hints.append("undeploy or scale down another deployment, or add workers")
    if low_mem:
        most = max(low_mem)
        parts.append(f"{workers(len(low_mem))} {'have' if len(low_mem) != 1 else 'has'} too little memory "
                     f"(at most {_mb(most)} free)")
        hints.append("give workers a larger --memory-limit, use a smaller (quantized) model, or add workers")
    for what, n in counts.items():
        if n:
            parts.append(f"{workers(n)} {'are' if n != 1 else 'is'} {what}")
    if missing:
        hints.insert(0, "declare the resource on some workers or ask for fewer resources")
    if counts["unhealthy"] or counts["draining"]:
        hints.append("wait for replacement workers")
    hint = "; ".join(dict.fromkeys(hints)) or "add workers"
    return PlacementError(f"no worker can hold a replica of {deployment!r} (needs {need}): " + ", ".join(parts), hint)


def commit(node: NodeState, deployment: str, resources: Mapping[str, float], memory: int) -> None:
    """Take ``resources`` and ``memory`` on ``node`` and count one replica of ``deployment``."""
    for r, amount in resources.items():
        if amount > 0:
            node.used[r] = node.used.get(r, 0.0) + float(amount)
    node.memory_used += max(int(memory), 0)
    node.replicas[deployment] = node.replicas.get(deployment, 0) + 1


def release(node: NodeState, deployment: str, resources: Mapping[str, float], memory: int) -> None:
    """Undo :func:`commit` (nothing goes below zero)."""
    for r, amount in resources.items():
        if amount > 0 and r in node.used:
            left = node.used[r] - float(amount)
            if left > _EPS:
                node.used[r] = left
            else:
                del node.used[r]
    node.memory_used = max(node.memory_used - max(int(memory), 0), 0)
    n = node.replicas.get(deployment, 0) - 1
    if n > 0:
        node.replicas[deployment] = n
    else:
        node.replicas.pop(deployment, None)


def place_many(nodes: Sequence[NodeState], deployment: str, n: int, resources: Mapping[str, float],
               memory: int) -> list[NodeState]:
    """Place and commit ``n`` replicas, spread as repeated :func:`place` would (one pass plus
    a heap: O(len(nodes) + n log len(nodes))).  On failure, releases what it took and raises
    :class:`PlacementError`."""
    if n < 0:
        raise ConfigError(f"cannot place {n} replicas", "ask for 0 or more")
    # Committing to a node only raises that node's key and changes no other node, so popping
    # the smallest key and pushing it back updated gives exactly repeated place() + commit().
    heap = [(_key(node, deployment), i) for i, node in enumerate(nodes) if fits(node, resources, memory) is None]
    heapq.heapify(heap)
    taken: list[NodeState] = []
    while len(taken) < n:
        if not heap:
            try:
                place(nodes, deployment, resources, memory)  # raises with the aggregated reason
            except PlacementError as e:
                for node in taken:
                    release(node, deployment, resources, memory)
                raise PlacementError(f"placed {len(taken)} of {n} replicas, then {e.message}", e.hint) from None
            raise AssertionError("place() found a node place_many missed")  # pragma: no cover
        _, i = heapq.heappop(heap)
        node = nodes[i]
        commit(node, deployment, resources, memory)
        taken.append(node)
        if fits(node, resources, memory) is None:
            heapq.heappush(heap, (_key(node, deployment), i))
    return taken


# -- routing ------------------------------------------------------------------------------------
_RR: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_RR_FALLBACK: dict[tuple, int] = {}


def _eligible(r: Any) -> bool:
    return r.healthy and not r.draining


def _load(r: Any) -> float:
    # expected wait of one more request: (queued + this one) / speed, so idle fast replicas win
    return (r.outstanding + 1) / getattr(r, "speed", 1.0)


def choose(replicas: Sequence[Any], rng: random.Random, policy: str = "p2c") -> int:
    """The index in ``replicas`` of the replica that serves the next request.

    Replicas are duck-typed: ``.outstanding`` (int), ``.healthy``, ``.draining`` (bool),
    optional ``.speed`` (default 1).  Load is ``(outstanding + 1) / speed``.

    Parameters
    ----------
    policy
        ``"p2c"``: power of two choices, two random eligible replicas, the less loaded wins
        (O(1) unless most replicas are ineligible); ``"least_outstanding"``: the least loaded
        eligible replica (O(n), ties to the lowest index); ``"round_robin"``: the next eligible
        replica after the previous pick.  The round-robin position is kept per ``rng`` and per
        replica set (its length and first and last replica), so a fresh list of the same
        replicas continues the rotation and deployments do not disturb each other.

    Raises
    ------
    NoReplicaError
        No replica is healthy and not draining.
    """
    n = len(replicas)
    if policy == "p2c":
        if n >= 2:
            for _ in range(4):  # sample; fall back to a scan only when most are ineligible
                i = rng.randrange(n)
                j = rng.randrange(n - 1)
                if j >= i:
                    j += 1
                a, b = replicas[i], replicas[j]
                ea, eb = _eligible(a), _eligible(b)
                if ea and eb:
                    return j if _load(b) < _load(a) else i
                if ea or eb:
                    break
        ok = [k for k in range(n) if _eligible(replicas[k])]
        if not ok:
            raise _none(n)
        if len(ok) == 1:
            return ok[0]
        i, j = rng.sample(ok, 2)
        return j if _load(replicas[j]) < _load(replicas[i]) else i
    if policy == "least_outstanding":
        best, best_load = -1, math.inf
        for k in range(n):
            r = replicas[k]
            if _eligible(r):
                load = _load(r)
                if load < best_load:
                    best, best_load = k, load
        if best < 0:
            raise _none(n)
        return best
    if policy == "round_robin":
        if n == 0:
            raise _none(0)
        key = (n, id(replicas[0]), id(replicas[-1]))
        try:
            state = _RR.setdefault(rng, {})
        except TypeError:  # an rng that takes no weak references
            state = _RR_FALLBACK
        if len(state) > 4096:
            state.clear()
        start = state.get(key, -1) + 1
        for step in range(n):
            k = (start + step) % n
            if _eligible(replicas[k]):
                state[key] = k
                return k
        raise _none(n)
    raise ConfigError(f"unknown routing policy {policy!r}", f"use one of {', '.join(POLICIES)}")


def _none(n: int) -> NoReplicaError:
    return NoReplicaError(f"none of the {n} replicas is healthy and not draining" if n else "the deployment has no replicas",
                          "wait for a replica to come back, or scale the deployment up")


# -- autoscaling --------------------------------------------------------------------------------
def autoscale_target(current: int, *, p99_ms: float | None, target_p99_ms: float, queue_depth: float,
                     minimum: int, maximum: int, queue_per_worker: float = 4.0) -> int:
    """The worker count a deployment wants next.

    Up, proportionally, when ``p99_ms > target_p99_ms`` (``ceil(current * p99 / target)``) or
    when more than ``queue_per_worker`` requests wait per worker
    (``ceil(queue_depth / queue_per_worker)``); down by one when ``p99_ms`` is under half the
    target and at most half of ``queue_per_worker`` waits per worker; ``p99_ms=None`` (no
    traffic) and an empty queue step down by one toward ``minimum``.  Always within
    ``[minimum, maximum]``.
    """
    if minimum < 0 or maximum < minimum:
        raise ConfigError(f"autoscale bounds minimum={minimum}, maximum={maximum} are invalid",
                          "use 0 <= minimum <= maximum")
    if target_p99_ms <= 0 or queue_per_worker <= 0:
        raise ConfigError("target_p99_ms and queue_per_worker must be positive")
    base = max(int(current), 1)
    per_worker = queue_depth / base
    want = int(current)
    if p99_ms is not None and p99_ms > target_p99_ms:
        want = max(want, math.ceil(base * p99_ms / target_p99_ms))
    if per_worker > queue_per_worker:
        want = max(want, math.ceil(queue_depth / queue_per_worker))
    if want == current:
        idle = p99_ms is None and queue_depth <= 0
        calm = p99_ms is not None and p99_ms < 0.5 * target_p99_ms and per_worker <= queue_per_worker / 2
        if idle or calm:
            want = current - 1
    return max(minimum, min(maximum, want))
