"""The upstream (Turbopuffer or the local store) as the gateway calls it, and the transport interface under it.

`LAYER_UPSTREAM_TRANSPORT=httptools` (default: gateway/httpclient, an HTTP/1.1 keep-alive client on asyncio) or
`pyreqwest`. Both pass one conformance suite (tests/transport) and are created lazily inside the worker (after
fork). A transport re-sends a request only when that is safe: an idempotent one (a query, a GET) once, when a reused
connection died before any response byte arrived; a write never once any of it may have been written. Transport
failures and timeouts become 502 `upstream_error`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any, Protocol

from msgspec import Struct

from gateway import metrics
from gateway.config import Config, TransportSettings
from gateway.http import Ctx, upstream_error

# Upstream response headers the official client acts on (turbopuffer.md §17.3); everything else is dropped.
RELAYED_HEADERS = ("retry-after", "retry-after-ms", "x-should-retry", "content-encoding")
IDEMPOTENT_METHODS = frozenset({"GET", "HEAD"})
SEND_REQUEST_FAILED = "client error (SendRequest)"  # hyper: the connection was up, the exchange on it failed


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
                   idempotent: bool) -> UpstreamResponse:
        """Send one request within the settings' deadlines; return any HTTP response (2xx or not). Raise
        UpstreamTransportError on transport failure, timeout or a response over the size limits. `idempotent`:
        the request may be sent again (once, only when a reused connection died before any response byte)."""
        ...

    def stats(self) -> dict[str, Any]:
        """Connection pool state for /health and the pool metrics (`pools`: one entry per origin, when known)."""
        ...

    async def close(self) -> None:
        """Release pooled connections; called once from the worker's shutdown hook."""
        ...


class UpstreamTransportError(Exception):
    def __init__(self, message: str, timeout: bool) -> None:
        super().__init__(message)
        self.timeout = timeout


def open_transport(settings: TransportSettings) -> UpstreamTransport:
    if settings.kind == "pyreqwest":
        return PyreqwestTransport(settings)
    from gateway.httpclient.transport import HttptoolsTransport

    return HttptoolsTransport(settings)


class PyreqwestTransport:
    """pyreqwest 0.15 reports a read timeout as ConnectTimeoutError, and a connection that died under a sent request
    as ConnectError, so a "connect" error does not prove that a request was not delivered. An idempotent request is
    sent once more when the error says the connection was already established (hyper's `SendRequest`) and no
    response head arrived; pyreqwest cannot say whether the connection was reused or part of a head had arrived."""

    def __init__(self, settings: TransportSettings) -> None:
        self._client = self._build(settings, settings.pool_size)
        self._fresh = self._build(settings, 0)  # keeps no idle connection: the retry always gets a new one
        self._max_bytes = settings.max_response_bytes

    @staticmethod
    def _build(settings: TransportSettings, max_idle: int) -> Any:
        from pyreqwest.client import ClientBuilder

        ms = lambda n: timedelta(milliseconds=n)
        builder = ClientBuilder().gzip(False).brotli(False).zstd(False).deflate(False).follow_redirects(False)
        builder = builder.timeout(ms(settings.timeout_ms)).connect_timeout(ms(settings.connect_timeout_ms))
        builder = builder.read_timeout(ms(settings.read_timeout_ms)).pool_timeout(ms(settings.timeout_ms))
        builder = builder.pool_idle_timeout(ms(settings.idle_timeout_ms)).max_connections(settings.pool_size)
        builder = builder.pool_max_idle_per_host(max_idle)
        if settings.ca_file:
            with open(settings.ca_file, "rb") as f:
                builder = builder.add_root_certificate_pem(f.read())
        return builder.build()

    async def send(self, method: str, url: str, headers: list[tuple[str, str]], body: bytes | None,
                   idempotent: bool) -> UpstreamResponse:
        from pyreqwest.exceptions import RequestError, RequestTimeoutError

        client, retry = self._client, idempotent
        while True:
            head_arrived = False
            try:
                builder = client.request(method, url).headers(headers)
                if body is not None:
                    builder = builder.body_bytes(body)
                async with builder.build_streamed() as resp:
                    head_arrived = True
                    if resp.status < 200:  # 101: an upgrade nobody asked for (hyper consumes the other 1xx)
                        raise UpstreamTransportError(f"the upstream switched protocols ({resp.status})", False)
                    data = await self._read(resp)
                break
            except RequestTimeoutError as exc:
                raise UpstreamTransportError(f"timed out ({_causes(exc)})", True) from None
            except RequestError as exc:
                if not (retry and not head_arrived and SEND_REQUEST_FAILED in _cause_list(exc)):
                    raise UpstreamTransportError(_causes(exc), False) from None
                client, retry = self._fresh, False
            except ValueError as exc:  # a header value with control characters: never sent
                raise UpstreamTransportError(f"refused to send the request: {exc}", False) from None
        relayed = [(h, v) for h in RELAYED_HEADERS if (v := resp.get_header(h)) is not None]
        return UpstreamResponse(resp.status, data, resp.get_header("content-type"), relayed)

    async def _read(self, resp: Any) -> bytes:
        """The body, refused once it passes the size limit (a response is never buffered past it)."""
        reader = resp.body_reader
        parts, size = [], 0
        while (chunk := await reader.read_chunk()) is not None:
            size += len(chunk)
            if size > self._max_bytes:
                raise UpstreamTransportError(f"upstream response body exceeds {self._max_bytes} bytes", False)
            parts.append(chunk.to_bytes())
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def stats(self) -> dict[str, Any]:
        return {"transport": "pyreqwest"}

    async def close(self) -> None:
        await self._client.close()
        await self._fresh.close()


