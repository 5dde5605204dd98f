"""How edgebench objects show themselves in Jupyter: three tiers.

1. ``repr(obj)``: cheap text, no I/O (the object's own ``__repr__``).
2. ``obj._repr_html_()``: a compact HTML card (the object's own method).
3. A live widget, built on first display and cached on the object; views are registered
   per class name in :data:`VIEWS`.

An object opts in with one method that delegates here (dask's ``Cluster`` is the pattern)::

    def _repr_mimebundle_(self, include=None, exclude=None, **kwargs):
        from edgebench.notebook.display import mimebundle
        return mimebundle(self, include, exclude)

The bundle holds the widget view, the object's own ``repr`` as ``text/plain`` (so nbval
compares a cheap, stable text, not ipywidgets' repr) and its HTML card, which frontends
without widget support show instead.  Without ipywidgets (or anywidget, for the graph view)
it is just the text and the card.
"""
from __future__ import annotations

import threading
import warnings
from typing import Any, Callable

from .._registry import Registry
from ..errors import EdgebenchError

__all__ = ["VIEWS", "register_view", "widget", "mimebundle", "ipython_display", "widgets_available",
           "load_bokehjs", "WidgetsUnavailableError", "WIDGET_MIME"]

WIDGET_MIME = "application/vnd.jupyter.widget-view+json"
#: class name -> ``builder(obj) -> widget``; plugins add theirs through the
#: ``edgebench.views`` entry-point group.
VIEWS: Registry[Callable[[Any], Any]] = Registry("view", "edgebench.views")
_CACHE = "_eb_widget"
_lookup: dict[type, Callable[[Any], Any] | None] = {}


class WidgetsUnavailableError(EdgebenchError, ImportError):
    """ipywidgets (or another package a view needs) is not installed."""


def register_view(class_name: str, builder: Callable[[Any], Any] | None = None) -> Any:
    """Register ``builder(obj) -> widget`` as the view of objects whose class is ``class_name``.

    Usable as a decorator.  Subclasses use their nearest registered base's view.
    """
    _lookup.clear()
    return VIEWS.register(class_name, builder)


def widgets_available() -> bool:
    """Whether ipywidgets can be imported here."""
    try:
        import ipywidgets  # noqa: F401
    except ImportError:
        return False
    return True


def _load_builtin_views() -> None:
    try:
        from . import views  # noqa: F401  (registers the built-in views)
    except ImportError as e:
        raise WidgetsUnavailableError(
            f"edgebench widgets need {e.name or 'ipywidgets'}, which is not installed",
            "install the notebook extras: pip install 'edgebench[notebook]'") from e


def _builder(obj: Any) -> Callable[[Any], Any] | None:
    cls = type(obj)
    if cls not in _lookup:
        found = None
        for c in cls.__mro__[:-1]:  # not `object`
            try:
                found = VIEWS.get(c.__name__)
                break
            except KeyError:
                continue
        _lookup[cls] = found
    return _lookup[cls]


def _alive(w: Any) -> bool:
    return w is not None and getattr(w, "comm", None) is not None


def widget(obj: Any, *, rebuild: bool = False) -> Any:
    """The live widget of ``obj``: built on first call, then the same one (until it is closed).

    Parameters
    ----------
    obj
        An :class:`~edgebench.Engine`, :class:`~edgebench.Model`, ``BenchmarkReport``,
        ``ProfileSession``, or anything with a registered view.
    rebuild
        Close the cached widget and build a new one.

    Raises
    ------
    WidgetsUnavailableError
        ipywidgets (or bokeh / jupyter_bokeh) is not installed.
    UnknownNameError
        No view is registered for the object's class.
    """
    cached = getattr(obj, "__dict__", {}).get(_CACHE)
    if _alive(cached) and not rebuild:
        return cached
    if cached is not None and rebuild:
        cached.close()
    _load_builtin_views()
    build = _builder(obj)
    if build is None:
        VIEWS.get(type(obj).__name__)  # raises UnknownNameError listing the known views
    w = build(obj)
    try:
        obj.__dict__[_CACHE] = w
    except (AttributeError, TypeError):  # no __dict__: not cached
        pass
    return w


def _html(obj: Any) -> str | None:
    method = getattr(obj, "_repr_html_", None)
    return method() if callable(method) else None


def mimebundle(obj: Any, include: Any = None, exclude: Any = None) -> dict[str, Any]:
    """The display bundle of ``obj``: its widget view, ``repr`` and HTML card.

    Without ipywidgets the bundle is ``{"text/plain", "text/html"}`` only.  When building the
    widget fails, a warning says why and the HTML card is shown.
    """
    data: dict[str, Any] = {"text/plain": repr(obj)}
    try:
        w = widget(obj)
    except ImportError:
        w = None
    except EdgebenchError as e:  # e.g. no view registered for this class
        warnings.warn(f"edgebench: no widget for {type(obj).__name__}: {e}", RuntimeWarning, stacklevel=2)
        w = None
    except Exception as e:  # a broken view must not hide the object: fall back to HTML
        warnings.warn(f"edgebench: building the {type(obj).__name__} widget failed ({e!r}); "
                      "showing HTML instead", RuntimeWarning, stacklevel=2)
        w = None
    if w is not None:
        bundle = w._repr_mimebundle_(include=include, exclude=exclude)
        if isinstance(bundle, tuple):
            bundle = bundle[0]
        data.update({k: v for k, v in (bundle or {}).items() if k != "text/plain"})
    html = _html(obj)
    if html:
        data["text/html"] = html
    if include:
        data = {k: v for k, v in data.items() if k in include}
    if exclude:
        data = {k: v for k, v in data.items() if k not in exclude}
    return data


