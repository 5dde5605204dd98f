"""``POST /v2/models/{m}[/versions/{v}]/infer``: the hot path, written against ASGI directly.

Each request is checked in the order that costs the server least and tells a stranger least:
token (401), the tenant's model list (403), the model (404), rate limit and the tenant's
waiting line (429), body size (413), then the body itself (400).  Only a request that passes
all of it reaches a model, and only while its tenant holds fewer than ``max_queue`` requests
there; otherwise it waits in its tenant's line at the edge.  Answers go out as JSON or, when
asked, with the binary tensor extension.
"""
from __future__ import annotations

import logging
import zlib
from time import perf_counter_ns
from typing import Any

from ..errors import (
    EdgebenchError,
    EngineClosedError,
    InferenceError,
    InvalidInputError,
    QueueFullError,
    RequestTimeoutError,
)
from .auth import Tenant
from .encode import encode_infer_response
from .protocol import ProtocolError, parse_infer_request

__all__ = ["ClientGone", "handle_infer", "read_body", "send_error", "send_json"]

log = logging.getLogger("edgebench.serve")


class ClientGone(Exception):
    """The client disconnected before its request body arrived."""


async def send_json(send: Any, status: int, body: bytes, extra: list | None = None) -> None:
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if extra:
        headers += extra
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def error_body(message: str) -> bytes:
    import json

    return json.dumps({"error": message}).encode()


async def send_error(send: Any, e: ProtocolError) -> None:
    extra = [(k.lower().encode(), v.encode()) for k, v in e.headers.items()]
    await send_json(send, e.status, error_body(e.message), extra)


async def read_body(receive: Any, headers: dict, limit: int) -> bytes:
    """The request body, decompressed, at most ``limit`` bytes (413 beyond, 400/415 if undecodable)."""
    cl = headers.get(b"content-length")
    if cl is not None:
        try:
            n = int(cl)
        except ValueError:
            raise ProtocolError(400, "Content-Length is not a number") from None
        if n > limit:
            raise ProtocolError(413, f"request body of {n} bytes is over the limit of {limit} bytes")
    msg = await receive()
    body = msg.get("body", b"")
    if msg.get("more_body"):
        chunks, size = [body], len(body)
        while msg.get("more_body"):
            msg = await receive()
            if msg["type"] == "http.disconnect":
                raise ClientGone()
            part = msg.get("body", b"")
            size += len(part)
            if size > limit:
                raise ProtocolError(413, f"request body is over the limit of {limit} bytes")
            chunks.append(part)
        body = b"".join(chunks)
    elif msg["type"] == "http.disconnect":
        raise ClientGone()
    if len(body) > limit:
        raise ProtocolError(413, f"request body of {len(body)} bytes is over the limit of {limit} bytes")
    enc = headers.get(b"content-encoding")
    if enc is not None and enc.strip().lower() not in (b"identity", b""):
        body = _decompress(body, enc.strip().lower(), limit)
    return body


def _decompress(body: bytes, enc: bytes, limit: int) -> bytes:
    if enc == b"gzip":
        d = zlib.decompressobj(16 + zlib.MAX_WBITS)
    elif enc == b"deflate":
        d = zlib.decompressobj(zlib.MAX_WBITS)
    else:
        raise ProtocolError(415, f"Content-Encoding {enc.decode('latin-1')!r} is not supported; use gzip or deflate")
    try:
        out = d.decompress(body, limit + 1)
    except zlib.error as e:
        raise ProtocolError(400, f"request body is not valid {enc.decode()} data: {e}") from None
    if len(out) > limit or d.unconsumed_tail:
        raise ProtocolError(413, f"decompressed request body is over the limit of {limit} bytes")
    if not d.eof:
        raise ProtocolError(400, f"request body is truncated {enc.decode()} data")
    return out


