"""Graph partitioning: cuts carry every tensor a later part needs, the DP is exact, and running
the parts one after another equals running the compiled graph."""
from __future__ import annotations

import itertools
import random

import numpy as np
import pytest

from edgebench.cluster.partition import (
    PartitionPlan,
    partition_costs,
    partition_graph,
    profile_graph,
    run_part,
)
from edgebench.errors import ConfigError, GraphError
from edgebench.graph.dags import random_dag


@pytest.fixture(scope="module")
def graphs():
    out = []
    for seed in (0, 1, 2, 4):
        dag = random_dag(seed=seed, n_nodes=10, width=8, batch=2)
        cg = dag.graph.compile(fuse=False, fold=False)
        out.append((cg, dag.feeds))
    yield out
    for cg, _ in out:
        cg.close()


def _check_cover_and_cuts(cg, plan: PartitionPlan, k: int) -> None:
    n = len(cg.steps)
    assert plan.n_parts == min(k, n)
    assert [i for part in plan.parts for i in part] == list(range(n))  # every step once, in order
    assert all(plan.parts)
    assert plan.step_names == [s.node.name for s in cg.steps]
    avail = set(cg.inputs) | set(cg.constants)
    for p in range(plan.n_parts - 1):
        for i in plan.parts[p]:
            avail |= set(cg.steps[i].node.output_tensors)
        later = {t for q in plan.parts[p + 1:] for i in q for t in cg.steps[i].node.input_tensors}
        needed = (later | set(cg.outputs)) & avail
        assert set(plan.cuts[p]) == needed  # all it needs, nothing more
        assert len(plan.cuts[p]) == len(set(plan.cuts[p]))


def test_parts_cover_steps_cut_is_complete_and_parts_reproduce_run(graphs):
    for cg, feeds in graphs:
        assert len(cg.steps) >= 8
        ref = cg.run(feeds)
        step_ms, sizes = profile_graph(cg, feeds, rounds=2)
        assert len(step_ms) == len(cg.steps) and all(ms > 0 for ms in step_ms)
        assert sizes[cg.inputs[0]] == feeds[cg.inputs[0]].nbytes
        assert all(t in sizes for s in cg.steps for t in s.node.output_tensors)
        for k in (1, 2, 3, len(cg.steps)):
            plan = partition_costs(step_ms, [s.node.input_tensors for s in cg.steps],
                                   [s.node.output_tensors for s in cg.steps], sizes, cg.inputs, cg.outputs, k,
                                   step_names=[s.node.name for s in cg.steps], constants=list(cg.constants))
            _check_cover_and_cuts(cg, plan, k)
            assert plan.cut_bytes == [sum(sizes[t] for t in c) for c in plan.cuts]
            values = dict(feeds)
            for p in range(plan.n_parts):
                values = run_part(cg, plan, p, values)  # each part gets only what the previous sent
            assert list(values) == list(ref)
            for t in ref:
                assert np.array_equal(values[t], ref[t]), (cg.name, k, t)


def test_a_part_given_less_than_the_cut_says_what_is_missing(graphs):
    cg, feeds = graphs[0]
    plan = partition_graph(cg, feeds, k=2, rounds=1)
    sent = run_part(cg, plan, 0, feeds)
    needed = next(t for t in plan.cuts[0] if any(t in cg.steps[i].node.input_tensors for i in plan.parts[1]))
    with pytest.raises(GraphError, match="needs"):
        run_part(cg, plan, 1, {t: v for t, v in sent.items() if t != needed})


def test_auto_keeps_cheap_graphs_whole(graphs):
    for cg, feeds in graphs:
        plan = partition_graph(cg, feeds, k="auto", rounds=2)  # real steps: microseconds << 0.5 ms hop
        assert plan.n_parts == 1 and "kept whole" in " ".join(plan.notes)
        assert plan.cuts == [] and plan.total_cut_bytes == 0


def _chain(n):
    return [[f"x{i}"] for i in range(n)], [[f"x{i + 1}"] for i in range(n)]


