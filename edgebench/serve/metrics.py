"""``/metrics`` (Prometheus text format) and Triton's ``/stats``, per model and per tenant.

Two sources, nothing measured twice:

* the request records of each served model (its batcher's or engine's
  :class:`~edgebench.profile.metrics.RecordBuffer`): queue wait, compute time, executions
  and the latency histogram per model version.  They are folded into running totals every
  half second and at each scrape (:meth:`ServeMetrics.fold`), so ring-buffer wrap-around
  loses nothing at the rates this server reaches;
* the HTTP layer's own outcome of each request, which only it knows: which tenant sent it,
  how many rows it carried, and why it failed (invalid, rate limited, rejected, backend).

Metric names follow Triton's (``nv_inference_request_success``, ``nv_inference_count``,
``nv_inference_exec_count``, ``nv_inference_queue_duration_us``,
``nv_inference_compute_infer_duration_us``, ``nv_inference_pending_request_count``, ...), so
dashboards built for Triton read them unchanged; a ``tenant`` label is added.
"""
from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np

__all__ = ["LATENCY_BUCKETS_S", "Cell", "ServeMetrics"]

LATENCY_BUCKETS_S = (1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 2.5e-2, 5e-2, 0.1, 0.25, 1.0)
_OK = 0
ANON = "anonymous"


class Cell:
    """Counters of one (model, version, tenant): plain attributes, updated on the event loop."""

    __slots__ = ("failures", "last_ms", "request_ns", "rows", "success")

    def __init__(self) -> None:
        self.success = 0
        self.failures: dict[str, int] = {}
        self.rows = 0
        self.request_ns = 0
        self.last_ms = 0

    def ok(self, rows: int, request_ns: int) -> None:
        self.success += 1
        self.rows += rows
        self.request_ns += request_ns
        self.last_ms = int(time.time() * 1000)

    def fail(self, reason: str, request_ns: int) -> None:
        self.failures[reason] = self.failures.get(reason, 0) + 1
        self.request_ns += request_ns


class _Folded:
    """Running totals of one model version's records."""

    __slots__ = (
        "batch_sizes",
        "buckets",
        "compute_ns",
        "exec",
        "fail",
        "fail_ns",
        "latency_sum_s",
        "lost",
        "ok",
        "ok_ns",
        "queue_ns",
        "since",
        "starts",
    )

    def __init__(self) -> None:
        self.since = 0
        self.ok = self.fail = self.exec = self.lost = 0
        self.ok_ns = self.fail_ns = self.queue_ns = self.compute_ns = 0
        self.latency_sum_s = 0.0
        self.starts: deque = deque(maxlen=4096)
        self.buckets = np.zeros(len(LATENCY_BUCKETS_S) + 1, dtype=np.int64)
        self.batch_sizes: dict[int, list[int]] = {}  # batch size -> [executions, compute ns]


