"""`LAYER_UPSTREAM_TRANSPORT=httptools`: the gateway's HTTP/1.1 keep-alive client (one pool per upstream origin).

Re-sending: an idempotent request (a query, a GET) is sent once more, on a fresh connection, when a reused
connection died before any response byte arrived (the upstream closed it as the request went out). Nothing else is
re-sent: a write is only ever written to a connection that is open at that moment, and once any of it has gone out
it is never written again.
"""

from __future__ import annotations

import re
import ssl
from typing import Any

from gateway.config import TransportSettings
from gateway.httpclient.connection import ExchangeError, Limits, RawResponse
from gateway.httpclient.pool import OriginPool
from gateway.upstream import RELAYED_HEADERS, UpstreamResponse, UpstreamTransportError

BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
UNSAFE = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")  # control characters other than TAB, CR, LF


class HttptoolsTransport:
    def __init__(self, settings: TransportSettings) -> None:
        self._settings = settings
        self._relayed = frozenset(name.encode() for name in RELAYED_HEADERS)
        self._limits = Limits(self._relayed | {b"content-type"}, settings.read_timeout_ms / 1000,
                              settings.timeout_ms / 1000, settings.max_header_bytes, settings.max_response_bytes)
        self._pools: dict[str, OriginPool] = {}  # by "scheme://host:port"
        self._tls: ssl.SSLContext | None = None
        self._closed = False

    async def send(self, method: str, url: str, headers: list[tuple[str, str]], body: bytes | None,
                   idempotent: bool) -> UpstreamResponse:
        pool, target = self._route(url)
        head = self._head(pool, method, target, headers, body)
        head_only = method == "HEAD"
        deadline = pool.loop.time() + self._limits.total_timeout_s
        try:
            conn = await pool.acquire(deadline)
            retried = False
            while True:
                try:
                    raw = await conn.exchange(head, body, head_only, deadline)
                except ExchangeError as exc:
                    if not retried and idempotent and conn.served and not exc.response_started and not exc.timeout:
                        retried = True
                        conn = await pool.replace(conn, deadline, "stale")
                        continue
                    pool.discard(conn, "timeout" if exc.timeout else "error")
                    raise
                except BaseException:
                    pool.discard(conn, "cancelled")
                    raise
                pool.release(conn)
                return self._response(raw)
        except ExchangeError as exc:
            raise UpstreamTransportError(str(exc), exc.timeout) from None

    def _response(self, raw: RawResponse) -> UpstreamResponse:
        status, collected, body = raw
        content_type = None
        relayed = []
        for name, value in collected:
            if name == b"content-type":
                content_type = value.decode("latin-1")
            else:
                relayed.append((name.decode(), value.decode("latin-1")))
        return UpstreamResponse(status, body, content_type, relayed)

    @staticmethod
    def _head(pool: OriginPool, method: str, target: str, headers: list[tuple[str, str]],
              body: bytes | None) -> bytes:
        lines = [f"{method} {target} HTTP/1.1\r\nhost: {pool.host_header}\r\n"]
        for name, value in headers:
            lines.append(f"{name}: {value}\r\n")
        if body is not None or method in BODY_METHODS:
            lines.append(f"content-length: {len(body) if body else 0}\r\n")
        lines.append("\r\n")
        head = "".join(lines)
        # Request smuggling guard: a CR or LF inside the target or a value would add line breaks (the request line
        # and host make one more than `lines`); no other control characters, no space in the target.
        breaks = len(lines) + 1
        if head.count("\n") != breaks or head.count("\r") != breaks or " " in target or UNSAFE.search(head):
            raise UpstreamTransportError("refused to send a request with control characters in its path or headers",
                                         False)
        return head.encode()

    def _route(self, url: str) -> tuple[OriginPool, str]:
        """The pool for the URL's origin and the request target (path and query). Parsed once per origin."""
        start = url.find("/", url.find("//") + 2)
        origin, target = (url, "/") if start < 0 else (url[:start], url[start:])
        pool = self._pools.get(origin)
        if pool is None:
            pool = self._pools[origin] = self._new_pool(origin)
        return pool, target

    def _new_pool(self, origin: str) -> OriginPool:
        if self._closed:
            raise UpstreamTransportError("the upstream client is closed", False)
        scheme, _, authority = origin.partition("://")
        if scheme not in ("http", "https") or not authority:
            raise UpstreamTransportError(f"unsupported upstream URL {origin!r}", False)
        host, port = _split_authority(authority, 443 if scheme == "https" else 80)
        tls = self._tls_context() if scheme == "https" else None
        s = self._settings
        return OriginPool(host, port, tls, self._limits, s.pool_size, s.connect_timeout_ms / 1000,
                          s.idle_timeout_ms / 1000)

    def _tls_context(self) -> ssl.SSLContext:
        """Verification and hostname checks on (create_default_context); SNI from server_hostname at connect."""
        if self._tls is None:
            self._tls = ssl.create_default_context(cafile=self._settings.ca_file)
            self._tls.set_alpn_protocols(["http/1.1"])
        return self._tls

    def stats(self) -> dict[str, Any]:
        return {"transport": "httptools", "pools": [pool.snapshot() for pool in self._pools.values()]}

    async def close(self) -> None:
        self._closed = True
        for pool in self._pools.values():
            pool.close()


def _split_authority(authority: str, default_port: int) -> tuple[str, int]:
    if authority.startswith("["):  # [v6]:port
        host, _, rest = authority[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
    else:
        host, _, port = authority.rpartition(":") if ":" in authority else (authority, "", "")
    if port and not port.isdigit():
        raise UpstreamTransportError(f"invalid port in upstream URL authority {authority!r}", False)
    return host, int(port) if port else default_port
