"""Building blocks of streaming graphs: events, sources, reorder buffer, windows, healing stage.

Kept apart from :mod:`edgebench.graph.stream` (the threaded runtime) so each stays short.
"""
from __future__ import annotations

import copy
import heapq
import queue
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edgebench.errors import EdgebenchError

__all__ = [
    "LATE_POLICIES",
    "Event",
    "FrameSource",
    "LogEntry",
    "QueueSource",
    "ReorderBuffer",
    "RetryPolicy",
    "StreamError",
    "Window",
]

LATE_POLICIES = ("drop", "pass")


class StreamError(EdgebenchError, RuntimeError):
    """A streaming graph was misused or a stage failed beyond its retry policy."""


@dataclass
class Event:
    """One item flowing through a stream.

    Attributes
    ----------
    seq
        Sequence number given by the source, in arrival order (0, 1, 2, ...).
    ts
        Event time in seconds (the source's timestamp, not the processing time).
    value
        The payload.
    late
        True when the event arrived later than the reorder buffer's max lateness and the
        late policy is ``"pass"``.
    """

    seq: int
    ts: float
    value: Any
    late: bool = False


@dataclass(frozen=True)
class LogEntry:
    """One line of a stream's event log: ``(time, stage, kind, detail)``."""

    time: float
    stage: str
    kind: str
    detail: str


@dataclass
class RetryPolicy:
    """How a failing stage is restarted.

    Parameters
    ----------
    max_restarts
        Restarts allowed per stage over the stream's life; one more failure stops the
        stream with a :class:`StreamError`.
    backoff_s
        Wait before the first restart.
    backoff_factor
        Multiplier of the wait after each restart (exponential backoff).
    max_backoff_s
        Cap on the wait.
    """

    max_restarts: int = 3
    backoff_s: float = 0.0
    backoff_factor: float = 2.0
    max_backoff_s: float = 1.0

    def __post_init__(self) -> None:
        if self.max_restarts < 0 or self.backoff_s < 0 or self.backoff_factor < 1:
            raise StreamError(f"invalid RetryPolicy {self!r}",
                              "use max_restarts >= 0, backoff_s >= 0, backoff_factor >= 1")

    def delay(self, restart: int) -> float:
        """Seconds to wait before restart number ``restart`` (1-based)."""
        return min(self.max_backoff_s, self.backoff_s * self.backoff_factor ** (restart - 1))


class FrameSource:
    """A camera-like source of synthetic frames at a given frame rate.

    Frames are ``uint8`` arrays of ``shape`` whose content depends on the frame index
    (a moving gradient plus seeded noise), timestamped ``t0 + i / fps``.

    Parameters
    ----------
    fps
        Frames per second (sets the timestamps and, with ``realtime``, the pacing).
    n
        Number of frames; ``None`` for an endless stream (stop it with ``stop()``).
    shape
        Frame shape, e.g. ``(64, 64, 3)``.
    realtime
        Sleep so frames are produced at ``fps`` in wall time, as a camera would.
    seed
        Noise seed.
    """

    def __init__(self, fps: float = 30.0, n: int | None = 100, shape: tuple[int, ...] = (64, 64, 3),
                 realtime: bool = False, seed: int = 0, t0: float = 0.0):
        if fps <= 0:
            raise StreamError(f"fps must be positive, got {fps!r}")
        self.fps, self.n, self.shape = float(fps), n, tuple(shape)
        self.realtime, self.seed, self.t0 = realtime, seed, t0

    def frame(self, i: int) -> np.ndarray:
        rng = np.random.default_rng(self.seed + i)
        base = (np.arange(int(np.prod(self.shape))) + 3 * i) % 256
        noise = rng.integers(0, 16, size=base.size)
        return ((base + noise) % 256).astype(np.uint8).reshape(self.shape)

    def __iter__(self) -> Iterator[tuple[float, np.ndarray]]:
        start = time.perf_counter()
        i = 0
        while self.n is None or i < self.n:
            if self.realtime:
                wait = start + i / self.fps - time.perf_counter()
                if wait > 0:
                    time.sleep(wait)
            yield self.t0 + i / self.fps, self.frame(i)
            i += 1

    def __repr__(self) -> str:
        return f"FrameSource(fps={self.fps:g}, n={self.n}, shape={self.shape})"


