"""A 3-stage streaming pipeline on the CPU: pipelined (one thread per stage) vs sequential.

Each stage is an onnxruntime session with one intra-op thread (an MLP of MatMul+Relu layers),
so the stages release the GIL and pipelining can use every core.  Compared in one run,
interleaved rounds:

* ``raw loop``   - the three ``eb.Engine``s called one after the other in a plain Python loop
* ``sequential`` - the same StreamGraph run in the calling thread (``run_sequential``)
* ``pipelined``  - the StreamGraph run by its workers (default: one per core, each carrying a
  frame through every stage, the stages serving frames in order)
* ``per stage``  - the same with a worker per stage (``workers=4``: 3 stages and the sink),
  what a thread-per-stage pipeline gives on this machine

Target (issue 6): pipelined throughput >= 1.6x sequential on 2 cores (ideal: min(cores, 3)x).

    python benchmarks/stream_pipeline.py [--frames 300] [--rounds 5]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import threading
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import edgebench as eb
from benchmarks._common import banner, verdict
from edgebench.graph.stream import FrameSource, StreamGraph


def mlp(layers: int, width: int, seed: int):
    """An ONNX MLP x[B, width] -> y[B, width] built in code."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    nodes, inits, cur = [], [], "x"
    for i in range(layers):
        w = (rng.standard_normal((width, width)) / np.sqrt(width)).astype(np.float32)
        inits.append(numpy_helper.from_array(w, f"w{i}"))
        nodes += [helper.make_node("MatMul", [cur, f"w{i}"], [f"m{i}"]),
                  helper.make_node("Relu", [f"m{i}"], [f"r{i}" if i < layers - 1 else "y"])]
        cur = f"r{i}"
    g = helper.make_graph(nodes, f"mlp{seed}",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, width])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, width])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.checker.check_model(m)
    return eb.load(m.SerializeToString())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=150)
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--width", type=int, default=256)
    ap.add_argument("--layers", type=int, default=8)
    a = ap.parse_args()
    banner("stream_pipeline: 3-stage pipeline, pipelined vs sequential")
    print(f"   cores visible: {os.cpu_count()}; stages: 3 x onnxruntime MLP "
          f"({a.layers} x MatMul+Relu {a.width}x{a.width}, batch {a.batch}), 1 intra-op thread each")

    engines = [eb.Engine(mlp(a.layers, a.width, s), threads=1) for s in range(3)]
    src = FrameSource(fps=1000, n=a.frames, shape=(a.batch, a.width))
    frames = [f.astype(np.float32) / 255.0 for _, f in src]
    steps = [lambda x, e=e: e.run({"x": x})["y"] for e in engines]
    for f in frames[:20]:                                          # warm up
        for s in steps:
            f = s(f)
    per_stage = []
    for s in steps:
        t = time.perf_counter()
        for f in frames[:50]:
            s(f)
        per_stage.append((time.perf_counter() - t) / 50 * 1e3)
    print("   per-stage ms/frame: " + ", ".join(f"{v:.2f}" for v in per_stage))

    def graph(workers=None) -> StreamGraph:
        sg = StreamGraph("bench", queue_size=4, workers=workers).source(frames)
        for i, s in enumerate(steps):
            sg.map(s, name=f"stage{i}")
        return sg.sink(lambda y: None)

    def raw_loop():
        for f in frames:
            for s in steps:
                f = s(f)

    def ceiling_probe(rounds: int = 3) -> float:
        # what this machine gives two busy threads: stage 0 and stage 1 on their own threads at
        # once, vs one after the other (no queues, no edgebench in between)
        fs = frames[:60]

        def part(stp):
            for f in fs:
                stp(f)
        best = 0.0
        for _ in range(rounds):
            t = time.perf_counter()
            part(steps[0])
            part(steps[1])
            serial = time.perf_counter() - t
            ts = [threading.Thread(target=part, args=(s,)) for s in steps[:2]]
            t = time.perf_counter()
            for th in ts:
                th.start()
            for th in ts:
                th.join()
            best = max(best, serial / (time.perf_counter() - t))
        return best

    ref = graph().run_sequential()
    runs = {"raw loop": raw_loop, "sequential": lambda: graph().run_sequential(),
            "pipelined": lambda: graph().run(timeout=600), "per stage": lambda: graph(4).run(timeout=600)}
    out = graph().run(timeout=600)
    assert len(out) == len(ref) == a.frames
    times: dict[str, list[float]] = {k: [] for k in runs}
    ceilings = []
    for r in range(a.rounds):
        # rounds alternate the order; each round's ratio compares runs made seconds apart, so
        # load from other tenants of the machine hits both sides of a ratio alike
        for k in (runs if r % 2 == 0 else reversed(list(runs))):
            t = time.perf_counter()
            runs[k]()
            times[k].append(time.perf_counter() - t)
        ceilings.append(ceiling_probe(1))
    fps = {k: a.frames / statistics.median(v) for k, v in times.items()}
    for k, v in fps.items():
        print(f"   {k:<11} {v:8.1f} frames/s   (median of {a.rounds})")
    per_round = [s_ / p_ for s_, p_ in zip(times["sequential"], times["pipelined"])]
    ratio = statistics.median(per_round)
    ratio_raw = statistics.median(r_ / p_ for r_, p_ in zip(times["raw loop"], times["pipelined"]))
    ceiling = statistics.median(ceilings)
    ok = ratio >= 1.6
    print(f"   pipelined / sequential = {ratio:.2f}x median of per-round ratios "
          f"(min {min(per_round):.2f}, max {max(per_round):.2f}); target >= 1.6x: {verdict(ok)}")
    print(f"   pipelined / raw loop   = {ratio_raw:.2f}x   (workers: {graph().workers}, the usable cores)")
    per_stage = statistics.median(s_ / p_ for s_, p_ in zip(times["sequential"], times["per stage"]))
    print(f"   a worker per stage / sequential = {per_stage:.2f}x (more busy threads than cores)")
    print(f"   machine ceiling (2 stages on 2 threads at once / one after the other) = "
          f"{ceiling:.2f}x median (min {min(ceilings):.2f}, max {max(ceilings):.2f}); "
          f"pipelined/sequential is {ratio / ceiling:.0%} of it")
    if ceiling < 1.6:
        print("   note: this machine gave two busy threads less than 1.6x (shared or throttled "
              "CPUs), so the 1.6x target cannot be met here; compare with the ceiling")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
