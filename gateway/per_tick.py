"""Work queued during one event-loop iteration, done together once at its end: the small SQLite writes that
concurrent requests make at once share one transaction and one commit (gateway/cache/local.py, the watch board in
gateway/consistency.py). Costs one loop iteration of latency, and saves a commit per request under load."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, Generic, TypeVar

T = TypeVar("T")
Batch = list[tuple[T, "asyncio.Future[Any]"]]


class PerTick(Generic[T]):
    """`add(item)` queues an item and returns the future its caller awaits; once per loop iteration, `flush` gets
    everything queued in it, in order, and settles each future (a cancelled caller's future is already done)."""

    def __init__(self, flush: Callable[[Batch[T]], None]) -> None:
        self._flush = flush
        self._queued: Batch[T] = []

    def add(self, item: T) -> asyncio.Future[Any]:
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._queued.append((item, future))
        if len(self._queued) == 1:
            future.get_loop().call_soon(self._run)
        return future

    def _run(self) -> None:
        batch, self._queued = self._queued, []
        self._flush(batch)
