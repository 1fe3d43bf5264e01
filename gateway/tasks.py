"""Background tasks: kept (a task nobody references can be garbage-collected mid-flight), supervised (an exception
is logged, and a loop is restarted after a pause instead of dying silently) and awaited on shutdown.

Each owner (the watcher, the cache service, a cache backend, the app) has one `Tasks` and stops it in its own
shutdown; `loop()` is for work that runs for the worker's life, `spawn()` for work that ends by itself.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")
log = logging.getLogger("gateway.tasks")
RESTART_PAUSE_S = 1.0


class Tasks:
    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[Any]] = set()

    def __len__(self) -> int:
        return len(self._tasks)

    def loop(self, name: str, body: Callable[[], Awaitable[None]],
             pause_s: float = RESTART_PAUSE_S) -> asyncio.Task[None]:
        """Run body() until cancelled; when it raises (or returns), log it and start it again after `pause_s`."""
        async def supervised() -> None:
            while True:
                try:
                    await body()
                    log.error("background task %s stopped by itself; restarting it", name)
                except asyncio.CancelledError:
                    raise
                except Exception:
                    log.exception("background task %s failed; restarting it", name)
                await asyncio.sleep(pause_s)

        return self.spawn(name, supervised())

    def spawn(self, name: str, coro: Coroutine[Any, Any, T]) -> asyncio.Task[T]:
        """Run coro once; an exception it ends with is logged (and kept as the task's result)."""
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("background task %s failed", task.get_name(), exc_info=task.exception())

    async def stop(self, grace_s: float = 0.0) -> None:
        """Give running tasks up to `grace_s` to end by themselves, then cancel the rest; wait for all of them."""
        if grace_s > 0 and self._tasks:
            await asyncio.wait(list(self._tasks), timeout=grace_s)
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
