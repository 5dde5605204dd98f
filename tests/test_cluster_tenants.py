"""Tenant limits of the cluster and the token bucket they share with the server (no cluster)."""
from __future__ import annotations

import pytest

from edgebench._ratelimit import TokenBucket
from edgebench.cluster.tenants import TenantLimits, Tenants
from edgebench.errors import ConfigError, QueueFullError


def test_token_bucket_refills_at_its_rate():
    b = TokenBucket(10.0, burst=2)
    t = b.stamp
    assert b.take(t) == 0.0 and b.take(t) == 0.0
    wait = b.take(t)
    assert wait == pytest.approx(0.1)  # one token every 0.1 s
    assert b.take(t + 0.05) > 0  # half a token: still refused
    assert b.take(t + 0.11) == 0.0


def test_tenant_rate_limit_and_inflight_cap():
    ts = Tenants({"free": {"rate_limit_rps": 1, "burst": 2}, "capped": {"max_inflight": 2}, "gold": {"priority": 1}})
    ts.admit("free")
    ts.admit("free")
    with pytest.raises(QueueFullError, match="rate limit"):
        ts.admit("free")
    ts.admit("capped")
    ts.admit("capped")
    with pytest.raises(QueueFullError, match="max_inflight"):
        ts.admit("capped")
    ts.release("capped")
    ts.admit("capped")  # a slot came back
    for _ in range(100):
        ts.admit("gold")  # no limits
    ts.admit(None)  # requests of no tenant are not counted
    rows = {r["tenant"]: r for r in ts.rows()}
    assert rows["free"]["refused"] == 1 and rows["capped"]["refused"] == 1 and rows["gold"]["admitted"] == 100
    assert ts.priority("gold") == 1 and ts.priority(None) == 1


def test_bad_tenant_config_is_a_config_error():
    with pytest.raises(ConfigError, match="unknown keys"):
        Tenants({"x": {"max_queue": 3}})
    with pytest.raises(ConfigError, match="max_inflight"):
        Tenants({"x": {"max_inflight": 0}})
    with pytest.raises(ConfigError, match="rate_limit_rps"):
        TenantLimits("x", rate_limit_rps=-1)
    with pytest.raises(ConfigError, match="dict"):
        Tenants({"x": 5})
