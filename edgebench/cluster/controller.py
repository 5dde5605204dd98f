"""The controller: keeps every deployment at its wanted replicas, on the client's event loop.

It places replicas with :func:`edgebench.cluster.policy.place` (resources, memory, spread),
loads them on their worker (``eb_load``), re-creates the ones lost with a worker, gives new
workers a share, migrates and drains.  It reacts to three things: a broken connection seen by
a request (at once), the scheduler's ``remove_worker`` / ``add_worker`` (through
:mod:`edgebench.cluster.plugin`), and a periodic check (every ``interval`` s) that repairs what
could not be placed before.
"""
from __future__ import annotations

import asyncio
import itertools
import time
from typing import TYPE_CHECKING, Any

from ..errors import ClusterError, PlacementError
from . import policy
from .transport import Replica, rebuild_error

if TYPE_CHECKING:
    from .api import Cluster
    from .deployment import Deployment

__all__ = ["Controller"]


class Controller:
    def __init__(self, cluster: Cluster):
        self.cluster = cluster
        self._ids = itertools.count(1)
        self._lock: asyncio.Lock | None = None
        self.dead: set[str] = set()  # workers seen leaving (their replicas are never re-placed there)
        self.suspect: dict[str, float] = {}  # worker -> until when: a request's connection to it broke
        self.retiring: set[str] = set()  # workers the autoscaler is closing: drained, never placed on
        self.placement_ms: list[float] = []

    @property
    def lock(self) -> asyncio.Lock:
        if self._lock is None:
            self._lock = asyncio.Lock()
        return self._lock

    # -- the view of the workers ------------------------------------------------------------
    async def nodes(self) -> list[policy.NodeState]:
        info = await self.cluster.client.scheduler.identity()
        nodes = []
        now = time.monotonic()
        for addr, w in info.get("workers", {}).items():
            if addr in self.dead or self.suspect.get(addr, 0) > now:
                continue
            nodes.append(policy.NodeState(
                address=addr, nthreads=int(w.get("nthreads") or 1), resources=dict(w.get("resources") or {}),
                memory_limit=int(w.get("memory_limit") or 0),
                memory_used=int((w.get("metrics") or {}).get("memory") or 0), draining=addr in self.retiring))
        by_addr = {n.address: n for n in nodes}
        for dep in self.cluster._deployments.values():
            for r in dep.replicas:
                n = by_addr.get(r.worker)
                if n is not None:
                    policy.commit(n, dep.name, dep.resources, dep.memory if not r.healthy else 0)
        return nodes

    # -- one replica -------------------------------------------------------------------------
    async def start_replica(self, dep: Deployment, worker: str | None = None, exclude: set[str] | None = None,
                            nodes: list[policy.NodeState] | None = None) -> Replica:
        """Place (or use ``worker``), load, and route to a new replica of ``dep``."""
        nodes = nodes if nodes is not None else await self.nodes()
        if worker is None:
            t0 = time.perf_counter()
            node = policy.place(nodes, dep.name, dep.resources, dep.memory, exclude=exclude or ())
            self.placement_ms.append((time.perf_counter() - t0) * 1e3)
        else:
            node = next((n for n in nodes if n.address == worker), None)
            if node is None:
                raise PlacementError(f"no worker {worker!r} in the cluster",
                                     f"pick one of {sorted(n.address for n in nodes)} (cl.workers)")
            why = policy.fits(node, dep.resources, dep.memory)
            if why:
                raise PlacementError(f"worker {worker} cannot hold a replica of {dep.name!r}: it {why}",
                                     "pick another worker (cl.workers) or lower the deployment's resources")
        policy.commit(node, dep.name, dep.resources, dep.memory)
        rep = Replica(f"{dep.name}-{next(self._ids)}", dep, node.address)
        dep.replicas.append(rep)  # not healthy yet: routing skips it, placement counts it
        try:
            load = self.cluster.client.rpc(node.address).eb_load
            kw = dict(replica=rep.rid, deployment=dep.name, sha256=dep.model.sha256, name=dep.model.name,
                      backend=dep.backend, device=dep.device, threads=dep.threads, options=dep.options,
                      batching=dep.batching)
            reply = await load(model=None, **kw)  # the worker may hold these bytes already
            if reply.get("status") == "need_bytes":
                reply = await load(model=dep.model.to_bytes(), **kw)
        except Exception as e:
            dep.replicas.remove(rep)
            raise ClusterError(f"could not load {dep.name!r} on {node.address}: {type(e).__name__}: {e}") from e
        if reply.get("status") != "OK":
            dep.replicas.remove(rep)
            raise rebuild_error(reply["error"])
        rep.pid = reply.get("pid")
        if dep.closed:  # undeployed while loading
            dep.replicas.remove(rep)
            await self._unload(rep)
            raise ClusterError(f"deployment {dep.name!r} was undeployed")
        rep.healthy = True
        self.cluster.log.add("replica_started", deployment=dep.name, replica=rep.rid, worker=rep.worker)
        dep.drain_pending()
        return rep

    async def drain(self, rep: Replica, timeout_s: float = 30.0) -> None:
        """Stop routing to ``rep``, wait for what it holds to be answered, unload it."""
        dep = rep.deployment
        rep.draining = True
        deadline = time.perf_counter() + timeout_s
        while rep.outstanding > 0 and rep.healthy and time.perf_counter() < deadline:
            await asyncio.sleep(0.002)
        left = rep.take_queued() if rep.outstanding else []
        for r in left:  # only on timeout: hand them to the others
            dep._route(r)
        if rep in dep.replicas:
            dep.replicas.remove(rep)
        if rep.healthy:
            await self._unload(rep)
        rep.healthy = False

    async def _unload(self, rep: Replica) -> None:
        rep.close()
        try:
            await asyncio.wait_for(self.cluster.client.rpc(rep.worker).eb_unload(replica=rep.rid), 10)
        except Exception:  # the worker is gone: nothing left to unload
            pass

    # -- whole deployments -------------------------------------------------------------------
    async def scale(self, dep: Deployment, n: int) -> None:
        if not isinstance(n, int) or isinstance(n, bool) or n < 0:
            raise ClusterError(f"replicas must be a non-negative integer, got {n!r}")
        async with self.lock:
            dep.wanted = n
            live = [r for r in dep.replicas if not r.draining]
            nodes = await self.nodes()
            started = []
            try:
                for _ in range(n - len(live)):
                    started.append(await self.start_replica(dep, nodes=nodes))
            except PlacementError:
                dep.wanted = len(live) + len(started)
                self.cluster.log.add("scale_refused", deployment=dep.name,
                                        detail=f"asked for {n}, placed {dep.wanted}")
                raise
            # remove from the most crowded workers first
            extra = sorted(live, key=lambda r: -sum(x.worker == r.worker for x in live))[:max(0, len(live) - n)]
            await asyncio.gather(*(self.drain(r) for r in extra))
            self.cluster.log.add("scaled", deployment=dep.name, detail=f"{len(live)} -> {n} replicas")

    async def migrate(self, dep: Deployment, rep: Replica, to_worker: str) -> Replica:
        async with self.lock:
            new = await self.start_replica(dep, worker=to_worker)
            await self.drain(rep)
            self.cluster.log.add("migrated", deployment=dep.name, replica=new.rid, worker=to_worker,
                                    detail=f"from {rep.rid} on {rep.worker}")
            return new

    async def undeploy(self, dep: Deployment) -> None:
        async with self.lock:
            dep.wanted = 0
            await asyncio.gather(*(self.drain(r) for r in list(dep.replicas)))
            dep.closed = True
            for r in list(dep.pending):
                dep.finish(r, None, ClusterError(f"deployment {dep.name!r} was undeployed"))
            dep.pending.clear()
            self.cluster._deployments.pop(dep.name, None)
            self.cluster.log.add("undeployed", deployment=dep.name)

    # -- reacting ----------------------------------------------------------------------------
    def recover(self, dep: Deployment, rep: Replica) -> None:
        """``rep`` was lost: forget it and bring the deployment back to strength."""
        if rep in dep.replicas:
            dep.replicas.remove(rep)
        self.suspect[rep.worker] = time.monotonic() + 10.0  # until the scheduler says more
        self.cluster._spawn(self.reconcile(reason=f"{rep.rid} lost"))
        self.cluster._spawn(self._unload(rep))  # a hung worker that recovers must not keep it

    def worker_left(self, address: str) -> None:
        self.dead.add(address)
        self.cluster.log.add("worker_left", worker=address)
        for dep in list(self.cluster._deployments.values()):
            for rep in [r for r in dep.replicas if r.worker == address]:
                dep.replica_lost(rep, f"worker {address} left the cluster", [])
                if rep in dep.replicas:  # a replica still loading there
                    dep.replicas.remove(rep)
        self.cluster._spawn(self.reconcile(reason=f"{address} left"))

    def worker_joined(self, address: str) -> None:
        self.dead.discard(address)
        self.cluster.log.add("worker_joined", worker=address)
        if self.cluster._adaptive is not None:  # adaptive: one more replica of each deployment
            for dep in self.cluster._deployments.values():
                dep.wanted += 1
        self.cluster._spawn(self.reconcile(reason=f"{address} joined", rebalance=True))

    async def reconcile(self, reason: str = "", rebalance: bool = False) -> None:
        """Start the replicas each deployment is missing; with ``rebalance``, move one replica
        off a worker holding two of a deployment onto a worker holding none."""
        async with self.lock:
            for dep in list(self.cluster._deployments.values()):
                if dep.closed:
                    continue
                missing = dep.wanted - sum(1 for r in dep.replicas if not r.draining)
                nodes = None
                for _ in range(max(0, missing)):
                    nodes = nodes or await self.nodes()
                    try:
                        rep = await self.start_replica(dep, nodes=nodes)
                    except PlacementError as e:
                        self.cluster.log.add("replica_pending", deployment=dep.name, detail=f"{reason}: {e}")
                        break
                    except ClusterError as e:
                        self.cluster.log.add("replica_failed", deployment=dep.name, detail=f"{reason}: {e}")
                        break
                    self.cluster.log.add("replica_recreated", deployment=dep.name, replica=rep.rid,
                                            worker=rep.worker, detail=reason)
                if rebalance:
                    await self._rebalance(dep)

    async def _rebalance(self, dep: Deployment) -> None:
        nodes = await self.nodes()
        empty = [n for n in nodes if not n.replicas.get(dep.name) and policy.fits(n, dep.resources, dep.memory) is None]
        counts: dict[str, list[Replica]] = {}
        for r in dep.replicas:
            if r.healthy and not r.draining:
                counts.setdefault(r.worker, []).append(r)
        crowded = [rs for rs in counts.values() if len(rs) > 1]
        for rs, node in zip(crowded, empty):
            new = await self.start_replica(dep, worker=node.address, nodes=nodes)
            await self.drain(rs[-1])
            self.cluster.log.add("rebalanced", deployment=dep.name, replica=new.rid, worker=node.address,
                                    detail=f"moved from {rs[-1].worker}")

    async def retire(self, workers: list[str]) -> None:
        """Drain the replicas on ``workers`` (names or addresses) before they close."""
        info = await self.cluster.client.scheduler.identity()
        addrs = {a for a, w in info.get("workers", {}).items() if a in workers or w.get("name") in workers}
        async with self.lock:
            self.retiring |= addrs
            for dep in list(self.cluster._deployments.values()):
                for rep in [r for r in dep.replicas if r.worker in addrs]:
                    others = [r for r in dep.replicas if r.worker not in addrs and r.healthy and not r.draining]
                    if not others:  # the last replica: start its successor before draining it
                        try:
                            await self.start_replica(dep, exclude=addrs)
                        except PlacementError as e:
                            self.cluster.log.add("replica_pending", deployment=dep.name, detail=str(e))
                    else:
                        dep.wanted = max(1, dep.wanted - 1)
                    await self.drain(rep)
                    self.cluster.log.add("replica_retired", deployment=dep.name, replica=rep.rid, worker=rep.worker)

    def describe_worker(self, address: str) -> dict[str, Any]:
        reps = [r for d in self.cluster._deployments.values() for r in d.replicas if r.worker == address]
        return {"replicas": len(reps), "deployments": sorted({r.deployment.name for r in reps}),
                "outstanding": sum(r.outstanding for r in reps)}
