"""Tenants on a cluster: priorities, in-flight shares and rate limits, as in the server.

    cl = eb.Cluster.local(tenants={"gold": {"priority": 1},
                                   "free": {"priority": 2, "max_inflight": 8, "rate_limit_rps": 50}})
    dep = cl.deploy(model, tenant="free")

A tenant's ``max_inflight`` caps its requests in flight over all its deployments, so one tenant
flooding the cluster is refused (:class:`~edgebench.errors.QueueFullError`) while another's
requests keep their latency; ``priority`` (1 highest) orders requests waiting at a replica;
``rate_limit_rps`` is a token bucket ``burst`` deep.
"""
from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .._ratelimit import TokenBucket
from ..errors import ConfigError, QueueFullError

__all__ = ["TenantLimits", "Tenants"]


@dataclass
class TenantLimits:
    """One tenant's share of the cluster."""

    name: str
    priority: int = 1
    max_inflight: int | None = None
    rate_limit_rps: float | None = None
    burst: float | None = None

    def __post_init__(self) -> None:
        for k in ("priority", "max_inflight"):
            v = getattr(self, k)
            if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 1):
                raise ConfigError(f"tenant {self.name!r}: {k} must be a positive integer, got {v!r}")
        for k in ("rate_limit_rps", "burst"):
            v = getattr(self, k)
            if v is not None and (not isinstance(v, (int, float)) or isinstance(v, bool) or not v > 0):
                raise ConfigError(f"tenant {self.name!r}: {k} must be a positive number, got {v!r}")


class _State:
    def __init__(self, limits: TenantLimits):
        self.limits = limits
        self.inflight = 0
        self.admitted = 0
        self.refused = 0
        self.bucket = TokenBucket(limits.rate_limit_rps, limits.burst) if limits.rate_limit_rps else None


class Tenants:
    """The cluster's tenants and their live counters (thread-safe)."""

    def __init__(self, config: Mapping[str, Any] | None = None):
        self._lock = threading.Lock()
        self._state: dict[str, _State] = {}
        for name, spec in (config or {}).items():
            if isinstance(spec, TenantLimits):
                limits = spec
            elif isinstance(spec, Mapping):
                unknown = set(spec) - {"priority", "max_inflight", "rate_limit_rps", "burst"}
                if unknown:
                    raise ConfigError(f"tenant {name!r}: unknown keys {sorted(unknown)}",
                                      "use priority, max_inflight, rate_limit_rps and burst")
                limits = TenantLimits(name, **spec)
            else:
                raise ConfigError(f"tenant {name!r} must be a dict of limits, got {type(spec).__name__}")
            self._state[name] = _State(limits)

    def __contains__(self, name: str | None) -> bool:
        return name in self._state

    def names(self) -> list[str]:
        return list(self._state)

    def priority(self, name: str | None) -> int:
        st = self._state.get(name) if name else None
        return st.limits.priority if st else 1

    def admit(self, name: str | None) -> None:
        """Take one request's worth of the tenant's share, or raise QueueFullError."""
        st = self._state.get(name) if name else None
        if st is None:
            return
        lim = st.limits
        with self._lock:
            if lim.max_inflight is not None and st.inflight >= lim.max_inflight:
                st.refused += 1
                raise QueueFullError(f"tenant {name!r} has {st.inflight} requests in flight (its max_inflight)",
                                     "wait for answers before sending more, or raise the tenant's max_inflight")
            if st.bucket is not None and st.bucket.take():
                st.refused += 1
                raise QueueFullError(f"tenant {name!r} is over its rate limit of {lim.rate_limit_rps:g} requests/s",
                                     "send more slowly, or raise the tenant's rate_limit_rps")
            st.inflight += 1
            st.admitted += 1

    def release(self, name: str | None) -> None:
        st = self._state.get(name) if name else None
        if st is not None:
            with self._lock:
                st.inflight = max(0, st.inflight - 1)

    def rows(self) -> list[dict[str, Any]]:
        with self._lock:
            return [{"tenant": n, "priority": s.limits.priority, "max_inflight": s.limits.max_inflight,
                     "rate_limit_rps": s.limits.rate_limit_rps, "inflight": s.inflight, "admitted": s.admitted,
                     "refused": s.refused} for n, s in self._state.items()]
