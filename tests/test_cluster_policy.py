"""Placement, routing and autoscaling policy (pure functions, no Dask)."""
from __future__ import annotations

import random
import time
from dataclasses import dataclass

import pytest

from edgebench.cluster.policy import (
    NodeState,
    autoscale_target,
    capacity,
    choose,
    commit,
    fits,
    place,
    place_many,
    release,
)
from edgebench.errors import ConfigError, NoReplicaError, PlacementError

MB = 1 << 20


def _nodes(n: int, **kw) -> list[NodeState]:
    return [NodeState(f"tcp://10.0.0.{i}:1", **kw) for i in range(n)]


def test_capacity_cpu_defaults_to_threads_other_resources_only_when_declared():
    n = NodeState("a", nthreads=4)
    assert capacity(n, "CPU") == 4 and capacity(n, "GPU") == 0
    g = NodeState("b", nthreads=4, resources={"CPU": 2, "GPU": 1})
    assert capacity(g, "CPU") == 2 and capacity(g, "GPU") == 1


def test_place_spreads_one_deployment_across_workers():
    nodes = _nodes(3, nthreads=8)
    taken = [place(nodes, "m", {"CPU": 1}, 0) for _ in range(2)]
    assert taken[0] is taken[1]  # place alone does not commit
    for _ in range(6):
        commit(place(nodes, "m", {"CPU": 1}, 0), "m", {"CPU": 1}, 0)
    assert [n.replicas["m"] for n in nodes] == [2, 2, 2]
    assert [n.used["CPU"] for n in nodes] == [2, 2, 2]


def test_place_prefers_workers_with_fewer_replicas_in_total_then_memory():
    a, b, c = _nodes(3, nthreads=4, memory_limit=1000 * MB)
    commit(a, "other", {"CPU": 1}, 10 * MB)
    b.memory_used = 500 * MB
    assert place([a, b, c], "m", {"CPU": 1}, 0) is c  # a has a replica, b more memory used
    c.memory_used = 600 * MB
    assert place([a, b, c], "m", {"CPU": 1}, 0) is b


def test_gpu_only_where_declared_and_the_error_says_how_to_declare_it():
    nodes = _nodes(3, nthreads=2) + [NodeState("gpu-box", nthreads=2, resources={"GPU": 1})]
    assert place(nodes, "det", {"CPU": 1, "GPU": 1}, 0).address == "gpu-box"
    commit(nodes[3], "det", {"CPU": 1, "GPU": 1}, 0)
    assert fits(nodes[3], {"GPU": 1}, 0) == "has GPU=0 of 1 needed"
    with pytest.raises(PlacementError) as e:
        place(nodes, "det", {"CPU": 1, "GPU": 1}, 0)
    msg = str(e.value)
    assert "'det'" in msg and "3 workers have no GPU resource" in msg
    assert "dask worker --resources GPU=1" in msg and "1 worker has all GPU in use" in msg


def test_cpu_slots_run_out():
    nodes = _nodes(2, nthreads=1)
    place_many(nodes, "m", 2, {"CPU": 1}, 0)
    with pytest.raises(PlacementError, match="2 workers have all CPU in use"):
        place(nodes, "m", {"CPU": 1}, 0)


def test_memory_refusal_gives_the_reason():
    n = NodeState("small", nthreads=4, memory_limit=100 * MB, memory_used=50 * MB)
    assert fits(n, {"CPU": 1}, 120 * MB) == "has 50 MB free, needs 120 MB"
    assert fits(n, {"CPU": 1}, 40 * MB) is None
    assert fits(NodeState("unknown-limit"), {}, 10**12) is None  # memory_limit 0: no check
    with pytest.raises(PlacementError) as e:
        place([n, NodeState("tiny", memory_limit=20 * MB)], "big", {"CPU": 1}, 120 * MB)
    assert "needs CPU=1, 120 MB" in str(e.value) and "2 workers have too little memory (at most 50 MB free)" in str(e.value)
    assert "memory-limit" in str(e.value)


