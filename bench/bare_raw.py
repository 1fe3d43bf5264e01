"""The Python floor: a raw uvloop Protocol HTTP/1.1 server (httptools parser, keep-alive, no ASGI) + one of the
gateway's upstream transports (BARE_TRANSPORT, default the httptools client). Not an option for the gateway (it means owning an HTTP server); it shows what any Python server on uvloop
costs at least. `python -m bench.bare_raw PORT` with BARE_UPSTREAM set; `GET /ready` answers 200."""

from __future__ import annotations

import asyncio
import sys

import httptools
import uvloop

from bench.bare_proxy import UPSTREAM, open_floor_transport

transport = open_floor_transport()  # connections are opened lazily, inside the running loop


class Server(asyncio.Protocol):
    def __init__(self) -> None:
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.url = b""
        self.body: list[bytes] = []
        self.auth = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.parser.feed_data(data)

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        if name.lower() == b"authorization":
            self.auth = value

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        url, body, self.url, self.body = self.url.decode(), b"".join(self.body), b"", []
        method = self.parser.get_method().decode()
        asyncio.get_running_loop().create_task(self._respond(method, url, body, self.auth))

    async def _respond(self, method: str, url: str, body: bytes, auth: bytes) -> None:
        if url == "/ready":
            status, data = 200, b"ok"
        else:
            resp = await transport.send(method, UPSTREAM + url, [("authorization", auth.decode()),
                                                                 ("content-type", "application/json")], body, True)
            status, data = resp.status, resp.body
        assert self.transport is not None
        self.transport.write(b"HTTP/1.1 %d OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s"
                             % (status, len(data), data))


async def main(port: int) -> None:
    server = await asyncio.get_running_loop().create_server(Server, "127.0.0.1", port, backlog=4096)
    await server.serve_forever()


if __name__ == "__main__":
    uvloop.run(main(int(sys.argv[1])))
