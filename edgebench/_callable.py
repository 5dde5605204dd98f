"""Modules that are also the function of the same name.

``eb.devices()``, ``eb.backends()`` and ``with eb.profile(engine)`` are functions, while
``edgebench.devices``, ``edgebench.backends`` and ``edgebench.profile`` are modules.  Python
binds a submodule onto its package once it is imported, so the package attribute cannot
stay a function; instead such a module is made callable, forwarding to its function.
"""
from __future__ import annotations

import sys
import types
from typing import Any


def make_callable(module_name: str, func_name: str) -> None:
    """Make ``sys.modules[module_name]`` callable as its attribute ``func_name``."""
    module = sys.modules[module_name]

    class _CallableModule(types.ModuleType):
        def __call__(self, *args: Any, **kwargs: Any) -> Any:
            return getattr(self, func_name)(*args, **kwargs)

    module.__class__ = _CallableModule
