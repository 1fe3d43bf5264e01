"""The RSGI adapter (run by Granian, gateway/servers/granian_server.py): an RSGI request -> `Ctx` + body stream ->
`Gateway.handle` -> one `proto.response_bytes` call.

Per worker: `__rsgi_init__` runs the gateway's startup and installs the drain on SIGTERM (stop now on SIGQUIT);
`__rsgi_del__` runs its shutdown. Granian's own SIGINT handler stays: the drain sends it once no connection is left
(Granian's own stop closes its listener and every connection at the same instant, which would drop connections it
accepted a moment ago, their requests unread).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
import time
from typing import Any

from gateway.app import Gateway
from gateway.config import ServerSettings
from gateway.http import Ctx
from gateway.servers import sockets
from gateway.servers.body import BodyStream
from gateway.servers.drain import Drain
from gateway.servers.granian_server import PORT_ENV

log = logging.getLogger("gateway.rsgi")
SCAN_S = 0.2  # between two looks for idle connections (each reads every socket of the worker from the kernel)


class _Chunks:
    """The body chunks of one RSGI request; b"" at the end. `complete` once a Content-Length body (not chunked) has
    all its bytes: asking Granian for the end of the body is one more hand-off between its runtime and the loop."""

    __slots__ = ("_it", "_left", "_proto")

    def __init__(self, proto: Any, length: str | None) -> None:
        self._proto = proto
        self._it: Any = None
        self._left = int(length) if length is not None and length.isascii() and length.isdigit() else -1

    @property
    def complete(self) -> bool:
        return self._left == 0

    async def __call__(self) -> bytes:
        if self._it is None:
            self._it = self._proto.__aiter__()
        try:
            chunk: bytes = await self._it.__anext__()
        except StopAsyncIteration:
            return b""
        if self._left > 0:
            self._left = max(0, self._left - len(chunk))
        return chunk


class GranianListener:
    """The drain's view of a Granian worker. Granian can neither close one connection nor stop accepting without
    shutting every connection down at once, so the drain works on the worker's sockets from below
    (gateway/servers/sockets.py): an idle keep-alive connection (its last request answered, nothing unread, nothing
    unsent, quiet for `idle_s`) is shut down, hyper then reads its end and closes it; the listening socket is
    retired once the kernel's accept queue is empty; Granian's own stop comes last, when no connection is left."""

    def __init__(self, gateway: Gateway, port: int | None) -> None:
        self.gateway = gateway
        self.port = port
        self.retiring: list[tuple[int, sockets.Retirement]] | None = None
        self.next_scan = 0.0

    def close_idle(self, idle_s: float) -> None:
        now = time.monotonic()
        if self.port is None or now < self.next_scan:
            return
        self.next_scan = now + SCAN_S
        for conn in sockets.connections(self.port):
            # "answered" from the kernel's clock: a request hyper read but the gateway has not answered (still on
            # its way to __rsgi__, or in it) is data received after the last data sent
            if conn.answered(idle_s * 1000) and not conn.unread and not conn.unsent:
                sockets.close_connection(conn.fd, conn.peer)

    def stop_accepting(self) -> bool:
        if self.retiring is None:
            found = sockets.listeners(self.port) if self.port is not None else []
            self.retiring = [(fd, sockets.Retirement(dup)) for fd, dup in found]
            if not found:
                log.warning("listening socket not found: Granian's own stop closes it")
                self.port = None
                os.kill(os.getpid(), signal.SIGINT)
        left = []
        for fd, retirement in self.retiring:
            if retirement.ready():
                sockets.release(fd, retirement.sock)
            else:
                left.append((fd, retirement))
        self.retiring = left
        return not left

    def busy(self) -> bool:
        if self.gateway.inflight > 0:
            return True
        return self.port is not None and bool(sockets.connections(self.port))

    async def finish(self, clean: bool) -> None:
        if clean:
            if self.port is not None:
                os.kill(os.getpid(), signal.SIGINT)  # no connection left: Granian returns, then __rsgi_del__
            return
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
        port = os.environ.get(PORT_ENV)
        listener = GranianListener(self.gateway, int(port) if port else None)
        self.drain = Drain(self.gateway, listener, config.drain_grace_ms, config.drain_timeout_ms)
        loop.add_signal_handler(signal.SIGTERM, self.drain.begin)
        loop.add_signal_handler(signal.SIGQUIT, self.drain.stop_now)

    def __rsgi_del__(self, loop: asyncio.AbstractEventLoop) -> None:
        loop.run_until_complete(self.gateway.shutdown())

    async def __rsgi__(self, scope: Any, proto: Any) -> None:
        ctx = Ctx(scope.method, scope.path, scope.query_string, scope.headers)
        ctx.scope = scope
        headers = scope.headers
        chunks = _Chunks(proto, headers.get("content-length") if "transfer-encoding" not in headers else None)
        resp = await self.gateway.handle(ctx, BodyStream(chunks, self.settings))
        proto.response_bytes(resp.status, resp.headers, resp.body)
        self.gateway.observe(ctx, resp.status)


app = RsgiApp()
