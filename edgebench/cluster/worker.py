"""The worker side: a Dask ``WorkerPlugin`` that holds replicas and answers requests directly.

Registered once with ``client.register_plugin``, Dask installs it on every worker that is
there and on every worker that joins later (a nanny's replacement included).  It adds its
handlers to the worker's own RPC server, so requests travel client -> worker over Dask's comm
(TCP or TLS, Dask's serialization, Dask's connection pool) without passing through the
scheduler:

``eb_load``     build a replica (an :class:`~edgebench.Engine`, optionally behind a
                :class:`~edgebench.DynamicBatcher`) from model bytes, verified by SHA-256;
                without bytes, from the verified bytes this worker keeps (``need_bytes`` if none)
``eb_infer``    run a list of requests on a replica, return one result or error each
``eb_unload``   close a replica (and unmap its shared-memory segments)
``eb_shm_attach``  map a client's shared-memory segment for a replica (see :mod:`.shm`)
``eb_status``   the replicas on this worker (counters, worker-side p50/p99), the models kept,
                the process memory
``eb_load_part``, ``eb_part``, ``eb_unload_part``
                load / run one part of a partitioned graph (forwarding to the next part's
                worker) / unload it

Fast models run on the worker's event loop (an inline call costs nothing); a replica whose
mean run time is above ``INLINE_MS`` runs in its own thread so the loop keeps reading.
"""
from __future__ import annotations

import asyncio
import hashlib
import os
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from distributed import WorkerPlugin
from .wire import pack, unpack

__all__ = ["EdgebenchWorker", "INLINE_MS", "pack_error"]

#: replicas faster than this (mean ms per request) run inline on the worker's event loop
INLINE_MS = 1.0
#: model bytes a worker keeps (newest first) so a second replica needs no transfer
BLOB_CACHE_BYTES = 512 << 20


def pack_error(e: BaseException) -> list:
    """An exception as ``[class name, message, hint]`` (rebuilt on the client)."""
    return [type(e).__name__, getattr(e, "message", str(e)), getattr(e, "hint", None)]


class _Replica:
    """One model replica on this worker."""

    def __init__(self, rid: str, deployment: str, engine: Any, batcher: Any, maps: dict[str, Any]):
        self.maps = maps  # the worker's shared-memory segments, by key (shared by its replicas)
        self.rid = rid
        self.deployment = deployment
        self.engine = engine
        self.batcher = batcher
        self.pool = ThreadPoolExecutor(1, thread_name_prefix=f"eb-{rid}")
        self.requests = 0
        self.errors = 0
        self.busy_ns = 0
        self.outstanding = 0
        self.created = time.time()

    @property
    def mean_ms(self) -> float:
        return self.busy_ns / self.requests / 1e6 if self.requests else 0.0

    def run_many(self, feeds: list[dict]) -> list[dict]:
        out = []
        t0 = time.perf_counter_ns()
        if self.batcher is not None:
            futs = []
            for f in feeds:
                try:
                    futs.append(self.batcher.submit(unpack(f, maps=self.maps)))
                except Exception as e:  # refused at once (queue full, bad input)
                    futs.append(e)
            for f in futs:
                try:
                    if isinstance(f, BaseException):
                        raise f
                    out.append({"o": pack(f.result())})
                except Exception as e:
                    self.errors += 1
                    out.append({"e": pack_error(e)})
        else:
            run = self.engine.run
            for f in feeds:
                try:
                    out.append({"o": pack(run(unpack(f, maps=self.maps)))})
                except Exception as e:
                    self.errors += 1
                    out.append({"e": pack_error(e)})
        self.busy_ns += time.perf_counter_ns() - t0
        self.requests += len(feeds)
        return out

    def close(self) -> None:
        if self.batcher is not None:
            self.batcher.close(drain=True, timeout=10)
        self.engine.close()
        self.pool.shutdown(wait=False)

    def status(self, window_s: float = 10.0, last: int = 4096) -> dict[str, Any]:
        """Counters, and the p50 / p99 (ms, arrival to done on this worker) of the answered
        requests among the replica's last ``last`` records that finished in the last
        ``window_s`` seconds (the batcher's records when it has one: they include the wait)."""
        import numpy as np

        from ..profile.metrics import FIELDS, OK

        buf = (self.batcher if self.batcher is not None else self.engine).records
        recs = buf.snapshot(max(0, buf.total - last))
        arr, done, st = FIELDS.index("arrival"), FIELDS.index("done"), FIELDS.index("status")
        recs = recs[(recs[:, st] == OK) & (recs[:, done] >= time.perf_counter_ns() - int(window_s * 1e9))]
        p50 = p99 = None
        if len(recs):
            p50, p99 = (float(v) for v in np.percentile((recs[:, done] - recs[:, arr]) / 1e6, [50, 99]))
        return {"replica": self.rid, "deployment": self.deployment, "requests": self.requests,
                "errors": self.errors, "mean_ms": self.mean_ms, "outstanding": self.outstanding,
                "created": self.created, "p50_ms": p50, "p99_ms": p99, "recent": len(recs),
                "window_s": window_s}


