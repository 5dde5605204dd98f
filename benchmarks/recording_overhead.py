"""What per-request timing records cost: Engine(record=True) vs Engine(record=False).

zoo mlp (784-512-256-10), batch 1, one intra-op thread, closed loop (the next request as
soon as the previous one returns).  Two engines, built with record=True and record=False,
each also run with recording switched the other way (a crossover: two sessions of one model
differ by themselves), in alternating rounds so drift in machine load hits all legs alike.
Target: throughput(record on) / throughput(record off) >= 0.97 (recording costs <= 3%).
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
from _common import banner, verdict  # noqa: E402

TARGET = 0.97


def _model(name: str):
    import edgebench as eb

    try:
        from edgebench import zoo
    except ImportError:  # no zoo: the same 784-512-256-10 MLP, built here
        zoo = None
    if zoo is not None and hasattr(zoo, "load"):
        return zoo.load(name)
    import torch
    from torch import nn

    torch.manual_seed(0)
    mlp = nn.Sequential(nn.Linear(784, 512), nn.ReLU(), nn.Linear(512, 256), nn.ReLU(), nn.Linear(256, 10))
    return eb.load(mlp.eval(), name="mlp", example_inputs=(torch.zeros(1, 784),))


def closed_loop(engine, feeds, seconds: float) -> tuple[int, float]:
    """Requests completed back to back for ``seconds``: (count, elapsed s)."""
    run, pc = engine.run, time.perf_counter
    n, t0 = 0, pc()
    end = t0 + seconds
    while True:
        for _ in range(64):
            run(feeds)
        n += 64
        t = pc()
        if t >= end:
            return n, t - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=float, default=1.0, help="seconds per engine per round")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--model", default="mlp", help="zoo model name")
    args = ap.parse_args()

    import edgebench as eb

    banner(f"request recording on vs off: {args.model}, batch 1, 1 thread, closed loop, "
           f"{args.rounds} rounds x {args.duration:g} s")
    model = _model(args.model)
    # Two ORT sessions of one model can differ by a few % on their own (weight placement), more
    # than recording costs; so each engine also runs with its recording switched (records.enabled
    # is all that record= sets) and the cost is the within-engine ratio, averaged over both.
    engines = {"A": eb.Engine(model, threads=1, record=True), "B": eb.Engine(model, threads=1, record=False)}
    built = {k: e.records.enabled for k, e in engines.items()}
    feeds = engines["A"].sample_feeds(1)
    for eng in engines.values():  # first-call costs, page-in of the weights
        eng.warmup(200)
        closed_loop(eng, feeds, min(0.2, args.duration))
    legs = [("A", True), ("B", False), ("A", False), ("B", True)]
    rate: dict[tuple[str, bool], list[float]] = {leg: [] for leg in legs}
    for r in range(args.rounds):
        for k, on in (legs if r % 2 == 0 else legs[::-1]):
            eng = engines[k]
            eng.records.enabled = on
            before = eng.records.total
            n, dt = closed_loop(eng, feeds, args.duration)
            assert (eng.records.total - before == n) if on else (eng.records.total == before)
            rate[(k, on)].append(n / dt)
    for k, e in engines.items():
        e.records.enabled = built[k]

    print(f"{'round':>5s}" + "".join(f"{f'{k} record={on}':>16s}" for k, on in legs) + f"{'ratio A':>9s}{'ratio B':>9s}")
    r_ = {leg: np.array(v) for leg, v in rate.items()}
    for i in range(args.rounds):
        print(f"{i:5d}" + "".join(f"{r_[leg][i]:16.0f}" for leg in legs)
              + f"{r_['A', True][i] / r_['A', False][i]:9.3f}{r_['B', True][i] / r_['B', False][i]:9.3f}")
    ratio_a = r_["A", True].mean() / r_["A", False].mean()
    ratio_b = r_["B", True].mean() / r_["B", False].mean()
    ratio = float(np.sqrt(ratio_a * ratio_b))
    on = np.r_[r_["A", True], r_["B", True]].mean()
    off = np.r_[r_["A", False], r_["B", False]].mean()
    naive = r_["A", True].mean() / r_["B", False].mean()
    print(f"{'mean':>5s}" + "".join(f"{r_[leg].mean():16.0f}" for leg in legs) + f"{ratio_a:9.3f}{ratio_b:9.3f}")
    print(f"as constructed, Engine(record=True) A / Engine(record=False) B = {naive:.3f} "
          "(includes the difference between two sessions)")
    print(f"recording costs {(1 / on - 1 / off) * 1e6:+.2f} us a request "
          f"({1e6 / off:.1f} us a request with it off)")
    print(f"throughput(record on) / throughput(record off) = {ratio:.3f} "
          f"(target >= {TARGET}, i.e. cost <= {100 * (1 - TARGET):.0f}%): {verdict(ratio >= TARGET)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
