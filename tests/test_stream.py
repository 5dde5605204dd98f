"""Streaming graphs: order, completeness, backpressure, windows, lateness, self-healing, stop."""
from __future__ import annotations

import queue
import threading
import time

import numpy as np
import pytest

from edgebench.graph.stream import (
    Event,
    FrameSource,
    RetryPolicy,
    StreamError,
    StreamGraph,
    Window,
)


def test_order_and_completeness_pipelined():
    n = 500
    sg = StreamGraph("t", queue_size=3).source(range(n)).map(lambda x: x * 2).map(lambda x: x + 1)
    out = sg.run(timeout=20)
    assert out == [2 * i + 1 for i in range(n)]
    assert [e.seq for e in sg.results] == list(range(n))
    assert [s["processed"] for s in sg.stats()] == [n, n, n]


def test_generator_function_queue_and_frame_sources():
    def gen():
        yield from "abc"
    assert StreamGraph().source(gen).run(timeout=5) == ["a", "b", "c"]

    q: queue.Queue = queue.Queue()
    for i in range(5):
        q.put(i)
    q.put(None)
    assert StreamGraph().source(q).map(lambda v: v * v).run(timeout=5) == [0, 1, 4, 9, 16]

    sg = StreamGraph().source(FrameSource(fps=50, n=10, shape=(8, 8, 3))).map(lambda f: int(f.sum()))
    out = sg.run(timeout=5)
    assert len(out) == 10 and len(set(out)) > 1                      # frames differ
    assert [e.ts for e in sg.results] == pytest.approx([i / 50 for i in range(10)])


def test_realtime_frame_source_paces_at_fps():
    t = time.perf_counter()
    StreamGraph().source(FrameSource(fps=100, n=20, realtime=True)).run(timeout=5)
    assert time.perf_counter() - t >= 0.18


def test_pipelining_overlaps_stages():
    # two stages sleeping 20 ms each (sleep releases the GIL): pipelined ~ n*20 ms, not n*40 ms
    def slow(x):
        time.sleep(0.02)
        return x
    n = 20
    t = time.perf_counter()
    out = StreamGraph(queue_size=2).source(range(n)).map(slow).map(slow, name="slow2").run(timeout=10)
    elapsed = time.perf_counter() - t
    assert out == list(range(n))
    assert elapsed < 0.75 * n * 0.04


def test_backpressure_bounds_queues_and_source():
    pulled = []

    def src():
        for i in range(60):
            pulled.append(i)
            yield i

    seen = []
    lead = []

    def slow_sink(v):
        lead.append(len(pulled) - len(seen))          # how far the source ran ahead
        seen.append(v)
        time.sleep(0.005)

    qs = 2
    sg = StreamGraph(queue_size=qs, workers=8).source(src).map(lambda x: x).sink(slow_sink)
    assert sg.workers == qs                           # queue_size caps the events in flight
    sg.run(timeout=20)
    assert seen == list(range(60))
    assert max(sg.max_queue_depth) <= qs           # the events in flight, at most
    # each worker carries one event: the source is never more than queue_size ahead of the sink
    assert max(lead) <= qs


def test_queue_depth_now_and_max_in_stats_and_view():
    from edgebench.notebook import display
    from edgebench.notebook.views_graph import StreamGraphView

    gate = threading.Event()
    sg = StreamGraph("held", queue_size=8, workers=4).source(range(40)).map(lambda x: x, name="ident")
    sg.sink(lambda v: gate.wait(10))
    assert sg.workers == 4
    assert sg.queue_depth == [0, 0] and [r["queue"] for r in sg.stats()] == [0, 0]
    v = display.widget(sg)
    assert isinstance(v, StreamGraphView)
    sg.start()
    deadline = time.perf_counter() + 5
    while sg.queue_depth != [0, 3] and time.perf_counter() < deadline:
        time.sleep(0.01)
    # the sink holds one event; the three other workers wait in front of it with theirs
    assert sg.queue_depth == [0, 3]
    assert [(r["queue"], r["max_queue"]) for r in sg.stats()] == [(0, 0), (3, 3)]
    v.update()
    assert "<td>3 / 3</td>" in v._html.value
    gate.set()
    assert sg.join(timeout=10) == list(range(40))
    most = sg.max_queue_depth[1]
    assert sg.queue_depth == [0, 0] and 3 <= most <= 4  # never more than the events in flight
    v.update()
    assert f"<td>0 / {most}</td>" in v._html.value
    v.close()


