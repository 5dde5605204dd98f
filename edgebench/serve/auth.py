"""Tenants: bearer tokens, the models each may use, rate limits, queue shares and priorities.

``auth.json``::

    {"tenants": {
        "acme":  {"token": "s3cret", "models": ["digits", "mlp"], "rate_limit_rps": 100,
                  "burst": 20, "priority": 1, "max_queue": 64, "max_waiting": 256},
        "batch": {"token": "...", "models": ["*"], "priority": 2, "max_queue": 16,
                  "quota": {"requests": 100000, "window_s": 86400}}},
     "admin_token": "..."}

* A request carries ``Authorization: Bearer TOKEN``.  Tokens are compared with
  :func:`hmac.compare_digest` against every tenant's (constant time, no early exit) and are
  never logged or shown in any repr.  No token or a wrong one -> 401.
* A model outside the tenant's ``models`` -> 403 (``"*"`` allows all).
* ``rate_limit_rps`` is a token bucket (``burst`` deep, default one second's worth);
  over it -> 429 with ``Retry-After``.  ``quota`` caps requests per fixed window -> 429.
* ``max_queue`` caps the tenant's requests at the model (in the batcher's queue or running), so
  one tenant flooding cannot fill the queue in front of another.  Its further requests wait at
  the server's edge, in order, costing nothing but memory, and the flooding client is held back
  by its own unanswered requests instead of retrying in a loop; more than ``max_waiting`` of
  them (default ``4 * max_queue``) -> 429.  ``priority`` (1 highest) is the priority its
  requests get in the dynamic batcher.
* ``admin_token`` may load and unload models; without it, repository control is refused
  when tenants are configured.
"""
from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import math
import threading
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .._ratelimit import TokenBucket
from ..errors import ConfigError
from .protocol import ProtocolError

__all__ = ["ADMIN", "AuthConfig", "Authenticator", "Tenant", "TenantConfig"]


@dataclass(frozen=True)
class TenantConfig:
    """One tenant of ``auth.json`` (the token never appears in its repr)."""

    name: str
    token: str = field(repr=False)
    models: tuple[str, ...] = ("*",)
    rate_limit_rps: float | None = None
    burst: float | None = None
    priority: int = 1
    max_queue: int | None = None
    max_waiting: int | None = None
    quota_requests: int | None = None
    quota_window_s: float = 86400.0

    def __post_init__(self) -> None:
        where = f"tenant {self.name!r}"
        if not isinstance(self.token, str) or len(self.token) < 8:
            raise ConfigError(f"{where}: token must be a string of at least 8 characters",
                              "generate one with python -c 'import secrets; print(secrets.token_urlsafe())'")
        if not all(isinstance(m, str) for m in self.models):
            raise ConfigError(f"{where}: models must be a list of model names (or [\"*\"])")
        for k in ("rate_limit_rps", "burst", "quota_window_s"):
            v = getattr(self, k)
            if v is not None and (not isinstance(v, (int, float)) or isinstance(v, bool) or not v > 0):
                raise ConfigError(f"{where}: {k} must be a positive number, got {v!r}")
        for k in ("priority", "max_queue", "quota_requests"):
            v = getattr(self, k)
            if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 1):
                raise ConfigError(f"{where}: {k} must be a positive integer, got {v!r}")
        if self.max_waiting is not None and (not isinstance(self.max_waiting, int) or isinstance(
                self.max_waiting, bool) or self.max_waiting < 0):
            raise ConfigError(f"{where}: max_waiting must be a non-negative integer, got {self.max_waiting!r}")

    def allows(self, model: str) -> bool:
        return "*" in self.models or model in self.models


_KEYS = {"token", "models", "rate_limit_rps", "burst", "priority", "max_queue", "max_waiting", "quota"}


