"""``edgebench optimize``: search passes and session settings for a model from the command line.

::

    edgebench optimize MODEL [--data zoo:digits | zoo:photos | path.npz] [--max-accuracy-drop 0.01]
                             [--latency-budget-ms X] [--size-budget-mb Y]
                             [--policy auto|rules|search|exhaustive] [--max-trials N] [--threads N]
                             [-o OUTDIR] [--json]

Shows a progress bar (stderr) while it searches, then the trials as a table and the winner
with the reason.  With ``-o OUTDIR`` it writes ``OUTDIR/model.onnx`` (the best model, the
input itself when nothing beat it), ``OUTDIR/report.json`` (``OptimizeResult.to_dict()``)
and ``OUTDIR/engine.json`` (the engine settings: ``eb.Engine(path, threads=..., options=...)``).

An ``.npz`` data file holds the inputs under the model's input names, or under ``x`` for a
single-input model; labels (optional) under ``y``; calibration inputs (optional) under
``cal_<input name>`` or ``x_cal``.  Without labels, fidelity to the fp32 model is gated on.
"""
from __future__ import annotations

import argparse
import json
import math
import os
from pathlib import Path
from typing import Any

from ..errors import ConfigError, DatasetError

__all__ = ["add_optimize_command", "cmd_optimize", "load_npz", "trial_rows", "write_outputs",
           "POLICY_NAMES", "OUTPUT_FILES"]

POLICY_NAMES = ("auto", "rules", "search", "exhaustive")
#: what ``-o OUTDIR`` holds
OUTPUT_FILES = {"model": "model.onnx", "report": "report.json", "engine": "engine.json"}
_LABEL_KEYS = ("y", "labels")


