"""The least a keep-alive HTTP/1.1 client on asyncio + httptools can do: one request per pooled connection, a
Content-Length body, nothing else (no deadlines, size limits, TLS, chunked requests, retries, metrics or error
handling). Not a transport for the gateway: the floors run over it (BARE_TRANSPORT=minimal) to show the most any
gateway on a given server could reach, the `ceiling` of the `servers` scenario."""

from __future__ import annotations

import asyncio
from urllib.parse import urlsplit

import httptools

from gateway.upstream import UpstreamResponse


class _Connection(asyncio.Protocol):
    def __init__(self) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.response: asyncio.Future[UpstreamResponse] | None = None
        self.chunks: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.parser.feed_data(data)

    def on_body(self, body: bytes) -> None:
        self.chunks.append(body)

    def on_message_complete(self) -> None:
        assert self.response is not None
        self.response.set_result(UpstreamResponse(self.parser.get_status_code(), b"".join(self.chunks), None, []))
        self.chunks = []

    def connection_lost(self, exc: Exception | None) -> None:
        if self.response is not None and not self.response.done():
            self.response.set_exception(ConnectionError("upstream closed the connection"))


class MinimalClient:
    def __init__(self) -> None:
        self._idle: list[_Connection] = []

    def _take_idle(self) -> _Connection | None:
        """The newest pooled connection still open (one the upstream closed while it was idle is dropped)."""
        while self._idle:
            conn = self._idle.pop()
            if conn.transport is not None and not conn.transport.is_closing():
                return conn
        return None

    async def send(self, method: str, url: str, headers: list[tuple[str, str]], body: bytes,
                   idempotent: bool) -> UpstreamResponse:
        parts = urlsplit(url)
        loop = asyncio.get_running_loop()
        conn = self._take_idle() or (await loop.create_connection(_Connection, parts.hostname, parts.port))[1]
        conn.response = loop.create_future()
        head = "".join(f"{k}: {v}\r\n" for k, v in headers)
        assert conn.transport is not None
        conn.transport.write(f"{method} {parts.path} HTTP/1.1\r\nhost: {parts.netloc}\r\n{head}"
                             f"content-length: {len(body)}\r\n\r\n".encode() + body)
        resp = await conn.response
        self._idle.append(conn)
        return resp
