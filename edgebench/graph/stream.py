"""Streaming (temporal) graphs: a chain of stages run by a few worker threads.

>>> sg = (StreamGraph("cam", queue_size=4)
...       .source(FrameSource(fps=30, n=100))
...       .map(preprocess).map(engine).window(n=5, fn=vote).sink(print))   # doctest: +SKIP
>>> sg.run()                                                              # doctest: +SKIP

* Pipelining: stage k works on event t while stage k-1 works on event t+1.  Each worker
  thread takes the next event from the source and carries it through every stage (the model
  of TBB's ``parallel_pipeline``): a stage serves events strictly in source order, one at a
  time (:class:`~edgebench.graph.turns.Turns`), so a worker whose event is not up yet waits at
  that stage.  No event is handed from thread to thread, so there is no per-stage thread
  hop, and the frame stays in one core's cache.  Workers default to the cores there are
  (never more than the stages): with thread-per-stage, three CPU-bound stages on two cores
  measured 1.55-1.58x sequential; carried by two workers, 1.88-1.94x.  Stages that mostly wait (I/O,
  a remote model) can use more: ``StreamGraph(workers=...)``.
* Backpressure: each worker carries one event, so at most :attr:`StreamGraph.workers` events
  are in flight (``queue_size`` caps it); the source is read only when a worker is free, so
  memory stays bounded whatever the source's rate.
* Event time: every event carries the source's ``seq`` and ``ts``; with ``max_lateness`` a
  reorder buffer restores timestamp order and handles late events by ``late_policy``.
* Self-healing: a stage that raises is restored from its last checkpoint (``get_state`` /
  ``set_state``, taken every ``checkpoint_every`` events) under a :class:`RetryPolicy`, and
  the events since the checkpoint are replayed; outputs already sent downstream are not sent
  again, so (for deterministic stages) nothing is lost or doubled.  All of it is logged in
  :attr:`StreamGraph.log`.
"""
from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from edgebench.cpu import usable_cores
from edgebench.graph.stream_nodes import (
    Event,
    FrameSource,
    LogEntry,
    QueueSource,
    ReorderBuffer,
    RetryPolicy,
    StreamError,
    Window,
    _map_process,
    _Stage,
    as_items,
)
from edgebench.graph.turns import Turns

__all__ = [
    "Event",
    "FrameSource",
    "LogEntry",
    "QueueSource",
    "RetryPolicy",
    "Stream",
    "StreamError",
    "StreamGraph",
    "Window",
]

_POLL_S = 0.05       # every blocking wait wakes this often to look at the cancel flag


