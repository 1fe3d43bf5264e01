"""Upstream verdicts: who upstream accepts, per bearer and namespace, in derive-from-request mode.

Without TURBOPUFFER_API_KEY the gateway cannot judge a bearer itself: upstream does, on every call made with it. A
route that may answer without asking upstream (a cache hit, a warm job; gateway.auth.ANSWERED_LOCALLY) is served
only to a bearer that upstream accepted for that namespace within the last LAYER_AUTH_VERDICT_TTL_S seconds. The
verdict comes from `GET /v2/namespaces/{ns}/metadata` made with the bearer; anything but 2xx is relayed (status,
body, retry-after), so a wrong or foreign key gets upstream's own 401/403/404. Any 401 upstream gives for a bearer
drops all its verdicts, any 403 the one for that namespace (`Upstream.on_denied`).

Per worker, keyed by SHA-256 of the bearer (the key itself is not kept); concurrent checks for one pair share one
upstream call, a task that outlives a caller who goes away and is awaited when the worker stops.

A verdict also records which namespace upstream showed: a fingerprint of its `created_at`. Turbopuffer namespaces
live per organisation, so two organisations may each own a `docs`, and a namespace deleted and created again keeps
its name; the cache keeps each identity apart (gateway/cache/partition.py).
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from urllib.parse import quote, unquote

import msgspec

from gateway.http import GatewayError
from gateway.tasks import Tasks
from gateway.upstream import Upstream, UpstreamResponse

MAX_ENTRIES = 10_000
NAMESPACE_PREFIXES = ("/v1/namespaces/", "/v2/namespaces/")
FINGERPRINT_HEX = 16  # 64 bits of SHA-256(created_at): tells namespaces of one name apart


class _Created(msgspec.Struct):
    created_at: str | None = None


_created = msgspec.json.Decoder(_Created).decode


def _digest(bearer: str) -> bytes:
    return hashlib.sha256(bearer.encode()).digest()


def fingerprint(metadata: bytes) -> str:
    """The identity of the namespace a metadata answer describes; "" when it names no `created_at`."""
    try:
        created = _created(metadata).created_at
    except msgspec.DecodeError:
        return ""
    return hashlib.sha256(created.encode()).hexdigest()[:FINGERPRINT_HEX] if created else ""


class Verdicts:
    def __init__(self, upstream: Upstream, ttl_s: float) -> None:
        self.upstream = upstream
        self.ttl_s = ttl_s
        # bearer digest -> namespace -> (expiry (monotonic), fingerprint)
        self._accepted: dict[bytes, dict[str, tuple[float, str]]] = {}
        self._size = 0
        self._pending: dict[tuple[bytes, str], asyncio.Task[tuple[UpstreamResponse, str] | GatewayError]] = {}
        self._tasks = Tasks()

    async def check(self, bearer: str, ns: str) -> str | UpstreamResponse:
        """The fingerprint of `ns` as upstream showed it to `bearer` ("" if it showed none) when upstream has
        accepted the bearer for it recently (asking it if needed); otherwise upstream's non-2xx answer, to be
        relayed. A transport failure raises the usual 502 GatewayError."""
        digest = _digest(bearer)
        accepted = self._accepted.get(digest, {}).get(ns)
        if accepted is not None and accepted[0] > time.monotonic():
            return accepted[1]
        key = (digest, ns)
        pending = self._pending.get(key)
        if pending is None:
            pending = self._pending[key] = self._tasks.spawn("access check", self._ask(digest, bearer, ns))
            pending.add_done_callback(lambda _: self._pending.pop(key, None))
        answer = await asyncio.shield(pending)
        if isinstance(answer, GatewayError):
            raise answer
        resp, fp = answer
        return fp if resp.ok else resp

    async def _ask(self, digest: bytes, bearer: str, ns: str) -> tuple[UpstreamResponse, str] | GatewayError:
        """Upstream's answer and, for a 2xx, the fingerprint it shows (decoded once for every waiter)."""
        path = f"/v2/namespaces/{quote(ns, safe='')}/metadata"
        try:
            resp = await self.upstream.request("GET", path, bearer, None, "access check")
        except GatewayError as exc:  # upstream unreachable: each waiter answers it (a 502), not a task failure
            return exc
        fp = fingerprint(resp.body) if resp.ok else ""
        if resp.ok and self.ttl_s > 0:
            self._accept(digest, ns, fp)
        return resp, fp

    async def stop(self) -> None:
        """Cancel and await the checks still running (before the upstream client closes)."""
        await self._tasks.stop()

    def _accept(self, digest: bytes, ns: str, fp: str) -> None:
        if self._size >= MAX_ENTRIES:
            self._evict()
        per_key = self._accepted.setdefault(digest, {})
        self._size += ns not in per_key
        per_key[ns] = (time.monotonic() + self.ttl_s, fp)

    def _evict(self) -> None:
        now = time.monotonic()
        for digest in list(self._accepted):
            per_key = self._accepted[digest]
            for ns in [ns for ns, (expiry, _) in per_key.items() if expiry <= now]:
                del per_key[ns]
                self._size -= 1
            if not per_key:
                del self._accepted[digest]
        while self._size >= MAX_ENTRIES:  # all fresh: drop the oldest bearer's verdicts
            self._size -= len(self._accepted.pop(next(iter(self._accepted))))

    def forget_namespace(self, ns: str) -> None:
        """After `ns` was deleted through this worker: every bearer's verdict for it goes (a namespace created again
        under its name is another one)."""
        for digest in list(self._accepted):
            per_key = self._accepted[digest]
            if per_key.pop(ns, None) is not None:
                self._size -= 1
                if not per_key:
                    del self._accepted[digest]

    def forget(self, bearer: str, path: str, status: int) -> None:
        """Called by the upstream client on every 401/403 it receives for `bearer` (path as sent)."""
        digest = _digest(bearer)
        per_key = self._accepted.get(digest)
        if not per_key:
            return
        ns = _namespace(path)
        if status == 401 or ns is None:
            self._size -= len(self._accepted.pop(digest))
        elif per_key.pop(ns, None) is not None:
            self._size -= 1
            if not per_key:  # no empty map left behind per bearer: the entry count bounds the memory
                del self._accepted[digest]


def _namespace(path: str) -> str | None:
    for prefix in NAMESPACE_PREFIXES:
        if path.startswith(prefix):
            segment = path[len(prefix):].split("/", 1)[0].split("?", 1)[0]
            return unquote(segment) if segment else None
    return None
