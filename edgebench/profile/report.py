"""Benchmark results: summaries of request records and :class:`BenchmarkReport`.

Everything here is computed from the engine's request records (see
:mod:`edgebench.profile.metrics`) and, for the server scenario, the scheduled issue times;
nothing is timed twice.
"""
from __future__ import annotations

import math
import platform
from dataclasses import dataclass, field
from functools import cached_property
from html import escape
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from .metrics import FIELDS, OK, STATUS_NAMES

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

__all__ = ["summarize", "BenchmarkReport", "is_stable", "window_stats", "QUERY_FIELDS", "cpu_description"]

_SEQ, _ARRIVAL, _FORMED, _START, _END, _DONE, _BATCH, _STATUS = range(len(FIELDS))
#: Columns of a report's per-query array: ``issue`` is the time the query's latency counts
#: from (the scheduled time in the server scenario), the rest span its engine requests.
QUERY_FIELDS = ("issue", "arrival", "start", "end", "done", "samples", "status")
_PCTS = (50.0, 90.0, 95.0, 99.0, 99.9)
_PNAMES = ("p50_ms", "p90_ms", "p95_ms", "p99_ms", "p999_ms")
# scenario -> the latency percentile held against latency_bound_ms
_BOUND_PCT = {"single_stream": "p90_ms", "multi_stream": "p99_ms", "server": "p99_ms"}
STABILITY_WINDOWS, STABILITY_TOLERANCE = 3, 0.10


def _latency_stats(lat_ms: np.ndarray) -> dict[str, float]:
    if len(lat_ms) == 0:
        return {**{n: math.nan for n in _PNAMES}, "max_ms": math.nan, "mean_ms": math.nan}
    pct = np.percentile(lat_ms, _PCTS)
    return {**{n: float(v) for n, v in zip(_PNAMES, pct)}, "max_ms": float(lat_ms.max()),
            "mean_ms": float(lat_ms.mean())}


def summarize(records: np.ndarray) -> "pd.Series":
    """Latency percentiles and throughput of request records.

    Parameters
    ----------
    records
        An ``(n, 8)`` int64 array from :meth:`RecordBuffer.snapshot` (fields in
        :data:`~edgebench.profile.metrics.FIELDS`).

    Returns
    -------
    pandas.Series
        ``count, ok, errors`` (requests that did not end OK), latency ``p50_ms ... p999_ms,
        max_ms, mean_ms`` of the OK requests (arrival to done), ``throughput`` (OK requests
        per second from the first arrival to the last done), mean ``queue_ms`` and
        ``compute_ms``.  Empty input gives zero counts and NaN figures.
    """
    import pandas as pd

    a = np.asarray(records, dtype=np.int64).reshape(-1, len(FIELDS))
    ok = a[a[:, _STATUS] == OK]
    out: dict[str, float] = {"count": len(a), "ok": len(ok), "errors": len(a) - len(ok)}
    out.update(_latency_stats((ok[:, _DONE] - ok[:, _ARRIVAL]) / 1e6))
    span = (a[:, _DONE].max() - a[:, _ARRIVAL].min()) / 1e9 if len(a) else 0.0
    out["throughput"] = len(ok) / span if span > 0 else math.nan
    out["queue_ms"] = float(((ok[:, _START] - ok[:, _ARRIVAL]) / 1e6).mean()) if len(ok) else math.nan
    out["compute_ms"] = float(((ok[:, _END] - ok[:, _START]) / 1e6).mean()) if len(ok) else math.nan
    return pd.Series(out, dtype=float)


def is_stable(throughputs: Sequence[float], n: int = STABILITY_WINDOWS,
              tolerance: float = STABILITY_TOLERANCE) -> bool:
    """perf_analyzer's rule: the last ``n`` windows' throughputs have max/min within ``1 + tolerance``."""
    last = np.asarray(throughputs, dtype=float)[-n:]
    if len(last) < n or not np.all(np.isfinite(last)) or last.min() <= 0:
        return False
    return bool(last.max() / last.min() <= 1.0 + tolerance)


