"""The cluster on a real LocalCluster: worker processes talking TCP on 127.0.0.1."""
from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from edgebench.errors import (ClusterError, ConfigError, InvalidInputError, PlacementError, QueueFullError)
from edgebench.graph.dags import linear_model, random_dag

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cl():
    from edgebench.cluster import Cluster

    c = Cluster.local(n_workers=2, threads_per_worker=1,
                      tenants={"gold": {"priority": 1}, "free": {"priority": 2, "max_inflight": 4}})
    yield c
    c.close()


@pytest.fixture(scope="module")
def model():
    return linear_model(32, seed=7, name="lin32")


@pytest.fixture(scope="module")
def feeds(model):
    rng = np.random.default_rng(0)
    return [{"x": rng.standard_normal((1, 32)).astype(np.float32)} for _ in range(40)]


def wide_model(width=32768):
    """x[batch, width] (128 KB a row: shared memory) and s[batch, 4] (inline) -> Relu(x), Neg(s)."""
    import onnx
    from onnx import TensorProto, helper

    from edgebench import Model

    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"]), helper.make_node("Neg", ["s"], ["t"])], "wide",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", width]),
         helper.make_tensor_value_info("s", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", width]),
         helper.make_tensor_value_info("t", TensorProto.FLOAT, ["batch", 4])])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(proto)
    return Model(proto.SerializeToString(), name="wide", source="generated", proto=proto)


def wide_feeds(n, seed=0, width=32768):
    rng = np.random.default_rng(seed)
    return [{"x": rng.standard_normal((1, width)).astype(np.float32),
             "s": rng.standard_normal((1, 4)).astype(np.float32)} for _ in range(n)]


def shm_files():
    import os

    return [f for f in os.listdir("/dev/shm") if f.startswith(f"edgebench-{os.getpid()}-")]


def worker_maps(cl):
    import asyncio

    async def statuses():
        return {w: (await cl.client.rpc(w).eb_status())["shm_segments"] for w in cl.worker_addresses()}

    return asyncio.run_coroutine_threadsafe(statuses(), cl._loop).result(10)


def local(model, feeds):
    from edgebench import Engine

    eng = Engine(model, threads=1)
    return [eng.run(f)["y"] for f in feeds]


def hammer(dep, feeds, seconds, results, errors):
    """Submit in bursts of 16 until time is up; check nothing."""
    stop = time.time() + seconds
    i = 0
    while time.time() < stop:
        batch = [(j % len(feeds), dep.submit(feeds[j % len(feeds)])) for j in range(i, i + 16)]
        i += 16
        for j, f in batch:
            try:
                results.append((j, f.result(30)["y"]))
            except Exception as e:  # collected: the test asserts there are none
                errors.append(e)


def test_deploy_run_matches_local_engine(cl, model, feeds):
    dep = cl.deploy(model, replicas=2, name="match")
    try:
        ref = local(model, feeds)
        outs = [f.result(30)["y"] for f in [dep.submit(x) for x in feeds]]
        for a, b in zip(outs, ref):
            np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)
        assert dep.run(feeds[0])["y"].flags.writeable  # the caller owns its outputs
        assert len({r.worker for r in dep.replicas}) == 2  # spread over both workers
        assert sum(r.answered for r in dep.replicas) == len(feeds) + 1
        df = cl.deployments
        from edgebench.cluster.deployment import ROW_COLUMNS

        assert list(dep.row()) == ROW_COLUMNS == list(df.columns)
        row = df[df.deployment == "match"].iloc[0]
        assert row.replicas == 2 and row.completed == len(feeds) + 1 and row.errors == 0
        assert set(cl.workers.columns) >= {"worker", "nthreads", "memory_limit_mb", "replicas"}
        assert {"deployed", "replica_started"} <= set(cl.events.kind)
        assert "replicas=2/2" in repr(dep) and "match" in repr(cl)
    finally:
        dep.undeploy()
    with pytest.raises(ClusterError, match="undeployed"):
        dep.submit(feeds[0])


def test_a_worker_loads_a_models_bytes_once(cl, model, feeds):
    import asyncio

    dep = cl.deploy(model, replicas=3, name="thrice")  # two workers: one holds two replicas
    try:
        async def statuses():
            return [await cl.client.rpc(w).eb_status() for w in cl.worker_addresses()]

        st = asyncio.run_coroutine_threadsafe(statuses(), cl._loop).result()
        assert all(model.sha256 in s["models"] for s in st)
        assert sum(s["loads_from_cache"] for s in st) >= 1
        assert all(np.allclose(f.result(30)["y"], r, atol=1e-6)
                   for f, r in zip([dep.submit(x) for x in feeds], local(model, feeds)))
    finally:
        dep.undeploy()


