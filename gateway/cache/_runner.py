"""Runs a backend's blocking calls in a bounded per-worker thread pool, behind the breaker, with a deadline.

Fence calls (a write's begin/finish, invalidations, namespace resets) skip the breaker: a breaker opened by an
unrelated failure must not let a write go upstream unfenced while the cache actually answers. Each still waits at
most the cache timeout. A fence that could not land is remembered here: this worker treats those ids (or the whole
namespace) as misses, and a background task replays the fence until it lands. This memory is the only part of the
coherence that lives in one worker: while a worker cannot reach the cache, other workers may serve the version the
failed fence should have hidden (docs/cache.md, "When the cache is unreachable").
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any, TypeVar

from gateway.cache.base import CacheError, CacheStatus
from gateway.cache.breaker import CircuitBreaker
from gateway.tasks import Tasks

T = TypeVar("T")
log = logging.getLogger("gateway.cache")
REMEMBERED_MAX = 100_000
REPLAY_MAX_S = 0.5  # how often remembered fences are retried (at most; the breaker pause when shorter)
# Hook for metrics: (operation, set, status, seconds); status is ok | error | timeout | breaker_open.
OpObserver = Callable[[str, str, str, float], None]
# Replays remembered fences: (namespace, its reset's unknown_until or None, {id: unknown_until}); raises CacheError.
Replay = Callable[[str, int | None, dict[str, int]], Awaitable[None]]


class Runner:
    def __init__(self, backend: str, threads: int, timeout_s: float, breaker_open_s: float) -> None:
        self.backend = backend
        self.timeout_s = timeout_s
        self.breaker = CircuitBreaker(breaker_open_s)
        self.observe: OpObserver | None = None
        self.connected = False
        self.generation = 0
        self.last_error: str | None = None
        self.inflight = 0
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix=f"cache-{backend}")
        self.replay: Replay | None = None
        self._ids: dict[str, dict[str, int]] = {}  # ns -> {id: unknown_until} of settles to replay
        self._resets: dict[str, int] = {}  # ns -> unknown_until of a namespace reset to replay
        self._count = 0
        self.overflow = False
        self._tasks = Tasks()
        self._healing = False

    def status(self) -> CacheStatus:
        return CacheStatus(self.backend, self.connected, self.generation, self.last_error)

    async def call(self, op: str, set_: str, fn: Callable[..., T], *args: Any, guard_s: float | None = None,
                   fence: bool = False) -> T:
        """Run fn(*args) in the pool. Any exception (or the deadline) becomes CacheError and opens the breaker."""
        if not fence and not self.breaker.allow():
            self._observe(op, set_, "breaker_open", 0.0)
            raise CacheError(f"cache cold: {self.backend} circuit breaker open", "breaker_open")
        loop = asyncio.get_running_loop()
        t0 = time.perf_counter()
        self.inflight += 1
        try:
            result = await asyncio.wait_for(loop.run_in_executor(self._pool, fn, *args),
                                            guard_s if guard_s is not None else self.timeout_s * 2 + 0.05)
        except asyncio.CancelledError:
            self.breaker.release()
            raise
        except Exception as exc:
            self._failed(op, set_, exc, time.perf_counter() - t0)
            if isinstance(exc, CacheError):
                raise
            kind = "timeout" if isinstance(exc, TimeoutError) or "timeout" in type(exc).__name__.lower() else "error"
            raise CacheError(f"cache {op} failed: {_describe(exc)}", kind) from exc
        finally:
            self.inflight -= 1
        self._succeeded()
        self._observe(op, set_, "ok", time.perf_counter() - t0)
        return result

    # -- fences that could not land ------------------------------------------------------------------------------

    def remember(self, ns: str, ids: dict[str, int], reset: int | None = None) -> None:
        """Fences to replay: settle `ids` ({id: unknown_until}), after a namespace reset when `reset` is set."""
        if reset is not None:
            self._resets[ns] = max(self._resets.get(ns, 0), reset)
        bucket = self._ids.setdefault(ns, {})
        for doc_id, until in ids.items():
            if doc_id not in bucket:
                if self._count >= REMEMBERED_MAX:
                    if not self.overflow:
                        log.error("%s cache: more than %d fences waiting to be replayed; some stale copies may be "
                                  "served by other workers", self.backend, REMEMBERED_MAX)
                    self.overflow = True
                    break
                self._count += 1
            bucket[doc_id] = max(bucket.get(doc_id, 0), until)
        if not self._healing and self.replay is not None:
            self._healing = True
            self._tasks.spawn("cache fence replay", self._heal())

    def suspect(self, ns: str, doc_id: str) -> bool:
        """True while a fence for this id (or its namespace) waits to be replayed: a cached copy is a miss here."""
        if not self._count and not self._resets:
            return False
        return ns in self._resets or doc_id in self._ids.get(ns, ())

    @property
    def remembered(self) -> int:
        return self._count + len(self._resets)

    async def replay_now(self) -> None:
        """Try every remembered fence once. They stay remembered (their ids misses here) until they landed."""
        assert self.replay is not None
        for ns in {*self._ids, *self._resets}:
            ids, reset = dict(self._ids.get(ns, {})), self._resets.get(ns)
            try:
                await self.replay(ns, reset, ids)
            except Exception as exc:  # noqa: BLE001 - whatever failed, the fences stay remembered
                if not isinstance(exc, CacheError):
                    log.warning("%s cache: replaying fences failed: %s", self.backend, _describe(exc))
                continue
            bucket = self._ids.get(ns, {})
            for doc_id, until in ids.items():  # what was remembered again meanwhile stays
                if bucket.get(doc_id) == until:
                    del bucket[doc_id]
                    self._count -= 1
            if not bucket:
                self._ids.pop(ns, None)
            if reset is not None and self._resets.get(ns) == reset:
                del self._resets[ns]

    async def _heal(self) -> None:
        try:
            while self.remembered:
                await asyncio.sleep(min(max(self.breaker.open_s, 0.05), REPLAY_MAX_S))
                await self.replay_now()
        finally:
            self._healing = False

    # -- state -----------------------------------------------------------------------------------------------------

    def _failed(self, op: str, set_: str, exc: BaseException, seconds: float) -> None:
        self.breaker.failure()
        if self.connected:
            log.warning("%s cache unavailable (%s): %s", self.backend, op, _describe(exc))
        self.connected = False
        self.last_error = _describe(exc)
        status = "timeout" if isinstance(exc, TimeoutError) or "Timeout" in type(exc).__name__ else "error"
        if isinstance(exc, CacheError):
            status = exc.kind if exc.kind in ("timeout", "breaker_open") else "error"
        self._observe(op, set_, status, seconds)

    def _succeeded(self) -> None:
        self.breaker.success()
        if not self.connected:
            self.connected = True
            self.generation += 1

    def _observe(self, op: str, set_: str, status: str, seconds: float) -> None:
        if self.observe is not None:
            try:
                self.observe(op, set_, status, seconds)
            except Exception:
                log.exception("cache metrics hook failed")

    async def close(self) -> None:
        """Stop the healer and the pool: queued calls are dropped, and running ones (each bounded by the cache
        timeout) are waited for off the loop, so the backend's client is never closed under a call still using it
        (the Aerospike C client crashes the process then)."""
        await self._tasks.stop()
        await asyncio.get_running_loop().run_in_executor(
            None, partial(self._pool.shutdown, wait=True, cancel_futures=True))


def _describe(exc: BaseException) -> str:
    msg = getattr(exc, "msg", None) or str(exc) or type(exc).__name__
    code = getattr(exc, "code", None)
    return f"{type(exc).__name__}({code}) {msg}" if code is not None else f"{type(exc).__name__}: {msg}"