def window_stats(queries: np.ndarray, t0: int, t_end: int, window_s: float) -> dict[str, np.ndarray]:
    """Per measurement window (full windows in ``[t0, t_end]`` only), by query completion time.

    Returns arrays ``start_s, queries, samples, throughput`` (OK samples/s), ``p50_ms, p99_ms``.
    """
    w = int(window_s * 1e9)
    n = max(0, int((t_end - t0) // w)) if w > 0 else 0
    q = queries[queries[:, 6] == OK] if len(queries) else queries
    idx = (q[:, 4] - t0) // w if len(q) else np.empty(0, dtype=np.int64)
    keep = (idx >= 0) & (idx < n)
    idx, q = idx[keep], q[keep]
    counts = np.bincount(idx, minlength=n)[:n]
    samples = np.bincount(idx, weights=q[:, 5], minlength=n)[:n]
    lat = (q[:, 4] - q[:, 0]) / 1e6
    p50 = np.full(n, math.nan)
    p99 = np.full(n, math.nan)
    for k in np.flatnonzero(counts):
        p50[k], p99[k] = np.percentile(lat[idx == k], [50, 99])
    return {"start_s": np.arange(n) * window_s, "queries": counts, "samples": samples.astype(np.int64),
            "throughput": samples / window_s, "p50_ms": p50, "p99_ms": p99}


def cpu_description() -> str:
    """The CPU model and ISA (from ``edgebench.devices.cpu_info()`` when that module exists)."""
    try:
        from ..devices import cpu_info
    except ImportError:
        cpu_info = None
    if cpu_info is not None:
        try:
            info = cpu_info()
            get = info.get if isinstance(info, dict) else (lambda k: getattr(info, k, None))
            model = get("model") or get("brand") or get("name")
            isa = get("isa")
            if model:
                if isinstance(isa, (list, tuple, set)):
                    isa = ", ".join(map(str, isa))
                return f"{model} ({isa})" if isa else str(model)
        except Exception:  # a description is not worth failing a report for
            pass
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


@dataclass(repr=False, eq=False)
class BenchmarkReport:
    """The result of :func:`edgebench.benchmark`: one scenario run, query by query.

    Attributes
    ----------
    scenario, model, backend, device, threads
        What ran, and where.
    settings
        ``qps, latency_bound_ms, duration_s, min_queries, max_duration_s, batch_size,
        samples_per_query, seed, warmup_s, window_s``.
    records
        The engine's request records of the measured part (warm-up excluded).
    queries
        ``(n, 7)`` int64 array, columns :data:`QUERY_FIELDS` (perf_counter ns).
    t0_ns, t_end_ns
        Start of measurement (the first issue) and the last completion.
    notes
        Validity problems the runner saw (overload, cancelled queries, lost records).
    """

    scenario: str
    model: str
    backend: str
    device: str
    threads: int | None
    settings: dict[str, Any]
    records: np.ndarray
    queries: np.ndarray
    t0_ns: int
    t_end_ns: int
    notes: list[str] = field(default_factory=list)

    # -- figures ------------------------------------------------------------------------------
    @cached_property
    def _ok(self) -> np.ndarray:
        return self.queries[self.queries[:, 6] == OK] if len(self.queries) else self.queries

    @cached_property
    def latencies_ms(self) -> np.ndarray:
        """Latency of each OK query (from its issue time to its last answer), ms."""
        return (self._ok[:, 4] - self._ok[:, 0]) / 1e6

    @cached_property
    def _stats(self) -> dict[str, float]:
        return _latency_stats(self.latencies_ms)

    p50_ms = property(lambda self: self._stats["p50_ms"], doc="Median query latency, ms.")
    p90_ms = property(lambda self: self._stats["p90_ms"], doc="90th percentile query latency, ms.")
    p95_ms = property(lambda self: self._stats["p95_ms"], doc="95th percentile query latency, ms.")
    p99_ms = property(lambda self: self._stats["p99_ms"], doc="99th percentile query latency, ms.")
    p999_ms = property(lambda self: self._stats["p999_ms"], doc="99.9th percentile query latency, ms.")
    max_ms = property(lambda self: self._stats["max_ms"], doc="Slowest query, ms.")
    mean_ms = property(lambda self: self._stats["mean_ms"], doc="Mean query latency, ms.")

    @property
    def duration_s(self) -> float:
        """Measured time: first issue to last completion, seconds."""
        return max(0, self.t_end_ns - self.t0_ns) / 1e9

    @property
    def n_queries(self) -> int:
        return len(self.queries)

    @property
    def throughput(self) -> float:
        """OK samples per second over the measured time."""
        d = self.duration_s
        return float(self._ok[:, 5].sum()) / d if d > 0 else math.nan

    @property
    def qps_achieved(self) -> float:
        """OK queries per second over the measured time."""
        d = self.duration_s
        return len(self._ok) / d if d > 0 else math.nan

    @property
    def latency_bound_ms(self) -> float | None:
        return self.settings.get("latency_bound_ms")

    @property
    def metric(self) -> tuple[str, float]:
        """The scenario's headline figure, as MLPerf reports it: ``(name, value)``."""
        name = {"single_stream": "p90_ms", "multi_stream": "p99_ms", "server": "qps_achieved",
                "offline": "throughput"}.get(self.scenario, "throughput")
        return name, float(getattr(self, name))

    @cached_property
    def issue_delay_ms(self) -> np.ndarray:
        """How late each query was handed to the engine after its scheduled time, ms."""
        return (self.queries[:, 1] - self.queries[:, 0]) / 1e6 if len(self.queries) else np.empty(0)

    @cached_property
    def validity_reasons(self) -> list[str]:
        """Why the run is INVALID (empty when it is VALID)."""
        s, out = self.settings, []
        if len(self._ok) == 0:
            out.append("no query completed")
        if len(self._ok) < len(self.queries):
            out.append(f"{len(self.queries) - len(self._ok)} queries did not complete OK")
        if len(self._ok) < (s.get("min_queries") or 0):
            out.append(f"too few queries: {len(self._ok)} < min_queries {s['min_queries']}")
        if self.duration_s < (s.get("duration_s") or 0):
            out.append(f"run too short: {self.duration_s:.3f} s < duration_s {s['duration_s']} s")
        bound, pct = self.latency_bound_ms, _BOUND_PCT.get(self.scenario)
        if bound is not None and pct and not getattr(self, pct) <= bound:
            out.append(f"{pct[:-3]} latency {getattr(self, pct):.4g} ms exceeds latency_bound_ms {bound:g}")
        if self.scenario == "server" and len(self.queries):
            tol = max(1.0, 0.1 * (bound or 0.0))
            late = float(np.percentile(self.issue_delay_ms, 99))
            if late > tol:
                out.append(f"issuer fell behind schedule: p99 issue delay {late:.3g} ms > {tol:g} ms")
        return out + list(self.notes)

    @property
    def valid(self) -> bool:
        """MLPerf-style validity: see :attr:`validity_reasons`."""
        return not self.validity_reasons

    @cached_property
    def _windows(self) -> dict[str, np.ndarray]:
        return window_stats(self.queries, self.t0_ns, self.t_end_ns, self.settings["window_s"])

    @property
    def stable(self) -> bool:
        """Throughput of the last 3 measurement windows within 10% (max/min), as perf_analyzer."""
        return is_stable(self._windows["throughput"])

    @cached_property
    def cpu(self) -> str:
        """CPU model and ISA of this machine."""
        return cpu_description()

    # -- tables -------------------------------------------------------------------------------
    def to_pandas(self) -> "pd.DataFrame":
        """One row per query: ``arrival_s`` (issue time from the start), ``latency_ms``,
        ``queue_ms`` (issue to compute start), ``compute_ms``, ``batch`` (samples), ``status``."""
        import pandas as pd

        q = self.queries.reshape(-1, len(QUERY_FIELDS))
        return pd.DataFrame({
            "arrival_s": (q[:, 0] - self.t0_ns) / 1e9,
            "latency_ms": (q[:, 4] - q[:, 0]) / 1e6,
            "queue_ms": (q[:, 2] - q[:, 0]) / 1e6,
            "compute_ms": (q[:, 3] - q[:, 2]) / 1e6,
            "batch": q[:, 5],
            "status": pd.Categorical([STATUS_NAMES.get(int(v), str(v)) for v in q[:, 6]],
                                     categories=list(STATUS_NAMES.values())),
        })

    def windows(self) -> "pd.DataFrame":
        """Per measurement window: queries, samples, throughput (samples/s), p50 and p99 latency."""
        import pandas as pd

        w = self._windows
        df = pd.DataFrame(w)
        df.insert(1, "end_s", df["start_s"] + self.settings["window_s"])
        df.index.name = "window"
        return df

    def summary(self) -> dict[str, Any]:
        """The key figures as a JSON-serializable dict (what ``edgebench benchmark --json`` prints)."""
        def num(v: Any) -> Any:
            if isinstance(v, (np.integer,)):
                return int(v)
            v = float(v)
            return None if not math.isfinite(v) else v

        name, value = self.metric
        return {
            "scenario": self.scenario, "model": self.model, "backend": self.backend,
            "device": self.device, "threads": self.threads, "cpu": self.cpu,
            "settings": {k: (num(v) if isinstance(v, (float, np.floating)) else v)
                         for k, v in self.settings.items()},
            "metric": name, "metric_value": num(value),
            "queries": int(len(self.queries)), "samples": int(self._ok[:, 5].sum()),
            "duration_s": num(self.duration_s),
            **{k: num(self._stats[k]) for k in (*_PNAMES, "max_ms", "mean_ms")},
            "throughput": num(self.throughput), "qps_achieved": num(self.qps_achieved),
            "valid": self.valid, "validity_reasons": list(self.validity_reasons),
            "stable": self.stable, "windows": int(len(self._windows["throughput"])),
        }

    # -- display ------------------------------------------------------------------------------
    def _headline(self) -> str:
        bound, pct = self.latency_bound_ms, _BOUND_PCT.get(self.scenario, "p99_ms")
        lat = f"{pct[:-3]} {getattr(self, pct):.3g} ms"
        if bound is not None and self.scenario != "offline":
            lat += f" {'<=' if getattr(self, pct) <= bound else '>'} {bound:g} ms"
        rate = (f"{self.qps_achieved:.1f} qps" if self.scenario == "server"
                else f"{self.throughput:.1f} samples/s")
        return f"{lat} {'VALID' if self.valid else 'INVALID'}, {rate}, {len(self.queries)} queries"

    def __repr__(self) -> str:
        return f"<BenchmarkReport {self.scenario} {self.model}: {self._headline()}>"

    def _repr_mimebundle_(self, include=None, exclude=None, **kwargs):
        from ..notebook.display import mimebundle  # the widget; text and HTML without ipywidgets

        return mimebundle(self, include, exclude)

    def _repr_html_(self) -> str:
        ok = self.valid
        colour = "#1a7f37" if ok else "#cf222e"
        verdict = f"<b style='color:{colour}'>{'VALID' if ok else 'INVALID'}</b>"
        reasons = "".join(f"<li>{escape(r)}</li>" for r in self.validity_reasons)
        rows = [("p50 / p90 / p99", f"{self.p50_ms:.3f} / {self.p90_ms:.3f} / {self.p99_ms:.3f} ms"),
                ("max", f"{self.max_ms:.3f} ms"),
                ("throughput", f"{self.throughput:.1f} samples/s ({self.qps_achieved:.1f} qps)"),
                ("queries", f"{len(self.queries)} in {self.duration_s:.2f} s"),
                ("stable", "yes" if self.stable else "no (last 3 windows differ by more than 10%)"),
                ("engine", f"{self.backend} / {self.device}, threads "
                           f"{'auto' if self.threads is None else self.threads}"),
                ("CPU", self.cpu)]
        if self.latency_bound_ms is not None:
            rows.insert(0, ("latency bound", f"{self.latency_bound_ms:g} ms"))
        if self.scenario == "server":
            rows.insert(0, ("target qps", f"{self.settings.get('qps'):g}"))
        table = "".join(f"<tr><th style='text-align:left'>{escape(k)}</th><td>{escape(v)}</td></tr>"
                        for k, v in rows)
        return (f"<div class='edgebench-card'><b>BenchmarkReport</b> <code>{escape(self.scenario)}</code> "
                f"<code>{escape(self.model)}</code> &middot; {verdict}"
                f"<table>{table}</table>{f'<ul>{reasons}</ul>' if reasons else ''}</div>")