def test_exclude_draining_and_unhealthy_are_skipped():
    a, b, c, d = _nodes(4, nthreads=2)
    b.draining = True
    c.healthy = False
    assert fits(b, {}, 0) == "is draining" and fits(c, {}, 0) == "is unhealthy"
    for _ in range(5):
        assert place([a, b, c, d], "m", {"CPU": 1}, 0, exclude={a.address}) is d
    with pytest.raises(PlacementError) as e:
        place([a, b, c, d], "m", {"CPU": 1}, 0, exclude=[a.address, d.address])
    assert "2 workers are excluded" in str(e.value) and "1 worker is draining" in str(e.value)
    assert "1 worker is unhealthy" in str(e.value)
    with pytest.raises(PlacementError, match="has no workers"):
        place([], "m", {"CPU": 1}, 0)


def test_place_many_rolls_back_on_failure():
    nodes = _nodes(2, nthreads=1, memory_limit=1000 * MB)
    commit(nodes[0], "keep", {}, 5 * MB)
    with pytest.raises(PlacementError, match="placed 2 of 3 replicas"):
        place_many(nodes, "m", 3, {"CPU": 1}, 100 * MB)
    assert nodes[0].replicas == {"keep": 1} and nodes[0].memory_used == 5 * MB and not nodes[0].used
    assert nodes[1].replicas == {} and nodes[1].memory_used == 0 and not nodes[1].used


def test_place_many_equals_repeated_place_and_commit():
    rng = random.Random(5)
    fleet = [NodeState(f"n{i:03d}", nthreads=rng.choice((1, 2, 4)), memory_limit=rng.choice((0, 300 * MB, 2000 * MB)),
                       resources={"GPU": 1} if rng.random() < 0.3 else {}) for i in range(60)]
    for node in fleet[:10]:
        commit(node, "other", {"CPU": 1}, 50 * MB)
    a = [NodeState(**{**vars(n), "used": dict(n.used), "replicas": dict(n.replicas)}) for n in fleet]
    b = [NodeState(**{**vars(n), "used": dict(n.used), "replicas": dict(n.replicas)}) for n in fleet]
    got = [n.address for n in place_many(a, "m", 40, {"CPU": 1}, 120 * MB)]
    want = []
    for _ in range(40):
        node = place(b, "m", {"CPU": 1}, 120 * MB)
        commit(node, "m", {"CPU": 1}, 120 * MB)
        want.append(node.address)
    assert got == want
    assert [(n.replicas, n.used, n.memory_used) for n in a] == [(n.replicas, n.used, n.memory_used) for n in b]


def test_release_is_the_inverse_and_never_goes_below_zero():
    n = NodeState("a", nthreads=2, memory_limit=100 * MB)
    commit(n, "m", {"CPU": 1, "GPU": 0.5}, 30 * MB)
    release(n, "m", {"CPU": 1, "GPU": 0.5}, 30 * MB)
    assert n.used == {} and n.memory_used == 0 and n.replicas == {}
    release(n, "m", {"CPU": 1}, 30 * MB)
    assert n.used == {} and n.memory_used == 0 and n.replicas == {}


def test_place_is_fast_on_ten_thousand_nodes():
    nodes = _nodes(10_000, nthreads=2, memory_limit=4000 * MB)
    t = time.perf_counter()
    for _ in range(5):
        place(nodes, "m", {"CPU": 1}, 100 * MB)
    assert (time.perf_counter() - t) / 5 < 0.1  # O(n): a few ms here


@dataclass
class R:
    outstanding: int = 0
    healthy: bool = True
    draining: bool = False
    speed: float = 1.0


def test_choose_p2c_picks_the_less_loaded_of_two():
    reps = [R(outstanding=5), R(outstanding=1)]
    rng = random.Random(0)
    assert {choose(reps, rng) for _ in range(50)} == {1}
    # many replicas: the single most loaded one is never picked (it always loses its pair)
    reps = [R(outstanding=i % 4) for i in range(9)] + [R(outstanding=100)]
    assert 9 not in {choose(reps, rng) for _ in range(2000)}
    # equal queues: the faster replica wins
    assert {choose([R(speed=0.5), R(speed=2.0)], rng) for _ in range(20)} == {1}


