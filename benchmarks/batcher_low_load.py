"""DynamicBatcher at low load: one client, zoo mlp, batch 1, one intra-op thread.

Compares, in interleaved rounds, a raw onnxruntime ``InferenceSession.run`` with:

* ``DynamicBatcher.run`` with ``max_queue_delay_ms=0``: an idle batcher computes in the
  caller's thread (a batch of one is due at once), so no thread hop;
* ``DynamicBatcher.submit(...).result()`` with ``max_queue_delay_ms=0``: through the worker
  thread (two thread hops: to the worker and back);
* ``Engine.run`` for reference.

Target: added p50 of ``DynamicBatcher.run`` over the raw run <= 100 us (aim: 10-15 us).
"""
from __future__ import annotations

import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
from _common import banner, interleaved, verdict, raw_session, zoo_file


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", default="mlp", help="zoo model name")
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--n", type=int, default=1000, help="calls per round")
    args = ap.parse_args()


    import edgebench as eb

    banner(f"DynamicBatcher at low load vs raw InferenceSession.run: zoo {args.model}, one client, batch 1, 1 thread")
    path = zoo_file(args.model)
    feeds = eb.zoo.sample(args.model, batch_size=1)

    raw = raw_session(path, 1)
    eng = eb.Engine(path, threads=1)
    b = eb.DynamicBatcher(eb.Engine(path, threads=1), max_queue_delay_ms=0)
    ref = raw.run(None, feeds)[0]
    out = eng.session.output_names[0]
    np.testing.assert_allclose(b.run(feeds)[out], ref, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(b.submit(feeds).result()[out], ref, rtol=1e-5, atol=1e-6)

    t = interleaved({
        "raw session.run": lambda: raw.run(None, feeds),
        "Engine.run": lambda: eng.run(feeds),
        "batcher.run (delay 0)": lambda: b.run(feeds),
        "batcher.submit().result()": lambda: b.submit(feeds).result(),
    }, rounds=args.rounds, n=args.n)
    base = np.percentile(t["raw session.run"], 50)
    print(f"{'':28s}{'p50 us':>9s}{'p99 us':>9s}{'added p50 us':>14s}")
    for k, v in t.items():
        print(f"{k:28s}{np.percentile(v, 50):9.2f}{np.percentile(v, 99):9.2f}{np.percentile(v, 50) - base:14.2f}")
    s = b.stats()
    print(f"batcher records: {s['requests']} requests, {s['batches']} batches, "
          f"queue p50 {s['queue_ms']['p50'] * 1e3:.1f} us, compute p50 {s['compute_ms']['p50'] * 1e3:.1f} us")
    b.close()
    added = np.percentile(t["batcher.run (delay 0)"], 50) - base
    print(f"batcher.run added p50 {added:.1f} us (target <= 100 us, aim 10-15 us): {verdict(added <= 100)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
