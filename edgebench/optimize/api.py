"""``eb.optimize``: search passes and session settings under accuracy / latency / size
budgets, measured on this machine, and never hand back anything slower than the input."""
from __future__ import annotations

import hashlib
import inspect
import math
import shutil
import tempfile
from pathlib import Path
from time import perf_counter
from typing import TYPE_CHECKING, Any, Callable, Iterable

import numpy as np

from ..errors import ConfigError, EdgebenchError
from .base import Candidate, PassConfig, SearchSpace, Trial
from .data import Dataset, prepare_dataset
from .evaluate import Evaluator
from .result import OptimizeResult

if TYPE_CHECKING:  # pragma: no cover
    from ..model import Model

__all__ = ["optimize"]

_FINALISTS = 3


def optimize(model: Any, config: PassConfig | Candidate | Iterable[PassConfig] | None = None, *,
             dataset: Any = None, calibration: Any = None, metric: Any = "accuracy",
             max_accuracy_drop: float = 0.01, latency_budget_ms: float | None = None,
             size_budget_mb: float | None = None, policy: str = "auto", max_trials: int | None = None,
             threads: int | None = None, batch_size: int = 1, device: str = "cpu",
             cache_dir: str | Path | None = None, progress: bool = True, min_cosine: float = 0.99,
             latency_s: float = 1.0, confirm_s: float | None = None, min_gain: float = 0.02,
             fine_tune: Callable | None = None, store: bool = True, seed: int = 0,
             callbacks: Iterable[Callable] = (), on_candidate: Iterable[Callable] = ()) -> OptimizeResult:
    """Make ``model`` faster on this machine without leaving the accuracy budget.

    Parameters
    ----------
    model
        A :class:`~edgebench.Model` or anything :func:`edgebench.load` accepts.
    config
        One pass config (``eb.QuantizeConfig(...)``), a sequence of them (a pipeline) or a
        Candidate: measure just that against the baseline.  ``None``: search.
    dataset
        ``(X, y)``, ``X`` alone (no labels), an iterable of batches, ``"zoo:NAME"``, or ``None``
        (a zoo model's own data, else random inputs).  A fifth is set aside for calibration
        unless ``calibration`` is given; calibration and evaluation never overlap.
    metric
        ``"accuracy"``, ``callable(y_true, y_pred) -> float`` (higher is better), or ``None``
        (fidelity to fp32 even with labels).
    max_accuracy_drop
        Largest metric drop allowed (0.01 = 1 point); without labels, the largest top-1
        disagreement with fp32, or, for low-margin models (random weights), the gate is
        cosine similarity >= ``min_cosine`` (``explain()`` says which and why).
    latency_budget_ms, size_budget_mb
        Hard limits on p50 latency at ``batch_size`` and on the serialized size.
    policy
        ``"auto"``, ``"rules"``, ``"search"`` or ``"exhaustive"``.
    max_trials
        At most this many trials (the baseline included); ``None``: the policy decides.
    threads, batch_size, device
        The conditions latency is measured under (``threads=None``: the session may choose).
    cache_dir
        Root of the results store (default: settings' cache dir); trials are kept in
        ``<cache_dir>/optimize`` and replayed when the same search runs again.
    progress
        Show a tqdm progress bar, and in a notebook the live optimizer widget.
    latency_s, confirm_s
        Seconds of interleaved timing per candidate, and for the final head-to-head of the
        best few against the baseline (default ``2 * latency_s``).
    min_gain
        A candidate must be confirmed faster than the baseline by more than this fraction
        (timing noise), else the baseline is returned.
    fine_tune
        ``fn(torch_module)`` run after pruning, before export.
    store
        Use the results store (read and write).
    callbacks
        ``fn(result, trial)`` called as each trial finishes (live views).
    on_candidate
        ``fn(result, candidate)`` called as each candidate starts.

    Returns
    -------
    OptimizeResult
        ``best``, ``engine()``, ``baseline``, ``trials``, ``pareto``, ``explain()``.

    Raises
    ------
    DatasetError
        The data does not fit the model (shapes, dtypes, empty, label count).
    ConfigError
        Invalid arguments (a negative budget, an unknown policy).
    OptimizeError
        The baseline itself does not run.
    """
    from ..model import load

    t0 = perf_counter()
    _check_args(max_accuracy_drop, latency_budget_ms, size_budget_mb, max_trials, batch_size, threads,
                latency_s, min_gain, min_cosine)
    model = load(model)
    explicit = _explicit(config)
    data = prepare_dataset(model, dataset, calibration=calibration, seed=seed)
    root = Path(cache_dir).expanduser() if cache_dir is not None else _cache_root()
    work = Path(tempfile.mkdtemp(prefix="edgebench-opt-"))
    ev = Evaluator(model, data, metric, max_accuracy_drop=max_accuracy_drop, size_budget_mb=size_budget_mb,
                   latency_budget_ms=latency_budget_ms, batch_size=batch_size, threads=threads, device=device,
                   min_cosine=min_cosine, latency_s=latency_s, work_dir=work, cache_dir=root / "optimize",
                   fine_tune=fine_tune)
    try:
        return _run(model, ev, data, explicit, policy, max_trials, store, root, seed, progress,
                    confirm_s if confirm_s is not None else 2 * latency_s, min_gain,
                    (list(callbacks), list(on_candidate)), t0,
                    {"max_accuracy_drop": max_accuracy_drop, "latency_budget_ms": latency_budget_ms,
                     "size_budget_mb": size_budget_mb, "batch_size": batch_size, "threads": threads,
                     "device": device, "min_cosine": min_cosine})
    finally:
        ev.close()
        shutil.rmtree(work, ignore_errors=True)