@pytest.mark.skipif(not __import__("os").path.isdir("/dev/shm"), reason="no /dev/shm on this OS")
def test_large_tensors_travel_through_shared_memory(cl):
    model, feeds = wide_model(), wide_feeds(48)
    dep = cl.deploy(model, replicas=2, name="wide")
    try:
        outs = [f.result(30) for f in [dep.submit(x) for x in feeds]]  # many in flight: batches
        for o, x in zip(outs, feeds):
            np.testing.assert_array_equal(o["y"], np.maximum(x["x"], 0))
            np.testing.assert_array_equal(o["t"], -x["s"])
        assert all(r.transport == "shm" for r in dep.replicas)
        assert dep.row()["transport"] == "shm"
        assert "shm_on" in set(cl.events.kind)
        held = worker_maps(cl)
        # one segment per message in flight, per replica, no more; none left named in /dev/shm
        assert 1 <= sum(held.values()) <= 2 * len(dep.replicas), held
        assert shm_files() == []
        # bigger messages than the first segment holds: it is replaced, the worker unmaps the old
        big = wide_feeds(40, seed=1, width=65536)
        dep2 = cl.deploy(wide_model(65536), replicas=1, name="wider")
        outs = [f.result(30)["y"] for f in [dep2.submit(x) for x in big]]
        assert all(np.array_equal(o, np.maximum(x["x"], 0)) for o, x in zip(outs, big))
        dep2.undeploy()
    finally:
        dep.undeploy()
    assert sum(worker_maps(cl).values()) == 0  # undeploy unmaps every segment


def test_shared_memory_off_keeps_to_tcp():
    from edgebench.cluster import Cluster

    model, feeds = wide_model(), wide_feeds(8)
    with Cluster.local(n_workers=1, shm=False) as c:
        dep = c.deploy(model, replicas=1)
        outs = [f.result(30)["y"] for f in [dep.submit(x) for x in feeds]]
        assert all(np.array_equal(o, np.maximum(x["x"], 0)) for o, x in zip(outs, feeds))
        assert dep.replicas[0].transport == "tcp" and sum(worker_maps(c).values()) == 0


def test_a_worker_refuses_a_segment_that_is_not_the_clients(cl, model):
    """What a worker on another host sees: the name does not exist, or holds other bytes."""
    import asyncio

    from edgebench.cluster.shm import Segment

    seg = Segment(1 << 20)
    try:
        seg.token()
        w = cl.worker_addresses()[0]

        async def attach(**kw):
            return await cl.client.rpc(w).eb_shm_attach(replica="nobody", key=seg.key, size=seg.size, **kw)

        def call(**kw):
            return asyncio.run_coroutine_threadsafe(attach(**kw), cl._loop).result(10)

        r = call(path=seg.path, token=b"not the token 16")
        assert r["status"] == "error" and "another host" in r["error"]
        r = call(path=seg.path + "-missing", token=seg.token())
        assert r["status"] == "error" and "FileNotFoundError" in r["error"]
        r = call(path="/etc/hostname", token=seg.token())  # only edgebench segments are mapped
        assert r["status"] == "error" and "not an edgebench shared-memory segment" in r["error"]
        assert worker_maps(cl)[w] == 0
    finally:
        seg.close()
    assert shm_files() == []


def test_bad_requests_fail_fast_and_clearly(cl, model, feeds):
    dep = cl.deploy(model, name="bad")
    try:
        with pytest.raises(InvalidInputError):
            dep.submit({"x": np.zeros((1, 31), np.float32)})
        with pytest.raises(InvalidInputError):
            dep.submit({"nope": feeds[0]["x"]})
        with pytest.raises(ClusterError, match="exists already"):
            cl.deploy(model, name="bad")
        np.testing.assert_allclose(dep.run(feeds[0])["y"], local(model, feeds[:1])[0], rtol=1e-6)
    finally:
        dep.undeploy()
    with pytest.raises(ConfigError, match="replicas"):
        cl.deploy(model, replicas=0, name="zero")
    with pytest.raises(ConfigError, match="unknown tenant"):
        cl.deploy(model, tenant="nobody", name="t")
    with pytest.raises(ConfigError, match="routing"):
        cl.deploy(model, routing="random", name="r")
    assert "zero" not in set(cl.deployments.deployment)


def test_placement_honours_resources_and_memory(cl, model):
    with pytest.raises(PlacementError, match="GPU"):
        cl.deploy(model, resources={"GPU": 1}, name="gpu")
    with pytest.raises(PlacementError, match="MB"):
        cl.deploy(model, memory=1 << 50, name="huge")
    assert not {"gpu", "huge"} & set(cl.deployments.deployment)


def test_scale_up_and_down_under_load_fails_nothing(cl, model, feeds):
    dep = cl.deploy(model, replicas=1, name="scale")
    try:
        results, errors = [], []
        th = threading.Thread(target=hammer, args=(dep, feeds, 2.5, results, errors))
        th.start()
        time.sleep(0.5)
        dep.scale(3)
        assert sum(r.healthy for r in dep.replicas) == 3
        time.sleep(0.5)
        dep.scale(1)
        th.join()
        assert not errors
        assert len(dep.replicas) == 1 and dep.wanted == 1
        ref = local(model, feeds)
        assert all(np.allclose(y, ref[j], atol=1e-6) for j, y in results)
    finally:
        dep.undeploy()


