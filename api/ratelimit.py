"""Rate limits at the edge (ASGI), per API process: token buckets per API key (by the hash of the key
the `Authorization` header names, never the key itself: `Bearer K`, `bearer  K` and `BEARER K ` are
one key, one bucket) and per client address, and a stricter one per
address for failed authentication; over a limit the answer is a 429 problem+json with
`Retry-After`. Also the briefly cached answers of the impact report.

Failed authentication is a 401 to a request that carried a credential (a bearer key or a webhook
signature). Once an address has spent its budget of those, its requests carrying a key that has not
been seen to work are refused here, before the key is looked up: a flood of random tokens costs the
store a few lookups per second, whatever the key cache does. A key that worked lately still passes,
so a valid caller behind the same address (a NAT, a proxy) is not locked out with the attacker.

`RateLimit.refusal` lets `takeback api`'s HTTP protocol (api/limits.py) answer the refusals that do
not depend on the route (an address over its rate, or locked out) without running the application.
"""

from __future__ import annotations

import functools
import hashlib
import ipaddress
import json
import math
import time
import weakref

from api import problems
from api.limits import ROUTE_AUTH, SIGNATURE_HEADERS, bearer_key

MAX_TRACKED = 50_000  # buckets per kind kept in memory; full ones are dropped first
GOOD_KEYS = 10_000  # hashes of keys seen to work lately
GOOD_KEY_SECONDS = 600.0
CACHED_PATHS = frozenset({"/v1/reports/impact"})  # GET answers reused for `response_cache` seconds, per key
CACHED_BODY_MAX = 256 * 1024


