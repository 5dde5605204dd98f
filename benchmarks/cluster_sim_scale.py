"""The cluster's placement, routing and partitioning code on simulated fleets of 10 to 10,000 nodes.

A discrete-event simulation (``edgebench.cluster.testbed``): heterogeneous nodes (speeds 0.5,
1, 2; 1-2 threads; some with a GPU; memory limits), four deployments, Poisson arrivals at 60 %
offered utilisation, random node failures.  Placement and routing are the real
``edgebench.cluster.policy`` functions; only ``placement_ms`` (per ``place()`` call) and
``wall_s`` are wall-clock times, everything else is simulated.

Prints:

* p99, balance (CV of per-thread busy time across nodes holding replicas) and placement time
  against fleet size.  Target: ``place()`` stays linear (10,000 nodes within 1000x of 10) and
  no request is lost.
* p2c vs least-outstanding vs round-robin at 100 nodes.  Target: p99(p2c) < p99(round robin).
* graph partitioning of random DAGs under simulated step costs (bottleneck speed-up per k).
"""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
from _common import banner, verdict


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--sizes", type=int, nargs="+", default=[10, 100, 1000, 10000])
    ap.add_argument("--max-requests", type=int, default=1_000_000, help="simulated requests per run (cap)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    import pandas as pd

    from edgebench.cluster.testbed import compare_routing, partition_study, scale_study

    banner("cluster simulation: placement, routing and partitioning vs fleet size (simulated time)")
    pd.set_option("display.width", 160)
    cols = ["n_nodes", "replicas", "requests", "sim_seconds", "failures", "retried", "lost", "p50_ms", "p99_ms",
            "balance", "placement_ms", "layout_ms", "wall_seconds"]
    scale = scale_study(tuple(args.sizes), seed=args.seed, max_requests=args.max_requests)
    print("\n-- scale study (p2c routing, load 0.6)")
    print(scale[cols].round(4).to_string(index=False))

    routing = compare_routing(100, seed=args.seed, max_requests=args.max_requests)
    print("\n-- routing at 100 nodes")
    print(routing[["routing", "requests", "lost", "p50_ms", "p99_ms", "balance"]].round(3).to_string(index=False))

    parts = partition_study()
    print("\n-- partitioning random DAGs (model steps ~2 ms, 8 kB tensors, 0.5 ms hop, 1 GB/s)")
    print(parts.round(3).to_string(index=False))

    small, big = scale["placement_ms"].iloc[0], scale["placement_ms"].iloc[-1]
    growth = scale["n_nodes"].iloc[-1] / scale["n_nodes"].iloc[0]
    p99 = routing.set_index("routing")["p99_ms"]
    print(f"\nplace() per call: {small:.4f} ms at {scale['n_nodes'].iloc[0]} nodes, {big:.3f} ms at "
          f"{scale['n_nodes'].iloc[-1]} nodes ({big / small:.0f}x for {growth:.0f}x the nodes)  "
          f"{verdict(big / small <= growth * 1.0 + 1)}")
    print(f"requests lost: {int(scale['lost'].sum() + routing['lost'].sum())}  "
          f"{verdict(scale['lost'].sum() + routing['lost'].sum() == 0)}")
    print(f"p99 p2c / round robin: {p99['p2c']:.1f} / {p99['round_robin']:.1f} ms = "
          f"{p99['p2c'] / p99['round_robin']:.3f}  {verdict(p99['p2c'] < p99['round_robin'])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
