"""The floor of the gateway's stack: a bare Granian (RSGI, uvloop) proxy that forwards the request body to the
upstream through one of the gateway's own upstream transports and relays status and body, with no routing, auth,
stamps or metrics.

Measured beside the gateway (`servers`, `transport_floors`), it separates what the server and the transport cost from
what the gateway adds. Run by bench.procs.start_bare("granian") with BARE_UPSTREAM, BARE_TRANSPORT (httptools |
pyreqwest | minimal, bench/minimal_client.py) and optionally BARE_CA_FILE set; `GET /ready` answers 200.
"""

from __future__ import annotations

import os
from typing import Any

from gateway.config import TransportSettings
from gateway.upstream import UpstreamTransport, open_transport

UPSTREAM = os.environ.get("BARE_UPSTREAM", "")
KIND = os.environ.get("BARE_TRANSPORT", "httptools")


def open_floor_transport() -> UpstreamTransport:
    """The floors' upstream transport (bare_asgi.py and bare_raw.py use it too); call it after fork."""
    if KIND == "minimal":
        from bench.minimal_client import MinimalClient

        return MinimalClient()  # type: ignore[return-value]
    return open_transport(TransportSettings(kind=KIND, ca_file=os.environ.get("BARE_CA_FILE") or None))


JSON = [("content-type", "application/json")]


class BareProxy:
    def __init__(self) -> None:
        self.transport: UpstreamTransport | None = None  # created in the worker, after fork

    async def __rsgi__(self, scope: Any, proto: Any) -> None:
        if scope.path == "/ready":
            proto.response_bytes(200, [], b"ok")
            return
        if self.transport is None:
            self.transport = open_floor_transport()
        body = await proto()
        headers = [("authorization", scope.headers.get("authorization") or ""), *JSON]
        resp = await self.transport.send(scope.method, UPSTREAM + scope.path, headers, body, True)
        proto.response_bytes(resp.status, JSON, resp.body)


app = BareProxy()
