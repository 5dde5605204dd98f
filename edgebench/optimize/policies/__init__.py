"""Search policies: what to measure next.

A policy only proposes candidates and hears back how they did (Olive's search samplers); it
knows the :class:`~edgebench.optimize.base.SearchSpace` the configs span, never how a pass
works::

    policy = POLICIES.get("auto")(space, ctx, max_trials=None, store=store)
    while (cand := policy.suggest()) is not None:
        policy.record(evaluator.evaluate(cand))

=============  ====================================================================
``rules``      hardware-aware first guesses with stated reasons (ISA, op mix, size)
``search``     model-based search (Gaussian-process surrogate over the space, with the
               cost model's ranking from past runs as its prior)
``exhaustive`` every candidate of the space: the reference sweep
``auto``       ``rules`` to seed, ``search`` to refine
=============  ====================================================================

Every policy proposes the fp32 baseline first and never proposes a candidate twice.
``policy.why[candidate.key()]`` says why a candidate was proposed (for ``explain()``).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Protocol, runtime_checkable

from ..._registry import Registry

if TYPE_CHECKING:  # pragma: no cover
    from ..base import Candidate, PassContext, SearchSpace, Trial

__all__ = ["Policy", "POLICIES", "PolicyBase", "make_policy", "RulesPolicy", "SearchPolicy",
           "ExhaustivePolicy", "AutoPolicy"]


@runtime_checkable
class Policy(Protocol):
    """What the optimizer loop needs from a search policy."""

    def suggest(self) -> "Candidate | None":
        """The next candidate to evaluate, or ``None`` when the policy is done."""

    def record(self, trial: "Trial") -> None:
        """Hear how a candidate did (one the policy suggested, or any other, e.g. replayed)."""


#: name -> factory ``(space, ctx, *, max_trials=None, store=None, seed=0, **options) -> Policy``
POLICIES: Registry[Callable[..., Policy]] = Registry("search policy", "edgebench.policies")


class PolicyBase:
    """Bookkeeping shared by the built-in policies: trials seen, the best one, the budget.

    Parameters
    ----------
    space
        The candidates to choose from.
    ctx
        The pass context (baseline model, CPU); ``None`` is allowed for policies that do not
        look at the model or hardware.
    max_trials
        At most this many trials (suggested or recorded); ``None``: the policy's own default.
    store
        A :class:`~edgebench.optimize.store.ResultsStore` (used by policies that learn from
        past runs).
    seed
        Makes every choice reproducible.
    """

    name = "base"

    def __init__(self, space: "SearchSpace", ctx: "PassContext | None" = None, *,
                 max_trials: int | None = None, store: Any = None, seed: int = 0):
        from ...errors import ConfigError

        if max_trials is not None and (not isinstance(max_trials, int) or max_trials < 1):
            raise ConfigError(f"max_trials must be a positive integer or None, got {max_trials!r}")
        self.space = space
        self.ctx = ctx
        self.max_trials = max_trials
        self.store = store
        self.seed = seed
        self.trials: list[Trial] = []
        self.why: dict[str, str] = {}
        self._seen: set[str] = set()  # keys suggested or recorded

    # -- protocol -------------------------------------------------------------------------
    def suggest(self) -> "Candidate | None":
        if self.max_trials is not None and len(self._seen) >= self.max_trials:
            return None
        cand = self._next()
        if cand is not None:
            self._seen.add(cand.key())
        return cand

    def record(self, trial: "Trial") -> None:
        self._seen.add(trial.candidate.key())
        self.trials.append(trial)
        self._observe(trial)

    # -- for subclasses -------------------------------------------------------------------
    def _next(self) -> "Candidate | None":  # pragma: no cover - abstract
        raise NotImplementedError

    def _observe(self, trial: "Trial") -> None:
        pass

    def _propose(self, cand: "Candidate", why: str) -> "Candidate":
        self.why.setdefault(cand.key(), why)
        return cand

    def seen(self, cand: "Candidate") -> bool:
        return cand.key() in self._seen

    # -- results --------------------------------------------------------------------------
    @property
    def n_trials(self) -> int:
        """Trials proposed or recorded so far (what ``max_trials`` counts)."""
        return len(self._seen)

    @property
    def best(self) -> "Trial | None":
        """The fastest trial inside every budget (lowest latency ratio), or ``None``."""
        ok = [t for t in self.trials if t.objective is not None]
        return min(ok, key=lambda t: t.objective) if ok else None

    def __repr__(self) -> str:
        best = self.best
        b = f", best {best.describe()} at {best.objective:.2f}x" if best is not None else ""
        return f"<{type(self).__name__} {self.n_trials} trials{b}>"


def make_policy(name: str, space: "SearchSpace", ctx: "PassContext | None" = None, **kw: Any) -> Policy:
    """Build the policy registered as ``name`` (``"auto"``, ``"rules"``, ``"search"``,
    ``"exhaustive"``); ``UnknownNameError`` lists the known names."""
    return POLICIES.get(name)(space, ctx, **kw)


# the built-in policies register themselves (they import nothing heavy at module level)
from .exhaustive import ExhaustivePolicy  # noqa: E402
from .rules import RulesPolicy  # noqa: E402
from .search import SearchPolicy  # noqa: E402
from .auto import AutoPolicy  # noqa: E402
