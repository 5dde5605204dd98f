"""``exhaustive``: every candidate of the space, baseline first: the reference sweep."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Iterator

from . import POLICIES, PolicyBase

if TYPE_CHECKING:  # pragma: no cover
    from ..base import Candidate, PassContext, SearchSpace

__all__ = ["ExhaustivePolicy"]


@POLICIES.register("exhaustive")
class ExhaustivePolicy(PolicyBase):
    """Propose every candidate :meth:`SearchSpace.enumerate` yields, in its order.

    What the other policies are measured against; ``max_trials`` stops it early.
    """

    name = "exhaustive"

    def __init__(self, space: "SearchSpace", ctx: "PassContext | None" = None, *,
                 max_trials: int | None = None, store: Any = None, seed: int = 0):
        super().__init__(space, ctx, max_trials=max_trials, store=store, seed=seed)
        self._it: Iterator[Candidate] = iter(space.enumerate())

    def _next(self) -> "Candidate | None":
        for cand in self._it:
            if not self.seen(cand):
                return self._propose(cand, "exhaustive sweep: every candidate is measured")
        return None