class QueueSource:
    """Read items from a :class:`queue.Queue` until ``sentinel`` is taken from it.

    Polls with a short timeout so a stopping stream never waits on an idle queue.
    """

    def __init__(self, q: queue.Queue[Any], sentinel: Any = None, poll_s: float = 0.05):
        self.q, self.sentinel, self.poll_s = q, sentinel, poll_s
        self.stopped = False

    def __iter__(self) -> Iterator[Any]:
        while not self.stopped:
            try:
                item = self.q.get(timeout=self.poll_s)
            except queue.Empty:
                continue
            if item is self.sentinel or (self.sentinel is not None and item == self.sentinel):
                return
            yield item


class Window:
    """A stateful stage over the last ``n`` events and/or the last ``seconds`` of event time.

    For each event it emits ``fn(values)`` (default: the list of values) over the window
    that ends at that event, every ``every``-th event.  Its state (the window content and
    the counter) is exposed through :meth:`get_state` / :meth:`set_state` for checkpoints.
    """

    def __init__(self, n: int | None = None, seconds: float | None = None,
                 fn: Callable[[list[Any]], Any] | None = None, every: int = 1):
        if n is None and seconds is None:
            raise StreamError("Window needs n (events) or seconds (event time)",
                              "pass Window(n=8) or Window(seconds=0.5)")
        if (n is not None and n < 1) or (seconds is not None and seconds <= 0) or every < 1:
            raise StreamError(f"invalid window n={n!r} seconds={seconds!r} every={every!r}")
        self.n, self.seconds, self.fn, self.every = n, seconds, fn, every
        self._buf: deque[tuple[float, Any]] = deque()
        self._count = 0

    def process(self, ev: Event) -> list[Event]:
        self._buf.append((ev.ts, ev.value))
        if self.n is not None:
            while len(self._buf) > self.n:
                self._buf.popleft()
        if self.seconds is not None:
            while self._buf and self._buf[0][0] <= ev.ts - self.seconds:
                self._buf.popleft()
        self._count += 1
        if self._count % self.every:
            return []
        values = [v for _, v in self._buf]
        return [Event(ev.seq, ev.ts, self.fn(values) if self.fn else values, ev.late)]

    def get_state(self) -> Any:
        return (list(self._buf), self._count)

    def set_state(self, state: Any) -> None:
        buf, self._count = state
        self._buf = deque(buf)

    def __repr__(self) -> str:
        return f"Window(n={self.n}, seconds={self.seconds}, every={self.every})"


@dataclass
class ReorderBuffer:
    """Puts events back in timestamp order, waiting at most ``max_lateness`` of event time.

    An event is held until an event with ``ts >= its ts + max_lateness`` has been seen
    (the watermark passes it), then released in ``(ts, seq)`` order.  An event older than
    the last released one is *late*: ``"drop"`` discards it (counted in ``dropped``),
    ``"pass"`` emits it at once with ``late=True`` (counted in ``passed_late``).
    """

    max_lateness: float
    policy: str = "drop"
    dropped: int = 0
    passed_late: int = 0
    _heap: list[tuple[float, int, Event]] = field(default_factory=list)
    _max_ts: float = float("-inf")
    _last_out: float = float("-inf")

    def __post_init__(self) -> None:
        if self.policy not in LATE_POLICIES:
            raise StreamError(f"unknown late policy {self.policy!r}", f"use one of {LATE_POLICIES}")
        if self.max_lateness < 0:
            raise StreamError(f"max_lateness must be >= 0, got {self.max_lateness!r}")

    def push(self, ev: Event) -> tuple[list[Event], bool]:
        """Add one event; return ``(events now released, was_late)``."""
        if ev.ts < self._last_out:
            if self.policy == "drop":
                self.dropped += 1
                return [], True
            self.passed_late += 1
            ev.late = True
            return [ev], True
        heapq.heappush(self._heap, (ev.ts, ev.seq, ev))
        self._max_ts = max(self._max_ts, ev.ts)
        out = []
        while self._heap and self._heap[0][0] <= self._max_ts - self.max_lateness:
            out.append(heapq.heappop(self._heap)[2])
        if out:
            self._last_out = out[-1].ts
        return out, False

    def flush(self) -> list[Event]:
        """Release everything held (end of stream)."""
        out = [heapq.heappop(self._heap)[2] for _ in range(len(self._heap))]
        if out:
            self._last_out = out[-1].ts
        return out


