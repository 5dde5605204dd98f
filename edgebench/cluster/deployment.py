"""A model deployed on the cluster: its replicas, routing, retries and counters.

``submit`` validates the feeds in the caller's thread (a bad request never leaves the
process), then hands the request to the client's event loop, where it is routed to a replica
(:func:`edgebench.cluster.policy.choose`: power of two choices on outstanding requests).  A
request whose replica is lost goes back through routing, up to ``max_retries`` times; while no
replica is healthy it waits (up to its timeout) for the controller to bring one back.
"""
from __future__ import annotations

import random
import threading
import time
from collections import deque
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any

from ..errors import ClusterError, NoReplicaError, QueueFullError
from . import policy
from .transport import Replica, Request

if TYPE_CHECKING:
    from .api import Cluster

__all__ = ["Deployment", "ROW_COLUMNS"]

#: the columns of ``cl.deployments`` (one row per deployment, :meth:`Deployment.row`)
ROW_COLUMNS = ["deployment", "model", "tenant", "replicas", "wanted", "workers", "transport", "inflight", "pending",
               "submitted", "completed", "errors", "retried", "rejected", "p50_ms", "p99_ms", "rate"]


class Deployment:
    """A model served by replicas on the cluster's workers.  Made by :meth:`Cluster.deploy`.

    Attributes
    ----------
    name
        The deployment's name (the model's, unless given).
    replicas
        The live :class:`~edgebench.cluster.transport.Replica` s (client view).
    wanted
        How many replicas the controller keeps alive.
    """

    def __init__(self, cluster: Cluster, name: str, model: Any, *, wanted: int, resources: dict[str, float],
                 memory: int, backend: str | None, device: str, threads: int | None, options: dict | None,
                 batching: dict | None, tenant: str | None, priority: int, max_inflight: int | None,
                 max_retries: int, timeout_s: float, routing: str):
        from .._feeds import FeedValidator

        self.cluster = cluster
        self.name = name
        self.model = model
        self.wanted = wanted
        self.resources = resources
        self.memory = memory
        self.backend = backend
        self.device = device
        self.threads = threads
        self.options = options
        self.batching = batching
        self.tenant = tenant
        self.priority = priority
        self.max_inflight = max_inflight
        self.max_retries = max_retries
        self.timeout_s = timeout_s
        self.routing = routing
        self.replicas: list[Replica] = []
        self.pending: deque[Request] = deque()
        self.closed = False
        self.submitted = 0  # callers' threads count it under _lock; the loop counts answers
        self.completed = self.errors = self.retried = self.rejected = 0
        self._lock = threading.Lock()
        self.latencies: deque[tuple[float, float]] = deque(maxlen=20000)  # (time, ms)
        self._validate = FeedValidator(model.inputs)
        self._rng = random.Random(0)
        self._loop = cluster._loop
        self._inbox: deque[Request] = deque()  # submitted, not yet routed (deque ops are atomic)
        self._woken = False
        self._dirty: set | None = None  # replicas pushed to during _drain_inbox

    # -- requests (any thread) --------------------------------------------------------------
    def submit(self, feeds: Any, *, priority: int | None = None, timeout_s: float | None = None) -> Future:
        """Send one request to a replica; returns a ``concurrent.futures.Future`` of the outputs.

        Raises :class:`~edgebench.errors.InvalidInputError` at once for feeds that do not match
        the model, and :class:`~edgebench.errors.QueueFullError` when the deployment's (or its
        tenant's) ``max_inflight`` is reached.
        """
        if self.closed:
            raise ClusterError(f"deployment {self.name!r} was undeployed", "deploy the model again")
        feeds = self._validate(feeds)
        with self._lock:
            if self.max_inflight is not None and self.inflight >= self.max_inflight:
                self.rejected += 1
                raise QueueFullError(f"deployment {self.name!r} has {self.inflight} requests in flight "
                                     "(its max_inflight)",
                                     "wait for answers, or deploy with a larger max_inflight or more replicas")
            self.cluster.tenants.admit(self.tenant)  # raises QueueFullError over the tenant's share
            self.submitted += 1
        t = timeout_s if timeout_s is not None else self.timeout_s
        req = Request(feeds, self.priority if priority is None else priority, time.perf_counter() + t, self.tenant)
        self._inbox.append(req)
        if not self._woken:  # one wake-up of the loop carries every request submitted meanwhile
            self._woken = True
            self._loop.call_soon_threadsafe(self._drain_inbox)
        return req.future

    def run(self, feeds: Any, *, priority: int | None = None, timeout_s: float | None = None) -> dict[str, Any]:
        """Run one request on a replica and return ``{output name: array}``."""
        fut = self.submit(feeds, priority=priority, timeout_s=timeout_s)
        return fut.result()

    # -- routing (event loop) ---------------------------------------------------------------
    def _drain_inbox(self) -> None:
        self._woken = False  # cleared first: a submit racing with the drain wakes the loop again
        inbox = self._inbox
        self._dirty = dirty = set()
        try:
            while inbox:
                self._route(inbox.popleft())
        finally:
            self._dirty = None
        for rep in dirty:  # send now: every request of this wake-up is queued
            rep._flush()

    def _route(self, req: Request) -> None:
        if req.future.done():
            return
        reps = self.replicas
        try:
            i = policy.choose(reps, self._rng, self.routing)
        except NoReplicaError:
            self.pending.append(req)
            self.cluster._spawn(self._expire_later(req))
            return
        reps[i].push(req)

    async def _expire_later(self, req: Request) -> None:
        import asyncio

        await asyncio.sleep(max(0.0, req.deadline - time.perf_counter()))
        if not req.future.done() and req in self.pending:
            self.pending.remove(req)
            self.finish(req, None, NoReplicaError(
                f"no healthy replica of {self.name!r} came back within {self.timeout_s:g} s",
                "check cl.events and cl.workers; add workers or lower the replicas' resources"))

    def drain_pending(self) -> None:
        """Route the requests that waited for a replica (called when one becomes healthy)."""
        while self.pending and any(r.healthy and not r.draining for r in self.replicas):
            self._route(self.pending.popleft())

    def finish(self, req: Request, outs: Any, error: BaseException | None) -> None:
        if not req.resolve(outs, error):
            return
        self.cluster.tenants.release(req.tenant)
        if error is None:
            self.completed += 1
            now = time.perf_counter()
            self.latencies.append((now, (now - req.t_submit) * 1e3))
        else:
            self.errors += 1

    def replica_lost(self, rep: Replica, reason: str, batch: list[Request]) -> None:
        """The connection to ``rep`` broke: retry what it held elsewhere, have it re-created."""
        was_healthy = rep.healthy
        rep.healthy = False
        rep.close()
        again = batch + rep.take_queued()
        if was_healthy:
            self.cluster.log.add("replica_lost", deployment=self.name, replica=rep.rid, worker=rep.worker,
                                    detail=f"{reason}; {len(again)} requests rerouted")
            self.cluster.controller.recover(self, rep)
        for r in again:
            r.attempts += 1
            if r.attempts > self.max_retries:
                self.finish(r, None, ClusterError(
                    f"request to {self.name!r} failed on {r.attempts} replicas in a row (last: {reason})",
                    "check cl.events for workers dying; raise max_retries if the cluster is flaky"))
                continue
            self.retried += 1
            self._route(r)

    # -- statistics --------------------------------------------------------------------------
    def latency_ms(self, window_s: float = 10.0) -> dict[str, float | None]:
        """p50 / p99 (ms, client side, submit to answer) and rate over the last ``window_s``."""
        import numpy as np

        now = time.perf_counter()
        recent = [ms for t, ms in list(self.latencies) if now - t <= window_s]
        if not recent:
            return {"p50_ms": None, "p99_ms": None, "rate": 0.0}
        a = np.asarray(recent)
        return {"p50_ms": float(np.percentile(a, 50)), "p99_ms": float(np.percentile(a, 99)),
                "rate": len(a) / window_s}

    def row(self) -> dict[str, Any]:
        lat = self.latency_ms()
        return {"deployment": self.name, "model": self.model.name, "tenant": self.tenant,
                "replicas": sum(r.healthy for r in self.replicas), "wanted": self.wanted,
                "workers": ", ".join(sorted({r.worker for r in self.replicas if r.healthy})),
                "transport": "/".join(sorted({r.transport for r in self.replicas if r.healthy})),
                "inflight": self.inflight, "pending": len(self.pending), "submitted": self.submitted,
                "completed": self.completed, "errors": self.errors, "retried": self.retried,
                "rejected": self.rejected, **lat}

    @property
    def inflight(self) -> int:
        """Requests submitted and not answered yet."""
        return self.submitted - self.completed - self.errors

    # -- lifecycle (any thread; runs on the loop) ------------------------------------------
    def scale(self, replicas: int) -> Deployment:
        """Keep ``replicas`` replicas alive (new ones are placed by the spread policy; removed
        ones are drained first, so no request fails)."""
        self.cluster._sync(self.cluster.controller.scale(self, replicas))
        return self

    def migrate(self, replica: Replica | str | int, to_worker: str) -> Replica:
        """Move one replica to ``to_worker`` with no failed request: load on the target, switch
        routing, drain the source, unload it.  ``replica`` is a Replica, its id or its index."""
        rep = self._find(replica)
        return self.cluster._sync(self.cluster.controller.migrate(self, rep, to_worker))

    def undeploy(self) -> None:
        """Drain and unload every replica; later requests raise :class:`ClusterError`."""
        self.cluster._sync(self.cluster.controller.undeploy(self))

    def _find(self, replica: Replica | str | int) -> Replica:
        if isinstance(replica, Replica):
            if replica in self.replicas:
                return replica
        elif isinstance(replica, int) and not isinstance(replica, bool) and 0 <= replica < len(self.replicas):
            return self.replicas[replica]
        else:
            for r in self.replicas:
                if r.rid == replica:
                    return r
        raise ClusterError(f"deployment {self.name!r} has no replica {replica!r}",
                           f"pick one of {[r.rid for r in self.replicas]} (or its index)")

    def _repr_mimebundle_(self, include=None, exclude=None, **kwargs):
        from ..notebook.display import mimebundle

        return mimebundle(self, include, exclude)

    def _repr_html_(self) -> str:
        from ..notebook.views_cluster import deployment_html

        return deployment_html(self)

    def __repr__(self) -> str:
        live = sum(r.healthy for r in self.replicas)
        return (f"Deployment({self.name!r}, replicas={live}/{self.wanted}, "
                f"workers={sorted({r.worker for r in self.replicas if r.healthy})}, inflight={self.inflight})")
