"""Evaluate a candidate honestly: apply its passes, check accuracy (labels) or fidelity to the
fp32 outputs on held-out inputs, and time it against the baseline in interleaved rounds in
this process, with the thread settings asked for."""
from __future__ import annotations

import gc
import warnings
from time import perf_counter, perf_counter_ns
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from ..errors import DatasetError, EdgebenchError, OptimizeError
from .base import Candidate, PassContext, Trial, handler_for
from .data import Dataset
from .quality import Gate, choose_gate, fidelity

if TYPE_CHECKING:  # pragma: no cover
    from ..engine import Engine
    from ..model import Model

__all__ = ["Evaluator", "Trial"]


class Evaluator:
    """Turns candidates into :class:`Trial` s, all measured the same way.

    Parameters
    ----------
    baseline
        The fp32 model.
    data
        A prepared :class:`~edgebench.optimize.data.Dataset` (calibration and evaluation
        inputs are disjoint).
    metric
        ``"accuracy"`` (top-1 of the first output against the labels), a callable
        ``metric(y_true, y_pred) -> float`` (higher is better; ``y_pred`` is the first output),
        or ``None`` (fidelity to fp32 even when labels are present).
    max_accuracy_drop
        Largest allowed drop in the metric (0.01 = one point); without labels, the largest
        allowed top-1 disagreement with fp32.
    size_budget_mb, latency_budget_ms
        Optional hard limits (the latency one on p50 at ``batch_size``).
    batch_size, threads, device
        How latency is measured and engines are built (``threads=None``: backend default).
    min_cosine
        Fidelity threshold used when top-1 agreement is noise (low-margin models).
    latency_s, rounds
        Seconds of timed calls per candidate (split between it and the baseline) and the
        number of interleaved rounds.
    measure_rejected
        Time candidates that broke the accuracy budget too (for the trial table).
    """

    def __init__(self, baseline: "Model", data: Dataset, metric: Any = "accuracy", *,
                 max_accuracy_drop: float = 0.01, size_budget_mb: float | None = None,
                 latency_budget_ms: float | None = None, batch_size: int = 1, threads: int | None = None,
                 device: str = "cpu", min_cosine: float = 0.99, latency_s: float = 1.0, rounds: int = 6,
                 measure_rejected: bool = True, work_dir: Any = None, cache_dir: Any = None,
                 fine_tune: Callable | None = None):
        self.baseline = baseline
        self.data = data
        self.metric = metric
        self.max_accuracy_drop = float(max_accuracy_drop)
        self.size_budget_mb = size_budget_mb
        self.latency_budget_ms = latency_budget_ms
        self.batch_size = batch_size
        self.threads = threads
        self.device = device
        self.min_cosine = float(min_cosine)
        self.latency_s = float(latency_s)
        self.rounds = max(2, int(rounds))
        self.measure_rejected = measure_rejected
        self._cache: dict[str, tuple[Any, dict, list]] = {}
        self._ref_cache: dict[str, list[np.ndarray]] = {}
        self.ctx = PassContext(baseline, data.calibration, device, None, cache_dir, work_dir, threads, batch_size,
                               fidelity_check=self.check_on_calibration, fine_tune=fine_tune)
        self._setup()

    # -- setup ----------------------------------------------------------------------------------
    def _setup(self) -> None:
        try:
            self.base_engine = self._engine(self.baseline, {})
            self.base_out = self._predict(self.base_engine, self.data.inputs)
            self.base_cal_out = self._predict(self.base_engine, self.data.calibration)
        except EdgebenchError as e:
            raise OptimizeError(f"the baseline model {self.baseline.name!r} does not run: {e}",
                                "check the model and the dataset with eb.Engine(model).run(...) first") from e
        labels = self.data.labels if self.metric is not None else None
        self.base_metric: float | None = None
        if labels is not None:
            self.base_metric = self._score(labels, self.base_out[0], "the baseline")
        self.gate: Gate = choose_gate(self.base_out[0], labels is not None, self.max_accuracy_drop, self.min_cosine)
        self.feeds = self._latency_feeds()
        base_run = self._runner(self.base_engine)
        for _ in range(3):
            base_run()
        self._base_call_s = self._estimate(base_run)

    def _engine(self, model: "Model", session: dict) -> "Engine":
        from ..engine import Engine

        threads = session.get("threads", self.threads)
        return Engine(model, "onnxruntime", self.device, threads, options=session.get("options") or {},
                      record=False)

    def _predict(self, engine: "Engine", inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
        """Outputs over ``inputs`` in equal batches (the last one padded, then trimmed: a fixed
        batch dimension, and IOBinding's reused outputs, both need equal batches)."""
        n = len(next(iter(inputs.values())))
        fixed = [s.shape[0] for s in engine.model.inputs if s.shape and isinstance(s.shape[0], int)]
        step = fixed[0] if fixed else min(64, n)
        outs: list[list[np.ndarray]] = []
        for i in range(0, n, step):
            chunk = {k: v[i:i + step] for k, v in inputs.items()}
            rows = len(next(iter(chunk.values())))
            if rows < step:
                chunk = {k: np.concatenate([v, np.repeat(v[-1:], step - rows, axis=0)]) for k, v in chunk.items()}
            res = engine.run(chunk)
            outs.append([np.asarray(res[o])[:rows] for o in engine.session.output_names])
        return [np.concatenate([o[j] for o in outs]) for j in range(len(outs[0]))]

    def _score(self, labels: np.ndarray, pred: np.ndarray, who: str) -> float:
        try:
            if self.metric == "accuracy":
                if pred.ndim < 2 or pred.shape[-1] < 2:
                    raise DatasetError(f"metric 'accuracy' needs class scores, but the first output has shape "
                                       f"{list(pred.shape)}", "pass metric=callable(y_true, y_pred)")
                return float((pred.reshape(len(pred), -1).argmax(1) == labels.reshape(len(labels), -1)[:, 0]).mean())
            value = float(self.metric(labels[:len(pred)], pred))
        except EdgebenchError:
            raise
        except Exception as e:
            raise DatasetError(f"the metric raised on {who}'s outputs: {type(e).__name__}: {e}",
                               "metric(y_true, y_pred) must return a number (higher is better)") from e
        if not np.isfinite(value):
            raise DatasetError(f"the metric returned {value} on {who}'s outputs", "return a finite number")
        return value

    def _latency_feeds(self) -> dict[str, np.ndarray]:
        specs = self.baseline.inputs
        fixed = [s.shape[0] for s in specs if s.shape and isinstance(s.shape[0], int)]
        b = fixed[0] if fixed else self.batch_size
        feeds = {}
        for k, v in self.data.inputs.items():
            reps = int(np.ceil(b / len(v)))
            feeds[k] = np.ascontiguousarray(np.concatenate([v] * reps)[:b] if reps > 1 else v[:b])
        return self.base_engine._validate(feeds)

    # -- candidates -----------------------------------------------------------------------------
    def apply(self, candidate: Candidate) -> tuple["Model", dict, list[str]]:
        """Run the candidate's passes (prefixes cached), merging the session options they ask for."""
        model, session, notes = self.baseline, {"options": {}}, []
        prefix: list = []
        for cfg in candidate.configs:
            prefix.append(cfg)
            key = Candidate(tuple(prefix)).key()
            hit = self._cache.get(key)
            if hit is None:
                try:
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")
                        out = handler_for(cfg)(model, cfg, self.ctx)
                except Exception as e:
                    raise _PassFailed(f"{cfg.describe()} failed: {_msg(e)}") from e
                sess = {"options": {**session["options"], **out.session.get("options", {})}}
                threads = out.session.get("threads", session.get("threads"))
                if threads is not None:
                    sess["threads"] = threads
                hit = (out.model, sess, notes + list(out.notes))
                self._cache[key] = hit
                if len(self._cache) > 64:
                    self._cache.pop(next(iter(self._cache)))
            model, session, notes = hit
        return model, session, notes

    def evaluate(self, candidate: Candidate) -> Trial:
        """Measure one candidate; never raises for a candidate's own failure (status ``failed``)."""
        t0 = perf_counter()
        trial = Trial(candidate)
        eng = None
        try:
            model, session, notes = self.apply(candidate)
            trial.model, trial.notes = model, list(notes)
            trial.session = {"threads": session.get("threads", self.threads), "options": dict(session["options"])}
            trial.size_bytes = model.size_bytes
            if self.size_budget_mb is not None and model.size_bytes > self.size_budget_mb * 2**20:
                trial.status = "rejected"
                trial.reason = (f"size {model.size_bytes / 2**20:.2f} MB is over the size budget "
                                f"{self.size_budget_mb:g} MB")
            gc.collect()
            rss0 = _rss()
            eng = self._engine(model, session)
            self._quality(trial, self._predict(eng, self.data.inputs))
            trial.peak_memory = max(0, _rss() - rss0)
            if trial.status == "ok" or self.measure_rejected:
                if session["options"].get("io_binding"):
                    # the backend's IOBinding keeps the first call's output shape: time a fresh engine
                    eng.close()
                    eng = self._engine(model, session)
                self._latency(trial, eng)
        except _PassFailed as e:
            trial.status, trial.reason = "failed", str(e)
        except Exception as e:  # a candidate's failure is a trial's result, never the search's end
            trial.status, trial.reason = "failed", f"{candidate.describe()} does not run: {_msg(e)}"
        finally:
            if eng is not None:
                eng.close()
        if trial.status == "failed":
            trial.model = None
        trial.wall_s = perf_counter() - t0
        return trial

    def baseline_trial(self) -> Trial:
        """The fp32 baseline, measured alone (ratio 1 by definition)."""
        t0 = perf_counter()
        trial = Trial(Candidate(), model=self.baseline, size_bytes=self.baseline.size_bytes,
                      session={"threads": self.threads, "options": {}})
        self._quality(trial, self.base_out)
        samples = self._rounds([self._runner(self.base_engine)], self.latency_s / 2)[0]
        self._fill_latency(trial, np.concatenate(samples))
        trial.latency_ratio, trial.baseline_p50_ms = 1.0, trial.p50_ms
        if self.latency_budget_ms is not None and trial.p50_ms > self.latency_budget_ms:
            trial.reason = f"p50 {trial.p50_ms:.3f} ms is over the latency budget {self.latency_budget_ms:g} ms"
        trial.status = "ok"  # the baseline is always a candidate: returned when nothing beats it
        trial.wall_s = perf_counter() - t0
        return trial

    # -- quality --------------------------------------------------------------------------------
    def _quality(self, trial: Trial, outs: list[np.ndarray]) -> None:
        trial.fidelity = fidelity(self.base_out, outs)
        if self.gate.kind == "metric":
            acc = self._score(self.data.labels, outs[0], trial.describe())
            trial.accuracy, trial.accuracy_drop = acc, self.base_metric - acc
        else:
            trial.accuracy, trial.accuracy_drop = self.gate.score(trial.fidelity)
        ok, why = self.gate.check(trial.accuracy_drop, trial.fidelity)
        if not ok and trial.status == "ok":
            trial.status, trial.reason = "rejected", why

    def check_on_calibration(self, model: "Model", reference: "Model | None" = None) -> tuple[bool, str]:
        """Whether ``model`` holds the budget on the calibration inputs, as fidelity to the
        outputs of ``reference`` (default: the fp32 baseline); the evaluation data stays unseen.
        Mixed precision passes its own input model, so an earlier pass (pruning, say) does not
        count against what quantization may change; the evaluation then checks the total."""
        ref = self.base_cal_out
        if reference is not None and reference.sha256 != self.baseline.sha256:
            ref = self._ref_cache.get(reference.sha256)
            if ref is None:
                eng = self._engine(reference, {})
                try:
                    ref = self._ref_cache[reference.sha256] = self._predict(eng, self.data.calibration)
                finally:
                    eng.close()
        eng = self._engine(model, {})
        try:
            fid = fidelity(ref, self._predict(eng, self.data.calibration))
        finally:
            eng.close()
        gate = self.gate.for_calibration()
        ok, why = gate.check(gate.score(fid)[1], fid)
        return ok, why or gate.summary(fid)

    # -- latency --------------------------------------------------------------------------------
    def _runner(self, eng: "Engine") -> Callable[[], Any]:
        run, feeds = eng.session.run, self.feeds
        return lambda: run(feeds)

    def _estimate(self, fn: Callable[[], Any]) -> float:
        t, n = perf_counter(), 0
        while n < 3 or (perf_counter() - t < 0.02 and n < 200):
            fn()
            n += 1
        return (perf_counter() - t) / n

    def _rounds(self, fns: list[Callable[[], Any]], seconds: float) -> list[list[np.ndarray]]:
        """Per-call seconds of each fn, in ``rounds`` interleaved rounds (order alternating)."""
        per = [max(self._estimate(f), 1e-7) for f in fns]
        budget = seconds / self.rounds / len(fns)
        counts = [int(min(5000, max(5, budget / p))) for p in per]
        out: list[list[np.ndarray]] = [[] for _ in fns]
        pc = perf_counter_ns
        for r in range(self.rounds):
            order = range(len(fns)) if r % 2 == 0 else reversed(range(len(fns)))
            for i in order:
                fn, k = fns[i], counts[i]
                a = np.empty(k)
                for j in range(k):
                    t = pc()
                    fn()
                    a[j] = pc() - t
                out[i].append(a / 1e9)
        return out

    def _latency(self, trial: Trial, eng: "Engine") -> None:
        base, cand = self._rounds([self._runner(self.base_engine), self._runner(eng)], self.latency_s)
        ratios = [np.median(c) / np.median(b) for b, c in zip(base, cand)]
        self._fill_latency(trial, np.concatenate(cand))
        trial.latency_ratio = float(np.median(ratios))
        trial.baseline_p50_ms = float(np.median(np.concatenate(base)) * 1e3)
        if self.latency_budget_ms is not None and trial.p50_ms > self.latency_budget_ms and trial.status == "ok":
            trial.status = "rejected"
            trial.reason = f"p50 {trial.p50_ms:.3f} ms is over the latency budget {self.latency_budget_ms:g} ms"

    def _fill_latency(self, trial: Trial, s: np.ndarray) -> None:
        trial.p50_ms = float(np.percentile(s, 50) * 1e3)
        trial.p99_ms = float(np.percentile(s, 99) * 1e3)
        rows = len(next(iter(self.feeds.values())))
        trial.throughput = float(rows / s.mean())

    def head_to_head(self, trials: list[Trial], seconds: float) -> list[float]:
        """Latency ratios to the baseline of ``trials``' models, all timed in the same
        interleaved rounds (the final check before one is handed back)."""
        engines = [self._engine(t.model, t.session) for t in trials]
        try:
            runs = [self._runner(self.base_engine)] + [self._runner(e) for e in engines]
            for fn in runs:
                fn()
            res = self._rounds(runs, seconds)
        finally:
            for e in engines:
                e.close()
        base = res[0]
        return [float(np.median([np.median(c) / np.median(b) for b, c in zip(base, cand)])) for cand in res[1:]]

    def close(self) -> None:
        self.base_engine.close()
        self._cache.clear()


class _PassFailed(Exception):
    pass


def _msg(e: BaseException) -> str:
    text = str(e).strip()
    first = text.splitlines()[0] if text else ""
    return f"{type(e).__name__}: {first[:300]}" if first else type(e).__name__


def _rss() -> int:
    try:
        import psutil

        return int(psutil.Process().memory_info().rss)
    except Exception:  # noqa: BLE001
        return 0
