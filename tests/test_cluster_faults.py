"""Faults, autoscaling, CLI-started clusters and TLS: each test owns its real cluster."""
from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from edgebench.graph.dags import linear_model

from .test_cluster import hammer, local, shm_files, wide_feeds, wide_model

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def model():
    return linear_model(32, seed=11, name="lin32")


@pytest.fixture(scope="module")
def feeds():
    rng = np.random.default_rng(1)
    return [{"x": rng.standard_normal((1, 32)).astype(np.float32)} for _ in range(40)]


@pytest.fixture(scope="module", params=["small", "shm"])
def case(request, model, feeds):
    """(model, feeds): small inline tensors, or 128 KB ones that travel through shared memory."""
    if request.param == "small":
        return model, feeds
    return wide_model(), wide_feeds(40)


def wait_for(cond, timeout=30.0, step=0.1):
    end = time.time() + timeout
    while time.time() < end:
        if cond():
            return True
        time.sleep(step)
    return False


def test_kill_9_under_load_loses_nothing_and_the_replica_comes_back(case):
    from edgebench.cluster import Cluster

    model, feeds = case
    with Cluster.local(n_workers=2) as cl:
        dep = cl.deploy(model, replicas=2)
        results, errors = [], []
        th = threading.Thread(target=hammer, args=(dep, feeds, 4.0, results, errors))
        th.start()
        time.sleep(1.0)
        killed = cl.kill_worker(dep.replicas[0].worker)
        th.join()
        assert not errors, errors[:3]
        ref = local(model, feeds)
        assert len(results) > 100 and all(np.allclose(y, ref[j], atol=1e-6) for j, y in results)
        # the nanny's replacement joins and the deployment is two replicas on two workers again
        assert wait_for(lambda: sum(r.healthy for r in dep.replicas) == 2
                        and len({r.worker for r in dep.replicas}) == 2 and killed not in cl.worker_addresses())
        kinds = list(cl.events.kind)
        assert "replica_lost" in kinds and "worker_left" in kinds and "worker_joined" in kinds
        assert kinds.index("replica_lost") > kinds.index("worker_killed")
        assert ("shm_on" in kinds) == (model.name == "wide")  # the large tensors took shared memory
        row = cl.deployments.iloc[0]
        assert row.errors == 0 and row.completed == len(results)
    assert shm_files() == []


def test_autoscale_up_under_load_and_down_when_idle(model):
    from edgebench import Cluster

    slow = linear_model(512, seed=3, name="lin512")  # ~0.1 ms: p99 under load is queueing
    x = {"x": np.ones((1, 512), np.float32)}
    with Cluster.local(n_workers=1) as cl:
        dep = cl.deploy(slow, replicas=1)
        cl.adapt(minimum=1, maximum=2, target_p99_ms=0.5, interval=0.3, wait_count=2)
        stop = time.time() + 20
        errors = []

        def load():
            while time.time() < stop and len(cl.worker_addresses()) < 2:
                try:
                    [f.result(30) for f in [dep.submit(x) for _ in range(64)]]
                except Exception as e:
                    errors.append(e)

        th = threading.Thread(target=load)
        th.start()
        th.join()
        assert not errors
        assert wait_for(lambda: sum(r.healthy for r in dep.replicas) == 2, 20)
        assert len({r.worker for r in dep.replicas}) == 2
        # idle: p99 is gone from the window, the autoscaler drains one worker and closes it
        assert wait_for(lambda: len(cl.worker_addresses()) == 1 and len(dep.replicas) == 1, 40)
        assert dep.run(x)["y"].shape == (1, 512)
        kinds = set(cl.events.kind)
        assert {"autoscale", "worker_joined", "replica_retired", "worker_left"} <= kinds