def test_workers_default_to_the_cores_and_never_exceed_the_stages():
    from edgebench.cpu import usable_cores

    sg = StreamGraph().source(range(3)).map(lambda x: x).map(lambda x: x)
    assert sg.workers == min(usable_cores(), 2)       # two stages (the sink is added at start)
    assert sg.run(timeout=5) == [0, 1, 2]
    assert StreamGraph(workers=6).source(range(3)).map(lambda x: x).workers == 6  # not capped by cores
    assert StreamGraph(workers=6, queue_size=2).workers == 2                       # queue_size caps it
    with pytest.raises(StreamError, match="workers"):
        StreamGraph(workers=0)


def test_turns_serve_tickets_in_order_and_skip_without_waiting():
    from edgebench.graph.turns import Turns

    t, cancel = Turns(poll_s=0.01), threading.Event()
    order = []

    def worker(ticket):
        assert t.wait(ticket, cancel)
        order.append(ticket)
        t.done(ticket)

    ths = [threading.Thread(target=worker, args=(k,)) for k in (3, 1, 2)]
    for th in ths:
        th.start()
    time.sleep(0.05)
    assert order == [] and t.waiting == 3             # nobody holds ticket 0 yet
    t.skip(0)                                         # ticket 0 brings nothing here
    for th in ths:
        th.join(5)
    assert order == [1, 2, 3] and t.turn == 4 and t.max_waiting == 3
    t.skip(6)                                         # skipped ahead of its turn: remembered
    t.done(4)
    assert t.turn == 5
    t.done(5)
    assert t.turn == 7                                # 6 was skipped: 7 is up
    cancel.set()
    assert t.wait(99, cancel) is False                # not its turn + cancelled: never hangs


def test_count_window_and_time_window():
    out = StreamGraph().source(range(6)).window(n=3, fn=sum).run(timeout=5)
    assert out == [0, 1, 3, 6, 9, 12]
    out = StreamGraph().source(range(6)).window(n=2, every=2).run(timeout=5)
    assert out == [[0, 1], [2, 3], [4, 5]]
    items = [(t, t) for t in (0.0, 0.1, 0.2, 0.5, 0.55, 1.5)]
    out = StreamGraph().source(items, timestamps=True).window(seconds=0.3).run(timeout=5)
    assert out == [[0.0], [0.0, 0.1], [0.0, 0.1, 0.2], [0.5], [0.5, 0.55], [1.5]]
    with pytest.raises(StreamError):
        Window()


def test_reorder_buffer_restores_order_and_drops_late():
    ts = [0.0, 0.2, 0.1, 0.3, 0.5, 0.4, 1.0, 0.05, 1.2]        # 0.05 arrives far too late
    items = [(t, t) for t in ts]
    sg = StreamGraph(max_lateness=0.25, late_policy="drop").source(items, timestamps=True)
    out = sg.run(timeout=5)
    assert out == sorted(t for t in ts if t != 0.05)
    assert sg.dropped_late == 1
    assert [e.kind for e in sg.log].count("late_drop") == 1


def test_late_policy_pass_marks_events():
    items = [(t, t) for t in [0.0, 0.5, 1.0, 0.1, 1.5]]
    sg = StreamGraph(max_lateness=0.2, late_policy="pass").source(items, timestamps=True)
    out = sg.run(timeout=5)
    assert sorted(out) == sorted(t for t, _ in items)             # nothing lost
    assert [e.value for e in sg.results if e.late] == [0.1]
    assert sg.dropped_late == 0
    with pytest.raises(StreamError):
        StreamGraph(max_lateness=0.1, late_policy="ignore")


class Flaky:
    """Fails on every k-th call (calls, not events, so a replay can succeed)."""

    def __init__(self, k):
        self.k, self.calls = k, 0

    def __call__(self, x):
        self.calls += 1
        if self.k and self.calls % self.k == 0:
            raise RuntimeError(f"injected failure at call {self.calls}")
        return x


class RunningSum:
    """A stateful stage whose output depends on everything before it."""

    def __init__(self, fail_at=()):
        self.total, self.fail_at = 0, set(fail_at)   # fails the first time it sees these seqs

    def process(self, ev):
        self.total += ev.value                      # state changes before the failure
        if ev.seq in self.fail_at:
            self.fail_at.discard(ev.seq)
            raise ValueError(f"injected at seq {ev.seq}")
        return [Event(ev.seq, ev.ts, self.total)]

    def get_state(self):
        return self.total

    def set_state(self, s):
        self.total = s