class TokenBuckets:
    """One bucket per name: `burst` tokens, refilled at `rate` per second; a request takes one."""

    def __init__(self, rate: float, burst: int, clock=time.monotonic, max_tracked: int = MAX_TRACKED):
        self.rate, self.burst, self.clock, self.max_tracked = float(rate), max(1, int(burst)), clock, max_tracked
        self.buckets: dict[object, list[float]] = {}  # name -> [tokens, at]

    @property
    def enabled(self) -> bool:
        return self.rate > 0

    def _level(self, name, now: float) -> list[float]:
        bucket = self.buckets.get(name)
        if bucket is None:
            if len(self.buckets) >= self.max_tracked:
                self._shrink(now)
            bucket = self.buckets[name] = [float(self.burst), now]
        else:
            bucket[0] = min(self.burst, bucket[0] + (now - bucket[1]) * self.rate)
            bucket[1] = now
        return bucket

    def take(self, name, now: float | None = None) -> float:
        """0.0 if a token was taken, else the seconds until one will be there."""
        now = self.clock() if now is None else now
        bucket = self._level(name, now)
        if bucket[0] >= 1.0:
            bucket[0] -= 1.0
            return 0.0
        return (1.0 - bucket[0]) / self.rate

    def peek(self, name, now: float) -> float:
        """Like `take` without taking: 0.0 if a token is there."""
        bucket = self.buckets.get(name)
        if bucket is None:
            return 0.0
        tokens = min(self.burst, bucket[0] + (now - bucket[1]) * self.rate)
        return 0.0 if tokens >= 1.0 else (1.0 - tokens) / self.rate

    def refund(self, name) -> None:
        """Give back a token taken for a request that did not use it."""
        bucket = self.buckets.get(name)
        if bucket is not None:
            bucket[0] = min(self.burst, bucket[0] + 1.0)

    def _shrink(self, now: float) -> None:
        """Drop buckets that have refilled (the same as no bucket); if that is not enough, the oldest half."""
        full = [name for name, (tokens, at) in self.buckets.items() if tokens + (now - at) * self.rate >= self.burst]
        for name in full:
            del self.buckets[name]
        if len(self.buckets) >= self.max_tracked:
            for name in list(self.buckets)[: len(self.buckets) // 2]:
                del self.buckets[name]


@functools.lru_cache(maxsize=4096)
def address_key(host: str) -> str:
    """An IPv6 client is counted by its /64 (one subscriber's worth of addresses), IPv4 by address."""
    if ":" not in host:
        return host
    try:
        return str(ipaddress.IPv6Network(f"{host}/64", strict=False).network_address)
    except ValueError:
        return host


def key_name(authorization: bytes | None) -> bytes | None:
    """What a request's key is counted and cached by: the SHA-256 of the key its `Authorization` header
    names, read as the API reads it (`bearer_key`), so however the header is written (the scheme's case,
    spaces) one key is one bucket; a header naming no key, by the header itself."""
    if authorization is None:
        return None
    text = authorization.decode("latin-1")  # as Starlette reads headers
    key = bearer_key(text)
    return hashlib.sha256(b"key:" + key.encode() if key is not None else b"header:" + authorization).digest()


def _too_many(detail: str, wait: float):
    seconds = max(1, math.ceil(wait))
    return problems.problem_response(429, f"{detail}; retry after {seconds} s", "rate-limited", title="Too many requests",
                                     headers={"Retry-After": str(seconds)}, retry_after=seconds)


FAILED_AUTH = "too many failed authentications from this address"
_served: weakref.ref | None = None  # the process's limiter, for the HTTP protocol (api/limits.py)


def served_limiter() -> "RateLimit | None":
    return _served() if _served is not None else None


@functools.lru_cache(maxsize=256)
def raw_429(detail: str, seconds: int, close: bool) -> bytes:
    """The 429 `_too_many` answers, as bytes the HTTP protocol can write without the application."""
    body = json.dumps({"type": "https://takeback.example/problems/rate-limited", "title": "Too many requests", "status": 429,
                       "detail": f"{detail}; retry after {seconds} s", "retry_after": seconds}, separators=(",", ":")).encode()
    return (b"HTTP/1.1 429 Too Many Requests\r\ncontent-type: application/problem+json\r\ncontent-length: %d\r\nretry-after: %d\r\n"
            b"cache-control: no-store\r\nx-content-type-options: nosniff\r\n%s\r\n%s") % (len(body), seconds, b"connection: close\r\n" if close else b"", body)


class RateLimit:
    def __init__(self, app, settings, clock=time.monotonic):
        self.app, self.clock = app, clock
        self.per_key = TokenBuckets(settings.rate_per_key, settings.rate_per_key_burst, clock)
        self.per_address = TokenBuckets(settings.rate_per_address, settings.rate_per_address_burst, clock)
        self.failed_auth = TokenBuckets(settings.rate_failed_auth, settings.rate_failed_auth_burst, clock)
        self.good_keys: dict[bytes, float] = {}  # key hash -> until when it counts as working
        self.cache_seconds = settings.response_cache_seconds
        self.cache: dict[tuple, tuple[float, list]] = {}  # (key hash, path, query) -> (until, messages)
        global _served
        _served = weakref.ref(self)

    def refusal(self, host: str, authorization: bytes | None, credential: bool) -> tuple[str, float] | None:
        """(detail, wait) if a request from `host` would be refused before the application whatever its
        route: its address is over its rate, or locked out for failed authentication with a key not seen
        to work. Takes nothing: a request let through is counted by `__call__`."""
        now = self.clock()
        address = address_key(host)
        if self.per_address.enabled and (wait := self.per_address.peek(address, now)):
            return f"more than {self.per_address.rate:g} requests per second from this address", wait
        if credential and self.failed_auth.enabled:
            key = key_name(authorization)
            if not self._works(key, now) and (wait := self.failed_auth.peek(address, now)):
                return FAILED_AUTH, wait
        return None

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        now = self.clock()
        client = scope.get("client")
        address = address_key(client[0]) if client else "-"
        authorization = signature = None
        for name, value in scope["headers"]:
            if name == b"authorization":
                authorization = value if authorization is None else authorization
            elif name in SIGNATURE_HEADERS:
                signature = value
        key = key_name(authorization)

        if self.per_address.enabled and (wait := self.per_address.take(address, now)):
            return await _too_many(f"more than {self.per_address.rate:g} requests per second from this address", wait)(scope, receive, send)
        # A credential not seen to work takes a failed-authentication token up front (given back unless
        # it fails): requests in flight at once cannot overdraw the budget while their lookups run.
        on_trial = (key is not None or signature is not None) and self.failed_auth.enabled and not self._works(key, now)
        if on_trial and (wait := self.failed_auth.take(address, now)):
            return await _too_many(FAILED_AUTH, wait)(scope, receive, send)
        if key is not None and self.per_key.enabled and (wait := self.per_key.take(key, now)):
            if on_trial:
                self.failed_auth.refund(address)
            return await _too_many(f"more than {self.per_key.rate:g} requests per second with this API key", wait)(scope, receive, send)

        cache_key = None
        if self.cache_seconds > 0 and key is not None and scope["method"] == "GET" and scope["path"] in CACHED_PATHS:
            cache_key = (key, scope["path"], scope.get("query_string", b""))
            hit = self.cache.get(cache_key)
            if hit is not None and hit[0] > now:
                for message in hit[1]:
                    await send(message)
                return

        status = 0
        recorded: list | None = [] if cache_key is not None else None

        async def watch(message):
            nonlocal status, recorded
            if message["type"] == "http.response.start":
                status = message["status"]
            if recorded is not None:
                recorded.append(message)
                if sum(len(m.get("body", b"")) for m in recorded) > CACHED_BODY_MAX:
                    recorded = None
            await send(message)

        try:
            await self.app(scope, receive, watch)
        finally:
            self._after(status, key, on_trial, address, recorded, cache_key, scope.get(ROUTE_AUTH) == "bearer")

    def _after(self, status: int, key: bytes | None, on_trial: bool, address: str, recorded, cache_key, keyed: bool) -> None:
        now = self.clock()
        if on_trial and status != 401:
            self.failed_auth.refund(address)  # it did not fail: its token goes back
        if status == 401:
            if key is not None:
                self.good_keys.pop(key, None)
        elif key is not None and keyed and status and status not in (429, 503):
            # a route that needs a key answered past authentication (a 503 may come before the lookup)
            if key not in self.good_keys and len(self.good_keys) >= GOOD_KEYS:
                self.good_keys.pop(next(iter(self.good_keys)))
            self.good_keys[key] = now + GOOD_KEY_SECONDS
        if cache_key is not None and status == 200 and recorded:
            if len(self.cache) >= 1024:
                self.cache = {name: hit for name, hit in self.cache.items() if hit[0] > now}
                if len(self.cache) >= 1024:
                    self.cache.clear()
            self.cache[cache_key] = (now + self.cache_seconds, recorded)

    def _works(self, key: bytes | None, now: float) -> bool:
        until = self.good_keys.get(key) if key is not None else None
        return until is not None and until > now
