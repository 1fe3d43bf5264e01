"""Per-worker verification of minted `hvl_` tokens, with a cache that revocations cross within 1 second.

Hot path (a cached key): one SHA-256, one dict lookup, two clock reads. Freshness: the store's generation counter
(bumped on every create/revoke/delete) is re-read in the background once the last check is older than
REFRESH_AFTER_S; once it is older than STALE_AFTER_S the request itself waits for the re-read, so no request is
ever answered from a cache older than STALE_AFTER_S (+ one store round trip). A changed generation drops the cache.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Awaitable
from typing import TypeVar

from gateway.auth import Grant, Principal
from gateway.http import GatewayError
from gateway.keys.model import ACTIVE, ADMIN, DEFAULT_STORE_TARGET, LAYER_TARGET, KeyRecord, now_ms
from gateway.keys.store import KeyStore, KeyStoreUnavailable
from gateway.keys.tokens import HASH_PREFIX, hashes_equal, well_formed

T = TypeVar("T")
REFRESH_AFTER_S = 0.25
STALE_AFTER_S = 0.75
TOUCH_EVERY_S = 300.0
MAX_ENTRIES = 10_000
GRANTING_TARGETS = (LAYER_TARGET, DEFAULT_STORE_TARGET)
INF = float("inf")
log = logging.getLogger("gateway.keys")
_sha256 = hashlib.sha256


def principal_for(rec: KeyRecord) -> Principal:
    """A key's entitlements as gateway grants: `layer` and `vectorstore.default` count; omitted globs = all."""
    grants: list[Grant] = []
    admin = False
    for target in GRANTING_TARGETS:
        ent = rec.entitlements.get(target)
        if ent is None or not ent.scopes:
            continue
        scopes = frozenset(ent.scopes)
        if target == LAYER_TARGET and ADMIN in scopes:
            admin = True
        globs = ("*",) if ent.namespaces is None else tuple(ent.namespaces)
        grants.append(Grant(scopes=scopes, namespaces=globs))
    return Principal(name=rec.name, key_id=rec.key_id, admin=admin, grants=tuple(grants))


class _Entry:
    __slots__ = ("expires_at", "key_id", "principal", "touched_at")

    def __init__(self, principal: Principal | None, expires_at: float, key_id: str | None, touched_at: float) -> None:
        self.principal = principal
        self.expires_at = expires_at  # wall-clock seconds
        self.key_id = key_id
        self.touched_at = touched_at


NEGATIVE = _Entry(None, 0.0, None, 0.0)
# Fail closed: without a fresh view of revocations no minted key is accepted.
STORE_DOWN = GatewayError("service_unavailable", "cannot verify API keys: the key store is not answering",
                          status=503, source="internal", retryable=True)


class MintedKeyVerifier:
    """The gateway's `key_verifier` slot: token -> Principal, or None for unknown/revoked/expired tokens."""

    def __init__(self, store: KeyStore) -> None:
        self._store = store
        self._cache: dict[str, _Entry] = {}
        self._generation = -1
        self._checked_at = -INF  # monotonic time the last successful generation read started
        self._epoch = 0  # bumped when the cache is dropped, so in-flight loads do not resurrect old entries
        self._refreshing: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def verify(self, token: str) -> Principal | None:
        age = time.monotonic() - self._checked_at
        if age > REFRESH_AFTER_S:
            task = self._refreshing or self._start_refresh()
            if age > STALE_AFTER_S:  # too old to answer from: wait for the (one, shared) re-read
                await asyncio.shield(task)
                if time.monotonic() - self._checked_at > STALE_AFTER_S:
                    raise STORE_DOWN
        digest = HASH_PREFIX + _sha256(token.encode()).hexdigest()
        entry = self._cache.get(digest)
        if entry is None:
            entry = await self._fail_closed(self._load(token, digest))
        principal = entry.principal
        if principal is None:
            return None
        now = time.time()
        if now >= entry.expires_at:
            return None
        if now - entry.touched_at > TOUCH_EVERY_S:
            self._touch(entry, now)
        return principal

    @staticmethod
    async def _fail_closed(aw: Awaitable[T]) -> T:
        try:
            return await aw
        except KeyStoreUnavailable:
            raise STORE_DOWN from None

    def invalidate(self) -> None:
        """Drop this worker's cache at once (after this worker revoked or deleted a key)."""
        self._cache.clear()
        self._epoch += 1

    async def _refresh(self) -> None:
        started = time.monotonic()
        generation = await self._store.generation()
        if generation != self._generation:
            self.invalidate()
            self._generation = generation
        self._checked_at = max(self._checked_at, started)

    def _start_refresh(self) -> asyncio.Task[None]:
        self._refreshing = asyncio.get_running_loop().create_task(self._refresh_in_background())
        return self._refreshing

    async def _refresh_in_background(self) -> None:
        try:
            await self._refresh()
        except Exception as exc:  # noqa: BLE001 - waiting requests answer 503
            log.warning("key generation refresh failed: %s", type(exc).__name__)
        finally:
            self._refreshing = None

    async def _load(self, token: str, digest: str) -> _Entry:
        if not well_formed(token):
            return NEGATIVE
        epoch = self._epoch
        rec = await self._store.find(digest)
        if rec is None or not hashes_equal(rec.lookup_hash, digest) or rec.phase(now_ms()) != ACTIVE:
            entry = NEGATIVE
        else:
            expires = INF if rec.expires_ms is None else rec.expires_ms / 1000
            touched = 0.0 if rec.last_seen_ms is None else rec.last_seen_ms / 1000
            entry = _Entry(principal_for(rec), expires, rec.key_id, touched)
        if epoch == self._epoch:
            if len(self._cache) >= MAX_ENTRIES:
                self._cache.clear()
            self._cache[digest] = entry
        return entry

    def _touch(self, entry: _Entry, now: float) -> None:
        entry.touched_at = now
        key_id = entry.key_id
        if key_id is None:
            return
        task = asyncio.get_running_loop().create_task(self._store_touch(key_id, int(now * 1000)))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _store_touch(self, key_id: str, at_ms: int) -> None:
        try:
            await self._store.touch(key_id, at_ms)
        except Exception as exc:  # noqa: BLE001 - lastSeenAt is best effort
            log.warning("lastSeenAt update failed for key %s: %s", key_id, type(exc).__name__)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._refreshing is not None:
            self._refreshing.cancel()