def test_migrate_under_load_fails_nothing(cl, model, feeds):
    dep = cl.deploy(model, replicas=1, name="mig")
    try:
        src = dep.replicas[0].worker
        dst = next(w for w in cl.worker_addresses() if w != src)
        results, errors = [], []
        th = threading.Thread(target=hammer, args=(dep, feeds, 2.0, results, errors))
        th.start()
        time.sleep(0.5)
        new = dep.migrate(0, dst)
        th.join()
        assert not errors and results
        assert [r.worker for r in dep.replicas] == [dst] and new.worker == dst
        assert "migrated" in set(cl.events.kind)
        with pytest.raises(ClusterError, match="no replica"):
            dep.migrate("ghost", src)
        with pytest.raises(PlacementError, match="no worker"):
            dep.migrate(0, "tcp://127.0.0.1:1")
    finally:
        dep.undeploy()


def test_tenant_flooding_is_refused_while_another_is_served(cl, model, feeds):
    free = cl.deploy(model, name="free-dep", tenant="free")
    gold = cl.deploy(model, name="gold-dep", tenant="gold")
    try:
        refused = 0
        futs = []
        for i in range(200):
            try:
                futs.append(free.submit(feeds[i % len(feeds)]))
            except QueueFullError as e:
                assert "tenant 'free'" in str(e)
                refused += 1
        golds = [gold.submit(feeds[i % len(feeds)]) for i in range(200)]  # gold has no cap
        assert all(f.result(30)["y"].shape == (1, 32) for f in golds)
        assert all(f.result(30)["y"].shape == (1, 32) for f in futs)
        assert refused > 0 and len(futs) >= 4
        rows = {r["tenant"]: r for r in cl.tenants.rows()}
        assert rows["free"]["refused"] == refused and rows["gold"]["refused"] == 0
        assert rows["free"]["inflight"] == 0  # every slot came back
    finally:
        free.undeploy()
        gold.undeploy()


def test_batching_on_the_worker(cl, model, feeds):
    dep = cl.deploy(model, replicas=1, name="batched", batching={"max_batch_size": 8, "max_queue_delay_ms": 2.0})
    try:
        ref = local(model, feeds)
        outs = [f.result(30)["y"] for f in [dep.submit(x) for x in feeds]]
        assert all(np.allclose(a, b, atol=1e-6) for a, b in zip(outs, ref))
    finally:
        dep.undeploy()
    with pytest.raises(ConfigError, match="batching"):
        cl.deploy(model, name="b2", batching={"max_batch": 8})


def test_partitioned_random_dag_equals_local(cl):
    for seed in (1, 4):
        dag = random_dag(seed=seed, n_nodes=8)
        cg = dag.graph.compile(fuse=False)
        dg = cl.deploy_graph(cg, partition=2, feeds=dag.feeds)
        try:
            assert dg.plan.n_parts == 2 and len({a for _, a in dg.placement}) == 2
            want = cg.run(dag.feeds)
            got = dg.run(dag.feeds)
            assert set(got) == set(want)
            for k in want:
                np.testing.assert_allclose(got[k], want[k], rtol=1e-5, atol=1e-6)
            assert "part 1" in dg.explain()
        finally:
            dg.undeploy()
        cg.close()

def test_deploy_graph_auto_partition_and_sample_feeds(cl, model):
    from edgebench import Graph

    g = Graph("chain")
    g.add(model=model, inputs={"x": "in"}, outputs={"y": "h"}, name="a")
    g.add(model=linear_model(32, seed=8, name="b"), inputs={"x": "h"}, outputs={"y": "out"}, name="b")
    cg = g.compile(fuse=False)
    dg = cl.deploy_graph(cg)  # feeds made from the first model's signature; "auto" parts
    try:
        x = {"in": np.ones((1, 32), np.float32)}
        np.testing.assert_allclose(dg.run(x)["out"], cg.run(x)["out"], rtol=1e-5, atol=1e-6)
        # two steps far cheaper than a network hop: "auto" keeps the graph whole
        assert dg.plan.n_parts == 1
    finally:
        dg.undeploy()
        cg.close()
    g2 = Graph("fn-first")
    g2.add(fn=lambda a: a * 2, inputs=["in"], outputs=["x2"], name="double")
    g2.add(model=model, inputs={"x": "x2"}, outputs={"y": "out"}, name="m")
    with pytest.raises(ConfigError, match="feeds="):
        cl.deploy_graph(g2.compile())
    with pytest.raises(ConfigError, match="compiled graph"):
        cl.deploy_graph(g2)


def test_connecting_to_nothing_is_a_clear_error():
    from edgebench import Cluster

    t0 = time.time()
    with pytest.raises(ClusterError, match="cannot reach the Dask scheduler"):
        Cluster("tcp://127.0.0.1:1", timeout=1)
    assert time.time() - t0 < 10
    with pytest.raises(ConfigError, match="scheduler address"):
        Cluster(42)
