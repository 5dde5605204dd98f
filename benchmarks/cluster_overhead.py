"""Remote request latency on an edgebench cluster vs a local Engine and a raw Dask Actor call.

zoo mlp, batch 1, one intra-op thread, a LocalCluster of one worker process on 127.0.0.1.
In alternating rounds, one request at a time:

* local     ``Engine.run`` in this process (the floor)
* actor     a raw Dask Actor holding an onnxruntime session, ``actor.run(x).result()``
            (Dask's own way to reach a stateful object on a worker without the scheduler)
* cluster   ``dep.run(x)``: edgebench's path (client -> worker RPC, model on the worker)

Target: cluster p50 overhead over local <= the actor's p50 overhead; aim <= 0.5 ms.
"""
from __future__ import annotations

import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))


class OrtActor:
    """The raw baseline: an onnxruntime session in a Dask Actor."""

    def __init__(self, model_bytes: bytes):
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads = 1
        self.sess = ort.InferenceSession(model_bytes, so, providers=["CPUExecutionProvider"])

    def run(self, feeds):
        return self.sess.run(None, feeds)


def main() -> int:
    from _common import banner, interleaved, verdict

    import edgebench as eb

    banner("cluster remote request overhead (zoo mlp, batch 1, 1 worker process)")
    m = eb.zoo.load("mlp")
    eng = eb.Engine(m, threads=1, record=False)
    x = eng.sample_feeds()
    with eb.Cluster.local(n_workers=1) as cl:
        dep = cl.deploy(m, replicas=1)
        actor = cl.client.submit(OrtActor, m.to_bytes(), actor=True).result()
        np.testing.assert_allclose(dep.run(x)["logits"], actor.run(x).result()[0], rtol=1e-5, atol=1e-6)
        res = interleaved({"local": lambda: eng.run(x), "actor": lambda: actor.run(x).result(),
                           "cluster": lambda: dep.run(x)}, rounds=6, n=300, warmup=200)
    p50 = {k: float(np.median(v)) / 1e3 for k, v in res.items()}
    p99 = {k: float(np.percentile(v, 99)) / 1e3 for k, v in res.items()}
    print(f"   {'path':<10}{'p50 ms':>10}{'p99 ms':>10}{'overhead p50 ms':>18}")
    for k in res:
        print(f"   {k:<10}{p50[k]:>10.3f}{p99[k]:>10.3f}{p50[k] - p50['local']:>18.3f}")
    over_c = p50["cluster"] - p50["local"]
    over_a = p50["actor"] - p50["local"]
    ok = over_c <= over_a
    print(f"   cluster overhead / actor overhead = {over_c / over_a:.2f}  (target <= 1.00: {verdict(ok)})")
    print(f"   cluster overhead {over_c:.3f} ms (aim <= 0.5 ms: {verdict(over_c <= 0.5)})")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
