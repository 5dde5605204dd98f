"""Per-operator profiling of an engine: ``with eb.profile(engine) as prof: ...``.

Operator times come from the backend's own profiler (ONNX Runtime's, or the torch
backend's), request times from the engine's request records: one timing source each.
"""
from __future__ import annotations

import json
import os
from html import escape
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import BenchmarkError
from .metrics import FIELDS, STATUS_NAMES

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

__all__ = ["profile", "ProfileSession", "operator_table"]

_OP_COLUMNS = ["op", "type", "calls", "total_ms", "mean_ms", "share"]
_ORT_SUFFIX = "_kernel_time"


def profile(engine: Any, *, operators: bool = True) -> "ProfileSession":
    """Profile what an engine runs inside a ``with`` block.

    Parameters
    ----------
    engine
        An :class:`~edgebench.Engine`.
    operators
        Also turn the backend's operator profiler on (costs some speed while it is on).

    Examples
    --------
    >>> with eb.profile(eng) as prof:                  # doctest: +SKIP
    ...     for _ in range(100):
    ...         eng.run(x)
    >>> prof.operators().head()                        # doctest: +SKIP
    >>> prof.export_chrome_trace("trace.json")         # doctest: +SKIP
    """
    return ProfileSession(engine, operators=operators)


def _operator_events(events: list[dict]) -> list[tuple[str, str, float]]:
    """``(node, op type, duration us)`` of the operator events among a backend's trace events.

    ONNX Runtime: ``cat == "Node"`` events named ``<node>_kernel_time`` (``args.op_name`` is the
    type).  Torch backend: events with ``args.op_type`` (the node is ``args.name`` or the event
    name; their time is ``args.self_us`` when present, since torch's events nest).
    """
    out = []
    for ev in events:
        if not isinstance(ev, dict) or ev.get("ph", "X") != "X":
            continue
        args = ev.get("args") or {}
        name = str(ev.get("name", ""))
        if ev.get("cat") == "Node" and name.endswith(_ORT_SUFFIX):  # ONNX Runtime
            node = name[: -len(_ORT_SUFFIX)]
            out.append((node, str(args.get("op_name", node)), float(ev.get("dur", 0))))
        elif "op_type" in args:  # the torch backend's events: nested, so count self time
            us = args.get("self_us") if ev.get("cat") != "kernel" else None
            out.append((str(args.get("name") or name), str(args["op_type"]),
                        float(us if us is not None else ev.get("dur", 0))))
    return out


def operator_table(events: list[dict]) -> "pd.DataFrame":
    """Operators of a Chrome trace: ``op, type, calls, total_ms, mean_ms, share``, slowest first."""
    import pandas as pd

    ops = _operator_events(events)
    if not ops:
        return pd.DataFrame({c: pd.Series(dtype=t) for c, t in zip(
            _OP_COLUMNS, ["object", "object", "int64", "float64", "float64", "float64"])})
    df = pd.DataFrame(ops, columns=["op", "type", "dur_us"])
    g = df.groupby(["op", "type"], sort=False)["dur_us"].agg(["count", "sum"]).reset_index()
    g.columns = ["op", "type", "calls", "total_us"]
    g["total_ms"] = g["total_us"] / 1e3
    g["mean_ms"] = g["total_ms"] / g["calls"]
    total = g["total_ms"].sum()
    g["share"] = g["total_ms"] / total if total > 0 else 0.0
    return g[_OP_COLUMNS].sort_values("total_ms", ascending=False, kind="stable").reset_index(drop=True)