def test_choose_skips_unhealthy_and_draining_and_raises_when_none():
    reps = [R(healthy=False), R(draining=True), R(outstanding=50), R(healthy=False)]
    for policy in ("p2c", "least_outstanding", "round_robin"):
        rng = random.Random(1)
        assert {choose(reps, rng, policy) for _ in range(30)} == {2}
        with pytest.raises(NoReplicaError, match="none of the 2 replicas"):
            choose([R(healthy=False), R(draining=True)], rng, policy)
        with pytest.raises(NoReplicaError, match="no replicas"):
            choose([], rng, policy)
    # p2c with most replicas ineligible falls back to a scan and still finds the healthy ones
    many = [R(healthy=False) for _ in range(500)] + [R(outstanding=3), R(outstanding=1)]
    assert {choose(many, random.Random(2)) for _ in range(50)} == {501}
    with pytest.raises(ConfigError, match="unknown routing policy"):
        choose([R()], random.Random(0), "fastest")


def test_choose_least_outstanding_and_round_robin():
    rng = random.Random(0)
    assert choose([R(outstanding=3), R(outstanding=0), R(outstanding=1)], rng, "least_outstanding") == 1
    assert choose([R(outstanding=1, speed=1.0), R(outstanding=1, speed=2.0)], rng, "least_outstanding") == 1
    reps = [R(), R(healthy=False), R(), R()]
    assert [choose(reps, rng, "round_robin") for _ in range(5)] == [0, 2, 3, 0, 2]
    assert choose(list(reps), rng, "round_robin") == 3  # a fresh list of the same replicas continues
    other = [R(), R()]
    assert [choose(other, rng, "round_robin") for _ in range(3)] == [0, 1, 0]  # its own rotation
    assert [choose(reps, rng, "round_robin") for _ in range(2)] == [0, 2]
    assert choose(reps, random.Random(0), "round_robin") == 0  # another rng starts afresh


def test_choose_p2c_is_constant_time():
    reps = [R(outstanding=i % 7) for i in range(200_000)]
    rng = random.Random(0)
    t = time.perf_counter()
    for _ in range(20_000):
        choose(reps, rng)
    assert time.perf_counter() - t < 1.0  # a scan per call would take minutes


def test_autoscale_target():
    kw = {"target_p99_ms": 20.0, "minimum": 1, "maximum": 8}
    assert autoscale_target(2, p99_ms=40.0, queue_depth=0, **kw) == 4  # proportional to p99
    assert autoscale_target(2, p99_ms=21.0, queue_depth=0, **kw) == 3
    assert autoscale_target(2, p99_ms=15.0, queue_depth=20, **kw) == 5  # 20 queued / 4 per worker
    assert autoscale_target(3, p99_ms=15.0, queue_depth=0, **kw) == 3  # within band: stay
    assert autoscale_target(3, p99_ms=5.0, queue_depth=1, **kw) == 2  # calm: down by one
    assert autoscale_target(3, p99_ms=5.0, queue_depth=9, **kw) == 3  # queue not low: stay
    assert autoscale_target(4, p99_ms=None, queue_depth=0, **kw) == 3  # no traffic: toward minimum
    assert autoscale_target(1, p99_ms=None, queue_depth=0, **kw) == 1
    assert autoscale_target(0, p99_ms=None, queue_depth=0, **kw) == 1  # clamp up to minimum
    assert autoscale_target(0, p99_ms=None, queue_depth=12, **kw) == 3  # requests queued, no workers
    assert autoscale_target(6, p99_ms=500.0, queue_depth=0, **kw) == 8  # clamp to maximum
    with pytest.raises(ConfigError):
        autoscale_target(1, p99_ms=1.0, queue_depth=0, target_p99_ms=20.0, minimum=3, maximum=2)