def _healing_graph(fail_every, sequential=False):
    sg = StreamGraph("heal", queue_size=3, checkpoint_every=4,
                     retry=RetryPolicy(max_restarts=100, backoff_s=0.001))
    sg.source(range(50)).map(Flaky(fail_every)).stage(RunningSum(range(3, 50, 7) if fail_every else ()))
    sg.window(n=3, fn=tuple)
    return sg.run_sequential() if sequential else sg.run(timeout=20), sg


@pytest.mark.parametrize("sequential", [False, True])
def test_self_healing_outputs_equal_failure_free_run(sequential):
    clean, _ = _healing_graph(0, sequential)
    healed, sg = _healing_graph(5, sequential)
    assert healed == clean                                       # no loss, no duplicates
    assert [e.seq for e in sg.results] == list(range(50))
    kinds = [e.kind for e in sg.log]
    assert kinds.count("restart") >= 10 and kinds.count("replay") == kinds.count("restart")
    restarted = {e.stage for e in sg.log if e.kind == "restart"}
    assert restarted == {"Flaky", "RunningSum"}
    assert sum(s["restarts"] for s in sg.stats()) == kinds.count("restart")
    df = sg.log_frame()
    assert list(df.columns) == ["time", "stage", "kind", "detail"] and len(df) == len(sg.log)


def test_without_checkpoint_state_a_stateful_replay_would_differ():
    # guards the test above: set_state really matters (a broken restore changes the outputs)
    class NoRestore(RunningSum):
        def set_state(self, s):
            pass
    sg = StreamGraph(checkpoint_every=4, retry=RetryPolicy(max_restarts=100))
    out = sg.source(range(20)).stage(NoRestore(fail_at={6})).run(timeout=10)
    assert out != list(np.cumsum(range(20)))


def test_retry_exhausted_stops_stream_with_error():
    def always(x):
        raise RuntimeError("boom")
    sg = StreamGraph(retry=RetryPolicy(max_restarts=2)).source(range(100)).map(always)
    with pytest.raises(StreamError, match="after 2 restarts"):
        sg.run(timeout=10)
    assert [e.kind for e in sg.log].count("restart") == 2
    assert any(e.kind == "failed" for e in sg.log)
    assert sg.stop(timeout=2)


def test_stop_drains_an_endless_stream_and_never_hangs():
    def endless():
        i = 0
        while True:
            yield i
            i += 1
    sg = StreamGraph(queue_size=2).source(endless).map(lambda x: (time.sleep(0.002), x)[1]).start()
    time.sleep(0.2)
    t = time.perf_counter()
    assert sg.stop(drain=True, timeout=3)
    assert time.perf_counter() - t < 3
    out = sg.outputs
    assert out == list(range(len(out))) and len(out) > 5       # drained in order, no gaps
    assert not sg.running


def test_stop_cancels_a_stuck_stage_within_bounds():
    release = threading.Event()
    sg = StreamGraph().source(range(10)).map(lambda x: release.wait(0.5) or x).start()
    t = time.perf_counter()
    sg.stop(drain=False, timeout=0.1)
    assert time.perf_counter() - t < 1.5
    release.set()


def test_engine_stage_runs_onnx_model():
    from onnx import TensorProto, helper

    import edgebench as eb
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    g = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "relu", [x], [y])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    model = eb.load(m.SerializeToString())
    frames = [np.full((1, 4), i - 2, np.float32) for i in range(5)]
    out = StreamGraph().source(frames).map(lambda a: {"x": a}).map(model).map(lambda d: float(d["y"].sum())).run(timeout=10)
    assert out == [0.0, 0.0, 0.0, 4.0, 8.0]


def test_failing_source_stops_stream_with_error():
    def bad():
        yield 1
        raise OSError("camera unplugged")
    sg = StreamGraph().source(bad).map(lambda x: x)
    with pytest.raises(StreamError, match="camera unplugged"):
        sg.run(timeout=5)
    assert not sg.running or sg.stop(timeout=1)


def test_misuse_errors():
    with pytest.raises(StreamError, match="no source"):
        StreamGraph().run()
    sg = StreamGraph().source([1]).sink([])
    with pytest.raises(StreamError, match="before sink"):
        sg.map(abs)
    with pytest.raises(StreamError, match="iterable"):
        StreamGraph().source(42)
