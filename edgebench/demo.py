"""The tour: build the zoo, benchmark every model on every backend here, write a report.

``edgebench demo`` runs :func:`run_demo`; from Python::

    >>> from edgebench.demo import run_demo
    >>> result = run_demo(models=["mlp"], duration_s=0.5)     # doctest: +SKIP
    >>> result.rows                                           # doctest: +SKIP

Each model is benchmarked with the ``single_stream`` scenario on the CPU, on every available
backend that can run it (the ``torch`` backend needs the model's PyTorch module, which zoo
models keep).  The whole tour stays about a minute on two cores with the default 1.5 s per
run once the zoo is cached (building it the first time takes longer).
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence, TextIO

from ._table import Table
from .errors import BackendUnavailableError, ConfigError, EdgebenchError

__all__ = ["DemoRow", "DemoResult", "run_demo"]

_DEVICE = "cpu"


@dataclass(frozen=True)
class DemoRow:
    """One model on one backend: latency percentiles (ms), throughput (requests/s), size (MB)."""

    model: str
    backend: str
    p50_ms: float
    p90_ms: float
    p99_ms: float
    throughput: float
    size_mb: float
    valid: bool


@dataclass
class DemoResult:
    """What :func:`run_demo` measured.

    Attributes
    ----------
    rows
        A :class:`DemoRow` per model and backend that ran.
    reports
        The :class:`~edgebench.BenchmarkReport` of each row, in the same order.
    labels
        ``"model / backend"`` of each row.
    skipped
        ``(model, backend, reason)`` of the pairs that could not run.
    path
        The HTML report written, or ``None``.
    """

    rows: Table
    reports: list = field(default_factory=list)
    labels: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str, str]] = field(default_factory=list)
    path: Path | None = None

    def table(self) -> str:
        """The rows as the text table the CLI prints."""
        from .cli import text_table

        return text_table(
            ("model", "backend", "p50 ms", "p90 ms", "p99 ms", "throughput/s", "size MB", "valid"),
            [(r.model, r.backend, f"{r.p50_ms:.3f}", f"{r.p90_ms:.3f}", f"{r.p99_ms:.3f}",
              f"{r.throughput:,.1f}", f"{r.size_mb:.2f}", "yes" if r.valid else "no") for r in self.rows],
            right=(2, 3, 4, 5, 6))


def _progress(iterable: Any, enabled: bool, **kw: Any) -> Any:
    if not enabled:
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, file=sys.stderr, dynamic_ncols=True, **kw)


def _runnable_backends(names: Sequence[str] | None) -> list[str]:
    from .backends import backends

    rows = backends()
    if names is None:
        return [b.name for b in rows if b.available and _DEVICE in b.devices]
    known = {b.name: b for b in rows}
    for n in names:
        if n not in known:
            raise ConfigError(f"unknown backend {n!r}", f"known backends: {', '.join(sorted(known))}")
        if not known[n].available:
            raise BackendUnavailableError(f"backend {n!r} is not available: {known[n].reason}")
    return list(names)


def _cannot_run(model: Any, backend: str) -> str | None:
    """Why ``backend`` cannot run ``model`` (``None`` if it can)."""
    if backend == "torch" and model.torch_module is None:
        return "the torch backend needs the model's PyTorch module"
    return None


def run_demo(models: Sequence[str] | None = None, duration_s: float = 1.5,
             out: str | Path | None = "edgebench-report.html", *, backends: Sequence[str] | None = None,
             threads: int | None = None, progress: bool = True, file: TextIO | None = None) -> DemoResult:
    """Build the zoo, benchmark each model on each backend, print a table, write a report.

    Parameters
    ----------
    models
        Zoo model names (default: all of :func:`edgebench.zoo.names`).
    duration_s
        Measured seconds of each ``single_stream`` run.
    out
        HTML report to write (``None``: none).
    backends
        Backend names (default: every available backend with a CPU device).
    threads
        Intra-op threads of every engine (default: each backend decides, usually all
        physical cores).  On a machine busy with other work, ``1`` gives steadier figures.
    progress
        Show progress bars on stderr (``tqdm.auto``: widgets in a notebook).
    file
        Where the table and the report's path are printed (default ``sys.stdout``).

    Returns
    -------
    DemoResult
    """
    from . import zoo
    from .engine import Engine
    from .profile.scenarios import benchmark

    if not isinstance(duration_s, (int, float)) or isinstance(duration_s, bool) or not duration_s > 0:
        raise ConfigError(f"duration_s must be a positive number of seconds, got {duration_s!r}")
    file = file or sys.stdout
    names = list(models) if models else zoo.names()
    for n in names:
        zoo.info(n)  # UnknownNameError listing the zoo, before anything is built
    backend_names = _runnable_backends(backends)

    built = {n: zoo.load(n) for n in _progress(names, progress, desc="building zoo", unit="model")}
    pairs = [(n, b) for n in names for b in backend_names]
    warmup = min(0.5, max(0.1, duration_s / 4))
    result = DemoResult(rows=Table())
    bar = _progress(pairs, progress, desc="benchmarking", unit="run")
    for name, backend in bar:
        if progress:
            bar.set_postfix_str(f"{name} / {backend}")
        model = built[name]
        why = _cannot_run(model, backend)
        if why is not None:
            result.skipped.append((name, backend, why))
            continue
        try:
            engine = Engine(model, backend=backend, device=_DEVICE, threads=threads)
        except BackendUnavailableError as e:
            result.skipped.append((name, backend, str(e)))
            continue
        with engine:
            try:
                report = benchmark(engine, "single_stream", duration_s=duration_s, warmup_s=warmup,
                                   progress=False)
            except EdgebenchError as e:  # one failing pair must not end the tour
                result.skipped.append((name, backend, str(e)))
                continue
        result.reports.append(report)
        result.labels.append(f"{name} / {backend}")
        result.rows.append(DemoRow(name, backend, float(report.p50_ms), float(report.p90_ms),
                                   float(report.p99_ms), float(report.throughput),
                                   model.size_bytes / 2**20, bool(report.valid)))

    print(result.table(), file=file)
    if not all(r.valid for r in result.rows):
        print("valid = no: the run broke a MLPerf rule (too few queries, too short, ...); "
              "the report lists the reasons", file=file)
    for name, backend, why in result.skipped:
        print(f"skipped {name} on {backend}: {why}", file=file)
    if out is not None:
        from .report_html import write_report

        result.path = write_report(result.reports, out, title="edgebench demo", labels=result.labels,
                                   sizes_mb=[r.size_mb for r in result.rows])
        print(f"report written to {result.path}", file=file)
    return result
