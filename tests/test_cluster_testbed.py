"""The synthetic testbed: simulated fleets driving the real placement, routing and
partitioning code (simulated time; only placement_ms and wall_seconds are wall clock)."""
from __future__ import annotations

import pytest

from edgebench.cluster.testbed import (
    compare_routing,
    partition_study,
    scale_study,
    simulate,
)
from edgebench.errors import PlacementError

_WALL = ("placement_ms", "wall_seconds", "layout_ms")


def test_no_request_lost_under_failures():
    r = simulate(40, seed=1, failure_rate_per_node_hour=7200, max_requests=20_000)
    assert r.failures >= 5 and r.retried > 0  # failures really hit requests in flight
    assert r.lost == 0 and r.completed == r.requests > 15_000
    assert r.replicas == simulate(40, seed=1, failure_rate_per_node_hour=0, max_requests=10).replicas
    # every lost replica was placed again
    assert r.p99_ms >= r.p50_ms > 0


def test_deterministic_for_a_seed():
    a = simulate(30, seed=4, failure_rate_per_node_hour=3600, max_requests=5_000).as_row()
    b = simulate(30, seed=4, failure_rate_per_node_hour=3600, max_requests=5_000).as_row()
    c = simulate(30, seed=5, failure_rate_per_node_hour=3600, max_requests=5_000).as_row()
    assert {k: v for k, v in a.items() if k not in _WALL} == {k: v for k, v in b.items() if k not in _WALL}
    assert (a["p99_ms"], a["requests"]) != (c["p99_ms"], c["requests"])


def test_scale_study_rows():
    df = scale_study((10, 50, 400), max_requests=4_000, failure_rate_per_node_hour=0)
    assert list(df["n_nodes"]) == [10, 50, 400]
    assert (df["lost"] == 0).all() and (df["completed"] == df["requests"]).all()
    for n, reps in zip(df["n_nodes"], df["replicas"]):  # max(2, n // 4) per deployment, fewer on GPUs
        assert 3 * max(2, n // 4) + 2 <= reps <= 4 * max(2, n // 4)
    assert df["replicas"].iloc[-1] > 350
    assert (df["placement_ms"] > 0).all() and (df["balance"] >= 0).all()
    assert {"p50_ms", "p99_ms", "balance", "placement_ms", "sim_seconds"} <= set(df.columns)


def test_p2c_beats_round_robin_with_heterogeneous_speeds():
    df = compare_routing(60, policies=("p2c", "round_robin"), max_requests=30_000,
                         failure_rate_per_node_hour=0).set_index("routing")
    # round robin sends speed-0.5 nodes as much as speed-2 nodes: their queues grow without bound
    assert df.loc["p2c", "p99_ms"] * 3 < df.loc["round_robin", "p99_ms"]
    assert (df["lost"] == 0).all()


def test_a_fleet_that_cannot_hold_the_replicas_is_refused():
    with pytest.raises(PlacementError, match="no worker can hold a replica"):
        simulate(4, replicas_per_deployment=10, max_requests=100)


def test_partition_study_drives_partition_costs_on_random_dags():
    df = partition_study(seeds=(0, 1), n_steps=16, ks=(1, 2, 4, "auto"))
    assert len(df) == 8
    by_k = df[df["k"] != "auto"]
    assert (by_k["parts"] == by_k["k"].astype(int)).all()
    two = df[df["k"] == 2]
    assert (two["speedup"] > 1.5).all()  # model steps of ~2 ms each: halving pays
    assert (df[df["k"] == 1]["cut_bytes"] == 0).all()
