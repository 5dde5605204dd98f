"""How the server's event loop hands checked feeds to a model, and gets answers back.

Three ways, picked per served model:

* ``inline``: the engine runs on the event loop itself.  For a model of tens of
  microseconds this is the cheapest path there is: a thread hop costs 10-75 us here.
* ``thread``: the engine's worker thread (:meth:`Engine.submit`).
* batched: a :class:`~edgebench.DynamicBatcher` (its own threads).

Answers from other threads come back through one :class:`Bridge` per event loop: a worker
thread finishing a batch of N requests appends N entries to a deque and wakes the loop once
(``call_soon_threadsafe``), not N times.
"""
from __future__ import annotations

import asyncio
from collections import deque
from concurrent.futures import Future
from time import perf_counter_ns
from typing import Any

__all__ = ["Bridge", "Runner"]


class Bridge:
    """Turns ``concurrent.futures.Future`` s into awaitables with one loop wake-up per burst."""

    __slots__ = ("_ready", "_scheduled", "loop")

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop = loop
        self._ready: deque = deque()
        self._scheduled = False

    def wait(self, cf: Future) -> asyncio.Future[Any]:
        af = self.loop.create_future()
        cf.add_done_callback(lambda f, af=af: self._done(af, f))
        return af

    def _done(self, af: asyncio.Future[Any], cf: Future) -> None:  # any thread
        self._ready.append((af, cf))
        if not self._scheduled:
            self._scheduled = True
            try:
                self.loop.call_soon_threadsafe(self._drain)
            except RuntimeError:  # the loop is closed: nobody is waiting any more
                pass

    def _drain(self) -> None:  # the loop's thread
        self._scheduled = False
        ready = self._ready
        while ready:
            af, cf = ready.popleft()
            if af.done():  # the waiting request was cancelled (client went away)
                continue
            if cf.cancelled():
                af.cancel()
                continue
            exc = cf.exception()
            if exc is not None:
                af.set_exception(exc)
            else:
                af.set_result(cf.result())


class Runner:
    """Runs one served model's requests: ``await runner.infer(feeds, priority, timeout_ms)``."""

    def __init__(self, engine: Any, batcher: Any = None, inline: bool = False):
        self.engine = engine
        self.batcher = batcher
        self.inline = inline and batcher is None
        self._run = engine._run
        self._bridge: Bridge | None = None

    @property
    def mode(self) -> str:
        return "batched" if self.batcher is not None else ("inline" if self.inline else "thread")

    def _submit(self, feeds: dict, priority: int, timeout_ms: float | None) -> Future:
        if self.batcher is not None:
            return self.batcher.submit(feeds, priority=priority, timeout_ms=timeout_ms)
        return self.engine.submit(feeds)

    async def infer(self, feeds: dict, priority: int = 1, timeout_ms: float | None = None) -> dict[str, Any]:
        """The model's outputs for ``feeds`` (errors are the engine's / batcher's own)."""
        if self.inline:
            return self._run(feeds, perf_counter_ns())
        cf = self._submit(feeds, priority, timeout_ms)
        if cf.done():  # answered on this thread already (e.g. an idle batcher running inline)
            return cf.result()
        bridge = self._bridge
        if bridge is None:
            bridge = self._bridge = Bridge(asyncio.get_running_loop())
        return await bridge.wait(cf)