def _cause_list(exc: Any) -> list[str]:
    return [c["message"] for c in (getattr(exc, "details", None) or {}).get("causes") or []]


def _causes(exc: Any) -> str:
    causes = _cause_list(exc)
    return causes[-1] if causes else str(getattr(exc, "message", exc))


class Upstream:
    """The Turbopuffer API as the gateway uses it: base URL, store key and one transport."""

    def __init__(self, config: Config) -> None:
        assert config.upstream_url is not None, "the upstream URL is resolved before workers start"
        self.base_url = config.upstream_url
        self.store_key = config.upstream_key
        self.settings = config.transport
        self._transport: UpstreamTransport | None = None
        self.last_ok_ms: int | None = None
        self.last_error: str | None = None
        self.inflight = 0
        # Called with (key, path, status) for every 401/403 upstream answers (gateway/verdicts.py drops its verdict).
        self.on_denied: Callable[[str, str, int], None] | None = None

    @property
    def transport(self) -> UpstreamTransport:
        if self._transport is None:  # lazily, inside the worker process and its running loop
            self._transport = open_transport(self.settings)
            metrics.add_sampler(self._sample_metrics)
        return self._transport

    async def request(self, method: str, path: str, key: str | None, body: bytes | None = None,
                      what: str = "request", ctx: Ctx | None = None, accept_encoding: str | None = None,
                      idempotent: bool = False) -> UpstreamResponse:
        """Call the upstream; HTTP errors come back as responses, transport failures raise 502 GatewayError.
        `accept_encoding`: gzip or identity for the client on relayed routes (the body may then come back gzipped, see
        gateway.compression); otherwise identity, so the gateway's own calls read plain bodies. `idempotent=True`
        marks a read sent with POST (a query): the transport may send it once more (GET and HEAD always are)."""
        headers = [("accept", "application/json"), ("accept-encoding", accept_encoding or "identity")]
        if key:
            headers.append(("authorization", f"Bearer {key}"))
        if body is not None:
            headers.append(("content-type", "application/json"))
        self.inflight += 1
        started = time.perf_counter()
        try:
            resp = await self.transport.send(method, self.base_url + path, headers, body,
                                             idempotent or method in IDEMPOTENT_METHODS)
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

    def stats(self) -> dict[str, Any]:
        return self._transport.stats() if self._transport is not None else {"transport": self.settings.kind}

    def _sample_metrics(self) -> None:
        for pool in self.stats().get("pools", ()):
            metrics.sample_pool(pool)

    async def close(self) -> None:
        if self._transport is not None:
            await self._transport.close()
            self._transport = None
