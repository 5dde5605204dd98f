"""The DynamicBatcher's set-up checks, engine instances and statistics."""
from __future__ import annotations

from typing import Any

import numpy as np

from .errors import ConfigError
from .profile.metrics import CANCELLED, ERROR, OK, REJECTED, TIMEOUT


class BatcherStats(dict):
    """What :meth:`DynamicBatcher.stats` returns: a dict of totals and percentiles, plus
    :meth:`to_pandas` with one row per batch size."""

    _records: Any = None

    def to_pandas(self):
        """Per batch size: batches, requests, and queue / compute / latency percentiles (ms)."""
        return per_batch_size(self._records)


def check_model(model: Any, ragged: Any, mode: str) -> None:
    """Refuse models that cannot be batched along axis 0."""
    for kind, specs in (("input", model.inputs), ("output", model.outputs)):
        for s in specs:
            if not s.shape or isinstance(s.shape[0], int):
                raise ConfigError(
                    f"{kind} {s} of {model.name!r} has no dynamic batch dim 0, so requests cannot be "
                    "concatenated into batches", "export the model with a dynamic dim 0 (e.g. dynamic_axes)")
    if mode == "pad" and ragged.active and ragged.unmapped:
        raise ConfigError(
            f"ragged='pad' cannot cut the outputs of {model.name!r} back to each request's length: "
            f"{', '.join(ragged.unmapped)} share no symbolic dim with the padded inputs",
            "use ragged='bucket' (batches only same-shape requests), or name the output dims like the input dims")


def make_slots(engine: Any, instances: int, instance_threads: int | None) -> list[tuple]:
    """One ``(run, output names)`` per instance: the engine's own session when its thread
    count fits, plus sessions compiled from the same model, backend, device and options."""
    if instance_threads is not None and (not isinstance(instance_threads, int) or instance_threads < 1):
        raise ConfigError(f"instance_threads must be a positive integer, got {instance_threads!r}")
    own = (engine._session_run, list(engine._out_names))
    if instances == 1 and instance_threads is None:
        return [own]
    per = instance_threads
    if per is None:
        from .cpu import cpu_info

        per = max(1, (engine.threads or cpu_info().physical_cores) // instances)
    slots = [own] if engine.threads == per else []
    from .backends import get as get_backend

    impl = get_backend(engine.backend)
    while len(slots) < instances:
        sess = impl.compile(engine.model, engine.device, threads=per, **engine.options)
        slots.append((sess.run, list(sess.output_names)))
    return slots


def _pct(x: np.ndarray) -> dict[str, float]:
    if not len(x):
        return {"mean": float("nan"), "p50": float("nan"), "p99": float("nan")}
    x = x / 1e6
    return {"mean": float(x.mean()), "p50": float(np.percentile(x, 50)), "p99": float(np.percentile(x, 99))}


def summarize(recs: np.ndarray) -> dict[str, Any]:
    """Counts by outcome, and queue wait / compute / latency of the answered requests (ms)."""
    status = recs[:, 7]
    ok = recs[status == OK]
    span = (ok[:, 5].max() - ok[:, 1].min()) / 1e9 if len(ok) > 1 else 0.0
    return {
        "requests": len(recs),
        "ok": len(ok),
        "timeouts": int((status == TIMEOUT).sum()),
        "rejected": int((status == REJECTED).sum()),
        "cancelled": int((status == CANCELLED).sum()),
        "errors": int((status == ERROR).sum()),
        "queue_ms": _pct(ok[:, 2] - ok[:, 1]),
        "compute_ms": _pct(ok[:, 4] - ok[:, 3]),
        "latency_ms": _pct(ok[:, 5] - ok[:, 1]),
        "throughput": float(len(ok) / span) if span > 0 else 0.0,
    }


def per_batch_size(recs: np.ndarray | None):
    """One row per batch size (rows) of the answered requests, as a DataFrame."""
    import pandas as pd

    cols = ["batches", "requests", "queue_ms_p50", "queue_ms_p99", "compute_ms_mean", "compute_ms_p50",
            "compute_us_per_row", "latency_ms_p50", "latency_ms_p99"]
    if recs is None or not len(recs):
        return pd.DataFrame(columns=cols).rename_axis("batch_size")
    ok = recs[recs[:, 7] == OK]
    rows = []
    for size in np.unique(ok[:, 6]):
        g = ok[ok[:, 6] == size]
        queue, compute, lat = (g[:, 2] - g[:, 1]) / 1e6, (g[:, 4] - g[:, 3]) / 1e6, (g[:, 5] - g[:, 1]) / 1e6
        batches = len(np.unique(g[:, 3]))
        per_batch = np.unique(g[:, 3:5], axis=0)
        rows.append({"batch_size": int(size), "batches": batches, "requests": len(g),
                     "queue_ms_p50": np.percentile(queue, 50), "queue_ms_p99": np.percentile(queue, 99),
                     "compute_ms_mean": float(((per_batch[:, 1] - per_batch[:, 0]) / 1e6).mean()),
                     "compute_ms_p50": np.percentile(compute, 50),
                     "compute_us_per_row": float(((per_batch[:, 1] - per_batch[:, 0]) / 1e3).mean() / size),
                     "latency_ms_p50": np.percentile(lat, 50), "latency_ms_p99": np.percentile(lat, 99)})
    return pd.DataFrame(rows, columns=["batch_size", *cols]).set_index("batch_size")
