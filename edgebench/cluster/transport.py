"""The client side of a replica: its request queue and the coroutines that carry requests to it.

Everything here runs on the Dask client's event loop; nothing is locked.  A request enters
with one ``call_soon_threadsafe`` from the caller's thread, waits in its replica's queue
(ordered by priority, then arrival), and leaves in a message to the worker holding the replica
(Dask's own comm, from the client's connection pool).  When several requests are waiting they
share one message (up to ``max_batch``), and at most ``pipeline`` messages are in flight to a
replica, so a busy replica is fed without a gap and an idle one costs one round trip.  When the
worker shares this host's memory, a message's large arrays travel through a shared-memory
segment (:mod:`.shm`) and the message carries only where they are.

A request is answered exactly once: :meth:`Request.resolve` ignores a second answer.  When the
comm to a worker breaks, every request it carried goes back to the deployment for a retry on
another replica (inference is idempotent; the worker's answer never arrived).
"""
from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any

from distributed.comm.core import CommClosedError

from .. import errors as _errors
from ..errors import EdgebenchError, InferenceError
from .shm import SegmentPool, place, shm_bytes
from .wire import pack, unpack

if TYPE_CHECKING:
    from .deployment import Deployment

__all__ = ["Replica", "Request", "rebuild_error"]

#: a timeout around an await that adds no task (asyncio.timeout, Python 3.11+)
_timeout = getattr(asyncio, "timeout", None)
if _timeout is None:  # pragma: no cover - Python 3.10
    import contextlib

    @contextlib.asynccontextmanager
    async def _timeout(seconds: float):
        task = asyncio.current_task()
        handle = asyncio.get_running_loop().call_later(seconds, task.cancel)
        try:
            yield
        except asyncio.CancelledError:
            if handle.when() <= asyncio.get_running_loop().time():
                raise asyncio.TimeoutError from None
            raise
        finally:
            handle.cancel()

_SEQ = itertools.count()
#: what a broken connection to a worker looks like
COMM_ERRORS = (CommClosedError, OSError, EOFError)


def rebuild_error(packed: list) -> EdgebenchError:
    """An error sent back by a worker as ``[class name, message, hint]``."""
    name, message, hint = packed
    cls = getattr(_errors, name, None)
    if isinstance(cls, type) and issubclass(cls, EdgebenchError):
        return cls(message, hint)
    return InferenceError(f"{name}: {message}", hint)


class Request:
    """One request to a deployment, answered through a ``concurrent.futures.Future``."""

    __slots__ = ("feeds", "future", "priority", "seq", "attempts", "t_submit", "deadline", "tenant", "replica")

    def __init__(self, feeds: dict[str, Any], priority: int, deadline: float, tenant: Any = None):
        self.feeds = feeds
        self.future: Future = Future()
        self.priority = priority
        self.seq = next(_SEQ)
        self.attempts = 0
        self.t_submit = time.perf_counter()
        self.deadline = deadline
        self.tenant = tenant
        self.replica: Replica | None = None

    def __lt__(self, other: Request) -> bool:
        return (self.priority, self.seq) < (other.priority, other.seq)

    def resolve(self, result: Any = None, error: BaseException | None = None) -> bool:
        """Answer the request once; ``False`` if it was answered already."""
        if self.future.done():
            return False
        if error is not None:
            self.future.set_exception(error)
        else:
            self.future.set_result(result)
        return True


