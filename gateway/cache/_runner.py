"""Runs a backend's blocking calls in a bounded per-worker thread pool, behind the breaker, with a deadline.

Also remembers invalidations that could not be applied while the cache was unreachable and replays them when it
answers again, so an outage cannot leave a stale copy of a document that was written or deleted meanwhile.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from gateway.cache.base import CacheError, CacheStatus
from gateway.cache.breaker import CircuitBreaker

T = TypeVar("T")
log = logging.getLogger("gateway.cache")
PENDING_MAX = 100_000
# Hook for metrics: (operation, set, status, seconds); status is ok | error | timeout | breaker_open.
OpObserver = Callable[[str, str, str, float], None]


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
        self._pending: dict[str, set[str]] = {}
        self._pending_count = 0
        self.pending_overflow = False
        self.on_recover: Callable[[dict[str, set[str]]], Awaitable[None]] | None = None
        self._heal_task: asyncio.Task[None] | None = None
        self._replaying: dict[str, set[str]] = {}

    def status(self) -> CacheStatus:
        return CacheStatus(self.backend, self.connected, self.generation, self.last_error)

    async def call(self, op: str, set_: str, fn: Callable[..., T], *args: Any, guard_s: float | None = None) -> T:
        """Run fn(*args) in the pool. Any exception (or the deadline) becomes CacheError and opens the breaker."""
        if not self.breaker.allow():
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

    def remember_invalidation(self, ns: str, ids: list[str]) -> None:
        """Ids whose cached copy may be stale but could not be deleted: treated as misses here and replayed as
        soon as the breaker lets a call through again (bounded; overflow is flagged and logged)."""
        bucket = self._pending.setdefault(ns, set())
        for doc_id in ids:
            if self._pending_count >= PENDING_MAX:
                if not self.pending_overflow:
                    log.error("%s cache: more than %d invalidations pending; some stale copies may survive",
                              self.backend, PENDING_MAX)
                self.pending_overflow = True
                break
            if doc_id not in bucket:
                bucket.add(doc_id)
                self._pending_count += 1
        if self._heal_task is None and self.on_recover is not None:
            self._heal_task = asyncio.get_running_loop().create_task(self._heal())

    async def _heal(self) -> None:
        """Replay pending invalidations once per breaker pause until they all went through."""
        try:
            while self._pending:
                await asyncio.sleep(max(self.breaker.open_s, 0.05))
                pending, self._pending, self._pending_count = self._pending, {}, 0
                self._replaying = pending
                try:
                    assert self.on_recover is not None
                    await self.on_recover(pending)  # a failure re-remembers the ids (delete_many does)
                except CacheError:
                    pass
                except Exception as exc:  # noqa: BLE001 - the healer must not die with ids pending
                    log.warning("%s cache: replaying invalidations failed: %s", self.backend, _describe(exc))
                    for ns, ids in pending.items():
                        self.remember_invalidation(ns, list(ids))
                finally:
                    self._replaying = {}
        finally:
            self._heal_task = None

    def suspect(self, ns: str, doc_id: str) -> bool:
        """True while an invalidation for this id is pending or being replayed: treat a cached copy as a miss."""
        if not self._pending_count and not self._replaying:
            return False
        return doc_id in self._pending.get(ns, ()) or doc_id in self._replaying.get(ns, ())

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

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


def _describe(exc: BaseException) -> str:
    msg = getattr(exc, "msg", None) or str(exc) or type(exc).__name__
    code = getattr(exc, "code", None)
    return f"{type(exc).__name__}({code}) {msg}" if code is not None else f"{type(exc).__name__}: {msg}"
