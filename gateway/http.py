"""Request context, response values, the GatewayError family and the one error -> response table."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl

import msgspec

if TYPE_CHECKING:
    from gateway.auth import Principal

JSON = "application/json"
JSON_HEADERS: list[tuple[str, str]] = [("content-type", JSON)]
# Statuses by error source when the error does not carry its own (Pingora's fail_to_proxy defaults).
SOURCE_STATUS = {"upstream": 502, "client": 400, "internal": 500}

json_encode = msgspec.json.encode
json_decode = msgspec.json.decode


class Response:
    """One downstream response: status, header list and body bytes, rendered once. `relayed`: an upstream body
    passed through as it came (never re-encoded; gateway.compression only compresses the gateway's own bodies)."""

    __slots__ = ("body", "headers", "relayed", "status")

    def __init__(self, status: int, body: bytes, headers: list[tuple[str, str]] | None = None,
                 relayed: bool = False) -> None:
        self.status = status
        self.body = body
        self.headers = JSON_HEADERS if headers is None else headers
        self.relayed = relayed


def json_response(status: int, obj: Any, extra: list[tuple[str, str]] | None = None) -> Response:
    headers = JSON_HEADERS if not extra else [*JSON_HEADERS, *extra]
    return Response(status, json_encode(obj), headers)


class GatewayError(Exception):
    """An error as a value: kind (the JSON `error`), message, source, optional status and extra body fields."""

    def __init__(
        self,
        kind: str,
        message: str,
        *,
        status: int | None = None,
        source: str = "client",
        retryable: bool = False,
        extra: dict[str, Any] | None = None,
        headers: list[tuple[str, str]] | None = None,
        raw: bytes | None = None,
    ) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.status = status if status is not None else SOURCE_STATUS[source]
        self.source = source
        self.retryable = retryable
        self.extra = extra
        self.headers = headers
        self.raw = raw  # an upstream answer relayed verbatim (status, body and `headers` as upstream sent them)

    def __repr__(self) -> str:
        return f"GatewayError(kind={self.kind!r}, status={self.status}, message={self.message!r})"


def validation_error(message: str) -> GatewayError:
    return GatewayError("validation_error", message, status=422)


def bad_request(message: str) -> GatewayError:
    return GatewayError("bad_request", message, status=400)


def parse_count(raw: str, name: str, lo: int = 0, hi: int = 2**63 - 1) -> int:
    """An integer in [lo, hi] written in ASCII decimal digits, or 422 naming the parameter. Strict on purpose:
    `str.isdigit()` accepts `²` and `int()` accepts `٣` and ` 7`, so neither alone is a parser."""
    if raw.isascii() and raw.isdigit() and len(raw) <= 19:
        value = int(raw)
        if lo <= value <= hi:
            return value
    raise validation_error(f"{name} must be an integer between {lo} and {hi}, got {raw!r}")


def upstream_error(message: str, status: int = 502) -> GatewayError:
    return GatewayError("upstream_error", message, status=status, source="upstream", retryable=True)


def error_response(err: GatewayError) -> Response:
    if err.raw is not None:
        return Response(err.status, err.raw, err.headers or JSON_HEADERS)
    body: dict[str, Any] = {"error": err.kind, "message": err.message}
    if err.extra:
        body.update(err.extra)
    headers = JSON_HEADERS if not err.headers else [*JSON_HEADERS, *err.headers]
    # Our own 4xx answers are final: tell the official client not to retry them (turbopuffer.md §14).
    if err.status < 500 and err.status != 429:
        headers = [*headers, ("x-should-retry", "false")]
    return Response(err.status, json_encode(body), headers)


INTERNAL_ERROR = GatewayError("internal_error", "the gateway failed to handle the request", source="internal")
NOT_FOUND_ROUTE = "no route for {method} {path}"


class Ctx:
    """Per-request state, created once by the server adapter; derived values are parsed on first use.

    `headers` is the adapter's header view (`.get(lower_case_name) -> str | None` only); `scope` is the server's own
    request object, for rarely needed fields through the adapter's properties (`client`)."""

    __slots__ = (
        "_query",
        "body",
        "body_reserved",
        "headers",
        "identity",
        "log_extra",
        "method",
        "namespace",
        "params",
        "path",
        "principal",
        "query_string",
        "raw_path",
        "route",
        "scope",
        "started",
        "status",
        "upstream_key",
        "upstream_seconds",
    )

    def __init__(self, method: str, path: str, query_string: str, headers: Any) -> None:
        self.method = method
        self.path = path
        self.query_string = query_string
        self.headers = headers  # ask .get() for single headers only
        self.raw_path: str | None = None  # the undecoded path, for servers that have one (ASGI); see path_segments
        self.body = b""
        self.body_reserved = 0  # bytes of this request's body counted in the worker's BodyBudget
        self.route: Any = None
        self.params: dict[str, str] = {}
        self.namespace: str | None = None
        self.principal: Principal | None = None
        self.upstream_key: str | None = None
        self.identity: str | None = None  # derive mode: the namespace's fingerprint from the auth phase's verdict
        self.started = time.perf_counter()
        self.upstream_seconds = 0.0
        self.status = 0
        self._query: dict[str, str] | None = None
        self.log_extra: dict[str, Any] | None = None
        self.scope: Any = None

    @property
    def query(self) -> dict[str, str]:
        if self._query is None:
            self._query = dict(parse_qsl(self.query_string, keep_blank_values=True))
        return self._query

    @property
    def client(self) -> str:
        """The downstream peer as "host:port" (RSGI's `scope.client`; the ASGI adapter overrides it)."""
        return str(getattr(self.scope, "client", "") or "unknown")

    def path_with_query(self) -> str:
        return f"{self.path}?{self.query_string}" if self.query_string else self.path
