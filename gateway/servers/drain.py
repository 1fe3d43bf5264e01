"""The drain of one worker, the same under every server (docs/operations.md "Shutdown / drain").

SIGTERM: /ready answers 503 and every response carries `Connection: close` (gateway.app) for the grace
(LAYER_DRAIN_GRACE_MS) while requests are served normally and idle keep-alive connections are closed; then the
listening socket is retired (new connection attempts are dropped, the connections the kernel already completed are
accepted, then it closes: refused from here); the requests already accepted get LAYER_DRAIN_TIMEOUT_MS (from the
end of the grace) to finish; then background work stops and the worker exits. `stop_now` (a second SIGTERM to the
supervisor) ends the grace and the wait at once: connections still open are cut (the client sees its connection
fail, never a made-up status).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Protocol

from gateway.app import Gateway

log = logging.getLogger("gateway.drain")
TICK_S = 0.05
# A keep-alive connection idle this long while draining is closed. Not zero: a connection that has just carried a
# response is likely to carry the client's next request this instant, and closing it then would fail that request.
# A connection that has carried no request yet is never closed by the drain (its client is about to send one; the
# server's header timeout closes a silent one), nor one with request bytes the server has not read yet.
IDLE_CLOSE_S = 0.25


class Listener(Protocol):
    """What the drain needs from a server adapter."""

    def close_idle(self, idle_s: float) -> None:
        """Close keep-alive connections idle for at least `idle_s` (see IDLE_CLOSE_S)."""

    def stop_accepting(self) -> bool:
        """Retire the listening socket (called every tick until it answers True): new connection attempts are
        dropped at once, the connections the kernel completed are still accepted, and once none is left the
        socket closes (True): from then on a new connection is refused."""

    def busy(self) -> bool:
        """Requests (or connections that may still carry one) remain."""

    async def finish(self, clean: bool) -> None:
        """End the worker; `clean` is False when connections remain (timeout or stop_now)."""


class Drain:
    def __init__(self, gateway: Gateway, listener: Listener, grace_ms: int, timeout_ms: int) -> None:
        self.gateway = gateway
        self.listener = listener
        self.grace_s = grace_ms / 1000
        self.timeout_s = timeout_ms / 1000
        self.task: asyncio.Task[None] | None = None
        self._now = asyncio.Event()

    def begin(self, grace: bool = True) -> None:
        if self.task is None:
            self.task = asyncio.get_running_loop().create_task(self._run(self.grace_s if grace else 0.0))

    def stop_now(self) -> None:
        self.begin()
        self._now.set()

    async def _run(self, grace_s: float) -> None:
        self.gateway.begin_drain()
        await self._until(grace_s, lambda: False)
        deadline = asyncio.get_running_loop().time() + self.timeout_s
        closed = await self._until(self.timeout_s, self.listener.stop_accepting)
        log.info("stopped accepting" if closed else "listening socket not retired",
                 extra={"fields": {"inflight": self.gateway.inflight}})
        left = deadline - asyncio.get_running_loop().time()
        clean = closed and await self._until(left, lambda: not self.listener.busy())
        log.info("drained" if clean else "drain cut short", extra={"fields": {"inflight": self.gateway.inflight}})
        await self.listener.finish(clean)

    async def _until(self, seconds: float, done: Callable[[], bool]) -> bool:
        deadline = asyncio.get_running_loop().time() + seconds
        while not done() and not self._now.is_set():
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0:
                break
            self.listener.close_idle(IDLE_CLOSE_S)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._now.wait(), min(TICK_S, left))
        return done()
