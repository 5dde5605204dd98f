"""What every edgebench widget shares: the :class:`View` base, key-figure tiles, tables,
Bokeh panes and sections built only when opened (so saved notebooks stay small)."""
from __future__ import annotations

import threading
import weakref

import math
from html import escape
from typing import TYPE_CHECKING, Any, Callable, Sequence

import ipywidgets as W

from .display import load_bokehjs

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

__all__ = ["View", "CSS", "tiles", "card", "bokeh_pane", "df_html", "lazy_sections", "fmt_ms", "fmt_rate"]

CSS = """<style>
.eb-card { font-family: var(--jp-ui-font-family, system-ui, sans-serif); font-size: 13px;
           color: var(--jp-ui-font-color1, #222); line-height: 1.45; }
.eb-card code { font-size: 12px; }
.eb-card .eb-sub { color: var(--jp-ui-font-color2, #666); }
.eb-tiles { display: flex; flex-wrap: wrap; gap: 6px; margin: 4px 0; }
.eb-tile { border: 1px solid var(--jp-border-color2, #ddd); border-radius: 4px; padding: 2px 10px 4px;
           min-width: 78px; background: var(--jp-layout-color1, #fafafa); }
.eb-tile .eb-k { font-size: 11px; color: var(--jp-ui-font-color2, #666); }
.eb-tile .eb-v { font-size: 16px; font-weight: 600; font-variant-numeric: tabular-nums; }
.eb-valid { color: #1a7f37; } .eb-invalid { color: #cf222e; }
table.eb-table { border-collapse: collapse; font-size: 12px; margin: 4px 0; }
table.eb-table th, table.eb-table td { border: 1px solid var(--jp-border-color2, #ddd); padding: 2px 7px;
           text-align: right; font-variant-numeric: tabular-nums; }
table.eb-table th { background: var(--jp-layout-color2, #f2f2f2); }
table.eb-table td.eb-l, table.eb-table th.eb-l { text-align: left; }
</style>"""


def _finite(v: Any) -> float | None:
    try:
        v = float(v)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def fmt_ms(v: Any) -> str:
    """``1.234 ms``, ``56.7 µs``, or ``–`` when unknown."""
    v = _finite(v)
    if v is None:
        return "–"
    if v < 1:
        return f"{v * 1000:.1f} µs"
    return f"{v:.3f} ms" if v < 100 else f"{v:.1f} ms"


def fmt_rate(v: Any, unit: str = "/s") -> str:
    v = _finite(v)
    if v is None:
        return "–"
    return f"{v:,.1f}{unit}" if v < 100 else f"{v:,.0f}{unit}"


def tiles(items: Sequence[tuple[str, str]], classes: dict[str, str] | None = None) -> str:
    """Key figures as tiles: ``[(label, value), ...]`` (values are escaped)."""
    classes = classes or {}
    return "<div class='eb-tiles'>" + "".join(
        f"<div class='eb-tile'><div class='eb-k'>{escape(k)}</div>"
        f"<div class='eb-v {classes.get(k, '')}'>{escape(v)}</div></div>" for k, v in items) + "</div>"


def card(body: str) -> str:
    """HTML for an ``ipywidgets.HTML``: the shared style plus ``body``."""
    return f"{CSS}<div class='eb-card'>{body}</div>"


def df_html(df: "pd.DataFrame", *, max_rows: int = 40, note: str = "") -> str:
    """A DataFrame as a styled HTML table (head and tail when long) with a note under it."""
    table = df.to_html(max_rows=max_rows, classes="eb-table", border=0, float_format=lambda v: f"{v:.4g}",
                       index=False)
    rows = f"{len(df):,} rows" if len(df) > max_rows else ""
    extra = " &middot; ".join(x for x in (rows, note) if x)
    return card(table + (f"<div class='eb-sub'>{extra}</div>" if extra else ""))


_PANE: type | None = None


