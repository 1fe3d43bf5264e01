"""A canned Turbopuffer stand-in that answers every request after a fixed delay (10 ms by default), for load tests
of the gateway's own behaviour (drain, slow clients) where the local store's CPU would be the bottleneck.

`python tests/support/slow_upstream.py --port P [--delay-ms 10]`. Queries answer one row; a query to the namespace
`slow-<ms>` answers after <ms> milliseconds instead; metadata answers "up-to-date"; GET /health answers 200.
"""

from __future__ import annotations

import argparse
import asyncio
import json

import httptools
import uvloop

QUERY = json.dumps({"rows": [{"id": 1, "$dist": 0.0}], "billing": {"billable_logical_bytes_queried": 1,
                                                                     "billable_logical_bytes_returned": 1}}).encode()
META = json.dumps({"id": "ns", "approx_row_count": 1, "dimensions": 0, "index": {"status": "up-to-date"}}).encode()


class Upstream(asyncio.Protocol):
    def __init__(self, delay_s: float) -> None:
        self.delay_s = delay_s
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.url = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            assert self.transport is not None
            self.transport.close()

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_message_complete(self) -> None:
        url, self.url = self.url.decode(), b""
        delay = self.delay_s
        ns = url.split("/")[3] if url.count("/") >= 3 else ""
        if ns.startswith("slow-"):
            delay = int(ns[5:]) / 1000
        body = META if url.endswith("/metadata") else QUERY
        asyncio.get_running_loop().call_later(delay, self._respond, body)

    def _respond(self, body: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: "
                                 + str(len(body)).encode() + b"\r\n\r\n" + body)


async def main(port: int, delay_ms: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: Upstream(delay_ms / 1000), "127.0.0.1", port, backlog=4096)
    print(f"slow upstream on 127.0.0.1:{port}", flush=True)
    await server.serve_forever()


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--delay-ms", type=int, default=10)
    args = ap.parse_args()
    uvloop.run(main(args.port, args.delay_ms))
