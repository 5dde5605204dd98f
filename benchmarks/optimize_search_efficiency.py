"""How many trials the model-based search needs to find what the exhaustive sweep finds, and
how much a second model's search gains from the first model's history.

1. Per model (batch 1, one thread, accuracy budget one point): every candidate of the search
   space is measured once, in this run (the exhaustive sweep).  Its best = the fastest trial
   inside the budgets.  Then the ``search`` and ``auto`` policies run against those same
   measurements (a candidate they propose is looked up in the sweep, so every policy sees the
   identical numbers and timing noise cannot favour one) for several seeds: the trials each
   needed to first reach a candidate within 5% of the sweep's best latency ratio, inside the
   budget, and the trials it spent before stopping on its own.  Target (issue 9): at most 40% of
   the exhaustive trials.
2. Learning across runs: the first model's sweep goes into a results store; the search on each
   other model runs with that store (its cost model ranks the candidates from the first model's
   trials) and without it.  Target: fewer trials to reach the best with the history.

    python benchmarks/optimize_search_efficiency.py               # --quick: digits, mlp, a reduced space
    python benchmarks/optimize_search_efficiency.py --full        # the full space (long)
    python benchmarks/optimize_search_efficiency.py --models digits,mlp,mobilenet --seeds 5
"""
from __future__ import annotations

import argparse
import dataclasses
import inspect
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, os.path.dirname(__file__))
from _common import banner, verdict  # noqa: E402

QUICK_PASSES = ["QuantizeConfig", "SessionConfig", "GraphOptConfig"]
TOL = 0.05
TARGET = 0.40


def wait_for_policies(wait_s: float) -> None:
    """The search policies are written by another part of the project: poll until they are
    importable and register "search" (or give up after ``wait_s``)."""
    import importlib

    t_end = time.monotonic() + wait_s
    while True:
        try:
            pol = importlib.import_module("edgebench.optimize.policies")
            if "search" in pol.POLICIES and "auto" in pol.POLICIES:
                return
            why = "registered: " + ", ".join(pol.POLICIES.names())
        except ImportError as e:
            why = str(e)
        if time.monotonic() > t_end:
            raise SystemExit(f"the search policies are not available ({why}); gave up after {wait_s:.0f} s")
        print(f"   waiting for edgebench.optimize.policies to register 'search' ({why}) ...", flush=True)
        time.sleep(30)
        for m in [m for m in sys.modules if m.startswith("edgebench.optimize.policies")]:
            del sys.modules[m]


class Sweep:
    """Every candidate of one model's space, measured once."""

    def __init__(self, name: str, args: argparse.Namespace):
        import edgebench as eb
        from edgebench.optimize.api import _context
        from edgebench.optimize.base import SearchSpace
        from edgebench.optimize.data import prepare_dataset
        from edgebench.optimize.evaluate import Evaluator

        self.name = name
        self.model = eb.zoo.load(name)
        self.data = prepare_dataset(self.model, None, seed=0)
        self.work = Path(tempfile.mkdtemp(prefix=f"ebsweep-{name}-"))
        self.ev = Evaluator(self.model, self.data, "accuracy", max_accuracy_drop=0.01, threads=1, batch_size=1,
                            latency_s=args.latency_s, work_dir=self.work, cache_dir=self.work / "cache")
        self.context = _context(self.model, self.ev, self.data)
        self.space = SearchSpace.from_context(self.ev.ctx, include=None if args.full else QUICK_PASSES)
        self.trials: dict[str, Any] = {}

    def run(self) -> None:
        t0 = time.perf_counter()
        cands = list(self.space.enumerate())
        print(f"-- {self.name}: sweeping {len(cands)} candidates ...", flush=True)
        for i, c in enumerate(cands):
            t = self.ev.baseline_trial() if c.is_baseline else self.ev.evaluate(c)
            t.model = None  # keep the numbers, not hundreds of models
            t.index = i
            self.trials[c.key()] = t
            if (i + 1) % 20 == 0:
                print(f"   {i + 1}/{len(cands)} ({time.perf_counter() - t0:.0f} s)", flush=True)
        self.wall_s = time.perf_counter() - t0
        ok = [t for t in self.trials.values() if t.ok and t.latency_ratio is not None]
        self.best = min(ok, key=lambda t: t.latency_ratio)
        self.hits = {t.key for t in ok if t.latency_ratio <= self.best.latency_ratio * (1 + TOL)}

    def lookup(self, cand: Any) -> Any:
        t = self.trials.get(cand.key())
        if t is None:  # outside the swept space (an explicit seed): measure it now
            t = self.ev.evaluate(cand)
            t.model = None
            self.trials[cand.key()] = t
        return dataclasses.replace(t, notes=list(t.notes), session=dict(t.session))


