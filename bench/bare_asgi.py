"""A floor: a bare ASGI proxy under uvicorn (uvloop + httptools, one process) + one of the gateway's upstream
transports (BARE_TRANSPORT, default the httptools client): forwards the body and relays status and body, with no
routing, auth, stamps or metrics. BARE_UPSTREAM names the upstream; `GET /ready` answers 200. Run by
bench.procs.start_bare("uvicorn")."""

from __future__ import annotations

from typing import Any

from bench.bare_proxy import UPSTREAM, open_floor_transport

JSON = [(b"content-type", b"application/json")]
transport = open_floor_transport()  # connections are opened lazily, inside the running loop


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
        auth = dict(scope["headers"]).get(b"authorization", b"").decode()
        resp = await transport.send(scope["method"], UPSTREAM + scope["path"],
                                    [("authorization", auth), ("content-type", "application/json")], body, True)
        status, data = resp.status, resp.body
    await send({"type": "http.response.start", "status": status,
                "headers": [*JSON, (b"content-length", str(len(data)).encode())]})
    await send({"type": "http.response.body", "body": data})