class ServeMetrics:
    """Everything ``/metrics`` and ``/v2/models/.../stats`` report for one server.

    Parameters
    ----------
    served
        A callable returning the loaded model versions (objects with ``name``, ``version``,
        ``serial``, ``records``, ``inflight``, ``runner``).
    tenants
        A callable returning the live tenants (``name``, ``inflight``).
    """

    def __init__(self, served: Callable[[], Iterable[Any]], tenants: Callable[[], Iterable[Any]] = lambda: ()):
        self._served = served
        self._tenants = tenants
        self._cells: dict[tuple[str, str, str], Cell] = {}
        self._folded: dict[tuple[str, str, int], _Folded] = {}  # (model, version, ServedModel.serial)
        self._lock = threading.Lock()
        self.auth_failures = 0
        self.registry = self._registry()

    def cell(self, model: str, version: str, tenant: str | None) -> Cell:
        key = (model, version, tenant or ANON)
        c = self._cells.get(key)
        if c is None:
            c = self._cells[key] = Cell()
        return c

    # -- records ----------------------------------------------------------------------------------
    def fold(self, models: Iterable[Any] | None = None) -> None:
        """Add the records written since the last fold to the running totals (of ``models``,
        default every loaded one)."""
        with self._lock:
            for m in (self._served() if models is None else models):
                key = (m.name, m.version, m.serial)
                f = self._folded.get(key)
                if f is None:
                    f = self._folded[key] = _Folded()
                self._fold_one(f, m.records)

    @staticmethod
    def _fold_one(f: _Folded, buf: Any) -> None:
        recs = buf.snapshot(f.since)
        total = buf.total
        if len(recs) == 0:
            f.lost += max(0, total - f.since)
            f.since = max(f.since, total)
            return
        seq, arrival, formed, start, end, done, batch, status = recs.T
        f.lost += int(seq[0] - f.since) if seq[0] > f.since else 0
        f.since = int(seq[-1]) + 1
        ok = status == _OK
        f.ok += int(ok.sum())
        f.fail += int((~ok).sum())
        lat = done - arrival
        f.ok_ns += int(lat[ok].sum())
        f.fail_ns += int(lat[~ok].sum())
        f.queue_ns += int((formed - arrival)[ok].sum())
        f.compute_ns += int((start - formed)[ok].sum())  # compute input: batch assembly
        lat_s = lat[ok] / 1e9
        f.latency_sum_s += float(lat_s.sum())
        f.buckets += np.bincount(np.searchsorted(LATENCY_BUCKETS_S, lat_s), minlength=len(f.buckets))
        # one execution = one distinct compute start; a batch may straddle two folds
        seen = set(f.starts)
        for s, e, b in zip(start[ok].tolist(), end[ok].tolist(), batch[ok].tolist()):
            if s in seen:
                continue
            seen.add(s)
            f.starts.append(s)
            f.exec += 1
            bs = f.batch_sizes.setdefault(int(b), [0, 0])
            bs[0] += 1
            bs[1] += e - s

    def model_totals(self, name: str, version: str) -> dict[str, Any]:
        """Folded totals of one model version (all its engines/batchers so far)."""
        self.fold()
        out: dict[str, Any] = {"ok": 0, "fail": 0, "ok_ns": 0, "fail_ns": 0, "queue_ns": 0, "input_ns": 0,
                               "exec": 0, "compute_ns": 0, "batch_sizes": {}}
        for (n, v, _), f in self._folded.items():
            if n == name and v == version:
                out["ok"] += f.ok
                out["fail"] += f.fail
                out["ok_ns"] += f.ok_ns
                out["fail_ns"] += f.fail_ns
                out["queue_ns"] += f.queue_ns
                out["input_ns"] += f.compute_ns
                out["exec"] += f.exec
                for b, (cnt, ns) in f.batch_sizes.items():
                    acc = out["batch_sizes"].setdefault(b, [0, 0])
                    acc[0] += cnt
                    acc[1] += ns
                    out["compute_ns"] += ns
        return out

    def rows(self, name: str, version: str) -> int:
        return sum(c.rows for (n, v, _), c in list(self._cells.items()) if n == name and v == version)

    def last_inference_ms(self, name: str, version: str) -> int:
        return max((c.last_ms for (n, v, _), c in list(self._cells.items()) if n == name and v == version), default=0)

    def snapshot(self) -> dict[str, Any]:
        """Live figures for widgets: per model version and per tenant (plain numbers)."""
        self.fold()
        models = []
        for m in list(self._served()):
            t = self.model_totals(m.name, m.version)
            n = t["ok"]
            models.append({
                "model": m.name, "version": m.version, "mode": m.runner.mode, "ok": n, "failed": t["fail"],
                "executions": t["exec"], "rows": self.rows(m.name, m.version),
                "mean_batch": (sum(b * c for b, (c, _) in t["batch_sizes"].items()) / t["exec"]) if t["exec"] else 0.0,
                "queue_ms": t["queue_ns"] / n / 1e6 if n else float("nan"),
                "compute_ms": t["compute_ns"] / t["exec"] / 1e6 if t["exec"] else float("nan"),
                "latency_ms": t["ok_ns"] / n / 1e6 if n else float("nan"), "inflight": m.inflight})
        tenants: dict[str, dict[str, Any]] = {}
        for (_, _, tenant), c in list(self._cells.items()):
            row = tenants.setdefault(tenant, {"tenant": tenant, "ok": 0, "failed": 0, "rows": 0,
                                              "at_model": 0, "waiting": 0, "priority": None})
            row["ok"] += c.success
            row["failed"] += sum(c.failures.values())
            row["rows"] += c.rows
        for t in list(self._tenants()):
            row = tenants.setdefault(t.name, {"tenant": t.name, "ok": 0, "failed": 0, "rows": 0})
            row.update(at_model=t.inflight, waiting=t.waiting, priority=t.priority)
        return {"models": models, "tenants": sorted(tenants.values(), key=lambda r: r["tenant"]),
                "auth_failures": self.auth_failures}

    # -- Prometheus -------------------------------------------------------------------------------
    def _registry(self) -> Any:
        from prometheus_client import CollectorRegistry

        reg = CollectorRegistry(auto_describe=False)
        reg.register(_Collector(self))
        return reg

    def text(self) -> bytes:
        """The Prometheus text exposition of everything above."""
        from prometheus_client import generate_latest

        self.fold()
        text = generate_latest(self.registry)
        # prometheus_client names counter families "<name>_total"; Triton's have no suffix
        for name in _COUNTERS:
            b = name.encode()
            text = text.replace(b"# HELP " + b + b"_total ", b"# HELP " + b + b" ").replace(
                b"# TYPE " + b + b"_total counter", b"# TYPE " + b + b" counter")
        return text


