"""The ASGI adapter (run by uvicorn, gateway/servers/uvicorn_worker.py): an ASGI request -> `Ctx` + body stream
-> `Gateway.handle` -> one `http.response.start` + one `http.response.body`.

`lifespan` events run the worker's startup/shutdown, so the app also runs under a stock ASGI server
(`uvicorn gateway.servers.asgi:app`), without the drain and the connection limits of `layer-gateway serve`.
"""

from __future__ import annotations

from typing import Any

from gateway.app import Gateway
from gateway.config import ServerSettings
from gateway.http import Ctx, GatewayError
from gateway.servers.body import BodyStream

CLIENT_GONE = GatewayError("client_disconnected", "the client disconnected before sending the whole body")


class AsgiHeaders:
    """`get(lower_case_name)` over the ASGI header list, decoded once on first use (first value wins)."""

    __slots__ = ("_map", "_raw")

    def __init__(self, raw: list[tuple[bytes, bytes]]) -> None:
        self._raw = raw
        self._map: dict[str, str] | None = None

    def get(self, name: str, default: str | None = None) -> str | None:
        found = self._map
        if found is None:
            found = self._map = {}
            for k, v in self._raw:
                found.setdefault(k.decode("latin-1"), v.decode("latin-1"))
        return found.get(name, default)


class AsgiCtx(Ctx):
    __slots__ = ()

    @property
    def client(self) -> str:
        peer = self.scope.get("client")
        return f"{peer[0]}:{peer[1]}" if peer else "unknown"


class _Receive:
    """The body chunks of one request from ASGI `receive`; b"" at the end."""

    __slots__ = ("_done", "_event", "_receive")

    def __init__(self, receive: Any) -> None:
        self._receive = receive
        self._done = False
        # uvicorn's `receive` waits on its cycle's message_event: once set, the next message needs no wait
        self._event = getattr(getattr(receive, "__self__", None), "message_event", None)

    @property
    def buffered(self) -> bool:
        """The next message is already here (BodyStream then reads it without a timer)."""
        return self._event is not None and self._event.is_set()

    @property
    def complete(self) -> bool:
        """The last body message has been received (BodyStream then ends without waiting)."""
        return self._done

    async def __call__(self) -> bytes:
        while not self._done:
            message = await self._receive()
            if message["type"] == "http.disconnect":
                raise CLIENT_GONE
            self._done = not message.get("more_body", False)
            chunk: bytes = message.get("body", b"")
            if chunk:
                return chunk
        return b""


def encode_headers(headers: list[tuple[str, str]], length: int) -> list[tuple[bytes, bytes]]:
    out = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers]
    out.append((b"content-length", str(length).encode()))
    return out


class AsgiApp:
    def __init__(self, gateway: Gateway | None = None) -> None:
        self.gateway = gateway or Gateway()
        self.settings = ServerSettings()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        ctx = AsgiCtx(scope["method"], scope["path"], scope["query_string"].decode("latin-1"),
                      AsgiHeaders(scope["headers"]))
        ctx.scope = scope
        raw_path = scope.get("raw_path")
        if raw_path is not None:  # the path as sent: router.path_segments tells an encoded slash from a separator
            ctx.raw_path = raw_path.decode("latin-1")
        resp = await self.gateway.handle(ctx, BodyStream(_Receive(receive), self.settings))
        await send({"type": "http.response.start", "status": resp.status,
                    "headers": encode_headers(resp.headers, len(resp.body))})
        await send({"type": "http.response.body", "body": resp.body})
        self.gateway.observe(ctx, resp.status)

    async def startup(self) -> None:
        await self.gateway.startup()
        assert self.gateway.state is not None
        self.settings = self.gateway.state.config.server

    async def _lifespan(self, receive: Any, send: Any) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await self.startup()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.gateway.shutdown()
                await send({"type": "lifespan.shutdown.complete"})
                return


app = AsgiApp()
