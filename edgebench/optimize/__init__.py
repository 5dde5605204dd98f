"""``eb.optimize(model, ...)``: the optimizer (see :func:`edgebench.optimize.api.optimize`).

This package is also the function: ``eb.optimize(...)`` calls ``optimize``.  Its parts:
passes (one module per family), evaluation, search policies, ``optimize``.

>>> res = eb.optimize(eb.zoo.load("digits"), dataset=eb.zoo.dataset("digits", "test"))  # doctest: +SKIP
>>> res.best, res.engine(), res.trials, res.explain()                                   # doctest: +SKIP

Names are imported lazily: importing this package loads neither onnxruntime nor torch.
"""
from __future__ import annotations

from importlib import import_module
from typing import Any

from .._callable import make_callable

_LAZY = {
    "PASSES": ".base", "CONFIGS": ".base", "PassConfig": ".base", "PassContext": ".base",
    "PassOutput": ".base", "Candidate": ".base", "Trial": ".trial", "SearchSpace": ".space",
    "register_pass": ".base", "load_passes": ".base",
    "GraphOptConfig": ".graph", "QuantizeConfig": ".quantize", "MixedPrecisionConfig": ".mixed",
    "Float16Config": ".fp16", "PruneConfig": ".prune", "SessionConfig": ".session",
    "Evaluator": ".evaluate", "Dataset": ".data", "prepare_dataset": ".data",
    "optimize": ".api", "OptimizeResult": ".result",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(import_module(_LAZY[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'edgebench.optimize' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


make_callable(__name__, "optimize")  # eb.optimize(...) and `import edgebench.optimize` both work