def _run(model: "Model", ev: Evaluator, data: Dataset, explicit: Candidate | None, policy_name: str,
         max_trials: int | None, use_store: bool, root: Path, seed: int, progress: bool, confirm_s: float,
         min_gain: float, callbacks: tuple[list, list], t0: float, budgets: dict) -> OptimizeResult:
    from ..devices import cpu_info

    c = cpu_info()
    if progress and _in_kernel():  # the live widget: trials, scatter and Pareto front as they come
        try:
            from ..notebook.views_optimize import live
        except ImportError:  # no ipywidgets / bokeh: the tqdm bar alone
            pass
        else:
            callbacks[0].insert(0, live)
    res = OptimizeResult(model, ev.gate, data.description, "explicit" if explicit else policy_name,
                         f"{c.model} ({c.physical_cores} cores; {', '.join(c.isa) or 'no ISA flags'})",
                         on_trial=callbacks[0], on_candidate=callbacks[1], budgets=budgets)
    res.notes.extend(data.notes)
    base = ev.baseline_trial()
    res.baseline_trial = base
    res._add(base)
    store, context = _open_store(use_store, root, model, ev, data, res)
    space = SearchSpace.from_context(ev.ctx)
    pol = _make_policy(explicit, policy_name, space, ev, max_trials, store, seed, context, res)
    done: dict[str, Trial] = {base.key: base}
    bar = _bar(progress, max_trials, model.name)
    try:
        _search(pol, ev, res, done, store, context, model, max_trials, bar)
    except KeyboardInterrupt:
        res.interrupted = True
        res.notes.append(f"interrupted after {len(res.history)} trials: the result uses those")
    finally:
        if bar is not None:
            bar.close()
        res.current = None
    res.why.update(getattr(pol, "why", {}) or {})
    try:
        _decide(res, ev, confirm_s, min_gain)
    except Exception as e:  # the trial table survives a failing final check; fp32 is the safe answer
        res.best_trial, res.confirmed_ratio = res.baseline_trial, None
        res.reason = f"fp32 baseline kept: the final head-to-head check failed ({type(e).__name__}: {e})"
    res.running = False
    res.wall_s = perf_counter() - t0
    return res


def _search(pol: Any, ev: Evaluator, res: OptimizeResult, done: dict, store: Any, context: str,
            model: "Model", max_trials: int | None, bar: Any) -> None:
    _safe_record(pol, res.baseline_trial, res)
    if bar is not None:
        bar.update(1)
    while max_trials is None or len(res.history) < max_trials:
        try:
            cand = pol.suggest()
        except Exception as e:  # a policy bug must not lose the trials measured so far
            res.notes.append(f"the {res.policy} policy failed ({type(e).__name__}: {e}); search stopped")
            return
        if cand is None:
            return
        key = cand.key()
        if key in done:
            _safe_record(pol, done[key], res)
            continue
        res._start(cand)
        if bar is not None:
            bar.set_description(f"{model.name}: {cand.describe()[:40]}")
        trial = None
        if store is not None:
            try:
                trial = store.lookup(model, cand, context=context)
            except Exception:  # noqa: BLE001 - a store problem costs a measurement, nothing more
                trial = None
        if trial is None:
            trial = ev.evaluate(cand)
            if store is not None:
                try:
                    store.put(trial, model, context=context)
                except EdgebenchError as e:
                    res.notes.append(f"results store not written: {e}")
                    store = None
        done[key] = trial
        res._add(trial)
        _safe_record(pol, trial, res)
        if bar is not None:
            bar.update(1)
            best = min((t.latency_ratio for t in res.history if t.ok and t.latency_ratio), default=1.0)
            bar.set_postfix(best=f"{best:.2f}x")


def _safe_record(pol: Any, trial: Trial, res: OptimizeResult) -> None:
    try:
        pol.record(trial)
    except Exception as e:  # noqa: BLE001
        res.notes.append(f"the {res.policy} policy could not record trial {trial.index} ({type(e).__name__}: {e})")


