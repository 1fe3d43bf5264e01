"""A floor: a bare ASGI proxy under uvicorn (uvloop + httptools, one process) + the httptools client: forwards the
body and relays status and body, with no routing, auth, stamps or metrics. BARE_UPSTREAM names the upstream;
`GET /ready` answers 200. Run by bench.procs.start_bare("uvicorn")."""

from __future__ import annotations

import os
from typing import Any

from bench.h1client import H1Client

JSON = [(b"content-type", b"application/json")]
client = H1Client(os.environ.get("BARE_UPSTREAM", "http://127.0.0.1:9"))


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    if scope["path"] == "/ready":
        status, data = 200, b"ok"
    else:
        body, more = b"", True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        auth = dict(scope["headers"]).get(b"authorization", b"")
        status, data = await client.request(scope["method"], scope["path"],
                                            b"authorization: %s\r\ncontent-type: application/json\r\n" % auth, body)
    await send({"type": "http.response.start", "status": status,
                "headers": [*JSON, (b"content-length", str(len(data)).encode())]})
    await send({"type": "http.response.body", "body": data})