def _status_of(e: BaseException) -> tuple[int, str, dict]:
    """HTTP status and metrics reason of an error raised by a model, batcher or engine."""
    if isinstance(e, QueueFullError):
        return 503, "rejected", {"Retry-After": "1"}
    if isinstance(e, RequestTimeoutError):
        return 504, "timeout", {}
    if isinstance(e, InvalidInputError):
        return 400, "invalid", {}
    if isinstance(e, EngineClosedError):
        return 503, "rejected", {"Retry-After": "1"}
    if isinstance(e, (InferenceError, EdgebenchError)):
        return 500, "backend", {}
    return 500, "other", {}


_REASON = {400: "invalid", 413: "invalid", 415: "invalid", 429: "rate_limited", 503: "rejected"}


async def handle_infer(app: Any, scope: dict, receive: Any, send: Any, name: str, version: str | None) -> None:
    """Answer one inference request (``app`` is the :class:`~edgebench.serve.app.ServeApp`)."""
    t0 = perf_counter_ns()
    headers = dict(scope["headers"])
    tenant = sm = cell = None
    counted = held = False
    try:
        who = app.auth.identify(headers.get(b"authorization")) if app.auth.enabled else None
        if who is not None:
            app.auth.check_model(who, name)
            tenant = who if isinstance(who, Tenant) else None
        sm = app.repo.get(name, version)
        if not sm.ready:
            raise ProtocolError(503, f"model {name!r} is not ready", {"Retry-After": "1"})
        cell = app.metrics.cell(sm.name, sm.version, tenant.name if tenant else None)
        if tenant is not None:
            tenant.check_room()
            tenant.admit()
        sm.inflight += 1
        app.inflight += 1
        counted = True
        body = await read_body(receive, headers, app.limits.max_body_bytes)
        hl = headers.get(b"inference-header-content-length")
        if hl is not None:
            try:
                hl = int(hl)
            except ValueError:
                raise ProtocolError(400, "Inference-Header-Content-Length is not a number") from None
        req = parse_infer_request(body, hl, sm.signature, name, app.limits)
        levels = sm.priority_levels
        priority = req.priority or (tenant.priority if tenant else 1)
        if tenant is not None and priority < tenant.priority:
            priority = tenant.priority  # a tenant may lower its priority, never raise it
        priority = min(priority, levels)
        timeout_ms = req.timeout_us / 1000 if req.timeout_us else None
        if tenant is not None:
            await tenant.acquire()  # the tenant's share of the model's queue (may wait in line)
            held = True
        try:
            results = await sm.runner.infer(req.feeds, priority, timeout_ms)
        except ProtocolError:
            raise
        except Exception as e:
            status, reason, extra = _status_of(e)
            cell.fail(reason, perf_counter_ns() - t0)
            msg = str(e) if isinstance(e, EdgebenchError) else f"{type(e).__name__}: {e}"
            await send_error(send, ProtocolError(status, msg, extra))
            return
        out, header_len = encode_infer_response(sm.name, sm.version, req.id, req.outputs, results)
        extra = [(b"content-type", b"application/json" if header_len is None else b"application/octet-stream"),
                 (b"content-length", str(len(out)).encode())]
        if header_len is not None:
            extra.append((b"inference-header-content-length", str(header_len).encode()))
        cell.ok(req.batch, perf_counter_ns() - t0)
        await send({"type": "http.response.start", "status": 200, "headers": extra})
        await send({"type": "http.response.body", "body": out})
    except ProtocolError as e:
        if e.status == 401:
            app.metrics.auth_failures += 1
        elif cell is not None:
            cell.fail(_REASON.get(e.status, "other"), perf_counter_ns() - t0)
        await send_error(send, e)
    except ClientGone:
        if cell is not None:
            cell.fail("canceled", perf_counter_ns() - t0)
    except Exception as e:  # a bug of ours: answer 500, keep serving
        log.exception("edgebench serve: unexpected error answering an inference request")
        if cell is not None:
            cell.fail("other", perf_counter_ns() - t0)
        try:
            await send_error(send, ProtocolError(500, f"internal error: {type(e).__name__}: {e}"))
        except Exception:  # the response had already started
            pass
    finally:
        if counted:
            sm.inflight -= 1
            app.inflight -= 1
        if held:
            tenant.release()