def _decide(res: OptimizeResult, ev: Evaluator, confirm_s: float, min_gain: float) -> None:
    """The winner: the best few ok candidates timed head to head with the baseline; the
    fastest wins if it beats the baseline by more than ``min_gain``, else the baseline stays."""
    base = res.baseline_trial
    ok = sorted((t for t in res.history if t.ok and not t.candidate.is_baseline and t.latency_ratio is not None
                 and t.latency_ratio < 1 - min_gain / 2), key=lambda t: t.latency_ratio)
    finalists: list[Trial] = []
    for t in ok:
        if len(finalists) == _FINALISTS:
            break
        if t.model is None:  # replayed from the store: rebuild the model (passes only, no timing)
            try:
                t.model, _, _ = ev.apply(t.candidate)
            except Exception as e:  # noqa: BLE001
                res.notes.append(f"{t.describe()} from the store could not be rebuilt: {e}")
                continue
        finalists.append(t)
    res.best_trial = base
    if not finalists:
        rejected = [t for t in res.history if t.status == "rejected"]
        failed = [t for t in res.history if t.status == "failed"]
        if len(res.history) == 1:
            res.reason = "fp32 baseline kept: no candidate was measured"
        elif not any(t.ok for t in res.history if not t.candidate.is_baseline):
            res.reason = (f"fp32 baseline kept: nothing qualifies under the budgets ({len(rejected)} rejected, "
                          f"{len(failed)} failed)" + _closest(rejected))
        else:
            res.reason = ("fp32 baseline kept: no candidate inside the budgets was faster than fp32 by more "
                          f"than {min_gain:.0%} (timing noise) on this CPU")
        if base.reason:
            res.reason += f"; note: the baseline itself misses a budget ({base.reason})"
        return
    ratios = ev.head_to_head(finalists, confirm_s)
    for t, r in zip(finalists, ratios):
        t.notes.append(f"head-to-head with fp32: {r:.3f}x")
    # within the noise of the fastest, the simplest wins (fewest passes, then smallest)
    fastest = min(ratios)
    near = [j for j, x in enumerate(ratios) if x <= fastest + min_gain / 2]
    i = min(near, key=lambda j: (len(finalists[j].candidate.configs), finalists[j].size_bytes or 0, ratios[j]))
    winner, r = finalists[i], ratios[i]
    if r >= 1 - min_gain:
        res.reason = (f"fp32 baseline kept: the best candidates were not faster in the final head-to-head "
                      f"({', '.join(f'{t.describe()} {x:.2f}x' for t, x in zip(finalists, ratios))}; "
                      f"a win needs < {1 - min_gain:.2f}x)")
        return
    res.best_trial, res.confirmed_ratio = winner, r
    acc = ""
    if winner.accuracy is not None and base.accuracy is not None:
        acc = (f", accuracy {100 * winner.accuracy:.2f}% vs {100 * base.accuracy:.2f}% "
               f"(drop {100 * (winner.accuracy_drop or 0):.2f} points, budget {100 * ev.max_accuracy_drop:g})")
        if ev.gate.kind == "cosine":
            acc = f", cosine similarity to fp32 {winner.accuracy:.4f} (>= {ev.min_cosine:g})"
    others = ""
    if len(finalists) > 1:
        others = "; beat " + ", ".join(f"{t.describe()} ({x:.2f}x)" for t, x in zip(finalists, ratios) if t is not winner)
    res.reason = (f"{winner.describe()}: {r:.2f}x the fp32 latency in the final interleaved head-to-head "
                  f"({winner.p50_ms:.4f} ms vs {base.p50_ms:.4f} ms p50 during the search){acc}, "
                  f"{(winner.size_bytes or 0) / 2**20:.2f} MB{others}")


def _closest(rejected: list[Trial]) -> str:
    near = [t for t in rejected if t.accuracy_drop is not None]
    if not near:
        return ""
    t = min(near, key=lambda t: t.accuracy_drop)
    return f"; the closest was {t.describe()}: {t.reason}"


# --------------------------------------------------------------------------------------------
def _explicit(config: Any) -> Candidate | None:
    if config is None:
        return None
    if isinstance(config, Candidate):
        return config
    if isinstance(config, PassConfig):
        return Candidate.of(config)
    if isinstance(config, (list, tuple)) and all(isinstance(c, PassConfig) for c in config):
        return Candidate(tuple(config))
    raise ConfigError(f"config must be a pass config (eb.QuantizeConfig(...), ...), a list of them or None, "
                      f"got {type(config).__name__}")


class _ListPolicy:
    """Measures a fixed list of candidates (an explicit config, or the fallback sweep)."""

    def __init__(self, cands: list[Candidate], why: str):
        self._cands = list(cands)
        self.why = {c.key(): why for c in cands}

    def suggest(self) -> Candidate | None:
        return self._cands.pop(0) if self._cands else None

    def record(self, trial: Trial) -> None:
        pass


