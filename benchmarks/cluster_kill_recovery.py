"""A worker killed (SIGKILL) under load: requests lost, the answer gap, and time to full rate.

zoo mobilenet, batch 1, 2 replicas on a LocalCluster of 2 worker processes (nannies restart a
killed worker).  A closed loop keeps 16 requests in flight and records when each is answered;
after 3 s one worker process gets SIGKILL.  Printed: requests lost (must be 0) or wrong, the
longest gap between two answers after the kill, and the time from the kill until the answer
rate is back to 90% of the pre-kill rate for 1 s (the replica re-created on the nanny's
replacement worker).
"""
from __future__ import annotations

import os
import sys
import threading
import time

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))

INFLIGHT = 16


def main() -> int:
    from collections import deque

    from _common import banner, verdict

    import edgebench as eb

    banner("cluster: a worker killed under load (zoo mobilenet, 2 workers x 1 thread)")
    m = eb.zoo.load("mobilenet")
    eng = eb.Engine(m, threads=1, record=False)
    x = eng.sample_feeds()
    outs = eng.run(x)
    out_name = next(iter(outs))
    ref = outs[out_name]
    with eb.Cluster.local(n_workers=2) as cl:
        dep = cl.deploy(m, replicas=2)
        [f.result() for f in [dep.submit(x) for _ in range(32)]]
        stamps: list[float] = []
        wrong = lost = 0
        t_kill = [0.0]

        def killer():
            time.sleep(3.0)
            t_kill[0] = time.perf_counter()
            cl.kill_worker(dep.replicas[0].worker)

        th = threading.Thread(target=killer)
        th.start()
        futs = deque(dep.submit(x) for _ in range(INFLIGHT))
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < 14.0:
            f = futs.popleft()
            try:
                out = f.result(60)
                wrong += not np.allclose(out[out_name], ref, atol=1e-4)
            except Exception as e:
                lost += 1
                print("   lost:", e)
            stamps.append(time.perf_counter())
            futs.append(dep.submit(x))
        for f in futs:
            f.result(60)
        th.join()
        events = cl.events
    s = np.asarray(stamps)
    tk = t_kill[0]
    pre = s[(s > tk - 2.0) & (s <= tk)]
    pre_rate = len(pre) / 2.0
    after = s[s > tk]
    gaps = np.diff(np.concatenate([[tk], after]))
    # first time t after the kill from which a full second holds >= 90% of the pre-kill rate
    back = None
    for t in np.arange(tk, s[-1] - 1.0, 0.05):
        if ((after > t) & (after <= t + 1.0)).sum() >= 0.9 * pre_rate:
            back = t + 1.0 - tk
            break
    print(f"   pre-kill rate {pre_rate:.1f} req/s; answered {len(s)} requests, lost {lost}, wrong {wrong}")
    print(f"   longest gap between answers after the kill: {gaps.max() * 1e3:.0f} ms")
    print("   time from kill to >= 90% of the pre-kill rate over 1 s: "
          + (f"{back:.2f} s" if back is not None else "not within the run"))
    kinds = list(events.kind)
    print(f"   events: {', '.join(k for k in kinds if k not in ('replica_started',))}")
    ok = lost == 0 and wrong == 0
    print(f"   lost = 0 and all answers correct: {verdict(ok)}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
