"""DynamicBatcher at saturation: 32 closed-loop clients, zoo mobilenet, 2 intra-op threads.

Each client thread sends one-image requests back to back through ``DynamicBatcher.run``
(max_batch_size 32, max_queue_delay_ms 2).  The batcher's throughput is compared with a raw
onnxruntime ``InferenceSession.run`` fed offline batches of the size the batcher formed (its
most common one), same model file and thread count.  Short phases alternate so drift in
machine load hits both alike; the verdict is on the median of the rounds' ratios (a round
disturbed by other work on the machine does not decide it), the pooled ratio is printed too.

Target: batcher throughput / raw offline throughput >= 0.85.
"""
from __future__ import annotations

import argparse
import os
import sys
import threading
import time

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
from _common import banner, verdict, raw_session, zoo_file


def batcher_phase(b, images, clients: int, seconds: float) -> tuple[float, dict]:
    """Requests/s answered by the batcher in a window of ``seconds`` under closed-loop load."""
    stop = threading.Event()

    def client(i: int) -> None:
        x = images[i % len(images)]
        while not stop.is_set():
            b.run(x)

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(clients)]
    for t in threads:
        t.start()
    time.sleep(min(1.0, seconds / 4))  # reach the steady state first
    since = b.records.total
    t0 = time.perf_counter_ns()
    time.sleep(seconds)
    t1 = time.perf_counter_ns()
    stop.set()
    for t in threads:
        t.join()
    recs = b.records.snapshot(since)
    ok = recs[(recs[:, 7] == 0) & (recs[:, 5] >= t0) & (recs[:, 5] < t1)]
    sizes, counts = np.unique(ok[:, 6], return_counts=True)  # per request; weight back to batches
    batches = {int(s): int(c // s) for s, c in zip(sizes, counts)}
    return len(ok) / ((t1 - t0) / 1e9), batches


def raw_phase(sess, feeds: dict, seconds: float) -> float:
    """Rows/s of back-to-back raw runs on one prepared batch."""
    rows = next(iter(feeds.values())).shape[0]
    sess.run(None, feeds)
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds or n < 3:
        sess.run(None, feeds)
        n += 1
    return n * rows / (time.perf_counter() - t0)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", default="mobilenet", help="zoo model name")
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2, help="intra-op threads")
    ap.add_argument("--max-batch-size", type=int, default=32)
    ap.add_argument("--delay-ms", type=float, default=2.0)
    ap.add_argument("--seconds", type=float, default=4.0, help="measured window per phase")
    ap.add_argument("--rounds", type=int, default=4)
    args = ap.parse_args()


    import edgebench as eb

    banner(f"DynamicBatcher at saturation vs raw offline InferenceSession.run: zoo {args.model}, "
           f"{args.clients} closed-loop clients, {args.threads} intra-op threads")
    path = zoo_file(args.model)
    images = [eb.zoo.sample(args.model, batch_size=1, seed=i) for i in range(args.clients)]
    raw = raw_session(path, args.threads)
    eng = eb.Engine(path, threads=args.threads)
    b = eb.DynamicBatcher(eng, max_batch_size=args.max_batch_size, max_queue_delay_ms=args.delay_ms)
    out = eng.session.output_names[0]
    np.testing.assert_allclose(b.run(images[0])[out], raw.run(None, images[0])[0], rtol=1e-4, atol=1e-4)

    got, want, formed = [], [], {}
    for r in range(args.rounds):
        thr, batches = batcher_phase(b, images, args.clients, args.seconds)
        for k, v in batches.items():
            formed[k] = formed.get(k, 0) + v
        size = max(batches, key=lambda k: batches[k] * k)  # the size most rows ran at
        x = {name: np.concatenate([im[name] for im in (images * size)[:size]]) for name in images[0]}
        offline = raw_phase(raw, x, args.seconds)
        got.append(thr)
        want.append(offline)
        print(f"round {r + 1}: batcher {thr:8.1f} req/s (batches by size {dict(sorted(batches.items()))}); "
              f"raw offline at batch {size}: {offline:8.1f} rows/s; ratio {thr / offline:.3f}")
    s = b.stats()
    b.close()
    print(f"batcher: {s['batches']} batches, mean batch {s['mean_batch_size']:.1f} rows, queue p50 "
          f"{s['queue_ms']['p50']:.1f} ms, compute p50 {s['compute_ms']['p50']:.1f} ms, "
          f"latency p50 {s['latency_ms']['p50']:.1f} ms / p99 {s['latency_ms']['p99']:.1f} ms")
    ratio = float(np.median([g / w for g, w in zip(got, want)]))
    print(f"pooled ratio {sum(got) / sum(want):.3f}; load average at the end {os.getloadavg()[0]:.2f}")
    print(f"throughput ratio batcher / raw offline (median of rounds) {ratio:.3f} (target >= 0.85): "
          f"{verdict(ratio >= 0.85)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
