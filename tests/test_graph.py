"""Graph API and executor: the issue's pipeline, parallel branches, submit, and the property
test: for every generated DAG the compiled graph equals a naive node-by-node run."""
from __future__ import annotations

import threading
import time

import numpy as np
import pytest

import edgebench as eb
from edgebench.graph import CompiledGraph
from edgebench.graph.dags import linear_model, naive_run, random_dag


def _pipeline(sleep: float = 0.0):
    det, cls = linear_model(8, 0, name="detector"), linear_model(8, 1, act="Tanh", name="classifier")

    def preprocess(image):
        return (image / 255.0).astype(np.float32)

    def slow(x):
        time.sleep(sleep)
        return x

    def combine(boxes, logits):
        return boxes + logits

    g = eb.Graph("pipeline")
    g.add(fn=preprocess, inputs=["image"], outputs=["x"])
    if sleep:
        g.add(fn=slow, inputs=["x"], outputs=["xa"], name="slow_a")
        g.add(fn=slow, inputs=["x"], outputs=["xb"], name="slow_b")
    g.add(model=det, inputs={"x": "xa" if sleep else "x"}, outputs={"y": "boxes"})
    g.add(model=cls, inputs={"x": "xb" if sleep else "x"}, outputs={"y": "logits"})
    g.add(fn=combine, inputs=["boxes", "logits"], outputs=["result"])
    return g, det, cls


def test_issue_pipeline_matches_hand_computation():
    g, det, cls = _pipeline()
    assert isinstance(eb.Graph("x"), eb.graph.Graph)
    assert g.inputs == ["image"] and g.outputs == ["result"]
    img = np.random.default_rng(0).integers(0, 255, (1, 8)).astype(np.float32)
    with g.compile(backend="onnxruntime", device="cpu") as cg:
        assert isinstance(cg, CompiledGraph)
        out = cg.run({"image": img})
        x = img / 255.0
        e1, e2 = eb.Engine(det, threads=1), eb.Engine(cls, threads=1)
        want = e1.run({"x": x})["y"] + e2.run({"x": x})["y"]
        np.testing.assert_allclose(out["result"], want, rtol=1e-6)
        fut = cg.submit({"image": img})
        np.testing.assert_allclose(fut.result(timeout=10)["result"], want, rtol=1e-6)


def test_independent_branches_run_concurrently():
    g, _, _ = _pipeline(sleep=0.3)
    cg = g.compile(max_workers=2)
    img = np.ones((1, 8), np.float32)
    cg.run({"image": img})
    t = time.perf_counter()
    cg.run({"image": img})
    dt = time.perf_counter() - t
    assert dt < 0.5, f"two 0.3 s branches took {dt:.2f} s: they ran one after the other"
    serial = g.compile(max_workers=1)
    t = time.perf_counter()
    serial.run({"image": img})
    assert time.perf_counter() - t >= 0.6
    cg.close(), serial.close()


def test_step_starts_as_soon_as_its_inputs_are_ready():
    """``fast_after`` depends only on the fast branch: it must not wait for the slow one."""
    started = {}
    g = eb.Graph()
    g.add(fn=lambda x: (time.sleep(0.4), x)[1], inputs=["x"], outputs=["s"], name="slow")
    g.add(fn=lambda x: x, inputs=["x"], outputs=["f"], name="fast")
    g.add(fn=lambda f: started.setdefault("t", time.perf_counter()) and f, inputs=["f"], outputs=["g"], name="fast_after")
    cg = g.compile(max_workers=2)
    t0 = time.perf_counter()
    out = cg.run({"x": 1})
    assert out == {"s": 1, "g": 1}
    assert started["t"] - t0 < 0.3  # the slow branch takes 0.4 s


def test_submit_caps_requests_in_flight():
    active, peak, lock = [0], [0], threading.Lock()

    def work(x):
        with lock:
            active[0] += 1
            peak[0] = max(peak[0], active[0])
        time.sleep(0.03)
        with lock:
            active[0] -= 1
        return x * 2

    g = eb.Graph()
    g.add(fn=work, inputs=["x"], outputs=["y"])
    cg = g.compile(max_inflight=2)
    futs = [cg.submit({"x": i}) for i in range(10)]
    assert [f.result(timeout=10)["y"] for f in futs] == [2 * i for i in range(10)]
    assert peak[0] == 2
    cg.close()


def test_intermediates_are_released_after_their_last_reader():
    import weakref

    refs = []

    class Box:
        def __init__(self, v):
            self.v = v

    def make(x):
        b = Box(x)
        refs.append(weakref.ref(b))
        return b

    def check(b):
        return b.v + 1

    def later(y):
        import gc

        gc.collect()
        return [r() is None for r in refs]

    g = eb.Graph()
    g.add(fn=make, inputs=["x"], outputs=["box"])
    g.add(fn=check, inputs=["box"], outputs=["y"])
    g.add(fn=later, inputs=["y"], outputs=["released"])
    assert g.compile().run({"x": 1})["released"] == [True]


def test_fn_inputs_by_keyword_and_model_ports_by_position():
    g = eb.Graph()
    g.add(fn=lambda a, b: a - b, inputs={"b": "p", "a": "q"}, outputs=["d"])
    g.add(model=linear_model(4, 0, act=None), inputs=["d"], outputs=["y"])
    cg = g.compile()
    q, p = np.ones((1, 4), np.float32), np.zeros((1, 4), np.float32)
    out = cg.run({"p": p, "q": q})["y"]
    np.testing.assert_allclose(out, eb.Engine(g.nodes[1].model).run({"x": q})["y"], rtol=1e-6)


@pytest.mark.parametrize("seed", range(40))
def test_compiled_equals_naive_for_generated_dags(seed):
    dag = random_dag(seed=seed, n_nodes=3 + seed % 8, width=8, batch=1 + seed % 3)
    ref = naive_run(dag.graph, dag.feeds)
    with dag.graph.compile(max_workers=2) as cg:
        out = cg.run(dag.feeds)
        assert sorted(out) == sorted(ref)
        for k in ref:
            np.testing.assert_allclose(out[k], ref[k], rtol=1e-4, atol=1e-5, err_msg=f"seed {seed}, tensor {k}")
    with dag.graph.compile(fuse=False, fold=False, prune=False, max_workers=1) as plain:
        out = plain.run(dag.feeds)
        for k in ref:
            np.testing.assert_allclose(out[k], ref[k], rtol=1e-5, atol=1e-6)


def test_generator_is_seeded_and_makes_fusable_chains():
    a, b = random_dag(seed=7), random_dag(seed=7)
    assert [n.name for n in a.graph.nodes] == [n.name for n in b.graph.nodes]
    assert all(np.array_equal(a.feeds[k], b.feeds[k]) for k in a.feeds)
    assert a.graph.nodes[0].model is None or a.graph.nodes[0].model.sha256 == b.graph.nodes[0].model.sha256
    fused = sum(len(random_dag(seed=s).graph.compile().plan["fused"]) for s in range(10))
    assert fused >= 3