def replay(sweep: Sweep, policy: str, seed: int, store: Any = None) -> tuple[int | None, int]:
    """(trials until the first hit or None, trials spent until the policy stopped)."""
    from edgebench.optimize.policies import POLICIES

    factory = POLICIES.get(policy)
    kw = {"max_trials": None, "store": store, "seed": seed, "context": None}
    params = inspect.signature(factory).parameters
    if not any(p.kind == p.VAR_KEYWORD for p in params.values()):
        kw = {k: v for k, v in kw.items() if k in params}
    pol = factory(sweep.space, sweep.ev.ctx, **kw)
    first, n, limit = None, 0, 2 * len(sweep.trials) + 10
    while n < limit:
        cand = pol.suggest()
        if cand is None:
            break
        n += 1
        t = sweep.lookup(cand)
        pol.record(t)
        if first is None and t.key in sweep.hits:
            first = n
    return first, n


def fill_store(store: Any, sweep: Sweep) -> None:
    for t in sweep.trials.values():
        store.put(t, sweep.model, context=sweep.context)


def _med(xs: list) -> str:
    vals = [x for x in xs if x is not None]
    if not vals:
        return "never"
    miss = len(xs) - len(vals)
    return f"{statistics.median(vals):g} (max {max(vals)})" + (f", {miss} missed" if miss else "")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default=None, help="comma-separated zoo models; the first one's history "
                                                   "is given to the others (default: digits,mlp)")
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="(default) quantize, session and graph passes only")
    mode.add_argument("--full", action="store_true", help="every pass the model allows (long)")
    ap.add_argument("--seeds", type=int, default=5, help="search seeds per model")
    ap.add_argument("--latency-s", type=float, default=0.3, help="seconds of interleaved timing per candidate")
    ap.add_argument("--wait", type=float, default=1800, help="seconds to wait for the search policies")
    args = ap.parse_args()
    models = [m.strip() for m in (args.models or "digits,mlp").split(",") if m.strip()]
    banner("search vs exhaustive: trials to reach the sweep's best (within 5% latency, inside the budget)")
    wait_for_policies(args.wait)
    from edgebench.optimize.store import ResultsStore

    print(f"   mode: {'full' if args.full else 'quick (' + ', '.join(QUICK_PASSES) + ')'}; "
          f"batch 1, 1 thread, budget 1 point; latency_s={args.latency_s}; {args.seeds} seeds", flush=True)
    sweeps = []
    for name in models:
        s = Sweep(name, args)
        s.run()
        sweeps.append(s)
    rows = []
    for s in sweeps:
        for policy in ("search", "auto"):
            res = [replay(s, policy, seed) for seed in range(args.seeds)]
            firsts = [f for f, _ in res]
            spent = [n for _, n in res]
            found = sum(f is not None for f in firsts)
            worst = max(spent)
            ok = found == len(res) and worst <= TARGET * len(s.trials)
            rows.append((s.name, policy, len(s.trials), f"{s.best.describe()[:44]} {s.best.latency_ratio:.2f}x",
                         len(s.hits), _med(firsts), _med(spent), f"{found}/{len(res)}",
                         f"{100 * statistics.median(spent) / len(s.trials):.0f}%", verdict(ok)))
    heads = ("model", "policy", "exhaustive", "sweep best", "hits", "trials to reach", "trials spent",
             "found", "spent/exh.", "<=40% & found")
    print()
    print("Exhaustive sweeps: " + ", ".join(f"{s.name} {len(s.trials)} trials in {s.wall_s:.0f} s" for s in sweeps))
    _print(heads, rows)

    if len(sweeps) > 1:
        first = sweeps[0]
        store = ResultsStore(Path(tempfile.mkdtemp(prefix="ebstore-")))
        fill_store(store, first)
        rows = []
        for s in sweeps[1:]:
            with_h = [replay(s, "search", seed, store=store)[0] for seed in range(args.seeds)]
            without = [replay(s, "search", seed, store=None)[0] for seed in range(args.seeds)]
            a = statistics.median([x if x is not None else 2 * len(s.trials) for x in with_h])
            b = statistics.median([x if x is not None else 2 * len(s.trials) for x in without])
            rows.append((s.name, f"{first.name} ({len(first.trials)} trials)", _med(with_h), _med(without),
                         verdict(a < b), "equal" if a == b else ("fewer" if a < b else "more")))
        print()
        print(f"Learning across runs: search on each model with {first.name}'s trials in the store (cost model) vs "
              "without (trials to reach the sweep's best; median over seeds)")
        _print(("model", "history from", "with history", "without", "fewer with history", ""), rows)
    return 0


def _print(heads: tuple, rows: list[tuple]) -> None:
    widths = [max(len(h), *(len(str(r[i])) for r in rows)) for i, h in enumerate(heads)]
    print("  ".join(h.ljust(w) for h, w in zip(heads, widths)))
    print("  ".join("-" * w for w in widths))
    for r in rows:
        print("  ".join(str(v).ljust(w) for v, w in zip(r, widths)))


if __name__ == "__main__":
    sys.exit(main())