def bokeh_pane(root: Any) -> W.Widget:
    """A Bokeh figure or layout as a widget (``jupyter_bokeh.BokehModel``: live, survives reloads)."""
    global _PANE
    try:
        from jupyter_bokeh import BokehModel
    except ImportError:
        return W.HTML(card("<i>Plots need bokeh and jupyter_bokeh: pip install 'edgebench[notebook]'.</i>"))
    if _PANE is None:
        class BokehPane(BokehModel):
            """``BokehModel`` whose ``close`` can be called twice (``Widget.__del__`` closes again,
            and jupyter_bokeh 4.1 raises ``KeyError`` the second time)."""

            def close(self) -> None:
                if self.__dict__.get("_eb_closed"):
                    return
                self.__dict__["_eb_closed"] = True
                try:
                    super().close()
                except KeyError:
                    pass

        _PANE = BokehPane
    return _PANE(root)


def lazy_sections(container: type, sections: Sequence[tuple[str, Callable[[], W.Widget]]], *,
                  eager: Sequence[int] = (), selected: int | None = None) -> W.Widget:
    """A ``Tab`` or ``Accordion`` whose sections are built when first opened.

    ``sections`` are ``(title, builder)``; the indices in ``eager`` are built now.  The
    container gets a ``build(i)`` method that builds (once) and returns section ``i``.
    """
    built: dict[int, W.Widget] = {}
    children = [W.HTML(card(f"<span class='eb-sub'>opening {escape(t)} …</span>")) for t, _ in sections]
    box = container(children=children)
    box.titles = tuple(t for t, _ in sections)

    def build(i: int) -> W.Widget:
        if i not in built:
            try:
                w = sections[i][1]()
            except Exception as e:  # show the failure where the section would be
                w = W.HTML(card(f"<span class='eb-invalid'>{escape(type(e).__name__)}: {escape(str(e))}</span>"))
            built[i] = w
            kids = list(box.children)
            old, kids[i] = kids[i], w
            box.children = tuple(kids)
            old.close()
        return built[i]

    for i in eager:
        build(i)
    if selected is not None:
        build(selected)
        box.selected_index = selected

    def on_select(change: dict) -> None:
        if change["new"] is not None:
            build(change["new"])

    box.observe(on_select, names="selected_index")
    box.build = build  # type: ignore[attr-defined]
    box.built = built  # type: ignore[attr-defined]
    return box


def _descendants(w: Any) -> list[Any]:
    out = []
    for c in getattr(w, "children", ()) or ():
        out.extend(_descendants(c))
        out.append(c)
    return out


class View(W.VBox):
    """Base of edgebench's widgets: a VBox that loads BokehJS (locally) when first shown and
    closes everything it holds when closed."""

    uses_bokeh = True

    def _repr_mimebundle_(self, **kwargs: Any) -> Any:
        if self.uses_bokeh:
            load_bokehjs()
        return super()._repr_mimebundle_(**kwargs)

    def close(self) -> None:
        for w in _descendants(self):
            w.close()
        super().close()


class LiveView(View):
    """A view refreshed by a daemon thread every ``interval`` s until it, or its object, is done."""

    interval = 0.3

    def start(self) -> None:
        """Start the background updater (no-op when it runs)."""
        if self.running:
            return
        self._stop = threading.Event()
        self._thread = threading.Thread(target=_updater, args=(weakref.ref(self), self._stop, self.interval),
                                        name=f"edgebench-{type(self).__name__}", daemon=True)
        self._thread.start()

    _start_updater = start

    @property
    def running(self) -> bool:
        """Whether the background updater is running."""
        t = getattr(self, "_thread", None)
        return t is not None and t.is_alive()

    def stop(self, timeout: float | None = None) -> None:
        """Stop the background updater and wait for it (up to ``timeout`` seconds)."""
        stop = getattr(self, "_stop", None)
        if stop is not None:
            stop.set()
        t = getattr(self, "_thread", None)
        if t is not None and t is not threading.current_thread():
            t.join(timeout)

    def close(self) -> None:
        stop = getattr(self, "_stop", None)
        if stop is not None:
            stop.set()
        super().close()

    def _finished(self) -> bool:  # the object is closed or gone
        raise NotImplementedError

    def update(self) -> Any:
        raise NotImplementedError


def _updater(ref: weakref.ref[LiveView], stop: threading.Event, interval: float) -> None:
    while not stop.wait(interval):
        view = ref()
        if view is None or view.comm is None:
            return
        try:
            done = view._finished()
            view.update()  # once more when done: the last requests and the final state
            if done:
                return
        except Exception:  # keep going; a failed refresh must not end the thread silently
            import logging

            logging.getLogger("edgebench.notebook").exception("%s update failed", type(view).__name__)
        finally:
            del view