def _make_policy(explicit: Candidate | None, name: str, space: SearchSpace, ev: Evaluator,
                 max_trials: int | None, store: Any, seed: int, context: str, res: OptimizeResult) -> Any:
    if explicit is not None:
        return _ListPolicy([explicit], "asked for explicitly")
    if not isinstance(name, str):
        raise ConfigError(f"policy must be a name ('auto', 'rules', 'search', 'exhaustive'), got {name!r}")
    try:
        from .policies import POLICIES
    except ImportError as e:  # pragma: no cover - the policies ship with the package
        res.notes.append(f"search policies unavailable ({e}); measuring a small sweep instead")
        cands = list(space.enumerate())[: (max_trials or 24)]
        return _ListPolicy(cands, "fallback sweep")
    factory = POLICIES.get(name)  # UnknownNameError lists the known ones
    kw: dict[str, Any] = {"max_trials": max_trials, "store": store, "seed": seed, "context": context}
    try:
        params = inspect.signature(factory).parameters
        if not any(p.kind == p.VAR_KEYWORD for p in params.values()):
            kw = {k: v for k, v in kw.items() if k in params}
    except (TypeError, ValueError):
        pass
    return factory(space, ev.ctx, **kw)


def _open_store(use: bool, root: Path, model: "Model", ev: Evaluator, data: Dataset,
                res: OptimizeResult) -> tuple[Any, str]:
    context = _context(model, ev, data)
    if not use:
        return None, context
    from .store import ResultsStore

    return ResultsStore(root / "optimize"), context


def _context(model: "Model", ev: Evaluator, data: Dataset) -> str:
    import onnxruntime

    from .. import __version__
    from .store import context_key

    h = hashlib.sha256()
    for part in (data.inputs, data.calibration):
        for k in sorted(part):
            h.update(k.encode())
            h.update(np.ascontiguousarray(part[k]).tobytes())
    if data.labels is not None:
        h.update(np.ascontiguousarray(data.labels).tobytes())
    metric = ev.metric if isinstance(ev.metric, (str, type(None))) else getattr(ev.metric, "__qualname__", "callable")
    return context_key(batch_size=ev.batch_size, threads=ev.threads, device=ev.device, metric=metric,
                       max_accuracy_drop=ev.max_accuracy_drop, min_cosine=ev.min_cosine,
                       size_budget_mb=ev.size_budget_mb, latency_budget_ms=ev.latency_budget_ms,
                       data=h.hexdigest()[:16], edgebench=__version__, onnxruntime=onnxruntime.__version__,
                       passes=PASSES_REVISION)


# Bump when a pass's output changes for the same config, so stored trials are not replayed
# for a model the pass no longer produces (2: dynamic quantization skips ORT pre-processing).
PASSES_REVISION = 2


def _cache_root() -> Path:
    from ..config import settings

    return Path(settings().cache_dir).expanduser()


def _in_kernel() -> bool:
    import sys

    ip = sys.modules.get("IPython")
    shell = ip.get_ipython() if ip is not None else None
    return shell is not None and getattr(shell, "kernel", None) is not None


def _bar(progress: bool, total: int | None, name: str) -> Any:
    if not progress:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=f"optimizing {name}", unit="trial", leave=True)


def _check_args(max_drop: Any, lat: Any, size: Any, max_trials: Any, batch: Any, threads: Any,
                latency_s: Any, min_gain: Any, min_cosine: Any) -> None:
    def number(v: Any) -> bool:
        return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)

    if not number(max_drop) or max_drop < 0:
        raise ConfigError(f"max_accuracy_drop must be a number >= 0 (0.01 = one point), got {max_drop!r}")
    for name, v in (("latency_budget_ms", lat), ("size_budget_mb", size)):
        if v is not None and (not number(v) or v <= 0):
            raise ConfigError(f"{name} must be a positive number or None, got {v!r}")
    for name, v in (("max_trials", max_trials), ("batch_size", batch), ("threads", threads)):
        if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 1):
            raise ConfigError(f"{name} must be a positive integer" + (" or None" if name != "batch_size" else "")
                              + f", got {v!r}")
    if batch is None:
        raise ConfigError("batch_size must be a positive integer, got None")
    if not number(latency_s) or latency_s <= 0:
        raise ConfigError(f"latency_s must be a positive number of seconds, got {latency_s!r}")
    if not number(min_gain) or not 0 <= min_gain < 1:
        raise ConfigError(f"min_gain must be a fraction in [0, 1), got {min_gain!r}")
    if not number(min_cosine) or not -1 <= min_cosine <= 1:
        raise ConfigError(f"min_cosine must be in [-1, 1], got {min_cosine!r}")
