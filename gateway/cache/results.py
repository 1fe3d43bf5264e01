"""The query-result cache (opt-in, LAYER_RESULT_CACHE; docs/cache.md "Query results").

A query's 200 answer is kept in this worker's memory under (the namespace's watch name, its write generation, the
watermark the query was sent with, the canonical upstream body). The watch name is the watermark watcher's (in
derive-from-request mode `name@fingerprint`, gateway/cache/partition.py: another organisation's namespace of the same
name, or an earlier one deleted since, never answers); the generation is the namespace name's, bumped by a write to
any namespace of that name. The generation lives in the shared cache backend
(SQLite per host, Aerospike across hosts): every write through any worker or gateway bumps it after upstream
answered and before the write is acknowledged (also when the write failed or timed out: it may have landed), so a
query that starts after a write was acknowledged reads the new generation and cannot find an entry filled before
it. Writes that do not come through the gateway are seen by the watermark watcher: any change in the namespace's
upstream metadata (`upstream_metadata`) bumps the generation, and entries are served only while this worker has
read that metadata within the stable poll interval (plus one poll), which bounds how stale a hit can be.

Identical queries in flight at once share one upstream call (singleflight); the call runs as a task, so a caller
that goes away does not cancel it for the others. Memory is bounded: LRU by bytes, per worker.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec

from gateway.cache.base import CacheError
from gateway.cache.partition import namespace_of
from gateway.config import ResultCacheSettings
from gateway.tasks import Tasks

log = logging.getLogger("gateway.cache.results")
ENTRY_OVERHEAD = 200  # bytes counted per entry besides its key and body (dict slot, tuple, headers)
MAX_ENTRY_SHARE = 4  # an answer larger than max_bytes / MAX_ENTRY_SHARE is not cached
BUMP_RETRY_S = 0.5
NEVER = float("-inf")

_canonical_encode = msgspec.json.Encoder(order="sorted").encode
_decode = msgspec.json.decode


class CachedResult(msgspec.Struct, frozen=True):
    """A 200 answer as the client gets it: identity body, upstream's headers (minus content-encoding), the cursor."""

    body: bytes
    headers: list[tuple[str, str]]
    cursor: str | None


def canonical(body: bytes, decoded: Any = None) -> bytes:
    """The body with object keys sorted and no whitespace: equal queries, equal keys. `decoded`, when the caller
    has the body decoded already, is encoded instead of decoding the body again."""
    if decoded is not None:
        return _canonical_encode(decoded)
    try:
        return _canonical_encode(_decode(body))
    except msgspec.DecodeError:
        return body


def _size(key: tuple[Any, ...], result: CachedResult) -> int:
    return ENTRY_OVERHEAD + len(key[3]) + len(result.body) + sum(len(h) + len(v) for h, v in result.headers)