_COUNTERS = ("nv_inference_request_success", "nv_inference_request_failure", "nv_inference_count",
             "nv_inference_request_duration_us", "nv_inference_exec_count", "nv_inference_queue_duration_us",
             "nv_inference_compute_input_duration_us", "nv_inference_compute_infer_duration_us",
             "edgebench_auth_failures")


class _Counter:
    """A counter family whose samples keep Triton's exact names (no ``_total`` suffix)."""

    def __init__(self, name: str, doc: str, labels: list[str]):
        from prometheus_client import Metric

        self.name, self.labels = name, labels
        self.metric = Metric(name, doc, "counter")

    def add_metric(self, values: list[str], value: float) -> None:
        self.metric.add_sample(self.name, dict(zip(self.labels, values)), value)


class _Collector:
    def __init__(self, metrics: ServeMetrics):
        self.m = metrics

    def describe(self) -> list:
        return []

    def collect(self) -> Iterable[Any]:
        from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily

        CounterMetricFamily = _Counter

        m = self.m
        mvt = ["model", "version", "tenant"]
        success = CounterMetricFamily("nv_inference_request_success", "Successful inference requests", mvt)
        failure = CounterMetricFamily("nv_inference_request_failure", "Failed inference requests",
                                      mvt + ["reason"])
        count = CounterMetricFamily("nv_inference_count", "Inferences performed (batch rows)", labels=mvt)
        req_us = CounterMetricFamily("nv_inference_request_duration_us",
                                     "Cumulative request duration at the HTTP layer, in microseconds", mvt)
        for (model, version, tenant), c in list(m._cells.items()):
            labels = [model, version, tenant]
            success.add_metric(labels, c.success)
            for reason, n in c.failures.items():
                failure.add_metric(labels + [reason], n)
            count.add_metric(labels, c.rows)
            req_us.add_metric(labels, c.request_ns // 1000)
        yield from (c.metric for c in (success, failure, count, req_us))

        mv = ["model", "version"]
        execs = CounterMetricFamily("nv_inference_exec_count", "Model executions (batches run)", labels=mv)
        queue = CounterMetricFamily("nv_inference_queue_duration_us",
                                    "Cumulative time requests waited in the queue, in microseconds", mv)
        c_in = CounterMetricFamily("nv_inference_compute_input_duration_us",
                                   "Cumulative time spent forming batches, in microseconds", mv)
        c_inf = CounterMetricFamily("nv_inference_compute_infer_duration_us",
                                    "Cumulative model execution time, in microseconds", mv)
        pending = GaugeMetricFamily("nv_inference_pending_request_count",
                                    "Requests received and not yet answered", labels=mv)
        hist = HistogramMetricFamily("edgebench_request_latency_seconds",
                                     "Request latency inside edgebench (arrival to answer), from the records",
                                     labels=mv)
        with m._lock:
            folded = list(m._folded.items())
        per: dict[tuple[str, str], list] = {}
        for (model, version, _), f in folded:
            acc = per.setdefault((model, version), [0, 0, 0, 0, np.zeros_like(f.buckets), 0.0])
            acc[0] += f.exec
            acc[1] += f.queue_ns
            acc[2] += f.compute_ns
            acc[3] += sum(ns for _, ns in f.batch_sizes.values())
            acc[4] = acc[4] + f.buckets
            acc[5] += f.latency_sum_s
        for (model, version), (ex, q, cin, cinf, buckets, lsum) in per.items():
            labels = [model, version]
            execs.add_metric(labels, ex)
            queue.add_metric(labels, q // 1000)
            c_in.add_metric(labels, cin // 1000)
            c_inf.add_metric(labels, cinf // 1000)
            cum = np.cumsum(buckets).tolist()
            hist.add_metric(labels, [(repr(b), cum[i]) for i, b in enumerate(LATENCY_BUCKETS_S)] + [("+Inf", cum[-1])],
                            lsum)
        for s in list(m._served()):
            pending.add_metric([s.name, s.version], s.inflight)
        yield from (execs.metric, queue.metric, c_in.metric, c_inf.metric, pending, hist)

        tenant_q = GaugeMetricFamily("edgebench_tenant_pending_request_count",
                                     "A tenant's requests at the model (queued or running)", labels=["tenant"])
        tenant_w = GaugeMetricFamily("edgebench_tenant_waiting_request_count",
                                     "A tenant's requests waiting at the edge for a max_queue slot", labels=["tenant"])
        for t in list(m._tenants()):
            tenant_q.add_metric([t.name], t.inflight)
            tenant_w.add_metric([t.name], t.waiting)
        auth = CounterMetricFamily("edgebench_auth_failures", "Requests refused for a missing or wrong token", [])
        auth.add_metric([], m.auth_failures)
        yield from (tenant_q, tenant_w, auth.metric)
