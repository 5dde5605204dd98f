"""SearchSpace: the candidates the configs span on one model and machine."""
from __future__ import annotations

import itertools
import json
from dataclasses import dataclass
from typing import Any, Iterator, Mapping

from .base import CONFIGS, Candidate, PassConfig, PassContext, config_class, load_passes

__all__ = ["SearchSpace"]


# --------------------------------------------------------------------------------------------
@dataclass
class SearchSpace:
    """The candidates a search may propose: per config class, the choices of each field.

    Attributes
    ----------
    families
        ``{"QuantizeConfig": {"mode": ["dynamic", "static"], ...}, ...}``: only the passes that
        apply here.  Each group (precision, session, ...) contributes none or one config.
    """

    families: dict[str, dict[str, list]]

    @classmethod
    def from_context(cls, ctx: PassContext, include: list[str] | None = None,
                     exclude: list[str] | None = None) -> "SearchSpace":
        """Ask every registered config class (or those in ``include``) for its space on ``ctx``."""
        load_passes()
        names = include if include is not None else CONFIGS.names()
        fams = {}
        for n in names:
            if exclude and n in exclude:
                continue
            sp = config_class(n).space(ctx)
            if sp:
                fams[n] = {k: list(v) for k, v in sp.items()}
        return cls(fams)

    def groups(self) -> dict[str, list[str]]:
        """group name -> config class names in it."""
        out: dict[str, list[str]] = {}
        for n in self.families:
            out.setdefault(config_class(n).group or n, []).append(n)
        return out

    def build(self, choice: Mapping[str, Mapping[str, Any] | None]) -> Candidate:
        """A candidate from ``{config class name: {field: value} or None}`` (missing: absent)."""
        configs = [config_class(n).from_params(dict(p)) for n, p in choice.items() if p is not None]
        return Candidate.of(*configs)

    def options(self, name: str) -> list[PassConfig]:
        """Every distinct config of class ``name`` the space spans."""
        fields = self.families[name]
        keys = list(fields)
        seen: dict[str, PassConfig] = {}
        for values in itertools.product(*(fields[k] for k in keys)):
            c = config_class(name).from_params(dict(zip(keys, values)))
            if c.is_noop():
                continue
            seen.setdefault(json.dumps(c.params(), sort_keys=True, default=str), c)
        return list(seen.values())

    def enumerate(self) -> Iterator[Candidate]:
        """Every distinct candidate (the baseline first), one config or none per group."""
        per_group = []
        for names in self.groups().values():
            per_group.append([None] + [c for n in names for c in self.options(n)])
        seen = set()
        for combo in itertools.product(*per_group):
            cand = Candidate.of(*(c for c in combo if c is not None))
            k = cand.key()
            if k not in seen:
                seen.add(k)
                yield cand

    def size(self) -> int:
        n = 1
        for names in self.groups().values():
            n *= 1 + sum(len(self.options(x)) for x in names)
        return n

    def __repr__(self) -> str:
        fams = "; ".join(f"{n}: " + ", ".join(f"{k}={v}" for k, v in f.items()) for n, f in self.families.items())
        return f"SearchSpace({self.size()} candidates; {fams})"
