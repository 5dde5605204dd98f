"""``auto``: the rules' proposals first, then the model-based search refines.

The rules put the likely winners for this hardware in the first few trials (so a search cut
short by ``max_trials`` still has measured them); the search then treats them as its first
observations, learns from them, and goes on until nothing left is expected to improve.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from . import POLICIES
from .rules import hardware_facts, rules
from .search import SearchPolicy

if TYPE_CHECKING:  # pragma: no cover
    from ..base import PassContext, SearchSpace

__all__ = ["AutoPolicy"]


@POLICIES.register("auto")
class AutoPolicy(SearchPolicy):
    """:class:`SearchPolicy` seeded with :func:`~edgebench.optimize.policies.rules.rules`.

    Parameters are those of :class:`SearchPolicy`; ``seeds`` given here go after the rules'.
    """

    name = "auto"

    def __init__(self, space: "SearchSpace", ctx: "PassContext", *, max_trials: int | None = None,
                 store: Any = None, seed: int = 0, seeds: Any = (), **options: Any):
        self.facts = hardware_facts(ctx)
        super().__init__(space, ctx, max_trials=max_trials, store=store, seed=seed,
                         seeds=[*rules(space, ctx), *seeds], **options)
