"""One worker's queue service: the database handle, the status cache, the write-trigger index and the background
tasks (lease sweep every LAYER_QUEUE_SWEEP_MS, discovery tick every LAYER_UDF_DISCOVERY_TICK_MS, trigger refresh).

Every background task runs through gateway/tasks.py: a loop that raises is logged and started again, and `stop()`
cancels and awaits them all.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import socket
import time
from collections.abc import Awaitable, Callable, Coroutine
from functools import partial
from typing import Any

import msgspec

from gateway import metrics
from gateway.queue import documents, items, rates
from gateway.queue.db import Db
from gateway.queue.spec import UdfSpec
from gateway.tasks import Tasks

log = logging.getLogger("gateway.queue")
TRIGGER_REFRESH_S = 1.0
SWEEP_LOCK_MS = 60_000
SWEEP_RENEW_S = 20.0
# Status answers are cached only when computing them was slow (a big queue): small queues stay read-after-write exact
# across workers, whose caches are not told about each other's writes.
SLOW_STATUS_MS = 50
_spec_decoder = msgspec.json.Decoder(UdfSpec)


def now_ms() -> int:
    return int(time.time() * 1000)


async def _every(interval_s: float, fn: Callable[[], Awaitable[Any]]) -> None:
    while True:
        await asyncio.sleep(interval_s * random.uniform(0.8, 1.2))
        await fn()


class StatusCache:
    """Per worker, single-flight, TTL; dropped on any mutation through this worker."""

    def __init__(self, ttl_ms: int) -> None:
        self.ttl_s = ttl_ms / 1000
        self._entries: dict[str, tuple[float, Any]] = {}
        self._inflight: dict[str, asyncio.Future[Any]] = {}

    def clear(self) -> None:
        self._entries.clear()

    async def get(self, key: str, compute: Callable[[], Awaitable[Any]]) -> Any:
        hit = self._entries.get(key)
        if hit is not None and hit[0] > time.monotonic():
            return hit[1]
        running = self._inflight.get(key)
        if running is not None:
            return await asyncio.shield(running)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._inflight[key] = future
        started = time.monotonic()
        try:
            value = await compute()
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: waiters re-raise it, nobody else must
            raise
        finally:
            self._inflight.pop(key, None)
        future.set_result(value)
        if self.ttl_s > 0 and (time.monotonic() - started) * 1000 >= SLOW_STATUS_MS:
            self._entries[key] = (time.monotonic() + self.ttl_s, value)
        return value


class QueueService:
    def __init__(self, state: Any, db: Db) -> None:
        self.state = state
        self.db = db
        self.settings = state.config.queue
        self.status_cache = StatusCache(self.settings.status_cache_ttl_ms)
        self.owner = f"{socket.gethostname()}:{os.getpid()}"
        # namespace -> [(udf_id, spec)] of UDFs with a write trigger; replaced whole by the refresh task.
        self.write_triggers: dict[str, list[tuple[str, UdfSpec]]] = {}
        self._specs: dict[str, tuple[Any, UdfSpec]] = {}
        self._tasks = Tasks()  # the periodic loops, and work spawned after responses (write triggers)
        self._gauges: set[tuple[Any, tuple[str, ...]]] = set()

    # ---- lifecycle ----
    def start(self) -> None:
        from gateway.queue import discovery

        loops = (("queue lease sweep", self.settings.sweep_ms / 1000, self.sweep),
                 ("queue discovery", self.settings.discovery_tick_ms / 1000, lambda: discovery.tick(self)),
                 ("queue trigger refresh", TRIGGER_REFRESH_S, self.refresh_triggers))
        for name, interval_s, fn in loops:
            self._tasks.loop(name, partial(_every, interval_s, fn))

    async def stop(self) -> None:
        await self._tasks.stop()
        await self.db.close()

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        """Run work after a response (write triggers), kept until done and cancelled at shutdown."""
        self._tasks.spawn(getattr(coro, "__name__", "queue task"), coro)

    # ---- specs ----
    def spec_of(self, row: Any) -> UdfSpec:
        """The parsed spec of a `udfs` row, cached by (id, updated_at)."""
        cached = self._specs.get(row["id"])
        if cached is not None and cached[0] == row["updated_at"]:
            return cached[1]
        spec = _spec_decoder.decode(row["spec"])
        self._specs[row["id"]] = (row["updated_at"], spec)
        return spec

    async def refresh_triggers(self) -> None:
        index: dict[str, list[tuple[str, UdfSpec]]] = {}
        for row in await self.db.read(items.list_udfs):
            spec = self.spec_of(row)
            if "write" in spec.triggers:
                for ns in spec.target_namespaces:
                    index.setdefault(ns, []).append((row["id"], spec))
        self.write_triggers = index

    # ---- lease sweep, rate purge, gauges ----
    async def sweep(self) -> None:
        now = now_ms()
        await self.db.write(documents.recover_all, now)
        for row in await self.db.read(items.list_udfs):
            spec = self.spec_of(row)
            assert spec.retry is not None
            expired = await self.db.write(items.recover, row["id"], spec.retry.max_attempts, now)
            if expired:
                metrics.inc(metrics.UDF_FAILURES.labels(metrics.queue_label(row["id"]), "lease_expired"), expired)
        await self.db.write(rates.purge, now)
        await self.collect_metrics()

    async def collect_metrics(self) -> None:
        values: dict[tuple[Any, tuple[str, ...]], float] = {}
        for r in await self.db.read(documents.stage_counts):
            key = (metrics.PIPELINE_STAGE_COUNT, (metrics.queue_label(r["pipeline_id"]), r["stage"]))
            values[key] = values.get(key, 0) + int(r["n"])
        for r in await self.db.read(items.state_counts):
            label = metrics.queue_label(r["udf_id"])
            key = (metrics.UDF_STAGE_COUNT, (label, r["state"]))
            values[key] = values.get(key, 0) + int(r["n"])
            if r["state"] == "pending":
                depth = (metrics.UDF_QUEUE_DEPTH, (label,))
                values[depth] = values.get(depth, 0) + int(r["n"])
        for gauge, labels in self._gauges - set(values):
            gauge.labels(*labels).set(0)
        for (gauge, labels), value in values.items():
            gauge.labels(*labels).set(value)
        self._gauges = set(values)
