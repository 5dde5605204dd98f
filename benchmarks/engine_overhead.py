"""Engine.run vs a raw onnxruntime InferenceSession.run on the same model file.

zoo mlp (784-512-256-10), batch 1, one intra-op thread, interleaved rounds.
Target: p50(Engine.run) / p50(raw session.run) <= 1.10.
"""
from __future__ import annotations

import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
from _common import banner, interleaved, verdict, raw_session, zoo_file  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", default="mlp", help="zoo model name")
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--n", type=int, default=2000, help="calls per round")
    args = ap.parse_args()


    import edgebench as eb

    banner(f"Engine.run vs raw InferenceSession.run: zoo {args.model}, batch 1, 1 thread")
    path = zoo_file(args.model)
    feeds = eb.zoo.sample(args.model, batch_size=1)

    raw = raw_session(path, 1)
    eng = eb.Engine(path, threads=1)
    eng_iob = eb.Engine(path, threads=1, options={"io_binding": True})
    ref = raw.run(None, feeds)[0]
    np.testing.assert_allclose(eng.run(feeds)[eng.session.output_names[0]], ref, rtol=1e-5, atol=1e-6)

    t = interleaved({
        "raw session.run": lambda: raw.run(None, feeds),
        "Engine.run": lambda: eng.run(feeds),
        "Engine.run (IOBinding)": lambda: eng_iob.run(feeds),
    }, rounds=args.rounds, n=args.n)
    base = np.percentile(t["raw session.run"], 50)
    print(f"{'':26s}{'p50 us':>9s}{'p99 us':>9s}{'ratio p50':>11s}")
    for k, v in t.items():
        print(f"{k:26s}{np.percentile(v, 50):9.2f}{np.percentile(v, 99):9.2f}{np.percentile(v, 50) / base:11.3f}")
    ratio = np.percentile(t["Engine.run"], 50) / base
    print(f"Engine.run p50 ratio {ratio:.3f} (target <= 1.10): {verdict(ratio <= 1.10)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
