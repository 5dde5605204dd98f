"""``eb.Cluster``: models deployed on a Dask cluster, requests sent straight to the replicas.

Dask places and supervises (its workers, nannies, resources, membership, TLS, Adaptive);
edgebench adds replicas that live on the workers (:mod:`.worker`), a controller that keeps
them at strength (:mod:`.controller`), and a request path that goes client -> worker without
the scheduler (:mod:`.transport`).
"""
from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Mapping
from typing import Any

from ..errors import ClusterError, ConfigError
from .controller import Controller
from .deployment import Deployment
from .events import EventLog
from .tenants import Tenants

__all__ = ["Cluster"]


class Cluster:
    """edgebench on a Dask cluster.

    Parameters
    ----------
    address
        A scheduler address (``"tcp://host:8786"``, ``"tls://..."``), a
        ``dask.distributed.Client``, or a Dask cluster object (``LocalCluster``,
        dask-kubernetes, dask-jobqueue, ...).  ``Cluster.local()`` starts one here.
    security
        A ``distributed.security.Security`` (TLS certificates) for an address.
    tenants
        ``{name: {"priority": 1, "max_inflight": 64, "rate_limit_rps": 100}}`` (see
        :mod:`edgebench.cluster.tenants`).
    interval
        Seconds between the controller's repair passes.
    timeout
        Seconds to wait for the scheduler when connecting to an address.
    shm
        Send large tensors (>= 64 KB) to workers on this host through shared memory instead
        of TCP (found out per replica; workers elsewhere keep to TCP).  See
        :mod:`edgebench.cluster.shm`.

    Examples
    --------
    >>> cl = eb.Cluster.local(n_workers=2)                        # doctest: +SKIP
    >>> dep = cl.deploy(eb.zoo.load("mlp"), replicas=2)           # doctest: +SKIP
    >>> dep.run({"input": x})                                     # doctest: +SKIP
    """

    def __init__(self, address: Any, *, security: Any = None, tenants: Mapping[str, Any] | None = None,
                 interval: float = 1.0, timeout: float = 10.0, shm: bool = True):
        from distributed import Client

        #: send large tensors to workers on this host through shared memory (see cluster.shm)
        self.shm = bool(shm)
        self._own_client = False
        self._dask_cluster = None
        if isinstance(address, Client):
            client = address
        else:
            if hasattr(address, "scheduler_address") and hasattr(address, "scale"):
                self._dask_cluster = address
                address_ = address
            elif isinstance(address, str):
                address_ = address
            else:
                raise ConfigError(f"Cluster() needs a scheduler address, a dask Client or a Dask cluster, "
                                  f"got {type(address).__name__}", "or start one here with eb.Cluster.local()")
            try:
                client = Client(address_, security=security, timeout=f"{timeout}s") if security is not None \
                    else Client(address_, timeout=f"{timeout}s")
            except (OSError, TimeoutError) as e:
                raise ClusterError(f"cannot reach the Dask scheduler at {address!r}: {e}",
                                   "start one (`dask scheduler`), check the address, or use eb.Cluster.local()") from None
            self._own_client = True
        if client.asynchronous:
            raise ConfigError("eb.Cluster needs a synchronous dask Client", "create it with Client(..., asynchronous=False)")
        self.client = client
        self._loop: asyncio.AbstractEventLoop = client.loop.asyncio_loop
        self._loop_thread: int | None = None
        self._tasks: set[asyncio.Task] = set()
        self._deployments: dict[str, Deployment] = {}
        self._adaptive = None
        self.log = EventLog()
        self.tenants = Tenants(tenants)
        self.controller = Controller(self)
        self.closed = False
        from .plugin import TOPIC, MembershipPlugin
        from .worker import EdgebenchWorker

        client.register_plugin(EdgebenchWorker())
        client.register_plugin(MembershipPlugin())
        client.subscribe_topic(TOPIC, self._on_membership)
        self._sync(self._start(interval))
        self.log.add("cluster_started", detail=f"scheduler {client.scheduler.address}, "
                                                   f"{len(client.scheduler_info()['workers'])} workers")

    @classmethod
    def local(cls, n_workers: int = 2, threads_per_worker: int = 1, *, memory_limit: str | int = "auto",
              resources: Mapping[str, float] | None = None, processes: bool = True,
              tenants: Mapping[str, Any] | None = None, security: Any = None, dashboard: bool = False,
              shm: bool = True, **kwargs: Any) -> Cluster:
        """Start a ``LocalCluster`` of worker processes on 127.0.0.1 and connect to it.

        Scripts that call this need ``if __name__ == "__main__":`` (the workers are new
        processes that import the script).
        """
        from distributed import LocalCluster

        if not isinstance(n_workers, int) or n_workers < 0:
            raise ConfigError(f"n_workers must be a non-negative integer, got {n_workers!r}")
        if dashboard:  # the edgebench pages (profiling, cluster) in the Dask dashboard too
            try:
                from ..notebook.dask_pages import register_dask_pages

                register_dask_pages()
            except ImportError:  # bokeh is absent: the Dask dashboard itself needs it anyway
                pass
        if not dashboard:  # Dask still serves /health etc.: on a free port, not a fixed 8787
            kwargs["scheduler_kwargs"] = {"dashboard_address": "127.0.0.1:0", **kwargs.get("scheduler_kwargs", {})}
        lc = LocalCluster(n_workers=n_workers, threads_per_worker=threads_per_worker, processes=processes,
                          host="127.0.0.1", memory_limit=memory_limit, resources=dict(resources or {}) or None,
                          dashboard_address="127.0.0.1:0" if dashboard else None, security=security,
                          protocol="tls" if security is not None else None, **kwargs)
        try:
            self = cls(lc, security=security, tenants=tenants, shm=shm)
        except BaseException:
            lc.close()
            raise
        self._owns_dask_cluster = True
        return self

    async def _start(self, interval: float) -> None:
        self._loop_thread = threading.get_ident()
        self._repair = asyncio.get_running_loop().create_task(self._repair_loop(interval))

    async def _repair_loop(self, interval: float) -> None:
        while not self.closed:
            await asyncio.sleep(interval)
            try:
                if any(d.wanted > sum(not r.draining for r in d.replicas) for d in self._deployments.values()):
                    await self.controller.reconcile(reason="periodic check")
            except Exception as e:  # keep repairing; say why this pass failed
                self.log.add("repair_failed", detail=f"{type(e).__name__}: {e}")

    def _on_membership(self, event: Any) -> None:
        if self.closed:  # the client may outlive this cluster: its events are not ours any more
            return
        _, msg = event
        if msg.get("action") == "remove_worker":
            self.controller.worker_left(msg["worker"])
        elif msg.get("action") == "add_worker":
            self.controller.worker_joined(msg["worker"])

    # -- plumbing ----------------------------------------------------------------------------
    def _spawn(self, coro: Any) -> None:
        task = self._loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _sync(self, coro: Any, timeout: float | None = None) -> Any:
        if threading.get_ident() == self._loop_thread:
            coro.close()
            raise ClusterError("a blocking cluster call was made from the cluster's own event loop",
                               "call it from another thread")
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    # -- deploying ---------------------------------------------------------------------------
    def deploy(self, model: Any, replicas: int = 1, resources: Mapping[str, float] | None = None,
               batching: Mapping[str, Any] | None = None, tenant: str | None = None, *, name: str | None = None,
               backend: str | None = None, device: str = "cpu", threads: int | None = 1,
               options: Mapping[str, Any] | None = None, memory: int | None = None,
               max_inflight: int | None = None, max_retries: int = 3, timeout_s: float = 60.0,
               routing: str = "p2c") -> Deployment:
        """Deploy ``model`` as ``replicas`` replicas spread over the workers.

        Parameters
        ----------
        model
            A :class:`~edgebench.Model` or anything :func:`edgebench.load` accepts.
        resources
            Dask worker resources each replica holds, e.g. ``{"GPU": 1}`` (workers started
            with ``--resources GPU=1``).  ``CPU`` counts a worker's threads when not declared.
            Default ``{}``: nothing reserved, replicas are only spread.
        batching
            ``DynamicBatcher`` options (``max_batch_size``, ``max_queue_delay_ms``, ...) for a
            batcher in front of each replica; ``None``: no batcher.
        tenant
            The tenant the deployment's requests count against (see ``tenants=``).
        memory
            Bytes a replica needs on its worker (default: twice the model's size plus 16 MiB).
        max_inflight
            Requests in flight beyond which ``submit`` refuses (``QueueFullError``).
        max_retries, timeout_s
            Replicas a request may be retried on when its worker dies; how long it may wait
            for a replica, and for a worker's answer before the worker counts as hung (its
            requests then go to another replica).
        routing
            ``"p2c"`` (power of two choices), ``"least_outstanding"`` or ``"round_robin"``.
        """
        from ..model import load

        self._check_open()
        m = load(model)
        name = name or m.name
        if name in self._deployments:
            raise ClusterError(f"a deployment named {name!r} exists already",
                               "pass name= to deploy it twice, or undeploy the first")
        if not isinstance(replicas, int) or isinstance(replicas, bool) or replicas < 1:
            raise ConfigError(f"replicas must be a positive integer, got {replicas!r}")
        if tenant is not None and tenant not in self.tenants:
            raise ConfigError(f"unknown tenant {tenant!r}", f"declare it: eb.Cluster(..., tenants={{{tenant!r}: {{...}}}})"
                              if not self.tenants.names() else f"pick one of {self.tenants.names()}")
        if routing not in ("p2c", "least_outstanding", "round_robin"):
            raise ConfigError(f"unknown routing {routing!r}", "use 'p2c', 'least_outstanding' or 'round_robin'")
        res = dict(resources or {})
        for k, v in res.items():
            if not isinstance(v, (int, float)) or isinstance(v, bool) or v < 0:
                raise ConfigError(f"resource {k!r} must be a non-negative number, got {v!r}")
        if batching is not None:
            from ..batching import DynamicBatcher

            bad = set(batching) - set(DynamicBatcher.__init__.__code__.co_varnames)
            if bad:
                raise ConfigError(f"unknown batching options {sorted(bad)}", "see help(eb.DynamicBatcher)")
        mem = int(memory) if memory is not None else 2 * m.size_bytes + (16 << 20)
        dep = Deployment(self, name, m, wanted=replicas, resources=res, memory=mem, backend=backend, device=device,
                         threads=threads, options=dict(options) if options else None,
                         batching=dict(batching) if batching else None, tenant=tenant,
                         priority=self.tenants.priority(tenant), max_inflight=max_inflight, max_retries=max_retries,
                         timeout_s=timeout_s, routing=routing)
        self._deployments[name] = dep
        try:
            self._sync(self.controller.scale(dep, replicas))
        except BaseException:
            self._deployments.pop(name, None)
            dep.closed = True
            self._sync(self._unload_all(dep))
            raise
        self.log.add("deployed", deployment=name, detail=f"{replicas} replicas of {m.name} ({m.sha256[:12]})")
        return dep

    async def _unload_all(self, dep: Deployment) -> None:
        for r in list(dep.replicas):
            await self.controller._unload(r)
        dep.replicas.clear()

    def deploy_graph(self, graph: Any, partition: int | str = "auto", *, feeds: Mapping[str, Any] | None = None,
                     workers: list[str] | None = None, **kwargs: Any):
        """Split a compiled graph across workers and deploy its parts (see
        :mod:`edgebench.cluster.graph_parts`).  ``partition``: ``"auto"`` or a number of parts.
        ``feeds``: a sample request used to measure the steps and the tensors' sizes the
        partitioner weighs (default: random feeds from the models' signatures, when every
        graph input goes straight into a model)."""
        from .graph_parts import deploy_graph

        self._check_open()
        return deploy_graph(self, graph, partition, feeds=feeds, workers=workers, **kwargs)

    # -- views of the state ------------------------------------------------------------------
    def deployment(self, name: str) -> Deployment:
        try:
            return self._deployments[name]
        except KeyError:
            raise ClusterError(f"no deployment {name!r}", f"deployed: {sorted(self._deployments)}") from None

    def worker_addresses(self) -> list[str]:
        return sorted(self.client.scheduler_info(n_workers=-1)["workers"])

    @property
    def workers(self):
        """One row per worker: threads, memory, resources, replicas, requests outstanding."""
        import pandas as pd

        info = self.client.scheduler_info(n_workers=-1)["workers"]
        rows = []
        for addr, w in sorted(info.items()):
            d = self.controller.describe_worker(addr)
            rows.append({"worker": addr, "name": w.get("name"), "nthreads": w.get("nthreads"),
                         "memory_limit_mb": (w.get("memory_limit") or 0) / 2**20,
                         "memory_mb": ((w.get("metrics") or {}).get("memory") or 0) / 2**20,
                         "resources": dict(w.get("resources") or {}), **d})
        return pd.DataFrame(rows, columns=["worker", "name", "nthreads", "memory_limit_mb", "memory_mb", "resources",
                                           "replicas", "deployments", "outstanding"])

    @property
    def deployments(self):
        """One row per deployment: replicas live/wanted, workers, counters, p50/p99 (last 10 s)."""
        import pandas as pd

        from .deployment import ROW_COLUMNS

        return pd.DataFrame([d.row() for d in list(self._deployments.values())], columns=ROW_COLUMNS)

    @property
    def events(self):
        """Worker, replica and scaling events as a DataFrame (``cl.log`` is the live
        :class:`~edgebench.cluster.events.EventLog`)."""
        return self.log.to_pandas()

    # -- scaling -----------------------------------------------------------------------------
    def scale(self, n_workers: int) -> None:
        """Ask the Dask cluster object for ``n_workers`` workers (a ``Cluster.local`` or a
        cluster object passed in; a bare scheduler address cannot start workers)."""
        if self._dask_cluster is None:
            raise ClusterError("this cluster was given as a scheduler address: edgebench cannot start workers on it",
                               "pass the Dask cluster object (LocalCluster, KubeCluster, ...) to eb.Cluster")
        self._dask_cluster.scale(n_workers)

    def adapt(self, minimum: int = 1, maximum: int = 8, target_p99_ms: float = 20.0, *, interval: float = 1.0,
              wait_count: int = 3, queue_per_worker: float = 4.0):
        """Scale workers (and a replica of each deployment per worker) to keep p99 under
        ``target_p99_ms``: Dask's ``Adaptive`` with edgebench's target.  Scale-down drains."""
        from .autoscale import start_adaptive

        self._check_open()
        self._adaptive = start_adaptive(self, minimum=minimum, maximum=maximum, target_p99_ms=target_p99_ms,
                                        interval=interval, wait_count=wait_count, queue_per_worker=queue_per_worker)
        return self._adaptive

    def kill_worker(self, address: str | None = None) -> str:
        """Fault injection for local clusters: ``kill -9`` one worker process (its nanny
        starts a new one).  Returns the address killed."""
        import signal

        if not getattr(self, "_owns_dask_cluster", False):
            raise ClusterError("kill_worker only kills workers of a cluster started by eb.Cluster.local()",
                               "stop a remote worker with the tools that started it")
        addrs = self.worker_addresses()
        address = address or next((r.worker for d in self._deployments.values() for r in d.replicas if r.healthy),
                                  addrs[0] if addrs else None)
        if address not in addrs:
            raise ClusterError(f"no worker {address!r}", f"pick one of {addrs}")
        pid = self.client.run(os.getpid, workers=[address])[address]
        os.kill(pid, signal.SIGKILL)
        self.log.add("worker_killed", worker=address, detail=f"SIGKILL to pid {pid}")
        return address

    # -- closing -----------------------------------------------------------------------------
    def _check_open(self) -> None:
        if self.closed:
            raise ClusterError("this cluster is closed", "create a new eb.Cluster")

    def close(self) -> None:
        """Undeploy everything, stop autoscaling, disconnect (and stop a cluster we started)."""
        if self.closed:
            return
        if self._adaptive is not None:
            self._adaptive.stop(reason="edgebench cluster closed")
        for dep in list(self._deployments.values()):
            try:
                self._sync(self.controller.undeploy(dep), timeout=30)
            except Exception:
                pass
        self.closed = True  # a client that lives on still gets membership events: ignored now
        if self._own_client:
            self.client.close()
        if getattr(self, "_owns_dask_cluster", False):
            self._dask_cluster.close()

    def __enter__(self) -> Cluster:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _repr_mimebundle_(self, include=None, exclude=None, **kwargs):
        from ..notebook.display import mimebundle

        return mimebundle(self, include, exclude)

    def _repr_html_(self) -> str:
        from ..notebook.views_cluster import cluster_html

        return cluster_html(self)

    def __repr__(self) -> str:
        if self.closed:
            return "Cluster(closed)"
        n = len(self.client.scheduler_info()["workers"])
        return (f"Cluster({self.client.scheduler.address!r}, workers={n}, "
                f"deployments={sorted(self._deployments)})")