class EdgebenchWorker(WorkerPlugin):
    """Holds this worker's replicas and graph parts; see the module docstring."""

    name = "edgebench"
    idempotent = True

    def setup(self, worker: Any) -> None:
        self.worker = worker
        self.replicas: dict[str, _Replica] = {}
        self.parts: dict[str, Any] = {}
        self.blobs: OrderedDict[str, bytes] = OrderedDict()  # verified model bytes by SHA-256
        self.cache_hits = 0
        self.maps: dict[str, Any] = {}  # shared-memory segments by key
        self.map_keys: dict[str, set[str]] = {}  # replica -> its segments' keys
        worker.handlers.update({"eb_load": self.load, "eb_infer": self.infer, "eb_unload": self.unload,
                                "eb_shm_attach": self.shm_attach,
                                "eb_status": self.status, "eb_load_part": self.load_part, "eb_part": self.run_part,
                                "eb_unload_part": self.unload_part})
        worker.extensions["edgebench"] = self

    def teardown(self, worker: Any) -> None:
        for r in list(self.replicas.values()):
            r.close()
        self.replicas.clear()
        for p in list(self.parts.values()):
            p.close()
        self.parts.clear()
        for rid in list(self.map_keys):
            self._unmap(rid, list(self.map_keys[rid]))

    # -- replicas ---------------------------------------------------------------------------
    async def load(self, replica: str, deployment: str, model: bytes | None, sha256: str, name: str,
                   backend: str | None = None, device: str = "cpu", threads: int | None = 1,
                   options: dict | None = None, batching: dict | None = None) -> dict[str, Any]:
        """Build a replica.  ``model=None`` asks for the bytes this worker already holds under
        ``sha256`` (a second replica, a migration back): ``{"status": "need_bytes"}`` if none."""
        if replica in self.replicas:
            return {"status": "OK", "pid": os.getpid(), "existing": True}
        if model is None:
            model = self.blobs.get(sha256)
            if model is None:
                return {"status": "need_bytes"}
            self.cache_hits += 1
        try:
            digest = hashlib.sha256(model).hexdigest()
            if digest != sha256:
                raise ValueError(f"model bytes for {name!r} arrived with SHA-256 {digest[:12]}..., expected "
                                 f"{sha256[:12]}...: refusing to load them")
            self._keep(sha256, model)
            rep = await asyncio.to_thread(_build, replica, deployment, model, name, backend, device, threads,
                                          options, batching, self.maps)
        except Exception as e:
            return {"status": "error", "error": pack_error(e)}
        self.replicas[replica] = rep
        return {"status": "OK", "pid": os.getpid(), "mean_ms": rep.mean_ms}

    def _keep(self, sha256: str, blob: bytes) -> None:
        self.blobs[sha256] = blob
        self.blobs.move_to_end(sha256)
        while sum(len(b) for b in self.blobs.values()) > BLOB_CACHE_BYTES and len(self.blobs) > 1:
            self.blobs.popitem(last=False)

    async def infer(self, replica: str, feeds: list[dict]) -> dict[str, Any]:
        rep = self.replicas.get(replica)
        if rep is None:
            return {"status": "missing"}
        rep.outstanding += len(feeds)
        try:
            if rep.batcher is None and rep.requests and rep.mean_ms < INLINE_MS:
                results = rep.run_many(feeds)
            else:
                loop = asyncio.get_running_loop()
                results = await loop.run_in_executor(rep.pool, rep.run_many, feeds)
        finally:
            rep.outstanding -= len(feeds)
        return {"status": "OK", "results": results}

    async def unload(self, replica: str) -> dict[str, Any]:
        rep = self.replicas.pop(replica, None)
        if rep is not None:
            await asyncio.to_thread(rep.close)
        self._unmap(replica, list(self.map_keys.get(replica, ())))
        return {"status": "OK", "existed": rep is not None}

    # -- shared memory ----------------------------------------------------------------------
    async def shm_attach(self, replica: str, key: str, path: str, size: int, token: bytes,
                         drop: list[str] | tuple = ()) -> dict[str, Any]:
        """Map the client's segment ``path`` for ``replica`` (after unmapping ``drop``); an
        error when it cannot be mapped here or holds another token (the client is elsewhere)."""
        from .shm import attach

        self._unmap(replica, drop)
        try:
            mm = attach(path, size, token)
        except (OSError, ValueError) as e:
            return {"status": "error", "error": f"{type(e).__name__}: {e}"}
        self.maps[key] = mm
        self.map_keys.setdefault(replica, set()).add(key)
        return {"status": "OK"}

    def _unmap(self, replica: str, keys: Any) -> None:
        held = self.map_keys.get(replica, set())
        for k in keys:
            held.discard(k)
            mm = self.maps.pop(k, None)
            if mm is not None:
                try:
                    mm.close()
                except BufferError:  # a request still reads it: the map goes with that array
                    pass
        if not held:
            self.map_keys.pop(replica, None)

    async def status(self) -> dict[str, Any]:
        import psutil

        return {"pid": os.getpid(), "rss": psutil.Process().memory_info().rss,
                "replicas": [r.status() for r in self.replicas.values()], "parts": sorted(self.parts),
                "models": list(self.blobs), "loads_from_cache": self.cache_hits,
                "shm_segments": len(self.maps), "shm_bytes": sum(len(m) for m in self.maps.values())}

    # -- graph parts ------------------------------------------------------------------------
    async def load_part(self, part: str, payload: Any) -> dict[str, Any]:
        from .graph_parts import build_part

        try:
            self.parts[part] = await asyncio.to_thread(build_part, payload)
        except Exception as e:
            return {"status": "error", "error": pack_error(e)}
        return {"status": "OK", "pid": os.getpid()}

    async def unload_part(self, part: str) -> dict[str, Any]:
        p = self.parts.pop(part, None)
        if p is not None:
            p.close()
        return {"status": "OK"}

    async def run_part(self, route: list, values: dict) -> dict[str, Any]:
        """Run the first part of ``route`` on ``values``, then hand over to the next worker."""
        part_id, _addr = route[0]
        part = self.parts.get(part_id)
        if part is None:
            return {"status": "missing", "part": part_id}
        try:
            loop = asyncio.get_running_loop()
            outs = await loop.run_in_executor(None, part.run, unpack(values))
        except Exception as e:
            return {"status": "error", "error": pack_error(e)}
        if len(route) == 1:
            return {"status": "OK", "values": pack(outs)}
        _next_id, next_addr = route[1]
        return await self.worker.rpc(next_addr).eb_part(route=route[1:], values=pack(outs))


def _build(replica: str, deployment: str, model: bytes, name: str, backend: str | None, device: str,
           threads: int | None, options: dict | None, batching: dict | None, maps: dict[str, Any]) -> _Replica:
    from ..engine import Engine
    from ..model import Model

    engine = Engine(Model(model, name=name, source="cluster"), backend=backend, device=device, threads=threads,
                    options=options)
    batcher = None
    if batching:
        from ..batching import DynamicBatcher

        batcher = DynamicBatcher(engine, **batching)
    rep = _Replica(replica, deployment, engine, batcher, maps)
    # one warm run measures the model: it decides inline vs threaded execution
    feeds = engine.sample_feeds()
    rep.run_many([feeds])
    rep.requests, rep.errors = 1, 0
    return rep
