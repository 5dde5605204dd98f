"""Metrics, profiler, LoadGen-style benchmark scenarios and reports.

``eb.profile`` is both this package and the profiler:
``with eb.profile(engine) as prof: ...`` calls :func:`edgebench.profile.profiler.profile`.
"""
from __future__ import annotations

from typing import Any

from .._callable import make_callable


def profile(*args: Any, **kwargs: Any) -> Any:
    """Profile an engine; see :func:`edgebench.profile.profiler.profile`."""
    from .profiler import profile as _profile

    return _profile(*args, **kwargs)


make_callable(__name__, "profile")
