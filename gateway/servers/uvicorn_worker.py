"""`layer-gateway serve --server uvicorn`: one uvicorn worker (ASGI, uvloop, httptools) per forked process
(gateway/servers/supervisor.py), with the slow-client limits uvicorn lacks and our own accept loop.

- `LimitedProtocol` is uvicorn's httptools protocol plus a header read timeout (from connect, or from the first byte
  of a keep-alive request, to complete headers: 408 when some bytes came, a silent close otherwise) and limits on the
  header bytes and count (431). The header timeout and the keep-alive timeout (an idle connection closed) are checked
  by one sweep over the worker's connections every SWEEP_S, not by a timer per request (hot path).
- `Acceptor` accepts from the shared listening socket only while the worker holds fewer than `max_connections`
  connections; beyond it the socket is not read and new connections wait in the kernel's backlog (uvicorn's
  `limit_concurrency` would accept them and answer 503). It takes one connection per wake-up, like nginx's default
  `multi_accept off`: every worker is woken, so a burst (an SDK opening its pool) is shared between them instead of
  all landing on the first worker awake, as uvicorn's accept-everything loop does. It also retires the socket for the drain
  (gateway/servers/sockets.py): new connection attempts dropped, the backlog accepted whatever the limit, then
  closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
import sys
import time
from email.utils import formatdate
from typing import Any

import httptools
from uvicorn.config import Config as UvicornConfig
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol, RequestResponseCycle
from uvicorn.server import ServerState

from gateway.config import ServerSettings, load_config
from gateway.http import json_encode
from gateway.servers import sockets
from gateway.servers.asgi import AsgiApp
from gateway.servers.drain import Drain

log = logging.getLogger("gateway.uvicorn")
EMPTY_STATE: dict[str, Any] = {}
SWEEP_S = 0.25
ONE_WRITE_MAX = 64 * 1024  # response bodies up to this size leave in the same write as the head


class _HeaderLimit(Exception):
    pass


class _Kept:
    """Stands in for the transport while uvicorn encodes the response head: keeps the bytes instead of sending."""

    __slots__ = ("data",)

    def __init__(self) -> None:
        self.data = b""

    def write(self, data: bytes) -> None:
        self.data += data


class OneWriteCycle(RequestResponseCycle):
    """uvicorn's cycle, sending the response head and a whole body in one socket write instead of two (a send
    syscall saved per response). The head is held until the body message; a streamed, HEAD or large response
    (joining would copy the body) gets its head written first, as uvicorn does."""

    held_start: Any = None

    async def send(self, message: Any) -> None:
        if message["type"] == "http.response.start" and not self.response_started:
            self.held_start = message
            return
        start, self.held_start = self.held_start, None
        if start is None or self.flow.write_paused:  # paused: uvicorn waits for the drain, with the real transport
            if start is not None:
                await super().send(start)
            return await super().send(message)
        transport, kept = self.transport, _Kept()
        self.transport = kept  # type: ignore[assignment]
        try:
            await super().send(start)  # never suspends here: encodes the head into `kept`, sets the response state
        finally:
            self.transport = transport
        body = message.get("body", b"") if message["type"] == "http.response.body" else None
        whole = (body is not None and len(body) <= ONE_WRITE_MAX and not message.get("more_body", False)
                 and not self.chunked_encoding and self.scope["method"] != "HEAD")
        if not whole:
            if kept.data:
                transport.write(kept.data)
            return await super().send(message)
        self.expected_content_length += len(kept.data)  # uvicorn counts the body bytes it writes
        await super().send({"type": "http.response.body", "body": kept.data + body})


class LimitedProtocol(HttpToolsProtocol):
    def __init__(self, config: UvicornConfig, server_state: ServerState, settings: ServerSettings,
                 acceptor: Acceptor) -> None:
        super().__init__(config, server_state, EMPTY_STATE)
        self.settings = settings
        self.acceptor = acceptor
        self.idle_since: float | None = None  # since the end of the last response (None: busy, or never used)
        self.headers_since: float | None = None  # waiting for complete headers since (None: not waiting)
        self._header_bytes = 0
        self._header_count = 0
        self._in_message = False

    # -- connection ------------------------------------------------------------------------------------------------
    def connection_made(self, transport: Any) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.headers_since = self.loop.time()

    def connection_lost(self, exc: Exception | None) -> None:
        self.headers_since = None
        super().connection_lost(exc)
        self.acceptor.connection_closed()

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._send_error(400, "bad_request", "protocol upgrades are not supported")
        except httptools.HttpParserError:
            if self._header_count > self.settings.max_headers or self._header_bytes > self.settings.max_header_bytes:
                self._send_error(431, "request_header_fields_too_large",
                                 f"request headers exceed {self.settings.max_headers} fields or "
                                 f"{self.settings.max_header_bytes} bytes")
            else:
                self._send_error(400, "bad_request", "invalid HTTP request")

    # -- parser callbacks ------------------------------------------------------------------------------------------
    def on_message_begin(self) -> None:
        super().on_message_begin()
        self.idle_since = None
        self._in_message = True
        self._header_bytes = self._header_count = 0
        if self.headers_since is None:
            self.headers_since = self.loop.time()

    def on_url(self, url: bytes) -> None:
        super().on_url(url)
        self._count(len(url), 0)

    def on_header(self, name: bytes, value: bytes) -> None:
        super().on_header(name, value)
        self._count(len(name) + len(value) + 4, 1)

    def on_headers_complete(self) -> None:
        self.headers_since = None
        self._in_message = False
        super().on_headers_complete()
        if type(self.cycle) is RequestResponseCycle:  # its task has not run yet: it runs our `send`
            self.cycle.__class__ = OneWriteCycle

    def on_response_complete(self) -> None:
        """uvicorn's, without its keep-alive timer per response: the housekeeping sweep closes a connection idle
        for the keep-alive timeout (`idle_since`)."""
        self.server_state.total_requests += 1
        if self.transport.is_closing():
            return
        self.idle_since = self.loop.time()
        self.flow.resume_reading()
        if self.pipeline:
            cycle, app = self.pipeline.pop()
            self._start_asgi_task(cycle, app)

    # -- limits ----------------------------------------------------------------------------------------------------
    def _count(self, size: int, headers: int) -> None:
        self._header_bytes += size
        self._header_count += headers
        if self._header_count > self.settings.max_headers or self._header_bytes > self.settings.max_header_bytes:
            raise _HeaderLimit  # httptools turns it into HttpParserError in data_received

    def header_timeout(self) -> None:
        self.headers_since = None
        if self.transport.is_closing():
            return
        if self._in_message:
            self._send_error(408, "request_timeout",
                             f"request headers not complete within {self.settings.header_timeout_ms} ms")
        else:
            self.transport.close()

    def _send_error(self, status: int, kind: str, message: str) -> None:
        body = json_encode({"error": kind, "message": message})
        self.transport.write(b"".join([
            STATUS_LINE[status], b"content-type: application/json\r\nconnection: close\r\n",
            b"x-should-retry: false\r\ncontent-length: ", str(len(body)).encode(), b"\r\n\r\n", body]))
        self.transport.close()

    def is_idle(self) -> bool:
        return self.idle_since is not None and (self.cycle is None or self.cycle.response_complete)

    def close_if_idle(self, now: float, idle_s: float) -> None:
        """Close the connection when it has been idle for `idle_s` and no bytes of a next request wait unread in
        the kernel (it arrived while the event loop was busy)."""
        if self.is_idle() and now - self.idle_since >= idle_s and not self.transport.is_closing():
            sock = self.transport.get_extra_info("socket")
            if sock is not None and sockets.unread(sock.fileno()) == 0:
                self.transport.close()


class Acceptor:
    def __init__(self, sock: socket.socket, server_state: ServerState, settings: ServerSettings) -> None:
        self.sock = sock
        self.server_state = server_state
        self.limit = settings.max_connections
        self.loop = asyncio.get_running_loop()
        self.factory: Any = None
        self.pending = 0
        self.reading = False
        self.open = True
        self.retirement: sockets.Retirement | None = None
        sock.setblocking(False)

    def start(self, factory: Any) -> None:
        self.factory = factory
        self._resume()

    def _resume(self) -> None:
        if self.open and not self.reading:
            self.loop.add_reader(self.sock.fileno(), self._accept)
            self.reading = True

    def _pause(self) -> None:
        if self.reading:
            self.loop.remove_reader(self.sock.fileno())
            self.reading = False

    def _accept(self) -> bool:
        """Accept one connection (True), or none: the backlog is empty, or this worker is at its limit."""
        if len(self.server_state.connections) + self.pending >= self.limit:
            self._pause()  # at the limit: new connections wait in the backlog until one of ours closes
            return False
        try:
            conn, _ = self.sock.accept()
        except (BlockingIOError, InterruptedError):
            return False
        except OSError as exc:  # EMFILE and the like: the connection stays in the backlog
            log.warning("accept failed: %s", exc)
            return False
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.pending += 1
        self.loop.create_task(self._attach(conn))
        return True

    async def _attach(self, conn: socket.socket) -> None:
        try:
            await self.loop.connect_accepted_socket(self.factory, conn)
        except OSError:
            conn.close()
        finally:
            self.pending -= 1

    def connection_closed(self) -> None:
        if self.open and not self.reading and len(self.server_state.connections) + self.pending < self.limit:
            self._resume()

    def retire(self) -> bool:
        """Drop new connection attempts; accept (whatever the limit) what the kernel already completed, answered
        with `Connection: close`; close the socket once none is left (True). From then on a new connection is
        refused by the kernel (once every worker has closed its copy)."""
        if not self.open:
            return True
        if self.retirement is None:
            self.retirement = sockets.Retirement(self.sock)
            self.limit = sys.maxsize
            self._resume()
        while self._accept():
            pass
        if not self.retirement.ready():
            return False
        self._pause()
        self.open = False
        self.sock.close()
        return True


class UvicornListener:
    """The drain's view of a uvicorn worker."""

    def __init__(self, app: AsgiApp, acceptor: Acceptor, server_state: ServerState) -> None:
        self.app = app
        self.acceptor = acceptor
        self.server_state = server_state
        self.done = asyncio.Event()

    def close_idle(self, idle_s: float) -> None:
        now = asyncio.get_running_loop().time()
        for conn in list(self.server_state.connections):
            conn.close_if_idle(now, idle_s)

    def stop_accepting(self) -> bool:
        return self.acceptor.retire()

    def busy(self) -> bool:
        return bool(self.server_state.connections) or self.acceptor.pending > 0 or self.app.gateway.inflight > 0

    async def finish(self, clean: bool) -> None:
        for conn in list(self.server_state.connections):
            conn.transport.abort()  # cut: the client sees its connection fail
        await self.app.gateway.shutdown()
        self.done.set()