def ipython_display(obj: Any, **kwargs: Any) -> None:
    """``display(obj)`` with the bundle of :func:`mimebundle` (for ``_ipython_display_``)."""
    from IPython.display import display

    display(mimebundle(obj), raw=True)


# --------------------------------------------------------------------------------------------
# BokehJS, from this machine (no CDN)
# --------------------------------------------------------------------------------------------
_BOKEHJS_LOCK = threading.Lock()
_bokehjs_loaded_in: set[str] = set()
LOAD_MIME = "application/vnd.bokehjs_load.v0+json"


def _kernel_session() -> str | None:
    """An id of the kernel session we display into, or ``None`` outside a Jupyter kernel."""
    try:
        from IPython import get_ipython
    except ImportError:
        return None
    ip = get_ipython()
    kernel = getattr(ip, "kernel", None)
    if kernel is None:
        return None
    session = getattr(kernel, "session", None)
    return str(getattr(session, "session", None) or id(kernel))


def bokehjs_script(components: tuple[str, ...] = ("bokeh",), mode: str | None = None) -> str:
    """The JavaScript that loads BokehJS (skipped in the page when already loaded).

    ``mode="server"`` (the default) fetches it from the Jupyter server the notebook runs on,
    where :mod:`edgebench.notebook.server_ext` serves bokeh's own files: a saved notebook
    keeps a 1 KB loader instead of 1.3 MB of JavaScript.  ``mode="inline"`` embeds it, for
    notebooks viewed away from a Jupyter server (``EDGEBENCH_BOKEHJS=inline`` sets the default).
    Neither ever touches a CDN.
    """
    import json
    import os

    from bokeh import __version__ as version

    mode = mode or os.environ.get("EDGEBENCH_BOKEHJS", "server")
    have = " && ".join(["window.Bokeh", f"window.Bokeh.version === {version!r}"]
                       + [f"window._edgebench_bokehjs[{c!r}]" for c in components])
    mark = "".join(f"window._edgebench_bokehjs[{c!r}] = true;" for c in components)
    if mode == "inline":
        from bokeh.resources import Resources

        body = "\n".join(Resources(mode="inline", components=list(components)).js_raw)
    else:
        from .server_ext import ROUTE

        files = json.dumps([f"{ROUTE}/js/{c}.min.js?v={version}" for c in components])
        # Synchronous on purpose: the widget views that follow this output need window.Bokeh
        # the moment they render, and jupyter_bokeh's loader runs this as a plain <script>.
        body = f"""var cfg = document.getElementById("jupyter-config-data");
var base = (cfg && JSON.parse(cfg.textContent).baseUrl) || "/";
{files}.forEach(function (path) {{
  var xhr = new XMLHttpRequest();
  xhr.open("GET", base + path, false);
  xhr.send();
  if (xhr.status !== 200) {{
    throw new Error("edgebench: BokehJS is not served by this Jupyter server (" + xhr.status + " for " +
      base + path + "); enable it with `jupyter server extension enable edgebench.notebook.server_ext` " +
      "and restart, or set EDGEBENCH_BOKEHJS=inline in the kernel");
  }}
  var s = document.createElement("script");
  s.textContent = xhr.responseText;
  document.head.appendChild(s);
}});"""
    return (f"window._edgebench_bokehjs = window._edgebench_bokehjs || {{}};\n"
            f"if (!({have})) {{\n{body}\n{mark}\n}}")


def load_bokehjs(components: tuple[str, ...] = ("bokeh",), *, force: bool = False) -> bool:
    """Make BokehJS available to ``jupyter_bokeh`` widgets in this notebook, with no CDN.

    Publishes the BokehJS loader of :func:`bokehjs_script` once per kernel, as an output of
    the cell that first shows a Bokeh-backed view; JupyterLab runs it again when the
    notebook is reopened, so the views render after a reload.  Outside a kernel it does
    nothing.  Returns whether it published.

    Parameters
    ----------
    components
        BokehJS bundles: ``"bokeh"`` (plots), ``"bokeh-widgets"``, ``"bokeh-tables"``,
        ``"bokeh-gl"``.
    force
        Publish even when this kernel already did (e.g. after clearing all outputs).
    """
    session = _kernel_session()
    if session is None:
        return False
    key = f"{session}:{','.join(components)}"
    with _BOKEHJS_LOCK:
        if key in _bokehjs_loaded_in and not force:
            return False
        from bokeh import __version__ as version
        from IPython.display import publish_display_data

        publish_display_data({LOAD_MIME: bokehjs_script(components),
                              "text/plain": f"BokehJS {version} ({', '.join(components)}) loaded"})
        _bokehjs_loaded_in.add(key)
    return True