class Replica:
    """A replica as the client sees it: where it lives, its queue and its load.

    ``outstanding`` (queued here + in flight to the worker) is what routing balances.
    """

    def __init__(self, rid: str, deployment: Deployment, worker: str, *, max_batch: int = 16, pipeline: int = 2):
        self.rid = rid
        self.deployment = deployment
        self.worker = worker
        self.max_batch = max_batch
        self.pipeline = pipeline
        self.healthy = False  # True once loaded
        self.draining = False
        self.outstanding = 0
        self.sent = 0
        self.answered = 0
        self.failed = 0
        self.pid: int | None = None
        #: large arrays through shared memory: None until tried, then True or False
        self.shm: bool | None = None if deployment.cluster.shm else False
        self._segments = SegmentPool()
        self._attached: set[str] = set()  # segment keys the worker has mapped
        self._queue: list[Request] = []
        self._senders = 0  # messages in flight to the worker
        self._flush_pending = False

    # -- queueing ---------------------------------------------------------------------------
    def push(self, req: Request) -> None:
        req.replica = self
        heapq.heappush(self._queue, req)
        self.outstanding += 1
        dirty = self.deployment._dirty
        if dirty is not None:  # routed by Deployment._drain_inbox: it flushes when done
            dirty.add(self)
        else:
            self._schedule_flush()

    def _schedule_flush(self) -> None:
        # at the end of this loop iteration, so every request routed in it is queued first
        if not self._flush_pending and self._senders < self.pipeline:
            self._flush_pending = True
            self.deployment.cluster._loop.call_soon(self._flush)

    def _flush(self) -> None:
        """Send what waits, shared between the free message slots: while one message is being
        computed the next is already at the worker, so the replica never waits for the wire."""
        self._flush_pending = False
        free = self.pipeline - self._senders
        while free > 0 and self._queue and self.healthy:
            n = min(self.max_batch, -(-len(self._queue) // free))
            batch = [heapq.heappop(self._queue) for _ in range(n)]
            self._senders += 1
            free -= 1
            self.deployment.cluster._spawn(self._send(batch))

    def take_queued(self) -> list[Request]:
        """Remove and return every request still queued here (for rerouting)."""
        q, self._queue = self._queue, []
        self.outstanding -= len(q)
        return q

    @property
    def queued(self) -> int:
        return len(self._queue)

    @property
    def transport(self) -> str:
        """``"shm"`` once large arrays reach the worker through shared memory, else ``"tcp"``."""
        return "shm" if self.shm else "tcp"

    def close(self) -> None:
        """Unmap the client's shared-memory segments (the replica is gone)."""
        self._segments.close()

    async def _encode(self, batch: list[Request]) -> tuple[list[dict], Any]:
        """The message's feeds, and the segment holding its large arrays (None: all inline)."""
        feeds = [r.feeds for r in batch]
        need = shm_bytes(feeds) if self.shm is not False else 0
        if need:
            try:
                seg, dropped = self._segments.take(need)
            except OSError as e:  # /dev/shm is full or absent: this message goes by TCP
                self._shm_off(f"cannot allocate {need >> 10} KiB of shared memory: {e}")
                return [pack(f) for f in feeds], None
            self._attached.difference_update(dropped)
            if seg.key not in self._attached:
                try:
                    reply = await self.deployment.cluster.client.rpc(self.worker).eb_shm_attach(
                        replica=self.rid, key=seg.key, path=seg.path, size=seg.size, token=seg.token(),
                        drop=dropped)
                except BaseException:  # the worker is gone or hung: the message is retried elsewhere
                    seg.close()
                    raise
                seg.unlink()  # mapped on both sides (or refused): the name is not needed any more
                if reply.get("status") != "OK":
                    seg.close()
                    self._shm_off(f"the worker cannot map this host's shared memory ({reply.get('error')})")
                    return [pack(f) for f in feeds], None
                self._attached.add(seg.key)
                if self.shm is None:
                    self.shm = True
                    self.deployment.cluster.log.add("shm_on", deployment=self.deployment.name, replica=self.rid,
                                                    worker=self.worker, detail="large tensors through shared memory")
            return place(seg, feeds), seg
        return [pack(f) for f in feeds], None

    def _shm_off(self, why: str) -> None:
        self.shm = False
        self._segments.close()
        self.deployment.cluster.log.add("shm_off", deployment=self.deployment.name, replica=self.rid,
                                        worker=self.worker, detail=f"{why}; using TCP")

    async def _send(self, batch: list[Request]) -> None:
        self.sent += len(batch)
        seg = None
        answered = False
        try:
            try:
                async with _timeout(self.deployment.timeout_s):
                    feeds, seg = await self._encode(batch)
                    reply = await self.deployment.cluster.client.rpc(self.worker).eb_infer(
                        replica=self.rid, feeds=feeds)
                answered = True
            except asyncio.TimeoutError:  # a hung worker (before OSError: TimeoutError is one)
                self.outstanding -= len(batch)
                self.deployment.replica_lost(
                    self, f"no answer within {self.deployment.timeout_s:g} s (worker hung?)", batch)
                return
            except COMM_ERRORS as e:
                self.outstanding -= len(batch)
                self.deployment.replica_lost(self, f"{type(e).__name__}: {e}", batch)
                return
            except Exception as e:  # a failure that is not the connection's: answer, do not retry
                self.outstanding -= len(batch)
                self.failed += len(batch)
                err = InferenceError(f"replica {self.rid} on {self.worker} failed: {type(e).__name__}: {e}")
                for r in batch:
                    self.deployment.finish(r, None, err)
                return
            self.outstanding -= len(batch)
            if reply.get("status") != "OK":  # the worker no longer holds the replica
                self.deployment.replica_lost(self, f"worker answered {reply.get('status')!r}", batch)
                return
            self.answered += len(batch)
            for r, res in zip(batch, reply["results"]):
                if "o" in res:
                    self.deployment.finish(r, unpack(res["o"], writable=True), None)
                else:
                    self.failed += 1
                    self.deployment.finish(r, None, rebuild_error(res["e"]))
        finally:
            if seg is not None:  # reused only once the worker has answered (it no longer reads it)
                if answered:
                    self._segments.give(seg)
                else:
                    seg.close()
            self._senders -= 1
            if self._queue and self.healthy:
                self._schedule_flush()
            # requests queued here when the replica turned unhealthy were rerouted by replica_lost

    def __repr__(self) -> str:
        state = "healthy" if self.healthy else "down"
        if self.draining:
            state += ", draining"
        return f"Replica({self.rid!r} on {self.worker}, {state}, {self.transport}, outstanding={self.outstanding})"