def _spawn(args, env):
    return subprocess.Popen([sys.executable, "-m", "dask", *args], env=env, cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def test_dask_cli_scheduler_and_workers_with_resources(tmp_path, model, feeds):
    from edgebench import Cluster
    from edgebench.errors import ClusterError

    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    sched_file = tmp_path / "scheduler.json"
    procs = [_spawn(["scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
                     "--scheduler-file", str(sched_file)], env)]
    try:
        assert wait_for(sched_file.exists, 30)
        import json

        addr = json.loads(sched_file.read_text())["address"]
        for res in ("GPU=1", None):
            procs.append(_spawn(["worker", addr, "--nthreads", "1", "--host", "127.0.0.1", "--no-dashboard",
                                 *(["--resources", res] if res else [])], env))
        from distributed import Client

        client = Client(addr, timeout="20s")
        client.wait_for_workers(2, timeout=30)
        cl = Cluster(client)
        try:
            gpu = cl.deploy(model, resources={"GPU": 1}, name="on-gpu-worker")
            info = client.scheduler_info()["workers"]
            gpu_worker = next(a for a, w in info.items() if w["resources"].get("GPU"))
            assert [r.worker for r in gpu.replicas] == [gpu_worker]
            np.testing.assert_allclose(gpu.run(feeds[0])["y"], local(model, feeds[:1])[0], rtol=1e-6)
            # the one GPU is taken: a second GPU replica has nowhere to go
            with pytest.raises(ClusterError, match="GPU"):
                gpu.scale(2)
            both = cl.deploy(model, replicas=2, name="anywhere")
            assert len({r.worker for r in both.replicas}) == 2
            by_address = Cluster(addr)
            try:
                with pytest.raises(ClusterError, match="scheduler address"):
                    by_address.scale(3)
            finally:
                by_address.close()
        finally:
            cl.close()
            n = len(cl.log)
            cl._on_membership((0.0, {"action": "remove_worker", "worker": "tcp://127.0.0.1:9"}))
            assert len(cl.log) == n  # the client lives on: a late event does not reach a closed cluster
            client.shutdown()  # scheduler and workers stop at once (SIGTERM can take seconds)
    finally:
        for p in procs[::-1]:
            p.terminate()
        for p in procs:
            p.wait(20)


def test_tls_end_to_end_with_self_signed_certificates(tmp_path, model, feeds):
    trustme = pytest.importorskip("trustme")
    from distributed.security import Security

    from edgebench import Cluster

    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    ca_file, pem = tmp_path / "ca.pem", tmp_path / "node.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    cert.private_key_and_cert_chain_pem.write_to_path(str(pem))
    sec = Security(tls_ca_file=str(ca_file), tls_client_cert=str(pem), tls_scheduler_cert=str(pem),
                   tls_worker_cert=str(pem), require_encryption=True)
    with Cluster.local(n_workers=2, security=sec) as cl:
        assert cl.client.scheduler.address.startswith("tls://")
        assert all(a.startswith("tls://") for a in cl.worker_addresses())
        dep = cl.deploy(model, replicas=2)
        ref = local(model, feeds)
        outs = [f.result(30)["y"] for f in [dep.submit(x) for x in feeds]]
        assert all(np.allclose(a, b, atol=1e-6) for a, b in zip(outs, ref))
        assert all(r.worker.startswith("tls://") for r in dep.replicas)
        # without the certificates nobody gets in
        from distributed import Client

        with pytest.raises((OSError, TimeoutError)):
            Client(cl.client.scheduler.address.replace("tls://", "tcp://"), timeout="2s")


def test_stream_through_a_cluster_stage_survives_a_worker_kill(model, feeds):
    """A StreamGraph whose model stage is a cluster deployment: a worker killed mid-stream
    loses no event and doubles none (the deployment retries; the stream keeps its order)."""
    from edgebench import Cluster
    from edgebench.graph import StreamGraph

    xs = [feeds[i % len(feeds)] for i in range(400)]
    ref = [float(y.sum()) for y in [local(model, [x])[0] for x in xs]]

    def slow_source():
        for i, x in enumerate(xs):
            if i % 50 == 0:
                time.sleep(0.05)
            yield x

    with Cluster.local(n_workers=2) as cl:
        dep = cl.deploy(model, replicas=2)
        sg = (StreamGraph("remote", queue_size=8).source(slow_source())
              .map(dep, name="remote-model").map(lambda out: float(out["y"].sum()), name="sum"))
        killer = threading.Timer(0.2, cl.kill_worker, args=(dep.replicas[0].worker,))
        killer.start()
        got = sg.run(timeout=120)
        killer.join()
        assert "replica_lost" in set(cl.events.kind) or "worker_left" in set(cl.events.kind)
    assert len(got) == len(ref)
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)


def test_a_hung_worker_times_out_and_its_requests_go_elsewhere(case):
    """SIGSTOP (not kill): the connection stays open but nothing answers; requests time out,
    are answered by the other replica, and the replica is re-created there."""
    import signal

    model, feeds = case
    from edgebench import Cluster

    with Cluster.local(n_workers=2) as cl:
        dep = cl.deploy(model, replicas=2, timeout_s=1.5)
        victim = dep.replicas[0].worker
        pid = cl.client.run(os.getpid, workers=[victim])[victim]
        os.kill(pid, signal.SIGSTOP)
        try:
            t0 = time.time()
            outs = [f.result(30)["y"] for f in [dep.submit(x) for x in feeds]]
            took = time.time() - t0
            ref = local(model, feeds)
            assert all(np.allclose(a, b, atol=1e-6) for a, b in zip(outs, ref))
            assert took < 10
            assert any("no answer within" in d for d in cl.events.detail.astype(str))
            assert wait_for(lambda: sum(r.healthy for r in dep.replicas) == 2, 20)
            assert all(r.worker != victim for r in dep.replicas)
        finally:
            os.kill(pid, signal.SIGCONT)
    assert shm_files() == []
