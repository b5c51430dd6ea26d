"""Per-tenant token buckets on uploads and job submissions: ``rate`` tokens per minute, up to ``burst`` saved.

In-process by default; shared by every API replica through Redis when ``Settings.rate_limit_redis`` is set
(the broker when it is Redis). A refused request gets 429 problem+json with ``Retry-After``.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from typing import Any

from fastapi import Request

from app.api.deps import SettingsDep, TenantDep
from app.api.problems import Problem
from app.core.config import Settings

# KEYS[1] = bucket; ARGV = rate per second, burst, now, cost -> {allowed (0/1), seconds until one token}
_LUA = """
local b = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local rate, burst, now, cost = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local tokens = tonumber(b[1]) or burst
local ts = tonumber(b[2]) or now
tokens = math.min(burst, tokens + math.max(0, now - ts) * rate)
local ok = 0
if tokens >= cost then tokens = tokens - cost; ok = 1 end
redis.call('HSET', KEYS[1], 'tokens', tokens, 'ts', now)
redis.call('EXPIRE', KEYS[1], math.ceil(burst / rate) + 60)
return {ok, tostring((cost - tokens) / rate)}
"""


class TokenBuckets:
    """Token buckets keyed by name (thread-safe, in this process)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._state: dict[str, tuple[float, float]] = {}

    def take(self, key: str, rate_per_s: float, burst: int, cost: float = 1.0) -> tuple[bool, float]:
        """Take ``cost`` tokens; returns (allowed, seconds until enough tokens when refused)."""
        now = self._clock()
        with self._lock:
            tokens, ts = self._state.get(key, (float(burst), now))
            tokens = min(float(burst), tokens + max(0.0, now - ts) * rate_per_s)
            ok = tokens >= cost
            if ok:
                tokens -= cost
            self._state[key] = (tokens, now)
        return ok, 0.0 if ok else (cost - tokens) / rate_per_s


class RedisTokenBuckets:
    """The same buckets in Redis (one Lua script call per request), shared by API replicas."""

    def __init__(self, url: str) -> None:
        import redis

        self._client = redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)
        self._script = self._client.register_script(_LUA)

    def take(self, key: str, rate_per_s: float, burst: int, cost: float = 1.0) -> tuple[bool, float]:
        ok, wait = self._script(keys=[f"simprune:ratelimit:{key}"], args=[rate_per_s, burst, time.time(), cost])
        return bool(int(ok)), max(0.0, float(wait))


def make_buckets(settings: Settings) -> Any:
    """The bucket store for ``settings``."""
    return RedisTokenBuckets(settings.rate_limit_redis) if settings.rate_limit_redis else TokenBuckets()


def _limit(kind: str) -> Callable[..., None]:
    def dependency(request: Request, settings: SettingsDep, tenant_id: TenantDep) -> None:
        if not settings.rate_limit_enabled:
            return
        rate, burst = ((settings.upload_rate_per_min, settings.upload_burst) if kind == "uploads"
                       else (settings.job_rate_per_min, settings.job_burst))
        buckets = request.app.state.rate_buckets
        try:
            ok, wait = buckets.take(f"{kind}:{tenant_id}", rate / 60.0, burst)
        except Exception:  # noqa: BLE001 - a rate limiter outage must not take the API down: fail open
            return
        if not ok:
            retry = max(1, math.ceil(wait))
            raise Problem(429, f"too many {kind} for this tenant: at most {rate:g} per minute (bursts of {burst}); "
                               f"retry in {retry} s", "rate-limited", "Too Many Requests",
                          headers={"Retry-After": str(retry)}, retry_after=retry)

    dependency.__name__ = f"rate_limit_{kind}"
    return dependency


rate_limit_uploads = _limit("uploads")
rate_limit_jobs = _limit("jobs")
