"""A compiled graph split across workers: :meth:`Cluster.deploy_graph`.

:func:`edgebench.cluster.partition.partition_graph` cuts the graph's steps into a pipeline of
parts from measured step times and tensor sizes.  Each part is loaded on its own worker (its
models as bytes, verified by hash; its functions pickled by Dask).  A request goes to part 0's
worker, which runs its steps and hands the tensors still needed straight to part 1's worker,
and so on; the last part's outputs travel back down the chain to the caller.  Intermediate
tensors cross the network only between the workers that need them, never through the client.
"""
from __future__ import annotations

import asyncio
import hashlib
import itertools
from collections.abc import Mapping
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any

from ..errors import ClusterError, ConfigError
from .transport import COMM_ERRORS, rebuild_error
from .wire import pack, unpack

if TYPE_CHECKING:
    from .api import Cluster
    from .partition import PartitionPlan

__all__ = ["DistributedGraph", "build_part", "deploy_graph"]

_IDS = itertools.count(1)


class _PartRunner:
    """One part on a worker: its steps' nodes with their own engines."""

    def __init__(self, steps: list[tuple[Any, Any]], constants: dict[str, Any], send: list[str]):
        self.steps = steps
        self.constants = constants
        self.send = send

    def run(self, values: Mapping[str, Any]) -> dict[str, Any]:
        from .partition import run_steps

        return run_steps(self.steps, {**self.constants, **values}, self.send)

    def close(self) -> None:
        for _, engine in self.steps:
            if engine is not None:
                engine.close()


def build_part(payload: dict[str, Any]) -> _PartRunner:
    """Build a part on the worker from what :func:`_payload` sent (models checked by hash)."""
    from ..engine import Engine
    from ..model import Model

    steps = []
    for node, blob, sha in payload["steps"]:
        engine = None
        if node.kind == "model":
            digest = hashlib.sha256(blob).hexdigest()
            if digest != sha:
                raise ClusterError(f"model of step {node.name!r} arrived with SHA-256 {digest[:12]}..., "
                                   f"expected {sha[:12]}...")
            node.model = Model(blob, name=node.name, source="cluster")
            engine = Engine(node.model, backend=payload["backend"], device=payload["device"],
                            threads=payload["threads"], record=False)
        steps.append((node, engine))
    return _PartRunner(steps, payload["constants"], payload["send"])


def _payload(cg: Any, plan: PartitionPlan, index: int, backend: str | None, device: str,
             threads: int | None) -> dict[str, Any]:
    import copy

    steps = []
    for i in plan.parts[index]:
        node = copy.copy(cg.steps[i].node)
        blob = sha = None
        if node.kind == "model":
            blob, sha = node.model.to_bytes(), node.model.sha256
            node.model = None  # travels as bytes, rebuilt and verified on the worker
        steps.append((node, blob, sha))
    send = plan.cuts[index] if index < len(plan.cuts) else list(cg.outputs)
    return {"steps": steps, "constants": dict(cg.constants) if index == 0 else {}, "send": list(send),
            "backend": backend, "device": device, "threads": threads}


class DistributedGraph:
    """A compiled graph deployed as a pipeline of parts on the cluster's workers.

    Attributes
    ----------
    plan
        The :class:`~edgebench.cluster.partition.PartitionPlan` (``plan.explain()``).
    placement
        ``[(part id, worker address), ...]`` in pipeline order.
    """

    def __init__(self, cluster: Cluster, cg: Any, plan: PartitionPlan, placement: list[tuple[str, str]],
                 payloads: list[dict[str, Any]], max_retries: int = 2):
        self.cluster = cluster
        self.graph = cg
        self.plan = plan
        self.placement = placement
        self._payloads = payloads
        self.max_retries = max_retries
        self.closed = False
        self.requests = 0
        self.retried = 0

    def run(self, feeds: Mapping[str, Any], timeout_s: float | None = 60.0) -> dict[str, Any]:
        """Run one request through the pipeline of parts; returns the graph's outputs."""
        return self.submit(feeds).result(timeout_s)

    def submit(self, feeds: Mapping[str, Any]) -> Future:
        if self.closed:
            raise ClusterError("this distributed graph was undeployed", "deploy it again with cl.deploy_graph")
        if not isinstance(feeds, Mapping) or any(t not in feeds for t in self.graph.inputs):
            raise ConfigError(f"feed every graph input: {list(self.graph.inputs)}")
        msg = pack({t: feeds[t] for t in self.graph.inputs})
        return asyncio.run_coroutine_threadsafe(self._run(msg), self.cluster._loop)

    async def _run(self, msg: dict[str, Any]) -> dict[str, Any]:
        self.requests += 1
        for attempt in range(self.max_retries + 1):
            route = [list(p) for p in self.placement]
            try:
                reply = await self.cluster.client.rpc(route[0][1]).eb_part(route=route, values=msg)
            except COMM_ERRORS as e:
                reply = {"status": "lost", "detail": f"{type(e).__name__}: {e}"}
            if reply.get("status") == "OK":
                return unpack(reply["values"], writable=True)
            if reply.get("status") == "error":
                raise rebuild_error(reply["error"])
            if attempt == self.max_retries:
                raise ClusterError(f"graph {self.graph.name!r} could not run: {reply}",
                                   "check cl.events for workers leaving")
            self.retried += 1
            await self._repair()
        raise AssertionError("unreachable")

    async def _repair(self) -> None:
        """Reload every part whose worker is gone (or lost it) on a live worker."""
        info = await self.cluster.client.scheduler.identity()
        alive = sorted(info.get("workers", {}))
        if not alive:
            await asyncio.sleep(0.5)
            return
        for i, (pid, addr) in enumerate(self.placement):
            ok = addr in alive
            if ok:
                try:
                    st = await self.cluster.client.rpc(addr).eb_status()
                    ok = pid in st["parts"]
                except COMM_ERRORS:
                    ok = False
            if not ok:
                new = alive[i % len(alive)]
                await _load(self.cluster, pid, new, self._payloads[i])
                self.placement[i] = (pid, new)
                self.cluster.log.add("graph_part_moved", deployment=self.graph.name, replica=pid, worker=new,
                                     detail=f"from {addr}")

    def explain(self) -> str:
        lines = [self.plan.explain(), "", "placement:"]
        lines += [f"  part {i} ({pid}) on {addr}" for i, (pid, addr) in enumerate(self.placement)]
        return "\n".join(lines)

    def undeploy(self) -> None:
        async def _go():
            for pid, addr in self.placement:
                try:
                    await self.cluster.client.rpc(addr).eb_unload_part(part=pid)
                except COMM_ERRORS:
                    pass
        self.cluster._sync(_go())
        self.closed = True

    def __repr__(self) -> str:
        return (f"DistributedGraph({self.graph.name!r}, parts={self.plan.n_parts}, "
                f"workers={[a for _, a in self.placement]})")


