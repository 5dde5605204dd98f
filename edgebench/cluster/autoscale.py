"""Autoscaling: Dask's ``Adaptive`` with edgebench's own target.

Dask's ``Adaptive`` already does the hard parts (asking the cluster manager for workers,
hysteresis before closing one, retiring workers cleanly).  Its target is usually the task
backlog; here it is :func:`edgebench.cluster.policy.autoscale_target` over the deployments'
client-side p99 (last ``window_s`` seconds) and requests in flight.  While adaptive, each
deployment keeps one replica per worker: a new worker gets its replicas as it joins, and a
worker chosen to close is drained first (its replicas stop taking requests, finish what they
hold and unload) so scaling down fails no request.
"""
from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from distributed.deploy.adaptive import Adaptive

from ..errors import ClusterError
from . import policy

if TYPE_CHECKING:
    from .api import Cluster

__all__ = ["EdgebenchAdaptive", "start_adaptive"]


class EdgebenchAdaptive(Adaptive):
    """``Adaptive`` whose target is edgebench's latency and queue target."""

    def __init__(self, cluster: Any, *, eb: Cluster, target_p99_ms: float, queue_per_worker: float = 4.0,
                 window_s: float = 5.0, **kwargs: Any):
        self.eb = eb
        self.target_p99_ms = float(target_p99_ms)
        self.queue_per_worker = float(queue_per_worker)
        self.window_s = window_s
        self.last: dict[str, Any] = {}
        self.last_logged: int | None = None
        super().__init__(cluster, **kwargs)

    def measure(self) -> tuple[float | None, float]:
        p99s = []
        queue = 0.0
        for dep in list(self.eb._deployments.values()):
            lat = dep.latency_ms(self.window_s)
            if lat["p99_ms"] is not None:
                p99s.append(lat["p99_ms"])
            queue += dep.inflight
        return (max(p99s) if p99s else None), queue

    async def target(self) -> int:
        current = max(1, len(self.observed))
        p99, queue = self.measure()
        t = policy.autoscale_target(current, p99_ms=p99, target_p99_ms=self.target_p99_ms, queue_depth=queue,
                                    minimum=self.minimum, maximum=int(self.maximum),
                                    queue_per_worker=self.queue_per_worker)
        if t == current:
            self.last_logged = None
        self.last = {"workers": current, "target": t, "p99_ms": p99, "queue": queue}
        if t != current and t != self.last_logged:
            self.last_logged = t
            self.eb.log.add("autoscale", detail=f"{current} -> {t} workers (p99 "
                                                + (f"{p99:.2f} ms" if p99 is not None else "n/a")
                                                + f", target {self.target_p99_ms:g} ms, in flight {queue:g})")
        return t

    async def scale_down(self, workers: Any) -> None:
        if not workers:
            return
        fut = asyncio.run_coroutine_threadsafe(self.eb.controller.retire(list(workers)), self.eb._loop)
        await asyncio.wrap_future(fut)
        await super().scale_down(workers)


def start_adaptive(cl: Cluster, *, minimum: int, maximum: int, target_p99_ms: float, interval: float,
                   wait_count: int, queue_per_worker: float) -> EdgebenchAdaptive:
    if cl._dask_cluster is None:
        raise ClusterError("adapt() needs a Dask cluster object that can start workers",
                           "use eb.Cluster.local(), or pass the LocalCluster / KubeCluster itself to eb.Cluster")
    if not (isinstance(minimum, int) and isinstance(maximum, int) and 0 <= minimum <= maximum):
        raise ClusterError(f"adapt needs integers 0 <= minimum <= maximum, got {minimum}, {maximum}")
    if not target_p99_ms > 0:
        raise ClusterError(f"target_p99_ms must be positive, got {target_p99_ms!r}")
    return cl._dask_cluster.adapt(Adaptive=EdgebenchAdaptive, eb=cl, target_p99_ms=target_p99_ms,
                                  queue_per_worker=queue_per_worker, minimum=minimum, maximum=maximum,
                                  interval=f"{interval}s", wait_count=wait_count)