def test_auto_splits_expensive_graphs_and_k_above_steps_is_noted():
    ins, outs = _chain(8)
    sizes = {f"x{i}": 100 for i in range(9)}
    plan = partition_costs([10.0] * 8, ins, outs, sizes, ["x0"], ["x8"], "auto")
    assert plan.n_parts == 8 and plan.bottleneck_ms == pytest.approx(10.5 + 100 / 1e6)
    plan = partition_costs([10.0] * 8, ins, outs, sizes, ["x0"], ["x8"], "auto", hop_ms=15.0)
    assert plan.n_parts == 2  # a hop of 15 ms: only halving pays
    plan = partition_costs([1.0] * 3, *_chain(3), {}, ["x0"], ["x3"], 5)
    assert plan.n_parts == 3 and "asked for 5 parts" in plan.notes[0]
    with pytest.raises(ConfigError):
        partition_costs([1.0], *_chain(1), {}, ["x0"], ["x1"], 0)
    with pytest.raises(GraphError, match="reads 'x1'"):  # not topological
        partition_costs([1.0, 1.0], [["x1"], ["x0"]], [["x2"], ["x1"]], {}, ["x0"], ["x2"], 2)


def _brute(step_ms, cut_b, recv0, k, hop, bw):
    n = len(step_ms)
    best = None
    for bounds in itertools.combinations(range(1, n), k - 1):
        b = (0, *bounds, n)
        stages = [sum(step_ms[b[i]:b[i + 1]]) + hop + (recv0 if b[i] == 0 else cut_b[b[i]]) / bw for i in range(k)]
        key = (max(stages), sum(cut_b[x] for x in bounds))
        if best is None or key[0] < best[0] - 1e-9 or (abs(key[0] - best[0]) <= 1e-9 and key[1] < best[1]):
            best = key
    return best


def test_dp_is_optimal_against_brute_force():
    rng = random.Random(0)
    for trial in range(200):
        n = rng.randint(1, 8)
        ins, outs, made = [], [], ["in0", "in1"]
        for i in range(n):  # a random DAG over named tensors, in topological order
            ins.append(rng.sample(made, rng.randint(1, min(2, len(made)))))
            outs.append([f"t{i}"])
            made.append(f"t{i}")
        sizes = {t: rng.choice((0, 10, 1000, 50_000, 200_000)) for t in made}
        step_ms = [rng.choice((0.01, 0.3, 1.0, 4.0)) * rng.random() for _ in range(n)]
        graph_out = [made[-1]] + rng.sample(made[2:], min(1, n))
        hop, bw = rng.choice((0.0, 0.5)), rng.choice((1e3, 1e6))
        # bytes crossing boundary b, computed independently: made before b, read at or after b or a graph output
        per_b = [sum(sizes[t] for t in made if (t in ("in0", "in1") or int(t[1:]) < b)
                     and (t in graph_out or any(t in ins[i] for i in range(b, n)))) for b in range(n + 1)]
        plan_all = {}
        for k in range(1, n + 1):
            plan = plan_all[k] = partition_costs(step_ms, ins, outs, sizes, ["in0", "in1"], graph_out, k,
                                                 hop_ms=hop, bandwidth_bytes_per_ms=bw)
            assert plan.cut_bytes == [per_b[p[0]] for p in plan.parts[1:]]
            want = _brute(step_ms, per_b, sizes["in0"] + sizes["in1"], k, hop, bw)
            assert plan.bottleneck_ms == pytest.approx(want[0], rel=1e-9, abs=1e-12), (trial, k)
            assert plan.total_cut_bytes == want[1], (trial, k)
        auto = partition_costs(step_ms, ins, outs, sizes, ["in0", "in1"], graph_out, "auto",
                               hop_ms=hop, bandwidth_bytes_per_ms=bw)
        scores = {k: p.bottleneck_ms + hop * (k - 1) for k, p in plan_all.items()}
        best = min(scores.values())
        assert auto.n_parts == min(k for k, s in scores.items() if s <= best + 1e-9 * max(1, best))


def test_plan_is_explainable_and_deterministic():
    ins, outs = _chain(6)
    sizes = {f"x{i}": 4096 * (i + 1) for i in range(7)}
    args = ([3.0, 1.0, 2.0, 5.0, 1.0, 1.0], ins, outs, sizes, ["x0"], ["x6"], 3)
    plan = partition_costs(*args, step_names=list("abcdef"))
    assert plan == partition_costs(*args, step_names=list("abcdef"))
    text = plan.explain()
    assert "3 parts" in text and "bottleneck" in text and "estimated latency" in text
    assert all(name in text for name in "abcdef") and "cut 0" in text and "cut 1" in text
    df = plan.to_pandas()
    assert len(df) == 3 and list(df["n_steps"]) == [len(p) for p in plan.parts]
    assert list(df["bytes_out"])[:-1] == plan.cut_bytes
    assert plan.latency_ms == pytest.approx(sum(plan.stage_ms))
    assert "PartitionPlan(3 parts" in repr(plan)
