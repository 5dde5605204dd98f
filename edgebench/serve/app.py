"""The ASGI application: KServe v2 REST as Triton serves it, on Starlette.

Routes::

    GET  /v2                                         server metadata
    GET  /v2/health/live | /v2/health/ready          health (no token needed)
    GET  /v2/models/{m}[/versions/{v}]               model metadata
    GET  /v2/models/{m}[/versions/{v}]/ready         200 ready, 503 not ready, 404 unknown
    GET  /v2/models/{m}[/versions/{v}]/config        Triton's model configuration (JSON)
    GET  /v2/models[/{m}[/versions/{v}]]/stats       Triton's statistics extension
    POST /v2/models/{m}[/versions/{v}]/infer         inference (JSON or binary tensors)
    POST /v2/repository/index                        Triton's repository index
    POST /v2/repository/models/{m}/load | unload     load / unload (the admin token when auth is on)
    GET  /metrics                                    Prometheus text format

Inference takes a short way in front of the router (:meth:`ServeApp.__call__`): it is the one
route on the hot path, and Starlette's routing and request objects would cost it a fifth of
its time.  Every error, on every route, is ``{"error": "..."}`` with a 4xx/5xx status.
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from typing import Any

from .. import __version__
from ..errors import ConfigError, EdgebenchError, ModelLoadError, UnknownNameError
from .auth import Authenticator, Tenant
from .infer import handle_infer
from .metrics import ServeMetrics
from .protocol import Limits, ProtocolError, loads_checked
from .repository import Repository, ServedModel

__all__ = ["ServeApp"]

log = logging.getLogger("edgebench.serve")
EXTENSIONS = ["binary_tensor_data", "classification", "model_configuration", "model_repository",
              "schedule_policy", "statistics", "parameters"]
_TRITON_TYPE = {"BYTES": "TYPE_STRING"}
FOLD_EVERY_S = 0.5


class ServeApp:
    """The server's state (repository, tenants, metrics, in-flight count) and its ASGI app."""

    def __init__(self, repo: Repository, auth: Authenticator | None = None, limits: Limits | None = None):
        self.repo = repo
        self.auth = auth or Authenticator(None)
        self.limits = limits or Limits()
        self.metrics = ServeMetrics(repo.served, lambda: list(self.auth.tenants.values()))
        self.draining = False
        self.inflight = 0
        self.starlette = self._build()

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            path = scope["path"]
            if path.startswith("/v2/models/") and path.endswith("/infer"):
                parts = path[11:-6].split("/")
                if len(parts) == 1 and parts[0]:
                    return await handle_infer(self, scope, receive, send, parts[0], None)
                if len(parts) == 3 and parts[1] == "versions" and parts[0] and parts[2]:
                    return await handle_infer(self, scope, receive, send, parts[0], parts[2])
        await self.starlette(scope, receive, send)

    # -- plumbing ---------------------------------------------------------------------------------
    def _build(self) -> Any:
        from starlette.applications import Starlette
        from starlette.exceptions import HTTPException
        from starlette.routing import Route

        r = self._route
        m, v = "/v2/models/{model}", "/v2/models/{model}/versions/{version}"
        routes = [
            Route("/v2", r(self.server_metadata)),
            Route("/v2/health/live", r(self.live, auth=False)),
            Route("/v2/health/ready", r(self.ready, auth=False)),
            Route("/v2/models/stats", r(self.stats)),
            Route("/v2/repository/index", r(self.repo_index), methods=["POST", "GET"]),
            Route("/v2/repository/models/{model}/load", r(self.load), methods=["POST"]),
            Route("/v2/repository/models/{model}/unload", r(self.unload), methods=["POST"]),
            Route("/metrics", r(self.prometheus)),
        ]
        for base in (m, v):
            routes += [Route(base, r(self.model_metadata)), Route(base + "/ready", r(self.model_ready)),
                       Route(base + "/config", r(self.model_config)), Route(base + "/stats", r(self.stats)),
                       Route(base + "/infer", r(self.infer_fallback), methods=["POST"])]

        async def http_error(request: Any, exc: Any) -> Any:
            return _json({"error": exc.detail if exc.status_code != 404 else f"no route {request.url.path}"},
                         exc.status_code)

        return Starlette(routes=routes, exception_handlers={HTTPException: http_error}, lifespan=self._lifespan)

    @contextlib.asynccontextmanager
    async def _lifespan(self, app: Any):
        async def fold_forever() -> None:
            while True:
                await asyncio.sleep(FOLD_EVERY_S)
                try:
                    self.metrics.fold()
                except Exception:  # never let metrics take the server down
                    log.exception("edgebench serve: folding request records failed")

        task = asyncio.get_running_loop().create_task(fold_forever())
        try:
            yield
        finally:
            task.cancel()

    def _route(self, handler: Any, auth: bool = True) -> Any:
        """Wrap a handler: identify the caller, and turn every error into ``{"error": ...}``."""
        async def endpoint(request: Any) -> Any:
            try:
                who = self.auth.identify(request.headers.get("authorization")) if auth and self.auth.enabled else None
                return await handler(request, who)
            except ProtocolError as e:
                if e.status == 401:
                    self.metrics.auth_failures += 1
                return _json({"error": e.message}, e.status, e.headers)
            except UnknownNameError as e:
                return _json({"error": str(e)}, 404)
            except (ConfigError, ModelLoadError) as e:
                return _json({"error": str(e)}, 400)
            except EdgebenchError as e:
                return _json({"error": str(e)}, 500)
            except Exception as e:
                log.exception("edgebench serve: unexpected error on %s", request.url.path)
                return _json({"error": f"internal error: {type(e).__name__}: {e}"}, 500)
        endpoint.__name__ = handler.__name__
        return endpoint

    def _model(self, request: Any, who: Any) -> ServedModel:
        name = request.path_params["model"]
        self.auth.check_model(who, name)
        return self.repo.get(name, request.path_params.get("version"))

    # -- server -----------------------------------------------------------------------------------
    async def server_metadata(self, request: Any, who: Any) -> Any:
        return _json({"name": "edgebench", "version": __version__, "extensions": EXTENSIONS})

    async def live(self, request: Any, who: Any) -> Any:
        return _empty(200)

    async def ready(self, request: Any, who: Any) -> Any:
        ok = not self.draining and all(m.ready for m in self.repo.served())
        return _empty(200) if ok else _json({"error": "the server is shutting down" if self.draining
                                             else "a model is not ready"}, 503)

    async def prometheus(self, request: Any, who: Any) -> Any:
        from prometheus_client import CONTENT_TYPE_LATEST
        from starlette.responses import Response

        return Response(self.metrics.text(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def infer_fallback(self, request: Any, who: Any) -> Any:  # pragma: no cover - __call__ takes it
        raise ProtocolError(404, "malformed inference path")

    # -- models -----------------------------------------------------------------------------------
    async def model_metadata(self, request: Any, who: Any) -> Any:
        sm = self._model(request, who)
        sig = sm.signature
        return _json({"name": sm.name, "versions": self.repo.versions(sm.name), "platform": sm.platform,
                      "inputs": [{"name": n, "datatype": dt, "shape": list(d)} for n, dt, d in sig.inputs],
                      "outputs": [{"name": n, "datatype": dt, "shape": list(d)} for n, dt, d in sig.outputs]})

    async def model_ready(self, request: Any, who: Any) -> Any:
        sm = self._model(request, who)
        if sm.ready and not self.draining:
            return _empty(200)
        return _json({"error": f"model {sm.name!r} is not ready"}, 503)

    async def model_config(self, request: Any, who: Any) -> Any:
        return _json(triton_config(self._model(request, who), self.repo.versions))

    async def stats(self, request: Any, who: Any) -> Any:
        name = request.path_params.get("model")
        if name is not None:
            served = [self._model(request, who)]
        else:
            served = [m for m in self.repo.served()
                      if not isinstance(who, Tenant) or who.cfg.allows(m.name)]
        return _json({"model_stats": [self._stats_of(m) for m in served]})

    def _stats_of(self, sm: ServedModel) -> dict[str, Any]:
        t = self.metrics.model_totals(sm.name, sm.version)
        n = t["ok"]

        def d(count: int, ns: int) -> dict[str, int]:
            return {"count": int(count), "ns": int(ns)}
        zero = d(0, 0)
        return {
            "name": sm.name, "version": sm.version,
            "last_inference": self.metrics.last_inference_ms(sm.name, sm.version),
            "inference_count": self.metrics.rows(sm.name, sm.version), "execution_count": t["exec"],
            "inference_stats": {"success": d(n, t["ok_ns"]), "fail": d(t["fail"], t["fail_ns"]),
                                "queue": d(n, t["queue_ns"]), "compute_input": d(n, t["input_ns"]),
                                "compute_infer": d(n, t["compute_ns"]), "compute_output": d(n, 0),
                                "cache_hit": zero, "cache_miss": zero},
            "batch_stats": [{"batch_size": b, "compute_input": d(c, 0), "compute_infer": d(c, ns),
                             "compute_output": d(c, 0)} for b, (c, ns) in sorted(t["batch_sizes"].items())],
        }

    # -- repository -------------------------------------------------------------------------------
    async def _body(self, request: Any) -> dict:
        limit = self.limits.max_header_bytes
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise ProtocolError(413, f"request body is over the limit of {limit} bytes")
            chunks.append(chunk)
        raw = b"".join(chunks)
        if not raw.strip():
            return {}
        obj = loads_checked(raw, self.limits)
        if not isinstance(obj, dict):
            raise ProtocolError(400, "the request body must be a JSON object")
        return obj

    async def repo_index(self, request: Any, who: Any) -> Any:
        body = await self._body(request) if request.method == "POST" else {}
        allowed = None
        if isinstance(who, Tenant) and "*" not in who.cfg.models:
            allowed = who.cfg.models
        rows = self.repo.index(allowed)
        if body.get("ready") is True:
            rows = [r for r in rows if r["state"] == "READY"]
        return _json(rows)

    async def load(self, request: Any, who: Any) -> Any:
        self.auth.require_admin(who, "loading a model")
        name = request.path_params["model"]
        params = (await self._body(request)).get("parameters") or {}
        if not isinstance(params, dict):
            raise ProtocolError(400, "'parameters' must be a JSON object")
        if any(k.startswith("file:") for k in params):
            raise ProtocolError(400, "loading model files sent in the request is not supported",)
        cfg = self.repo.config_from_json(name, params["config"]) if "config" in params else None
        old = await asyncio.to_thread(self.repo.load, name, cfg)
        await self._retire(old)
        return _empty(200)

    async def unload(self, request: Any, who: Any) -> Any:
        self.auth.require_admin(who, "unloading a model")
        await self._retire(self.repo.unload(request.path_params["model"]))
        return _empty(200)

    async def _retire(self, models: list[ServedModel], timeout_s: float = 30.0) -> None:
        """Wait for the requests still running on ``models`` (bounded), then close them."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while any(m.inflight for m in models) and loop.time() < deadline:
            await asyncio.sleep(0.005)
        self.metrics.fold(models)  # their last records still count
        for m in models:
            await asyncio.to_thread(m.close)


def triton_config(sm: ServedModel, versions: Any = None) -> dict[str, Any]:
    """Triton's JSON model configuration of a served model."""
    sig, cfg = sm.signature, sm.config
    mbs = sig.max_batch_size

    def tensors(ts: list) -> list[dict[str, Any]]:
        return [{"name": n, "data_type": _TRITON_TYPE.get(dt, "TYPE_" + dt), "format": "FORMAT_NONE",
                 "dims": list(d[1:] if mbs else d)} for n, dt, d in ts]
    vp = cfg.version_policy
    policy = ({"latest": {"num_versions": 1}} if vp == "latest" else {"all": {}} if vp == "all"
              else {"specific": {"versions": list(vp)}})
    out: dict[str, Any] = {
        "name": sm.name, "platform": sm.platform, "backend": sm.engine.backend, "version_policy": policy,
        "max_batch_size": mbs, "input": tensors(sig.inputs), "output": tensors(sig.outputs),
        "instance_group": [{"name": f"{sm.name}_0", "kind": "KIND_GPU" if sm.engine.device.startswith("cuda")
                            else "KIND_CPU", "count": cfg.batching.instances if cfg.batching else 1}],
        "parameters": {"edgebench_dispatch": {"string_value": sm.runner.mode},
                       "edgebench_threads": {"string_value": str(sm.engine.threads or "auto")}},
    }
    b = cfg.batching
    if b is not None:
        out["dynamic_batching"] = {
            "preferred_batch_size": list(b.preferred_batch_sizes or []),
            "max_queue_delay_microseconds": int(round(b.max_queue_delay_ms * 1000)),
            "preserve_ordering": False, "priority_levels": sm.priority_levels, "default_priority_level": 1,
            "default_queue_policy": {"timeout_action": "REJECT", "allow_timeout_override": True,
                                     "default_timeout_microseconds": int((b.timeout_ms or 0) * 1000),
                                     "max_queue_size": b.max_queue_size},
        }
    return out


def _json(obj: Any, status: int = 200, headers: dict | None = None) -> Any:
    from starlette.responses import Response

    return Response(json.dumps(obj).encode(), status, headers=headers, media_type="application/json")


def _empty(status: int) -> Any:
    from starlette.responses import Response

    return Response(b"", status)
