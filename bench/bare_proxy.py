"""The floor of the gateway's stack: a bare Granian (RSGI, uvloop) + pyreqwest proxy that forwards the request
body to the upstream and relays status and body, with no routing, auth, stamps or metrics.

Measured beside the gateway in `query_passthrough`, it separates what the stack costs from what the gateway adds.
Run by bench.procs.start_bare_proxy with BARE_UPSTREAM set; `GET /ready` answers 200.
"""

from __future__ import annotations

import os
from datetime import timedelta
from typing import Any

UPSTREAM = os.environ.get("BARE_UPSTREAM", "")
TIMEOUT = timedelta(seconds=30)
JSON = [("content-type", "application/json")]


class BareProxy:
    def __init__(self) -> None:
        self.client: Any = None  # created in the worker, after fork

    async def __rsgi__(self, scope: Any, proto: Any) -> None:
        if scope.path == "/ready":
            proto.response_bytes(200, [], b"ok")
            return
        if self.client is None:
            from pyreqwest.client import ClientBuilder

            self.client = ClientBuilder().gzip(False).brotli(False).zstd(False).deflate(False).build()
        body = await proto()
        headers = [("authorization", scope.headers.get("authorization") or ""), *JSON]
        resp = await self.client.request(scope.method, UPSTREAM + scope.path).headers(headers).timeout(
            TIMEOUT).body_bytes(body).build().send()
        data = (await resp.bytes()).to_bytes()
        proto.response_bytes(resp.status, JSON, data)


app = BareProxy()