@dataclass(frozen=True)
class AuthConfig:
    """The tenants (and optional admin token) of ``auth.json``."""

    tenants: tuple[TenantConfig, ...]
    admin_token: str | None = field(default=None, repr=False)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], where: str = "auth config") -> AuthConfig:
        if not isinstance(d, Mapping) or not isinstance(d.get("tenants"), Mapping) or not d["tenants"]:
            raise ConfigError(f"{where} needs a non-empty \"tenants\" object",
                              'write {"tenants": {"NAME": {"token": "...", "models": ["..."]}}}')
        unknown_top = sorted(set(d) - {"tenants", "admin_token"})
        if unknown_top:
            raise ConfigError(f"{where}: unknown key(s) {unknown_top}", "known: tenants, admin_token")
        tenants = []
        for name, t in d["tenants"].items():
            if not isinstance(t, Mapping):
                raise ConfigError(f"{where}: tenant {name!r} must be an object")
            unknown = sorted(set(t) - _KEYS)
            if unknown:
                raise ConfigError(f"{where}: tenant {name!r} has unknown key(s) {unknown}", f"known: {sorted(_KEYS)}")
            quota = t.get("quota") or {}
            if not isinstance(quota, Mapping) or set(quota) - {"requests", "window_s"}:
                raise ConfigError(f"{where}: tenant {name!r}: quota must be {{\"requests\": N, \"window_s\": S}}")
            models = t.get("models", ["*"])
            if isinstance(models, str) or not isinstance(models, (list, tuple)):
                raise ConfigError(f"{where}: tenant {name!r}: models must be a list")
            tenants.append(TenantConfig(
                name=str(name), token=t.get("token"), models=tuple(models),
                rate_limit_rps=t.get("rate_limit_rps"), burst=t.get("burst"), priority=t.get("priority", 1),
                max_queue=t.get("max_queue"), max_waiting=t.get("max_waiting"), quota_requests=quota.get("requests"),
                quota_window_s=quota.get("window_s", 86400.0)))
        tokens = [t.token for t in tenants]
        admin = d.get("admin_token")
        if admin is not None and (not isinstance(admin, str) or len(admin) < 8):
            raise ConfigError(f"{where}: admin_token must be a string of at least 8 characters")
        if len(set(tokens + ([admin] if admin else []))) != len(tokens) + (1 if admin else 0):
            raise ConfigError(f"{where}: two tenants (or a tenant and the admin) share a token",
                              "give every tenant its own token")
        return cls(tuple(tenants), admin)

    @classmethod
    def load(cls, source: str | Path | Mapping[str, Any] | AuthConfig) -> AuthConfig:
        """From a path to ``auth.json``, a dict of its content, or an AuthConfig."""
        if isinstance(source, AuthConfig):
            return source
        if isinstance(source, Mapping):
            return cls.from_dict(source)
        path = Path(source)
        try:
            data = json.loads(path.read_text())
        except OSError as e:
            raise ConfigError(f"cannot read auth file {path}: {e.strerror or e}") from None
        except ValueError as e:
            raise ConfigError(f"auth file {path} is not valid JSON: {e}") from None
        return cls.from_dict(data, str(path))