def snapshot(state: Any) -> Any:
    """A deep copy of a stage's state, so later mutation cannot change a checkpoint."""
    return copy.deepcopy(state)


def as_items(source: Any) -> Iterable[Any]:
    """Accept an iterable, a generator, a generator function, a Queue or a QueueSource."""
    if isinstance(source, queue.Queue):
        return QueueSource(source)
    if callable(source) and not hasattr(source, "__iter__"):
        source = source()
    if not hasattr(source, "__iter__"):
        raise StreamError(f"a stream source must be iterable, got {type(source).__name__}",
                          "pass a list, a generator, a queue.Queue or a FrameSource")
    return source


class _Stage:
    """One stage: ``process(Event) -> list[Event]`` plus optional state, with healing."""

    def __init__(self, name: str, process: Callable[[Event], list], obj: Any = None):
        self.name, self._process, self.obj = name, process, obj
        self.stateful = hasattr(obj, "get_state") and hasattr(obj, "set_state")
        self.processed = self.emitted = self.restarts = 0
        self._streak = 0                     # failures since the last success (sets the backoff)
        self.busy_s = 0.0

    # the healing loop -------------------------------------------------------------------------
    def open(self, graph: Any) -> None:  # a StreamGraph
        self.g = graph
        self._ckpt = snapshot(self.obj.get_state()) if self.stateful else None
        self._pending: list[Event] = []     # inputs since the checkpoint
        self._sent = 0                       # outputs of those already sent downstream

    def feed(self, ev: Event) -> list[Event]:
        t0 = time.perf_counter()
        self._pending.append(ev)
        try:
            outs = self._process(ev)
        except Exception as e:  # noqa: BLE001 - any stage failure goes to the retry policy
            outs = self._heal(e, ev)
            self._streak = 0
        self.processed += 1
        self._sent += len(outs)
        self.emitted += len(outs)
        if not self.stateful:
            self._pending.clear()
            self._sent = 0
        elif len(self._pending) >= self.g.checkpoint_every:
            self._ckpt = snapshot(self.obj.get_state())
            self._pending.clear()
            self._sent = 0
        self.busy_s += time.perf_counter() - t0
        return outs

    def _heal(self, err: Exception, ev: Event) -> list[Event]:
        policy = self.g.retry
        while True:
            self.g._note(self.name, "error", f"seq={ev.seq}: {type(err).__name__}: {err}")
            if self.restarts >= policy.max_restarts:
                self.g._note(self.name, "failed", f"gave up after {self.restarts} restarts")
                raise StreamError(
                    f"stage {self.name!r} failed at event seq={ev.seq} after {self.restarts} "
                    f"restarts: {type(err).__name__}: {err}",
                    "fix the stage or raise RetryPolicy.max_restarts") from err
            self.restarts += 1
            self._streak += 1
            delay = policy.delay(self._streak)
            if delay > 0 and self.g._cancel.wait(delay):
                raise StreamError(f"stream cancelled while restarting stage {self.name!r}")
            if self.stateful:
                self.obj.set_state(snapshot(self._ckpt))
            self.g._note(self.name, "restart", f"restart {self.restarts}/{policy.max_restarts}"
                         + (" from checkpoint" if self.stateful else ""))
            try:
                produced: list[Event] = []
                for p in self._pending:
                    produced.extend(self._process(p))
            except Exception as e:  # noqa: BLE001
                err = e
                continue
            self.g._note(self.name, "replay", f"replayed {len(self._pending)} event(s), "
                         f"suppressed {self._sent} output(s) already sent")
            return produced[self._sent:]


def _map_process(fn: Callable[[Any], Any]) -> Callable[[Event], list]:
    return lambda ev: [Event(ev.seq, ev.ts, fn(ev.value), ev.late)]