def _fraction(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not (math.isfinite(v) and 0 <= v < 1):
        raise argparse.ArgumentTypeError(f"must be a fraction in [0, 1) (0.01 = one point), got {text!r}")
    return v


def add_optimize_command(subparsers: Any) -> None:
    """Add the ``optimize`` subcommand to an argparse ``subparsers`` (a :data:`edgebench.cli.COMMANDS`
    builder)."""
    from ..cli import _positive_float, _positive_int

    p = subparsers.add_parser(
        "optimize", help="make a model faster inside an accuracy budget (quantize, prune, graph, session)",
        description="Search optimization passes and session settings for MODEL on this machine, under "
                    "accuracy / latency / size budgets.  The fp32 input is always a candidate: the result "
                    "is never slower than it.")
    p.add_argument("model", metavar="MODEL", help="path to an .onnx file, or zoo:NAME (see `edgebench zoo list`)")
    p.add_argument("--data", default=None, metavar="SPEC",
                   help="zoo:digits, zoo:photos or a .npz file (inputs under the model's input names or x, "
                        "labels under y, calibration under cal_<input> or x_cal); default: a zoo model's own "
                        "data, else random inputs (fidelity only)")
    p.add_argument("--max-accuracy-drop", type=_fraction, default=0.01, metavar="F",
                   help="largest accuracy drop allowed, or top-1 disagreement with fp32 without labels "
                        "(default 0.01 = one point)")
    p.add_argument("--latency-budget-ms", type=_positive_float, default=None, metavar="MS",
                   help="reject candidates whose p50 latency is above this")
    p.add_argument("--size-budget-mb", type=_positive_float, default=None, metavar="MB",
                   help="reject candidates larger than this on disk")
    p.add_argument("--policy", choices=POLICY_NAMES, default="auto",
                   help="how candidates are chosen (default auto: hardware rules, then a model-based search)")
    p.add_argument("--max-trials", type=_positive_int, default=None, metavar="N",
                   help="at most N trials, the fp32 baseline included (default: the policy decides)")
    p.add_argument("--threads", type=_positive_int, default=None, metavar="N",
                   help="intra-op threads latency is measured with (default: the session may choose)")
    p.add_argument("--batch-size", type=_positive_int, default=1, metavar="N")
    p.add_argument("--latency-s", type=_positive_float, default=1.0, metavar="S",
                   help="seconds of interleaved timing per candidate (default 1)")
    p.add_argument("--no-store", action="store_true",
                   help="neither replay nor record trials in the results store")
    p.add_argument("-o", "--out", default=None, metavar="OUTDIR",
                   help="write model.onnx, report.json and engine.json here")
    p.add_argument("--json", action="store_true", help="print the report as JSON (no progress bar, no table)")
    p.set_defaults(func=cmd_optimize)


# --------------------------------------------------------------------------------------------
def load_npz(path: str | os.PathLike, model: Any) -> tuple[Any, Any]:
    """``(dataset, calibration)`` for :func:`edgebench.optimize` from an ``.npz`` file.

    Raises
    ------
    DatasetError
        The file is missing, not an npz archive, or holds no inputs for ``model``.
    """
    import numpy as np

    p = Path(path)
    if not p.is_file():
        raise DatasetError(f"no such data file: {p}", "pass zoo:NAME or a .npz file of inputs (and labels y)")
    try:
        with np.load(p, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except Exception as e:  # noqa: BLE001 - zipfile / numpy errors: not an npz we can read
        raise DatasetError(f"cannot read {p} as a .npz archive ({type(e).__name__}: {e})",
                           "write it with numpy.savez(path, x=inputs, y=labels)") from None
    names = [s.name for s in model.inputs]
    if all(n in arrays for n in names):
        X: Any = {n: arrays[n] for n in names}
        cal = {n: arrays[f"cal_{n}"] for n in names} if all(f"cal_{n}" in arrays for n in names) else None
    elif len(names) == 1 and ("x" in arrays or "X" in arrays):
        X = arrays.get("x", arrays.get("X"))
        cal = arrays.get("x_cal", arrays.get(f"cal_{names[0]}"))
    else:
        raise DatasetError(f"{p.name} holds {sorted(arrays) or 'nothing'} but no inputs for model "
                           f"{model.name!r} (inputs: {', '.join(names)})",
                           "store the inputs under the model's input names, or under x for a single-input model")
    y = next((arrays[k] for k in _LABEL_KEYS if k in arrays), None)
    return ((X, y) if y is not None else X), cal


def _dataset(spec: str | None, model: Any) -> tuple[Any, Any]:
    if spec is None:
        return None, None
    if spec.startswith("zoo:"):
        from .. import zoo

        name = spec[4:]
        try:
            return zoo.dataset(name, "test"), zoo.dataset(name, "calibration")
        except KeyError as e:  # UnknownNameError lists the data sets
            raise DatasetError(f"--data {spec}: {e}", "pass zoo:digits, zoo:photos or a .npz file") from None
    if spec.endswith(".npz"):
        return load_npz(spec, model)
    raise DatasetError(f"--data {spec!r} is not understood", "pass zoo:NAME or a path ending in .npz")


def _check_out(out: str | None) -> Path | None:
    if out is None:
        return None
    p = Path(out)
    if p.exists() and not p.is_dir():
        raise ConfigError(f"-o {out}: exists and is not a folder", "pass a new or existing folder")
    return p


# --------------------------------------------------------------------------------------------
def _f(v: Any, spec: str) -> str:
    return "-" if v is None or (isinstance(v, float) and not math.isfinite(v)) else format(v, spec)


def trial_rows(res: Any) -> tuple[tuple[str, ...], list[tuple]]:
    """Headers and rows of the trials table: candidate, p50, ratio vs fp32, accuracy or
    fidelity, size, status, reason."""
    kind = getattr(res.gate, "kind", "metric")
    score = {"metric": "accuracy", "top1": "top-1 agree", "cosine": "cosine"}.get(kind, "accuracy")
    best = res.best_trial
    rows = []
    for t in res.history:
        mark = "*" if t is best else ""
        acc = _f(t.accuracy, ".4f") if kind == "cosine" else (
            "-" if t.accuracy is None else f"{100 * t.accuracy:.2f}%")
        reason = t.reason or ("from the results store" if t.source == "store" else "")
        rows.append((f"{t.index}{mark}", t.describe(), _f(t.p50_ms, ".4f"),
                     "-" if t.latency_ratio is None else f"{t.latency_ratio:.2f}x", acc,
                     _f(None if t.size_bytes is None else t.size_bytes / 2**20, ".2f"), t.status, reason))
    return ("#", "candidate", "p50 ms", "vs fp32", score, "MB", "status", "reason"), rows


def write_outputs(res: Any, out: str | os.PathLike) -> dict[str, Path]:
    """Write the best model, the JSON report and the engine settings into ``out``."""
    from ..cli import _json_default

    d = Path(out)
    d.mkdir(parents=True, exist_ok=True)
    paths = {k: d / v for k, v in OUTPUT_FILES.items()}
    res.best.save(paths["model"])
    paths["report"].write_text(json.dumps(res.to_dict(), indent=2, default=_json_default) + "\n")
    s = res.settings
    engine = {"model": OUTPUT_FILES["model"], "backend": "onnxruntime", "device": res.budgets.get("device", "cpu"),
              "threads": s.get("threads"), "options": dict(s.get("options") or {}),
              "candidate": res.best_trial.describe() if res.best_trial is not None else "fp32 baseline",
              "confirmed_ratio": res.confirmed_ratio}
    paths["engine"].write_text(json.dumps(engine, indent=2, default=_json_default) + "\n")
    return paths


def cmd_optimize(args: argparse.Namespace) -> int:
    """Run ``edgebench optimize``."""
    from ..cli import _dump_json, load_model_arg, text_table
    from .api import optimize

    out = _check_out(args.out)
    model = load_model_arg(args.model)
    dataset, calibration = _dataset(args.data, model)
    res = optimize(model, dataset=dataset, calibration=calibration, max_accuracy_drop=args.max_accuracy_drop,
                   latency_budget_ms=args.latency_budget_ms, size_budget_mb=args.size_budget_mb,
                   policy=args.policy, max_trials=args.max_trials, threads=args.threads,
                   batch_size=args.batch_size, latency_s=args.latency_s, store=not args.no_store,
                   progress=not args.json)
    paths = write_outputs(res, out) if out is not None else {}
    if args.json:
        d = res.to_dict()
        if paths:
            d["written"] = {k: str(v) for k, v in paths.items()}
        _dump_json(d)
        return 0
    heads, rows = trial_rows(res)
    print(f"{model.name} on {res.hardware}")
    print(f"{len(res.history)} trials ({res.policy} policy) in {res.wall_s:.1f} s; "
          f"gate: {res.gate.why if res.gate is not None else '-'}")
    print()
    print(text_table(heads, rows, right=(0, 2, 3, 4, 5), wrap_last=True))
    print()
    print(f"best    {res.reason}")
    s = res.settings
    print(f"engine  threads={s.get('threads')}, options={s.get('options') or {}}")
    for k, p in paths.items():
        print(f"wrote   {p} ({k})")
    return 0
