"""A chain of three ONNX models fused into one vs the same three run node by node in Python.

Three MLP-ish layers (MatMul + Add + Relu, width 128), batch 1, one intra-op thread each,
interleaved rounds.  Candidates:

* ``graph fused``: ``Graph.compile()`` merges the chain into one ONNX model (onnx.compose);
* ``graph node by node``: ``Graph.compile(fuse=False)``: three engines, intermediates in Python;
* ``raw ORT node by node``: three plain ``InferenceSession.run`` calls in a Python loop.

Target: p50(graph fused) / p50(graph node by node) <= 0.80.  Also measured: constant folding
plus dead-node elimination on a graph with a constant-only function node and a dead branch.
"""
from __future__ import annotations

import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
from _common import banner, interleaved, verdict  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--width", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--n", type=int, default=1000, help="calls per round")
    args = ap.parse_args()

    import onnxruntime as ort

    import edgebench as eb
    from edgebench.graph.dags import linear_model

    banner(f"graph fusion: 3 chained ONNX models (width {args.width}), batch 1, 1 thread")
    models = [linear_model(args.width, i, act="Relu", name=f"layer{i}") for i in range(3)]
    g = eb.Graph("chain3")
    t = "x"
    for i, m in enumerate(models):
        g.add(model=m, inputs={"x": t}, outputs={"y": f"h{i}"}, name=f"layer{i}")
        t = f"h{i}"
    fused = g.compile(threads=1)
    naive = g.compile(threads=1, fuse=False)
    assert len(fused.steps) == 1 and len(naive.steps) == 3, (fused.explain(), naive.explain())

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    raws = [ort.InferenceSession(m.to_bytes(), so, providers=["CPUExecutionProvider"]) for m in models]

    def raw_chain(x):
        for s in raws:
            x = s.run(None, {"x": x})[0]
        return x

    feeds = {"x": np.random.default_rng(0).standard_normal((1, args.width)).astype(np.float32)}
    ref = raw_chain(feeds["x"])
    np.testing.assert_allclose(fused.run(feeds)["h2"], ref, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(naive.run(feeds)["h2"], ref, rtol=1e-5, atol=1e-6)

    t = interleaved({
        "graph fused": lambda: fused.run(feeds),
        "graph node by node": lambda: naive.run(feeds),
        "raw ORT node by node": lambda: raw_chain(feeds["x"]),
    }, rounds=args.rounds, n=args.n)
    base = np.percentile(t["graph node by node"], 50)
    print(f"{'':24s}{'p50 us':>9s}{'p99 us':>9s}{'ratio p50':>11s}")
    for k, v in t.items():
        p50 = np.percentile(v, 50)
        print(f"{k:24s}{p50:9.1f}{np.percentile(v, 99):9.1f}{p50 / base:11.2f}")
    ratio = np.percentile(t["graph fused"], 50) / base
    vs_raw = np.percentile(t["graph fused"], 50) / np.percentile(t["raw ORT node by node"], 50)
    print(f"fused / node-by-node (graph): {ratio:.2f}  (target <= 0.80)  {verdict(ratio <= 0.80)}")
    print(f"fused / node-by-node (raw ORT): {vs_raw:.2f}")
    fused.close(), naive.close()
    _fold_and_prune(args)
    return 0 if ratio <= 0.80 else 1


def _fold_and_prune(args) -> None:
    """Constant folding and dead-node elimination, measured on the same chain plus a
    constant-only function node (a normalisation table) and a dead debugging branch."""
    import edgebench as eb
    from edgebench.graph.dags import linear_model

    w = args.width
    g = eb.Graph("fold_prune", outputs=["y"])
    g.constant("stats", np.random.default_rng(1).standard_normal((256, w)).astype(np.float32))
    g.add(fn=lambda s: (s.mean(0, keepdims=True), s.std(0, keepdims=True) + 1e-3), inputs=["stats"],
          outputs=["mu", "sd"], name="norm_table")
    g.add(fn=lambda x, mu, sd: ((x - mu) / sd).astype(np.float32), inputs=["x", "mu", "sd"], outputs=["xn"],
          name="normalize")
    g.add(model=linear_model(w, 0), inputs={"x": "xn"}, outputs={"y": "y"}, name="layer")
    g.add(model=linear_model(w, 1), inputs={"x": "xn"}, outputs={"y": "debug"}, name="debug_probe")
    opt, plain = g.compile(threads=1), g.compile(threads=1, fold=False, prune=False)
    assert opt.plan["folded"] == ["norm_table"] and opt.plan["eliminated"] == ["debug_probe"]
    feeds = {"x": np.random.default_rng(0).standard_normal((1, w)).astype(np.float32)}
    np.testing.assert_allclose(opt.run(feeds)["y"], plain.run(feeds)["y"], rtol=1e-5, atol=1e-6)
    t = interleaved({"fold+prune": lambda: opt.run(feeds), "neither": lambda: plain.run(feeds)},
                    rounds=args.rounds, n=args.n // 2, warmup=100)
    r = np.percentile(t["fold+prune"], 50) / np.percentile(t["neither"], 50)
    print(f"constant folding + dead-node elimination: p50 {np.percentile(t['fold+prune'], 50):.1f} us vs "
          f"{np.percentile(t['neither'], 50):.1f} us, ratio {r:.2f}")
    opt.close(), plain.close()


if __name__ == "__main__":
    raise SystemExit(main())
