"""A list of dataclass rows that prints as a table and converts to pandas.

Used for the answers of ``eb.devices()``, ``eb.backends()`` and similar listings.
"""
from __future__ import annotations

import dataclasses
from html import escape
from typing import Any, Iterable


def _cell(v: Any) -> str:
    if isinstance(v, bool):
        return "yes" if v else "no"
    if v is None:
        return ""
    if isinstance(v, (list, tuple)):
        return ", ".join(map(str, v))
    return str(v)


class Table(list):
    """A list of dataclass instances with ``to_pandas()``, a text ``repr`` and HTML."""

    columns: tuple[str, ...] | None = None  # subset shown in repr / HTML; None = all fields

    def __init__(self, rows: Iterable[Any] = (), columns: Iterable[str] | None = None):
        super().__init__(rows)
        if columns is not None:
            self.columns = tuple(columns)

    def _cols(self) -> list[str]:
        if self.columns:
            return list(self.columns)
        if not self:
            return []
        return [f.name for f in dataclasses.fields(self[0])]

    def rows(self) -> list[list[str]]:
        cols = self._cols()
        return [[_cell(getattr(r, c)) for c in cols] for r in self]

    def to_pandas(self):
        import pandas as pd

        return pd.DataFrame([dataclasses.asdict(r) for r in self])

    def __repr__(self) -> str:
        cols = self._cols()
        rows = self.rows()
        widths = [max([len(c)] + [len(r[i]) for r in rows]) for i, c in enumerate(cols)]
        fmt = "  ".join(f"{{:<{w}}}" for w in widths)
        lines = [fmt.format(*cols)] + [fmt.format(*r) for r in rows]
        return "\n".join(line.rstrip() for line in lines)

    def _repr_html_(self) -> str:
        cols = self._cols()
        head = "".join(f"<th>{escape(c)}</th>" for c in cols)
        body = "".join("<tr>" + "".join(f"<td>{escape(v)}</td>" for v in r) + "</tr>" for r in self.rows())
        return f"<table class='edgebench-table'><tr>{head}</tr>{body}</table>"
