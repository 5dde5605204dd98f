"""Serving: a KServe v2 / Triton-compatible HTTP endpoint with dynamic batching and tenants.

>>> srv = eb.serve("zoo:mlp", port=0, batching="on")      # doctest: +SKIP
>>> import tritonclient.http as http                       # doctest: +SKIP
>>> http.InferenceServerClient(srv.url[7:]).is_server_ready()   # doctest: +SKIP
True

Modules: :mod:`~.protocol` (request and response bodies, validation), :mod:`~.config`
(served-model settings), :mod:`~.repository` (names, versions, load/unload), :mod:`~.auth`
(tenants, tokens, rate limits, queue shares), :mod:`~.runner` (event loop -> model),
:mod:`~.infer` (the inference route), :mod:`~.metrics` (``/metrics``, ``/stats``),
:mod:`~.app` (the routes), :mod:`~.server` (uvicorn lifecycle), :mod:`~.cli`
(``edgebench serve``).  Names are imported lazily: starlette and uvicorn load on first use.
"""
from __future__ import annotations

from importlib import import_module
from typing import Any

from .._callable import make_callable

_LAZY = {
    "serve": ".server", "Server": ".server", "Limits": ".protocol", "BatchingConfig": ".config",
    "ModelConfig": ".config", "AuthConfig": ".auth", "TenantConfig": ".auth", "add_serve_command": ".cli",
}
__all__ = ["AuthConfig", "BatchingConfig", "Limits", "ModelConfig", "Server", "TenantConfig",
           "add_serve_command", "serve"]


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'edgebench.serve' has no attribute {name!r}")
    value = getattr(import_module(_LAZY[name], __name__), name)
    globals()[name] = value
    return value


make_callable(__name__, "serve")  # eb.serve(...) and `import edgebench.serve` both work