async def _housekeeping(server_state: ServerState, header_timeout_s: float, keepalive_s: float) -> None:
    """The `date` header once a second; every SWEEP_S, the header read timeout and the keep-alive timeout of every
    connection."""
    loop = asyncio.get_running_loop()
    next_date = 0.0
    while True:
        now = loop.time()
        if now >= next_date:
            server_state.default_headers = [(b"date", formatdate(time.time(), usegmt=True).encode())]
            next_date = now + 1.0
        for conn in list(server_state.connections):
            since = conn.headers_since
            if since is not None and now - since >= header_timeout_s:
                conn.header_timeout()
            else:
                conn.close_if_idle(now, keepalive_s)
        await asyncio.sleep(SWEEP_S)


async def _serve(sock: socket.socket) -> int:
    config = load_config()
    settings = config.server
    app = AsgiApp()
    await app.startup()
    server_state = ServerState()
    ticker = asyncio.get_running_loop().create_task(
        _housekeeping(server_state, settings.header_timeout_ms / 1000, settings.keepalive_timeout_ms / 1000))
    uv_config = UvicornConfig(app, http="httptools", ws="none", lifespan="off", proxy_headers=False,
                              server_header=False, date_header=False, log_config=None, access_log=False)
    uv_config.load()
    acceptor = Acceptor(sock, server_state, settings)
    listener = UvicornListener(app, acceptor, server_state)
    drain = Drain(app.gateway, listener, config.drain_grace_ms, config.drain_timeout_ms)
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, drain.begin)
    loop.add_signal_handler(signal.SIGINT, drain.begin, False)
    loop.add_signal_handler(signal.SIGQUIT, drain.stop_now)
    acceptor.start(lambda: LimitedProtocol(uv_config, server_state, settings, acceptor))
    await listener.done.wait()
    ticker.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await ticker
    return 0


def serve_worker(sock: socket.socket) -> int:
    import uvloop

    loop = uvloop.new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        return loop.run_until_complete(_serve(sock))
    finally:
        loop.close()


def run(config: Any, host: str, port: int, workers: int) -> int:
    from gateway.servers.supervisor import Supervisor

    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(config.server.backlog)
    kill_after = (config.drain_grace_ms + config.drain_timeout_ms) / 1000 + 5
    return Supervisor(sock, workers, serve_worker, kill_after).run()
