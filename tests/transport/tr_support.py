"""Helpers for the transport tests: a transport driven from a sync test on its own uvloop, and TLS material."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import uvloop

from gateway.config import TransportSettings
from gateway.upstream import UpstreamResponse, UpstreamTransport, UpstreamTransportError, open_transport

KINDS = ("httptools", "pyreqwest")
JSON_HEADERS = [("accept", "application/json"), ("content-type", "application/json")]
T = TypeVar("T")


class Client:
    """One transport on one event loop; `send` runs a request to completion from synchronous test code."""

    def __init__(self, kind: str, **settings: Any) -> None:
        self.kind = kind
        self.runner = asyncio.Runner(loop_factory=uvloop.new_event_loop)
        self.settings = TransportSettings(kind=kind, **settings)
        self.transport: UpstreamTransport = self.run(self._open())

    async def _open(self) -> UpstreamTransport:
        return open_transport(self.settings)

    def run(self, coro: Awaitable[T]) -> T:
        return self.runner.run(coro)  # type: ignore[arg-type]

    async def asend(self, url: str, method: str = "POST", body: bytes | None = b"{}", idempotent: bool = False,
                    headers: list[tuple[str, str]] | None = None) -> UpstreamResponse:
        return await self.transport.send(method, url, headers if headers is not None else JSON_HEADERS, body,
                                         idempotent)

    def send(self, url: str, **kw: Any) -> UpstreamResponse:
        return self.run(self.asend(url, **kw))

    def fail(self, url: str, **kw: Any) -> tuple[UpstreamTransportError, float]:
        """The error a request ends with, and how long it took."""
        started = time.monotonic()
        try:
            resp = self.send(url, **kw)
        except UpstreamTransportError as exc:
            return exc, time.monotonic() - started
        raise AssertionError(f"expected a transport error, got HTTP {resp.status}: {resp.body[:200]!r}")

    def pools(self) -> list[dict[str, Any]]:
        return list(self.transport.stats().get("pools", []))

    def close(self) -> None:
        self.run(self.transport.close())
        self.runner.close()


@contextmanager
def unresponsive_listener() -> Iterator[str]:
    """A listening port whose accept queue is full: a connect to it gets no answer (a connect timeout)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers = []
    for _ in range(4):
        s = socket.socket()
        s.setblocking(False)
        s.connect_ex(("127.0.0.1", port))
        fillers.append(s)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        for s in fillers:
            s.close()
        listener.close()


def wait_for(pred: Callable[[], Any], timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := pred()):
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        time.sleep(0.02)
    return value


async def until(pred: Callable[[], Any], timeout: float = 10.0) -> Any:
    """wait_for from inside the client's event loop (its timers keep running while the test waits)."""
    deadline = time.monotonic() + timeout
    while not (value := pred()):
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        await asyncio.sleep(0.01)
    return value
