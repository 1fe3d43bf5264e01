"""The RSGI adapter (run by Granian, gateway/servers/granian_server.py): an RSGI request -> `Ctx` + body stream ->
`Gateway.handle` -> one `proto.response_bytes` call.

Per worker: `__rsgi_init__` runs the gateway's startup and installs the drain on SIGTERM (stop now on SIGQUIT);
`__rsgi_del__` runs its shutdown. Granian's own SIGINT handler stays: it is how the drain closes Granian's listening
socket when the grace ends (Granian then closes idle connections, lets in-flight requests finish and returns).
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from typing import Any

from gateway.app import Gateway
from gateway.config import ServerSettings
from gateway.http import Ctx
from gateway.servers.body import BodyStream
from gateway.servers.drain import Drain


class _Chunks:
    """The body chunks of one RSGI request; b"" at the end."""

    __slots__ = ("_it", "_proto")

    def __init__(self, proto: Any) -> None:
        self._proto = proto
        self._it: Any = None

    async def __call__(self) -> bytes:
        if self._it is None:
            self._it = self._proto.__aiter__()
        try:
            chunk: bytes = await self._it.__anext__()
        except StopAsyncIteration:
            return b""
        return chunk


class GranianListener:
    """The drain's view of a Granian worker. Granian offers no way to close one idle keep-alive connection while it
    keeps accepting, so idle connections are closed when the grace ends (docs/operations.md)."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway

    def close_idle(self, idle_s: float) -> None:
        pass

    def stop_accepting(self) -> None:
        os.kill(os.getpid(), signal.SIGINT)  # Granian's handler: its listener closes, idle connections close

    def busy(self) -> bool:
        return self.gateway.inflight > 0

    async def finish(self, clean: bool) -> None:
        if clean:
            return  # Granian returns once its connections are closed, then __rsgi_del__ shuts the gateway down
        await self.gateway.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


class RsgiApp:
    def __init__(self) -> None:
        self.gateway = Gateway()
        self.settings = ServerSettings()
        self.drain: Drain | None = None

    def __rsgi_init__(self, loop: asyncio.AbstractEventLoop) -> None:
        loop.run_until_complete(self.gateway.startup())
        assert self.gateway.state is not None
        config = self.gateway.state.config
        self.settings = config.server
        self.drain = Drain(self.gateway, GranianListener(self.gateway), config.drain_grace_ms,
                           config.drain_timeout_ms)
        loop.add_signal_handler(signal.SIGTERM, self.drain.begin)
        loop.add_signal_handler(signal.SIGQUIT, self.drain.stop_now)

    def __rsgi_del__(self, loop: asyncio.AbstractEventLoop) -> None:
        loop.run_until_complete(self.gateway.shutdown())

    async def __rsgi__(self, scope: Any, proto: Any) -> None:
        ctx = Ctx(scope.method, scope.path, scope.query_string, scope.headers)
        ctx.scope = scope
        resp = await self.gateway.handle(ctx, BodyStream(_Chunks(proto), self.settings))
        proto.response_bytes(resp.status, resp.headers, resp.body)
        self.gateway.observe(ctx, resp.status)


app = RsgiApp()
