"""Throughput of a deployment on 2 workers x 1 thread vs 1 worker x 1 thread.

zoo mobilenet (MobileNetV2, 224x224, batch 1), one intra-op thread per replica, a LocalCluster
of worker processes on 127.0.0.1; the client keeps 32 requests in flight (closed loop: a new
request the moment any is answered) for a fixed time, in alternating rounds of the two layouts
(each a cluster of its own).  Large tensors reach same-host workers through shared memory
(the default); the same layouts over TCP only (``shm=False``) are measured beside them.

Target: 2 workers / 1 worker >= 1.7x.  On a 2-core machine the client shares the cores with
the workers; the machine's own two-process ceiling is measured in the same run (two raw
onnxruntime sessions in two processes vs one) and printed beside the ratio.
"""
from __future__ import annotations

import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))

SECONDS = 6.0
INFLIGHT = 32
CHUNK = 8


def closed_loop(dep, x, seconds: float) -> float:
    """Requests/s with about INFLIGHT requests always in flight: answers free slots as they
    come (any order), and the generator refills them CHUNK at a time, so the load generator
    itself wakes once per CHUNK answers (it shares the 2 cores with the workers)."""
    import threading

    cond = threading.Condition()
    free, done, failed = [0], [0], []

    def answered(f) -> None:
        if f.exception() is not None:
            failed.append(f.exception())
        with cond:
            done[0] += 1
            free[0] += 1
            if free[0] >= CHUNK:
                cond.notify()

    t0 = time.perf_counter()
    end = t0 + seconds
    n = INFLIGHT
    while time.perf_counter() < end:
        for _ in range(n):
            dep.submit(x).add_done_callback(answered)
        with cond:
            cond.wait_for(lambda: free[0] >= CHUNK, timeout=60)
            n, free[0] = free[0], 0
    with cond:  # wait for the last ones
        cond.wait_for(lambda: free[0] >= INFLIGHT - n, timeout=60)
    if failed:
        raise RuntimeError(f"{len(failed)} requests failed, the first: {failed[0]!r}")
    return done[0] / (time.perf_counter() - t0)


def raw_rate(path: str, seconds: float) -> float:
    from _common import raw_session

    sess = raw_session(path, threads=1)
    x = {sess.get_inputs()[0].name: np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)}
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        sess.run(None, x)
        n += 1
    return n / (time.perf_counter() - t0)


def main() -> int:
    from _common import banner, verdict, zoo_file

    import edgebench as eb

    banner("cluster throughput: 2 workers x 1 thread vs 1 worker x 1 thread (zoo mobilenet, batch 1)")
    m = eb.zoo.load("mobilenet")
    x = eb.Engine(m, threads=1, record=False).sample_feeds()
    path = zoo_file("mobilenet")
    with ProcessPoolExecutor(2) as pool:
        one = pool.submit(raw_rate, path, 3.0).result()
        two = sum(f.result() for f in [pool.submit(raw_rate, path, 3.0) for _ in range(2)])
    ceiling = two / one
    rates: dict[tuple[int, bool], list[float]] = {(n, shm): [] for n in (1, 2) for shm in (True, False)}
    transports = set()
    for rnd in range(2):
        for shm in (True, False):
            for n in ((1, 2) if rnd % 2 == 0 else (2, 1)):
                with eb.Cluster.local(n_workers=n, shm=shm) as cl:
                    dep = cl.deploy(m, replicas=n)
                    closed_loop(dep, x, 1.0)  # warm-up
                    rates[n, shm].append(closed_loop(dep, x, SECONDS if shm else SECONDS / 2))
                    transports.add((shm, dep.row()["transport"]))
    med = {k: float(np.median(v)) for k, v in rates.items()}
    print(f"   raw onnxruntime, 1 process {one:8.1f} req/s, 2 processes {two:8.1f} req/s: ceiling {ceiling:.2f}x")
    for shm in (True, False):
        how = dict(transports)[shm]
        for n in (1, 2):
            print(f"   cluster {n} worker{'s' if n > 1 else ' '} ({how}) {med[n, shm]:8.1f} req/s   "
                  f"(rounds: {', '.join(f'{r:.1f}' for r in rates[n, shm])})")
    print(f"   over TCP only: 2 workers / 1 worker = {med[2, False] / med[1, False]:.2f}x")
    r1, r2 = med[1, True], med[2, True]
    ratio = r2 / r1
    ok = ratio >= 1.7
    print(f"   2 workers / 1 worker = {ratio:.2f}x  (target >= 1.70: {verdict(ok)}; "
          f"{ratio / ceiling:.0%} of the machine's ceiling)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
