"""The request body as a stream of chunks with the slow-client limits, the same under every server.

A chunk that does not arrive within `body_timeout_ms` of the previous one, or a body whose average rate falls below
`body_min_rate` bytes/s once it has taken longer than `body_timeout_ms`, ends the request with 408 and
`Connection: close` (the rest of the body is never read). The adapters feed it with their server's read call.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from gateway.config import ServerSettings
from gateway.http import GatewayError

CLOSE = [("connection", "close")]


def body_timeout(message: str) -> GatewayError:
    return GatewayError("request_timeout", message, status=408, headers=CLOSE)


class BodyStream:
    """Async iterator over the body's chunks; `next_chunk` returns b"" at the end of the body."""

    __slots__ = ("_idle_s", "_min_rate", "_next", "_size", "_started")

    def __init__(self, next_chunk: Callable[[], Awaitable[bytes]], settings: ServerSettings) -> None:
        # `next_chunk.complete` (optional): True once the adapter has seen the end of the body, so the last step
        # needs no timer (a timer costs more than the rest of a small body's read); `next_chunk.buffered`
        # (optional): True when the next chunk is already here, so reading it needs no timer either.
        self._next = next_chunk
        self._idle_s = settings.body_timeout_ms / 1000
        self._min_rate = settings.body_min_rate
        self._started = 0.0
        self._size = 0

    def __aiter__(self) -> BodyStream:
        return self

    async def __anext__(self) -> bytes:
        if getattr(self._next, "complete", False):
            raise StopAsyncIteration
        loop = asyncio.get_running_loop()
        if not self._started:
            self._started = loop.time()
        if getattr(self._next, "buffered", False):
            chunk = await self._next()
        else:
            try:
                async with asyncio.timeout(self._idle_s):
                    chunk = await self._next()
            except TimeoutError:
                raise body_timeout(f"no request body data for {self._idle_s:g} s") from None
        if not chunk:
            raise StopAsyncIteration
        self._size += len(chunk)
        elapsed = loop.time() - self._started
        if elapsed > self._idle_s and self._size < self._min_rate * elapsed:
            raise body_timeout(f"request body slower than the minimum rate of {self._min_rate} bytes/s")
        return chunk