class ResultCache:
    """One worker's result cache. `store` is the document cache backend that holds the generations."""

    def __init__(self, settings: ResultCacheSettings, store: Any, fresh_s: float) -> None:
        self.settings = settings
        self.store = store
        self.fresh_s = fresh_s
        self._entries: OrderedDict[tuple[Any, ...], CachedResult] = OrderedDict()
        self.bytes = 0
        self._inflight: dict[tuple[Any, ...], asyncio.Task[Any]] = {}
        # watch name -> (metadata fingerprint, when it was read: monotonic)
        self._seen: dict[str, tuple[int, float]] = {}
        self._bumping: dict[str, int] = {}  # watch name -> bumps for upstream changes still under way
        self._unbumped: set[str] = set()  # bumps that could not land yet: no hits here until they do
        self._tasks = Tasks()
        self.hits = self.misses = self.upstream_calls = 0
        self.bypassed = 0  # queries sent without the cache: it could not vouch for a hit then (see `key`)

    def enabled(self, ns: str) -> bool:
        return self.settings.enabled(ns)

    # -- lookups ---------------------------------------------------------------------------------------------------

    async def key(self, name: str, watermark: int | None, body: bytes, decoded: Any = None) -> tuple[Any, ...] | None:
        """The cache key of a query about to be sent to the namespace of watch name `name` (`decoded`: the body's
        decoded form, if at hand), or None when the cache cannot be used for it now (the generation cannot be read,
        a bump is still owed, or upstream metadata was not read recently enough)."""
        ns = namespace_of(name)
        if ns in self._unbumped:
            return None
        seen = self._seen.get(name)
        if seen is None or time.monotonic() - seen[1] > self.fresh_s:
            return None
        try:
            gen = await self.store.result_generation(ns)
        except CacheError:
            return None
        return (name, gen, watermark, canonical(body, decoded))

    def get(self, key: tuple[Any, ...]) -> CachedResult | None:
        found = self._entries.get(key)
        if found is not None:
            self._entries.move_to_end(key)
        return found

    async def shared(self, key: tuple[Any, ...], call: Callable[[], Awaitable[Any]]) -> tuple[Any, bool]:
        """(the answer of `call`, whether this caller made the call): identical keys in flight share one call.
        An exception the call ends with is raised to every caller that shared it."""
        task = self._inflight.get(key)
        leader = task is None
        if task is None:
            self.upstream_calls += 1
            task = self._inflight[key] = self._tasks.spawn("result cache query", _outcome(call))
            task.add_done_callback(lambda _: self._inflight.pop(key, None))
        result = await asyncio.shield(task)
        if isinstance(result, Exception):
            raise result
        return result, leader

    def put(self, key: tuple[Any, ...], result: CachedResult) -> None:
        size = _size(key, result)
        if size > self.settings.max_bytes // MAX_ENTRY_SHARE or key in self._entries:
            return
        self._entries[key] = result
        self.bytes += size
        while self.bytes > self.settings.max_bytes:
            self.bytes -= _size(*self._entries.popitem(last=False))

    def health(self) -> dict[str, Any]:
        """This worker's figures for the ops listener's /health."""
        return {"entries": len(self._entries), "bytes": self.bytes, "max_bytes": self.settings.max_bytes,
                "hits": self.hits, "misses": self.misses, "upstream_calls": self.upstream_calls,
                "bypassed": self.bypassed}

    # -- invalidation ----------------------------------------------------------------------------------------------

    async def written(self, ns: str) -> None:
        """A write to `ns` was answered (or not: it may still land). Bump the shared generation before the write
        is acknowledged, whether or not this gateway caches `ns` (another one on the backend may); if the cache
        cannot take it now, this worker serves no hit for `ns` until it does."""
        try:
            await self.store.bump_results(ns)
        except CacheError as exc:
            log.warning("result cache: generation bump for %s failed (retrying): %s", ns, exc)
            if ns not in self._unbumped:
                self._unbumped.add(ns)
                self._tasks.spawn("result cache bump", self._retry_bump(ns))

    async def _retry_bump(self, ns: str) -> None:
        while True:
            await asyncio.sleep(BUMP_RETRY_S)
            try:
                await self.store.bump_results(ns)
            except CacheError:
                continue
            self._unbumped.discard(ns)
            return

    def upstream_metadata(self, name: str, body: bytes) -> None:
        """The watermark watcher read the metadata of the namespace of watch name `name` upstream: if it changed
        since this worker last read it (a write that may not have come through the gateway, or indexing progress
        that changes eventual reads), bump the generation; hits resume once the bump landed. A first reading only
        starts the clock: nothing can have been cached here before it."""
        if not self.enabled(namespace_of(name)):
            return
        fingerprint, now = hash(body), time.monotonic()
        seen = self._seen.get(name)
        if seen is not None and seen[0] != fingerprint:
            self._seen[name] = (fingerprint, NEVER)
            self._bumping[name] = self._bumping.get(name, 0) + 1
            self._tasks.spawn("result cache: upstream write", self._bump_then_fresh(name, now))
        elif not self._bumping.get(name):
            self._seen[name] = (fingerprint, now)

    async def _bump_then_fresh(self, name: str, read_at: float) -> None:
        try:
            await self.written(namespace_of(name))  # if it fails, `_unbumped` keeps the hits off
        finally:
            left = self._bumping[name] - 1
            if left:
                self._bumping[name] = left
            else:
                del self._bumping[name]
                self._seen[name] = (self._seen[name][0], read_at)

    async def stop(self) -> None:
        await self._tasks.stop()


async def _outcome(call: Callable[[], Awaitable[Any]]) -> Any:
    """The call's answer, or the exception it raised as a value (each caller raises it, not the task)."""
    try:
        return await call()
    except Exception as exc:  # noqa: BLE001 - handed to the callers
        return exc
