"""Per-tenant token buckets on uploads, job submissions and reads: ``rate`` tokens per minute, up to ``burst`` saved.

In-process by default; shared by every API replica through Redis when ``Settings.rate_limit_redis`` is set
(the broker when it is Redis). A refused request gets 429 problem+json with ``Retry-After``. The same
store holds each tenant's leased event-stream slots (``max_event_streams_per_tenant``).
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Awaitable, Callable
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

    async def atake(self, key: str, rate_per_s: float, burst: int, cost: float = 1.0) -> tuple[bool, float]:
        """:meth:`take` from async code (no I/O: called directly)."""
        return self.take(key, rate_per_s, burst, cost)


class RedisTokenBuckets:
    """The same buckets in Redis (one Lua script call per request), shared by API replicas."""

    def __init__(self, url: str) -> None:
        import redis

        self._url = url
        self._client = redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)
        self._script = self._client.register_script(_LUA)
        self._async: tuple[Any, Any, Any] | None = None  # (event loop, client, script)

    def take(self, key: str, rate_per_s: float, burst: int, cost: float = 1.0) -> tuple[bool, float]:
        ok, wait = self._script(keys=[f"simprune:ratelimit:{key}"], args=[rate_per_s, burst, time.time(), cost])
        return bool(int(ok)), max(0.0, float(wait))

    async def atake(self, key: str, rate_per_s: float, burst: int, cost: float = 1.0) -> tuple[bool, float]:
        """:meth:`take` on an asyncio Redis client (one per event loop): no thread-pool trip per request."""
        import asyncio

        import redis.asyncio

        loop = asyncio.get_running_loop()
        if self._async is None or self._async[0] is not loop:
            client = redis.asyncio.Redis.from_url(self._url, socket_timeout=2, socket_connect_timeout=2)
            self._async = (loop, client, client.register_script(_LUA))
        ok, wait = await self._async[2](keys=[f"simprune:ratelimit:{key}"],
                                        args=[rate_per_s, burst, time.time(), cost])
        return bool(int(ok)), max(0.0, float(wait))


def make_buckets(settings: Settings) -> Any:
    """The bucket store for ``settings``."""
    return RedisTokenBuckets(settings.rate_limit_redis) if settings.rate_limit_redis else TokenBuckets()


def _rate(settings: Settings, kind: str) -> tuple[float, int]:
    if kind == "uploads":
        return settings.upload_rate_per_min, settings.upload_burst
    if kind == "jobs":
        return settings.job_rate_per_min, settings.job_burst
    return settings.read_rate_per_min, settings.read_burst


def _limit(kind: str) -> Callable[..., Awaitable[None]]:
    async def dependency(request: Request, settings: SettingsDep, tenant_id: TenantDep) -> None:
        if not settings.rate_limit_enabled or (kind == "reads" and request.method not in ("GET", "HEAD")):
            return
        rate, burst = _rate(settings, kind)
        buckets = request.app.state.rate_buckets
        try:
            ok, wait = await buckets.atake(f"{kind}:{tenant_id}", rate / 60.0, burst)
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
rate_limit_reads = _limit("reads")
"""On every /v1 router: GET and HEAD requests draw from the tenant's read bucket."""

# --- concurrent event streams ---------------------------------------------------------------------------------

STREAM_LEASE_S = 30.0
"""A stream slot expires unless its stream renews it within this time (a crashed replica's slots free up)."""

# KEYS[1] = the tenant's slots (sorted set, score = lease expiry); ARGV = slot id, limit, now, lease
_ACQUIRE_LUA = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[3])
if redis.call('ZSCORE', KEYS[1], ARGV[1]) or redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[2]) then
  redis.call('ZADD', KEYS[1], tonumber(ARGV[3]) + tonumber(ARGV[4]), ARGV[1])
  redis.call('EXPIRE', KEYS[1], math.ceil(tonumber(ARGV[4])) + 60)
  return 1
end
return 0
"""


class StreamSlots:
    """Leased slots per tenant (in this process): ``acquire`` while fewer than ``limit`` are held, renew by
    acquiring again, ``release`` when the stream ends."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._held: dict[str, dict[str, float]] = {}

    def acquire(self, tenant_id: str, slot: str, limit: int, lease_s: float = STREAM_LEASE_S) -> bool:
        now = self._clock()
        with self._lock:
            held = {k: t for k, t in self._held.get(tenant_id, {}).items() if t > now}
            ok = slot in held or len(held) < limit
            if ok:
                held[slot] = now + lease_s
            self._held[tenant_id] = held
        return ok

    def release(self, tenant_id: str, slot: str) -> None:
        with self._lock:
            self._held.get(tenant_id, {}).pop(slot, None)


class RedisStreamSlots:
    """The same slots in Redis, shared by every API replica."""

    def __init__(self, url: str) -> None:
        import redis

        self._client = redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)
        self._script = self._client.register_script(_ACQUIRE_LUA)

    def acquire(self, tenant_id: str, slot: str, limit: int, lease_s: float = STREAM_LEASE_S) -> bool:
        return bool(int(self._script(keys=[f"simprune:streams:{tenant_id}"],
                                     args=[slot, limit, time.time(), lease_s])))

    def release(self, tenant_id: str, slot: str) -> None:
        self._client.zrem(f"simprune:streams:{tenant_id}", slot)


def make_stream_slots(settings: Settings) -> Any:
    """The stream slot store for ``settings`` (Redis when the rate limits are shared)."""
    return RedisStreamSlots(settings.rate_limit_redis) if settings.rate_limit_redis else StreamSlots()


def acquire_stream(request: Request, settings: Settings, tenant_id: str, slot: str) -> None:
    """Take one of the tenant's event-stream slots for ``slot``; 429 with Retry-After when all are held."""
    try:
        ok = request.app.state.stream_slots.acquire(tenant_id, slot, settings.max_event_streams_per_tenant)
    except Exception:  # noqa: BLE001 - a Redis outage must not take the API down: fail open
        return
    if not ok:
        n = settings.max_event_streams_per_tenant
        raise Problem(429, f"too many open event streams for this tenant (at most {n}); close one or poll "
                           "GET /v1/jobs/{id} instead", "too-many-streams", "Too Many Requests",
                      headers={"Retry-After": "5"}, retry_after=5, limit=n)


def release_stream(request: Request, tenant_id: str, slot: str) -> None:
    """Give the slot back (best effort: an expired lease frees it anyway)."""
    try:
        request.app.state.stream_slots.release(tenant_id, slot)
    except Exception:  # noqa: BLE001
        return