async def _load(cluster: Cluster, pid: str, addr: str, payload: dict[str, Any]) -> None:
    from distributed.protocol import to_serialize

    reply = await cluster.client.rpc(addr).eb_load_part(part=pid, payload=to_serialize(payload))
    if reply.get("status") != "OK":
        raise rebuild_error(reply["error"])


def sample_feeds(cg: Any) -> dict[str, Any]:
    """Random feeds for ``cg`` when every graph input goes straight into a model (whose
    signature gives its shape and dtype); otherwise a ConfigError asking for ``feeds=``."""
    from dataclasses import replace

    from .._feeds import random_feeds

    feeds: dict[str, Any] = {}
    for t in cg.inputs:
        spec = next((replace(sp, name=t) for s in cg.steps if s.node.kind == "model"
                     for port, tensor in s.node.inputs.items() if tensor == t
                     for sp in s.node.model.inputs if sp.name == port), None)
        if spec is None:
            raise ConfigError(f"graph input {t!r} goes into a Python function: its shape cannot be known",
                              f"pass feeds= with one sample request: {{{', '.join(repr(i) for i in cg.inputs)}: ...}}")
        feeds.update(random_feeds([spec]))
    return feeds


def deploy_graph(cluster: Cluster, cg: Any, partition: int | str = "auto", *, feeds: Mapping[str, Any] | None = None,
                 workers: list[str] | None = None, backend: str | None = None, device: str = "cpu",
                 threads: int | None = 1, **plan_kw: Any) -> DistributedGraph:
    from ..graph.executor import CompiledGraph
    from .partition import partition_graph

    if not isinstance(cg, CompiledGraph):
        raise ConfigError(f"deploy_graph takes a compiled graph, got {type(cg).__name__}", "call graph.compile() first")
    feeds = feeds if feeds is not None else sample_feeds(cg)
    addrs = list(workers) if workers else cluster.worker_addresses()
    if not addrs:
        raise ClusterError("the cluster has no workers", "start some (cl.scale(n)) and retry")
    k: int | str = partition
    if isinstance(partition, int) and not isinstance(partition, bool) and partition > len(addrs):
        raise ConfigError(f"partition={partition} parts but only {len(addrs)} workers", "use fewer parts or add workers")
    plan = partition_graph(cg, feeds, k, **plan_kw)
    if plan.n_parts > len(addrs):  # "auto" found more parts than workers: ask for as many as there are
        plan = partition_graph(cg, feeds, len(addrs), **plan_kw)
    gid = f"{cg.name}-g{next(_IDS)}"
    placement = [(f"{gid}-p{i}", addrs[i % len(addrs)]) for i in range(plan.n_parts)]
    payloads = [_payload(cg, plan, i, backend, device, threads) for i in range(plan.n_parts)]

    async def _go():
        await asyncio.gather(*(_load(cluster, pid, addr, p) for (pid, addr), p in zip(placement, payloads)))
    cluster._sync(_go())
    cluster.log.add("graph_deployed", deployment=cg.name, detail=f"{plan.n_parts} parts on {[a for _, a in placement]}")
    return DistributedGraph(cluster, cg, plan, placement, payloads)