class ProfileSession:
    """What :func:`profile` returns: the requests and operators of one ``with`` block.

    Attributes
    ----------
    events
        The backend's trace events (Chrome trace format), available after the block.
    reason
        Why there is no operator data (``None`` when there is).
    """

    def __init__(self, engine: Any, operators: bool = True):
        self.engine = engine
        self.want_operators = operators
        self.events: list[dict] = []
        self.reason: str | None = None if operators else "operator profiling was off (operators=False)"
        self._since: int | None = None
        self._until: int | None = None
        self._kept: np.ndarray | None = None
        self._profiling = False

    # -- context manager ------------------------------------------------------------------------
    def __enter__(self) -> "ProfileSession":
        self.events, self._until = [], None
        if self.want_operators:
            start = getattr(self.engine.session, "start_profiling", None)
            if start is None or getattr(self.engine.session, "end_profiling", None) is None:
                self.reason = f"the {self.engine.backend} backend has no operator profiler"
            else:
                try:
                    start()
                except RuntimeError as e:
                    raise BenchmarkError(f"cannot profile {self.engine.model.name!r}: {e}",
                                         "end the other eb.profile block on this engine first") from None
                self._profiling = True
        self._since = self.engine.records.total
        return self

    def __exit__(self, *exc: Any) -> None:
        self._until = self.engine.records.total
        # keep the block's records: the engine's ring moves on and would overwrite them
        self._kept = self.engine.records.snapshot(self._since)
        self._kept = self._kept[self._kept[:, 0] < self._until]
        if self._profiling:
            self._profiling = False
            self.events = list(self.engine.session.end_profiling())
            if not _operator_events(self.events) and self.reason is None:
                self.reason = "the backend's profiler reported no operator events (no request ran?)"
        from ..notebook.dashboard import publish_profile  # light: no bokeh imported

        publish_profile(self)

    @property
    def active(self) -> bool:
        return self._since is not None and self._until is None

    # -- results --------------------------------------------------------------------------------
    def _records(self) -> np.ndarray:
        if self._since is None:
            return np.empty((0, len(FIELDS)), np.int64)
        if self._kept is not None:
            return self._kept
        return self.engine.records.snapshot(self._since)

    def operators(self) -> "pd.DataFrame":
        """Per operator (node): ``op, type, calls, total_ms, mean_ms, share`` (of all operator
        time), sorted by ``total_ms``.  Empty, with ``df.attrs["reason"]``, when there is none."""
        df = operator_table(self.events)
        if df.empty and self.reason:
            df.attrs["reason"] = self.reason
        return df

    def operator_types(self) -> "pd.DataFrame":
        """:meth:`operators` summed per op type."""
        df = self.operators()
        g = df.groupby("type", sort=False)[["calls", "total_ms", "share"]].sum().reset_index()
        g["mean_ms"] = g["total_ms"] / g["calls"].where(g["calls"] > 0)
        return g.sort_values("total_ms", ascending=False, kind="stable").reset_index(drop=True)

    def requests(self) -> "pd.DataFrame":
        """The engine's request records taken inside the block (see ``RecordBuffer.to_pandas``)."""
        from .metrics import records_to_pandas

        return records_to_pandas(self._records(), self.engine.records.epoch_ns)

    def graph(self, **kwargs: Any) -> Any:
        """The model's graph view with each operator's time as a heat colour (a widget)."""
        from ..notebook.graph_view import GraphView

        return GraphView(self.engine.model, profile=self, **kwargs)

    def summary(self) -> "pd.Series":
        """Latency percentiles and throughput of the requests inside the block."""
        from .report import summarize

        return summarize(self._records())

    def trace_events(self) -> list[dict]:
        """The backend's events plus one ``request`` event per record, on one time axis (us)."""
        recs = self._records()
        t0 = int(recs[:, 1].min()) if len(recs) else 0
        pid = os.getpid()
        out: list[dict] = [
            {"name": "process_name", "ph": "M", "pid": pid, "tid": 0, "args": {"name": "edgebench requests"}},
        ]
        for r in recs:
            seq, arrival, formed, start, end, done, batch, status = (int(v) for v in r)
            out.append({"name": "request", "cat": "request", "ph": "X", "pid": pid, "tid": 0,
                        "ts": (arrival - t0) / 1e3, "dur": (done - arrival) / 1e3,
                        "args": {"seq": seq, "queue_ms": (start - arrival) / 1e6,
                                 "compute_ms": (end - start) / 1e6, "batch": batch,
                                 "status": STATUS_NAMES.get(status, str(status))}})
        # the backend's clock starts elsewhere: line its first run up with the first compute start
        events = [e for e in self.events if isinstance(e, dict) and "ts" in e]
        shift = 0.0
        if events and len(recs):
            runs = [e for e in events if e.get("name") == "model_run"] or \
                [e for e in events if e.get("ph") == "X"] or events
            shift = (int(recs[:, 3].min()) - t0) / 1e3 - float(min(e["ts"] for e in runs))
        for e in events:
            e = dict(e, ts=float(e["ts"]) + shift)
            e.setdefault("ph", "X")
            e.setdefault("pid", pid + 1)
            e.setdefault("tid", 0)
            out.append(e)
        return out

    def export_chrome_trace(self, path: str | os.PathLike) -> Path:
        """Write ``{"traceEvents": [...]}`` for Perfetto / ``chrome://tracing``; returns the path."""
        path = Path(path)
        with open(path, "w") as f:
            json.dump({"traceEvents": self.trace_events(), "displayTimeUnit": "ms"}, f)
        return path

    # -- display --------------------------------------------------------------------------------
    def __repr__(self) -> str:
        if self._since is None:
            state = "not started"
        else:
            n = (self._until if self._until is not None else self.engine.records.total) - self._since
            state = f"{n} requests, {len(self.events)} trace events" + (", active" if self.active else "")
        return f"<ProfileSession {self.engine.model.name}: {state}>"

    def _repr_mimebundle_(self, include=None, exclude=None, **kwargs):
        from ..notebook.display import mimebundle  # the widget; text and HTML without ipywidgets

        return mimebundle(self, include, exclude)

    def _repr_html_(self) -> str:
        s = self.summary()
        head = (f"<b>Profile</b> <code>{escape(self.engine.model.name)}</code> &middot; "
                f"{int(s['count'])} requests &middot; p50 {s['p50_ms']:.3f} ms &middot; "
                f"p99 {s['p99_ms']:.3f} ms")
        ops = self.operators().head(10)
        if ops.empty:
            body = f"<p>No operator data: {escape(self.reason or 'none recorded')}</p>"
        else:
            rows = "".join(
                f"<tr><td><code>{escape(r.op)}</code></td><td>{escape(r.type)}</td><td>{r.calls}</td>"
                f"<td>{r.total_ms:.3f}</td><td>{r.mean_ms:.4f}</td><td>{100 * r.share:.1f}%</td></tr>"
                for r in ops.itertuples())
            body = ("<table><tr><th>op</th><th>type</th><th>calls</th><th>total ms</th><th>mean ms</th>"
                    f"<th>share</th></tr>{rows}</table>")
        return f"<div class='edgebench-card'>{head}{body}</div>"