class StreamGraph:
    """A streaming pipeline: one source, a chain of stages, one sink.

    Parameters
    ----------
    name
        Shown in reprs and the log.
    queue_size
        At most this many events in flight (read from the source, not yet through the sink):
        the backpressure bound.  Default: one per worker.
    workers
        Threads carrying events through the stages; default: the usable cores, at most one
        per stage.  Raise it for stages that mostly wait (I/O, remote calls).  A run uses
        ``min(workers, queue_size)`` (:attr:`workers`).
    checkpoint_every
        Stateful stages are checkpointed every this many input events.
    retry
        Restart policy for failing stages (default ``RetryPolicy()``: 3 restarts).
    max_lateness
        Event-time seconds to wait for out-of-order events; ``None`` keeps arrival order.
    late_policy
        ``"drop"`` (counted in :attr:`dropped_late`, logged) or ``"pass"`` (sent on with
        ``Event.late = True``) for events later than ``max_lateness``.
    """

    def __init__(self, name: str = "stream", queue_size: int | None = None, checkpoint_every: int = 16,
                 retry: RetryPolicy | None = None, max_lateness: float | None = None,
                 late_policy: str = "drop", workers: int | None = None):
        if (queue_size is not None and queue_size < 1) or checkpoint_every < 1 or (workers is not None and workers < 1):
            raise StreamError(f"queue_size, checkpoint_every and workers must be >= 1, got "
                              f"{queue_size!r}, {checkpoint_every!r}, {workers!r}")
        self.name, self.queue_size, self.checkpoint_every = name, queue_size, checkpoint_every
        self._workers = workers
        self.retry = retry or RetryPolicy()
        self.reorder = ReorderBuffer(max_lateness, late_policy) if max_lateness is not None else None
        self.stages: list[_Stage] = []
        self.results: list[Event] = []
        self.log: list[LogEntry] = []
        self.turns: list[Turns] = []
        self._source: Any = None
        self._timestamps = False
        self._has_sink = False
        self._threads: list[threading.Thread] = []
        self._cancel = threading.Event()
        self._stop_source = threading.Event()
        self._error: BaseException | None = None
        self._t0 = time.perf_counter()
        self.source_count = 0

    # -- building -----------------------------------------------------------------------------
    def source(self, src: Any, timestamps: bool | None = None) -> StreamGraph:
        """Set the source: an iterable, a generator (function), a ``queue.Queue`` (ends at a
        ``None`` item), a :class:`QueueSource` or a :class:`FrameSource`.

        Items are values (timestamped with the wall clock when read), :class:`Event` objects,
        or, with ``timestamps=True`` (the default for a FrameSource), ``(ts, value)`` pairs.
        """
        self._source = as_items(src)
        self._timestamps = isinstance(src, FrameSource) if timestamps is None else timestamps
        return self

    def map(self, fn: Any, name: str | None = None, threads: int | None = 1) -> StreamGraph:
        """Add a stage applying ``fn`` to each value: a function, an :class:`~edgebench.Engine`
        (its ``run``), or a :class:`~edgebench.Model` (compiled into an Engine with
        ``threads`` intra-op threads)."""
        from edgebench.model import Model
        if isinstance(fn, Model):
            from edgebench.engine import Engine
            fn = Engine(fn, threads=threads)
        call = fn.run if _is_engine(fn) or (not callable(fn) and hasattr(fn, "run")) else fn
        if not callable(call):
            raise StreamError(f"map() needs a callable, an Engine or a Model, got {type(fn).__name__}")
        return self._add(name or getattr(fn, "__name__", type(fn).__name__), _map_process(call), fn)

    def window(self, n: int | None = None, seconds: float | None = None,
               fn: Callable[[list], Any] | None = None, every: int = 1,
               name: str | None = None) -> StreamGraph:
        """Add a :class:`Window` stage (last ``n`` events and/or ``seconds`` of event time)."""
        w = Window(n, seconds, fn, every)
        return self._add(name or "window", w.process, w)

    def stage(self, obj: Any, name: str | None = None) -> StreamGraph:
        """Add a custom stage: ``obj.process(Event) -> list[Event]``, optionally with
        ``get_state()`` / ``set_state(state)`` to be checkpointed."""
        if not callable(getattr(obj, "process", None)):
            raise StreamError(f"stage() needs an object with process(event), got {type(obj).__name__}")
        return self._add(name or type(obj).__name__, obj.process, obj)

    def sink(self, fn: Callable[[Any], Any] | list | None = None, name: str = "sink") -> StreamGraph:
        """End the chain: call ``fn(value)`` or append to a list; every event reaching the sink
        is also kept in :attr:`results`."""
        def process(ev: Event) -> list:
            if callable(fn):
                fn(ev.value)
            elif isinstance(fn, list):
                fn.append(ev.value)
            self.results.append(ev)
            return []
        self._add(name, process, None)
        self._has_sink = True
        return self

    def _add(self, name: str, process: Callable[[Event], list], obj: Any) -> StreamGraph:
        if self._has_sink or self._threads:
            raise StreamError(f"cannot add stage {name!r}: the stream is started or has a sink",
                              "add stages before sink() and start()")
        names = {s.name for s in self.stages}
        base, i = name, 1
        while name in names:
            i += 1
            name = f"{base}_{i}"
        self.stages.append(_Stage(name, process, obj))
        return self

    # -- running ------------------------------------------------------------------------------
    def _note(self, stage: str, kind: str, detail: str) -> None:
        self.log.append(LogEntry(time.perf_counter() - self._t0, stage, kind, detail))

    def _events(self):
        """Source items as Events, through the reorder buffer when there is one."""
        seq = 0
        for item in self._source:
            if self._stop_source.is_set() or self._cancel.is_set():
                break
            if isinstance(item, Event):
                ev = item
            elif self._timestamps:
                ev = Event(seq, float(item[0]), item[1])
            else:
                ev = Event(seq, time.perf_counter() - self._t0, item)
            seq += 1
            self.source_count += 1
            if self.reorder is None:
                yield ev
                continue
            out, late = self.reorder.push(ev)
            if late:
                self._note("source", "late_drop" if self.reorder.policy == "drop" else "late_pass",
                           f"seq={ev.seq} ts={ev.ts:g}")
            yield from out
        if self.reorder is not None and not self._cancel.is_set():
            yield from self.reorder.flush()

    def _prepare(self) -> None:
        if self._source is None:
            raise StreamError(f"stream {self.name!r} has no source", "call .source(...) first")
        if self._threads or self.log:
            raise StreamError(f"stream {self.name!r} has already run", "build a new StreamGraph")
        if not self._has_sink:
            self.sink()
        for s in self.stages:
            s.open(self)
        self._note(self.name, "start", f"{len(self.stages)} stages, workers={self.workers}")

    @property
    def workers(self) -> int:
        """Worker threads a run uses (see the class docstring)."""
        n = self._workers if self._workers is not None else min(usable_cores(), max(1, len(self.stages)))
        return max(1, n if self.queue_size is None else min(n, self.queue_size))

    def start(self) -> StreamGraph:
        """Start the worker threads; returns at once."""
        self._prepare()
        self.turns = [Turns(_POLL_S) for _ in self.stages]
        self._feed = self._events()
        self._take = threading.Lock()
        self._ticket = 0
        self._threads = [threading.Thread(target=self._guard, args=(self._carry,), name=f"{self.name}:worker{i}",
                                          daemon=True) for i in range(self.workers)]
        for t in self._threads:
            t.start()
        return self

    def _guard(self, fn: Callable, *args: Any) -> None:
        try:
            fn(*args)
        except BaseException as e:  # noqa: BLE001 - stop everything, keep the first error
            if self._error is None and not self._cancel.is_set():
                self._error = e if isinstance(e, StreamError) else StreamError(
                    f"stream {self.name!r} thread failed: {type(e).__name__}: {e}")
                self._note(threading.current_thread().name, "error", str(e))
            self._cancel.set()

    def _carry(self) -> None:
        """A worker: take the next source event (and its ticket), carry it through the stages."""
        cancel, stages, turns = self._cancel, self.stages, self.turns
        while True:
            with self._take:
                if cancel.is_set():
                    return
                ev = next(self._feed, None)
                if ev is None:
                    return
                ticket = self._ticket
                self._ticket += 1
            batch = [ev]
            for st, turn in zip(stages, turns):
                if not batch:  # nothing for this stage: it need not wait for this ticket
                    turn.skip(ticket)
                    continue
                if not turn.wait(ticket, cancel):
                    return
                out: list[Event] = []
                for e in batch:
                    out.extend(st.feed(e))  # a stage that gives up raises: the stream stops
                turn.done(ticket)
                batch = out

    def run_sequential(self) -> list[Any]:
        """Run the whole chain in the calling thread, one event at a time (the reference
        the pipelined run is compared with)."""
        self._prepare()
        for ev in self._events():
            batch = [ev]
            for st in self.stages:
                batch = [o for e in batch for o in st.feed(e)]
        self._note(self.name, "done", f"{len(self.results)} outputs (sequential)")
        return self.outputs

    def join(self, timeout: float | None = None) -> list[Any]:
        """Wait for the stream to end (source exhausted and drained); return the outputs.

        Raises :class:`StreamError` if a stage failed beyond its retry policy, or if
        ``timeout`` seconds pass first (the stream keeps running; call :meth:`stop`)."""
        deadline = None if timeout is None else time.perf_counter() + timeout
        for t in self._threads:
            while t.is_alive() and self._error is None:
                left = None if deadline is None else deadline - time.perf_counter()
                if left is not None and left <= 0:
                    raise StreamError(f"stream {self.name!r} still running after {timeout} s",
                                      "call stop() to end it")
                t.join(_POLL_S if left is None else min(_POLL_S, left))
        if self._error is not None:
            self._cancel.set()
            raise self._error
        if not any(e.kind == "done" for e in self.log):
            self._note(self.name, "done", f"{len(self.results)} outputs")
        return self.outputs

    def run(self, timeout: float | None = None) -> list[Any]:
        """Start, wait for the end and return the outputs (pipelined)."""
        return self.start().join(timeout)

    def stop(self, drain: bool = True, timeout: float = 5.0) -> bool:
        """Stop the stream; never hangs.

        With ``drain`` the source stops reading and the events already in the queues are
        processed for up to ``timeout`` seconds; whatever is left then (or everything, without
        ``drain``) is cancelled.  Returns True when every thread ended in time."""
        self._stop_source.set()
        if isinstance(self._source, QueueSource):
            self._source.stopped = True
        if not drain:
            self._cancel.set()
        deadline = time.perf_counter() + timeout
        for t in self._threads:
            t.join(max(0.0, deadline - time.perf_counter()))
        if any(t.is_alive() for t in self._threads):
            self._cancel.set()
            for t in self._threads:
                t.join(2 * _POLL_S)
        ok = not any(t.is_alive() for t in self._threads)
        self._note(self.name, "stop", f"drain={drain} clean={ok} outputs={len(self.results)}")
        return ok

    # -- looking at it ------------------------------------------------------------------------
    @property
    def outputs(self) -> list[Any]:
        """Values that reached the sink, in order."""
        return [e.value for e in self.results]

    @property
    def dropped_late(self) -> int:
        return self.reorder.dropped if self.reorder else 0

    @property
    def running(self) -> bool:
        return any(t.is_alive() for t in self._threads)

    @property
    def max_queue_depth(self) -> list[int]:
        """Per stage, the most events that ever waited for it (0s before the start)."""
        return [t.max_waiting for t in self.turns] or [0] * len(self.stages)

    @property
    def queue_depth(self) -> list[int]:
        """Per stage, the events waiting for it now (0s when not started)."""
        return [t.waiting for t in self.turns] or [0] * len(self.stages)

    def stats(self) -> list[dict[str, Any]]:
        """Per stage: events processed and emitted, restarts, busy seconds, events waiting for
        it now (``queue``) and the most that waited (``max_queue``)."""
        now, most = self.queue_depth, self.max_queue_depth
        return [{"stage": s.name, "processed": s.processed, "emitted": s.emitted,
                 "restarts": s.restarts, "busy_s": round(s.busy_s, 6), "queue": now[k],
                 "max_queue": most[k]}
                for k, s in enumerate(self.stages)]

    def log_frame(self):
        """The event log as a pandas DataFrame (time, stage, kind, detail)."""
        import pandas as pd
        return pd.DataFrame([e.__dict__ for e in self.log], columns=["time", "stage", "kind", "detail"])

    def _repr_mimebundle_(self, include=None, exclude=None, **kwargs):
        from edgebench.notebook.display import mimebundle
        return mimebundle(self, include, exclude)

    def __repr__(self) -> str:
        chain = " -> ".join(["source"] + [s.name for s in self.stages])
        state = "running" if self.running else ("failed" if self._error else "idle")
        return f"StreamGraph({self.name!r}, {chain}, {state}, {len(self.results)} outputs)"


def _is_engine(obj: Any) -> bool:
    return type(obj).__name__ == "Engine" and hasattr(obj, "run")


Stream = StreamGraph
