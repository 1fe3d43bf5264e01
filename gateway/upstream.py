"""The upstream (Turbopuffer or the local store): a small transport interface with two implementations.

`LAYER_UPSTREAM_TRANSPORT=pyreqwest` (default) or `aiohttp`. Clients are created lazily inside the worker (after
fork). Transport failures and timeouts become 502 `upstream_error`; nothing here retries: pyreqwest 0.15 reports a
read timeout as ConnectTimeoutError, so a "connect" error does not prove a POST was not delivered.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any, Protocol

from msgspec import Struct

from gateway.config import Config
from gateway.http import Ctx, upstream_error

# Upstream response headers the official client acts on (turbopuffer.md §17.3); everything else is dropped.
RELAYED_HEADERS = ("retry-after", "retry-after-ms", "x-should-retry", "content-encoding")


class UpstreamResponse(Struct):
    status: int
    body: bytes
    content_type: str | None
    headers: list[tuple[str, str]]  # the relayed subset

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300


class UpstreamTransport(Protocol):
    async def send(self, method: str, url: str, headers: list[tuple[str, str]], body: bytes | None,
                   timeout_s: float) -> UpstreamResponse:
        """Send one request; return any HTTP response (2xx or not). Raise UpstreamTransportError on transport
        failure or timeout. Never retries."""
        ...

    async def close(self) -> None:
        """Release pooled connections; called once from the worker's shutdown hook."""
        ...


class UpstreamTransportError(Exception):
    def __init__(self, message: str, timeout: bool) -> None:
        super().__init__(message)
        self.timeout = timeout


class PyreqwestTransport:
    def __init__(self) -> None:
        from pyreqwest.client import ClientBuilder

        self._client = ClientBuilder().gzip(False).brotli(False).zstd(False).deflate(False).follow_redirects(
            False).pool_idle_timeout(timedelta(seconds=60)).build()

    async def send(self, method: str, url: str, headers: list[tuple[str, str]], body: bytes | None,
                   timeout_s: float) -> UpstreamResponse:
        from pyreqwest.exceptions import RequestError, RequestTimeoutError, TransportError

        builder = self._client.request(method, url).headers(headers).timeout(timedelta(seconds=timeout_s))
        if body is not None:
            builder = builder.body_bytes(body)
        try:
            resp = await builder.build().send()
            data = (await resp.bytes()).to_bytes()
        except RequestTimeoutError as exc:
            raise UpstreamTransportError(f"timed out after {timeout_s:g}s ({exc.message})", True) from None
        except (TransportError, RequestError) as exc:
            raise UpstreamTransportError(_causes(exc), False) from None
        relayed = [(h, v) for h in RELAYED_HEADERS if (v := resp.get_header(h)) is not None]
        return UpstreamResponse(resp.status, data, resp.get_header("content-type"), relayed)

    async def close(self) -> None:
        await self._client.close()


def _causes(exc: Any) -> str:
    causes = (getattr(exc, "details", None) or {}).get("causes") or []
    return causes[-1]["message"] if causes else str(getattr(exc, "message", exc))


class AiohttpTransport:
    def __init__(self) -> None:
        import aiohttp

        self._aiohttp = aiohttp
        self._session = aiohttp.ClientSession(auto_decompress=False, skip_auto_headers=("User-Agent",),
                                              connector=aiohttp.TCPConnector(limit=0))

    async def send(self, method: str, url: str, headers: list[tuple[str, str]], body: bytes | None,
                   timeout_s: float) -> UpstreamResponse:
        aiohttp = self._aiohttp
        try:
            async with self._session.request(method, url, headers=headers, data=body, allow_redirects=False,
                                             timeout=aiohttp.ClientTimeout(total=timeout_s)) as resp:
                data = await resp.read()
                relayed = [(h, v) for h in RELAYED_HEADERS if (v := resp.headers.get(h)) is not None]
                return UpstreamResponse(resp.status, data, resp.headers.get("content-type"), relayed)
        except TimeoutError:
            raise UpstreamTransportError(f"timed out after {timeout_s:g}s", True) from None
        except aiohttp.ClientError as exc:
            raise UpstreamTransportError(str(exc) or type(exc).__name__, False) from None

    async def close(self) -> None:
        await self._session.close()


class Upstream:
    """The Turbopuffer API as the gateway uses it: base URL, store key, timeout and one transport."""

    def __init__(self, config: Config) -> None:
        assert config.upstream_url is not None, "the upstream URL is resolved before workers start"
        self.base_url = config.upstream_url
        self.store_key = config.upstream_key
        self.timeout_s = config.upstream_timeout_ms / 1000
        self._kind = config.upstream_transport
        self._transport: UpstreamTransport | None = None
        self.last_ok_ms: int | None = None
        self.last_error: str | None = None
        self.inflight = 0
        # Called with (key, path, status) for every 401/403 upstream answers (gateway/verdicts.py drops its verdict).
        self.on_denied: Callable[[str, str, int], None] | None = None

    @property
    def transport(self) -> UpstreamTransport:
        if self._transport is None:  # lazily, inside the worker process and its running loop
            self._transport = PyreqwestTransport() if self._kind == "pyreqwest" else AiohttpTransport()
        return self._transport

    async def request(self, method: str, path: str, key: str | None, body: bytes | None = None,
                      what: str = "request", ctx: Ctx | None = None,
                      accept_encoding: str | None = None) -> UpstreamResponse:
        """Call the upstream; HTTP errors come back as responses, transport failures raise 502 GatewayError.
        `accept_encoding`: gzip or identity for the client on relayed routes (the body may then come back gzipped, see
        gateway.compression); otherwise identity, so the gateway's own calls read plain bodies."""
        headers = [("accept", "application/json"), ("accept-encoding", accept_encoding or "identity")]
        if key:
            headers.append(("authorization", f"Bearer {key}"))
        if body is not None:
            headers.append(("content-type", "application/json"))
        self.inflight += 1
        started = time.perf_counter()
        try:
            resp = await self.transport.send(method, self.base_url + path, headers, body, self.timeout_s)
        except UpstreamTransportError as exc:
            self.last_error = f"{what}: {exc}"
            raise upstream_error(f"Turbopuffer {what} failed: {exc}") from None
        finally:
            self.inflight -= 1
            if ctx is not None:
                ctx.upstream_seconds += time.perf_counter() - started
        self.last_ok_ms = int(time.time() * 1000)
        self.last_error = None
        if resp.status in (401, 403) and key and self.on_denied is not None:
            self.on_denied(key, path, resp.status)
        return resp

    async def close(self) -> None:
        if self._transport is not None:
            await self._transport.close()
            self._transport = None