class Tenant:
    """A tenant's live state: token bucket, quota window, requests at the model and waiting.

    ``inflight``, ``waiting`` and :meth:`acquire` / :meth:`release` belong to the server's event
    loop (no locks); :meth:`admit` may be called from any thread.
    """

    def __init__(self, cfg: TenantConfig):
        self.cfg = cfg
        self.name = cfg.name
        self.priority = cfg.priority
        self.max_queue = cfg.max_queue
        self.max_waiting = (cfg.max_waiting if cfg.max_waiting is not None
                            else 4 * cfg.max_queue if cfg.max_queue else 0)
        self.inflight = 0  # requests at the model (queued in the batcher or running)
        self._waiters: deque = deque()
        self._rate = cfg.rate_limit_rps
        self._bucket = TokenBucket(cfg.rate_limit_rps, cfg.burst) if cfg.rate_limit_rps else None
        self._window_start = time.monotonic()
        self._window_count = 0
        self._lock = threading.Lock()

    def admit(self) -> None:
        """Take one request's worth of rate and quota, or raise a 429 :class:`ProtocolError`."""
        if self._rate is None and self.cfg.quota_requests is None:
            return
        with self._lock:
            now = time.monotonic()
            if self.cfg.quota_requests is not None:
                if now - self._window_start >= self.cfg.quota_window_s:
                    self._window_start, self._window_count = now, 0
                if self._window_count >= self.cfg.quota_requests:
                    wait = self._window_start + self.cfg.quota_window_s - now
                    raise ProtocolError(429, f"tenant {self.name!r} has used its quota of {self.cfg.quota_requests} "
                                             f"requests per {self.cfg.quota_window_s:g} s",
                                        {"Retry-After": str(max(1, math.ceil(wait)))})
            if self._bucket is not None:
                wait = self._bucket.take(now)
                if wait:
                    raise ProtocolError(429, f"tenant {self.name!r} is over its rate limit of "
                                             f"{self._rate:g} requests/s",
                                        {"Retry-After": str(max(1, math.ceil(wait)))})
            self._window_count += 1

    @property
    def waiting(self) -> int:
        """Requests held at the edge until one of the tenant's ``max_queue`` slots frees."""
        return len(self._waiters)

    def check_room(self) -> None:
        """429 when the tenant's slots are taken and its waiting line is full."""
        if self.max_queue is not None and self.inflight >= self.max_queue and len(self._waiters) >= self.max_waiting:
            raise ProtocolError(429, f"tenant {self.name!r} has {self.inflight} requests at the model (its "
                                     f"max_queue) and {len(self._waiters)} waiting (its max_waiting)",
                                {"Retry-After": "1"})

    async def acquire(self) -> None:
        """Take a slot at the model, waiting in line (FIFO) while all ``max_queue`` are taken."""
        if self.max_queue is None or (self.inflight < self.max_queue and not self._waiters):
            self.inflight += 1
            return
        self.check_room()
        fut = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        try:
            await fut  # release() hands its slot over (inflight unchanged)
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():  # the slot came with the cancellation: pass it on
                self.release()
            else:
                with contextlib.suppress(ValueError):
                    self._waiters.remove(fut)
            raise

    def release(self) -> None:
        """Give back a slot: to the first request waiting, else free it."""
        while self._waiters:
            fut = self._waiters.popleft()
            if not fut.done():
                fut.set_result(None)
                return
        self.inflight -= 1

    def __repr__(self) -> str:
        return f"Tenant({self.name!r}, priority={self.priority}, inflight={self.inflight}, waiting={self.waiting})"


#: the identity of the admin token (may load and unload models)
ADMIN = "admin"


class Authenticator:
    """Maps ``Authorization`` headers to tenants; ``None`` config means no authentication."""

    def __init__(self, config: AuthConfig | None):
        self.config = config
        self.tenants = {t.name: Tenant(t) for t in config.tenants} if config else {}
        self._by_token = [(t.token.encode(), self.tenants[t.name]) for t in config.tenants] if config else []
        self._admin = config.admin_token.encode() if config and config.admin_token else None

    @property
    def enabled(self) -> bool:
        return self.config is not None

    @property
    def max_priority(self) -> int:
        return max((t.priority for t in self.tenants.values()), default=1)

    def identify(self, authorization: bytes | str | None) -> Tenant | str | None:
        """The tenant (or :data:`ADMIN`) a header value names; 401 if it names none.

        Without authentication configured, returns ``None`` for every request.
        """
        if self.config is None:
            return None
        if not authorization:
            raise ProtocolError(401, "this server needs a bearer token: send 'Authorization: Bearer TOKEN'",
                                {"WWW-Authenticate": "Bearer"})
        if isinstance(authorization, str):
            authorization = authorization.encode("latin-1", "replace")
        scheme, _, token = authorization.strip().partition(b" ")
        token = token.strip()
        if scheme.lower() != b"bearer" or not token:
            raise ProtocolError(401, "the Authorization header must be 'Bearer TOKEN'", {"WWW-Authenticate": "Bearer"})
        found: Tenant | str | None = None
        for secret, tenant in self._by_token:  # every comparison runs: the time does not tell which
            if hmac.compare_digest(secret, token):
                found = tenant
        if self._admin is not None and hmac.compare_digest(self._admin, token):
            found = ADMIN
        if found is None:
            raise ProtocolError(401, "invalid bearer token", {"WWW-Authenticate": 'Bearer error="invalid_token"'})
        return found

    def check_model(self, who: Tenant | str | None, model: str) -> None:
        """403 unless ``who`` may use ``model``."""
        if isinstance(who, Tenant) and not who.cfg.allows(model):
            raise ProtocolError(403, f"tenant {who.name!r} may not use model {model!r}")

    def require_admin(self, who: Tenant | str | None, what: str) -> None:
        if self.config is not None and who != ADMIN:
            raise ProtocolError(403, f"{what} needs the admin token" + (
                "" if self._admin else " (none is configured in the auth file: add \"admin_token\")"))
