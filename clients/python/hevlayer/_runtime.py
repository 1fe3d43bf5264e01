"""The hand-written runtime under the generated client: requests, perf, typed errors, header copies and the
fall-through to Turbopuffer. Its rules are shared with the Go and TypeScript runtimes and checked by
sdk/scenarios.json in all three."""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass
from typing import Any, Generic, NamedTuple, Self, TypeVar
from urllib.parse import quote, urlencode

import httpx
from pydantic import BaseModel, TypeAdapter

T = TypeVar("T")
log = logging.getLogger("hevlayer")

DEFAULT_BASE_URL = "https://aws-us-east-1.hevlayer.com"
DEFAULT_TURBOPUFFER_URL = "https://aws-us-east-1.turbopuffer.com"
TURBOPUFFER_DIRECT = "turbopuffer_direct"
STAMP = "_hevlayer_upserted_at"
SIMPLE_VECTOR_KEYS = frozenset({"vector", "top_k", "filters", "include_attributes"})
TAG_CHARS = frozenset(":_-.=/+")
MAX_TAGS, MAX_TAG_BYTES = 32, 128


@dataclass(frozen=True)
class LayerPerf:
    latency_ms: float  # measured by the client: the whole call, a failed connect and a fall-through included
    cache_status: str | None  # the raw x-layer-cache header
    fallback: str | None = None  # "turbopuffer_direct" when the call went to Turbopuffer directly


@dataclass(frozen=True)
class LayerResponse(Generic[T]):
    data: T
    perf: LayerPerf


class HevlayerError(Exception):
    """An error answer: `status_code`, and from the JSON body `error`, `message` and `feature` (`body` is all of it)."""

    def __init__(self, status_code: int, message: str, *, error: str | None = None, feature: str | None = None,
                 response: httpx.Response | None = None, body: Any = None) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.message = message
        self.error = error
        self.feature = feature
        self.response = response
        self.body = body


class GatewayUnreachableError(HevlayerError):
    """Connecting to the gateway failed and the call could not fall through; `reason` says why."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(0, message, error="gateway_unreachable")
        self.reason = reason


class Op(NamedTuple):
    """One operation of openapi.yaml, as the generated client describes it to the runtime."""

    name: str
    method: str
    path: str
    fallback: str  # direct | simple-vector | none
    upstream_method: str | None
    upstream_path: str | None
    fixed_query: tuple[tuple[str, str], ...]
    response: str  # json | text
    result: Any  # the type the JSON answer is parsed into
    header_fields: tuple[tuple[str, str, str], ...]  # (header, model field, integer|string)
    read: bool  # a read-only route: resent once when a pooled connection turns out dead (see STALE_ERRORS)


class Request(NamedTuple):
    method: str
    path: str  # with the query string
    headers: dict[str, str]
    body: Any  # JSON-ready value or None


def clean_tags(tags: list[Any]) -> str:
    """Search-history tags as the gateway accepts them: trimmed, 1-128 bytes of [A-Za-z0-9:_-./=+], deduplicated and
    sorted, at most 32 (a bad tag fails here instead of as a 422)."""
    clean = set()
    for raw in tags:
        tag = str(raw).strip()
        if not tag:
            continue
        if len(tag.encode()) > MAX_TAG_BYTES:
            raise ValueError(f"search-history tag {tag!r} exceeds {MAX_TAG_BYTES} bytes")
        if not all(c.isascii() and (c.isalnum() or c in TAG_CHARS) for c in tag):
            raise ValueError(f"search-history tag {tag!r} may contain only ASCII letters, digits and :_-.=/+")
        clean.add(tag)
    if len(clean) > MAX_TAGS:
        raise ValueError(f"search-history tags are limited to {MAX_TAGS} unique tags")
    return ",".join(sorted(clean))


def _wire(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list | tuple):
        return ",".join(_wire(v) for v in value)
    return str(value)


def _json_ready(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json", by_alias=True, exclude_none=True)
    return value


def fill_path(template: str, args: tuple[Any, ...]) -> str:
    """`/v2/namespaces/{namespace}` with each argument percent-encoded as one path segment."""
    parts = template.split("{")
    out = [parts[0]]
    for arg, part in zip(args, parts[1:], strict=True):
        out.append(quote(str(arg), safe="") + part.split("}", 1)[1])
    return "".join(out)


def simple_vector(body: Any) -> tuple[dict[str, Any] | None, str | None]:
    """A Layer query Turbopuffer can answer directly: `{vector, top_k?, filters?, include_attributes?}` becomes
    `{rank_by: ["vector", "ANN", vector], top_k, ...}`. Returns (body, None) or (None, why not)."""
    if not isinstance(body, dict) or not body.get("vector"):
        return None, "the query has no `vector`, so it needs Layer state"
    extra = sorted(k for k, v in body.items() if k not in SIMPLE_VECTOR_KEYS and v is not None and v is not False)
    if extra:
        return None, f"the query uses {', '.join(extra)}, which needs Layer state"
    out: dict[str, Any] = {"rank_by": ["vector", "ANN", body["vector"]], "top_k": body.get("top_k") or 10}
    if body.get("filters") is not None:
        out["filters"] = body["filters"]
    include = body.get("include_attributes")
    if include is True:  # what the gateway sends: everything except its own stamp
        out["exclude_attributes"] = [STAMP]
    elif include is not None:
        out["include_attributes"] = include
    return out, None


def _error(response: httpx.Response) -> HevlayerError:
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict):
        error, feature = body.get("error"), body.get("feature")
        message = body.get("message") or (error if isinstance(error, str) else None) or response.text
        return HevlayerError(response.status_code, str(message or response.reason_phrase),
                             error=None if error is None else str(error),
                             feature=None if feature is None else str(feature), response=response, body=body)
    return HevlayerError(response.status_code, response.text or response.reason_phrase, response=response, body=body)


def _parse(op: Op, response: httpx.Response) -> Any:
    if op.response == "text":
        return response.text
    if response.status_code == 204 or not response.content:
        return None
    raw = response.json()
    result = op.result
    if isinstance(result, type) and issubclass(result, BaseModel):
        data = result.model_validate(raw)
    else:
        data = TypeAdapter(result).validate_python(raw)
    for header, attr, kind in op.header_fields:
        value = response.headers.get(header)
        if value and hasattr(data, attr):
            try:
                setattr(data, attr, int(value) if kind == "integer" else value)
            except ValueError:
                pass
    return data


class _Core:
    def __init__(self, *, api_key: str | None, base_url: str, timeout: Any, fallback_to_turbopuffer: bool,
                 turbopuffer_api_key: str | None, turbopuffer_api_url: str | None) -> None:
        token = (api_key or "").strip()
        self._headers = {"authorization": f"Bearer {token}"} if token else {}
        self._base_url = base_url
        self._timeout = timeout
        self._fallback = fallback_to_turbopuffer
        self._tpuf_key = (turbopuffer_api_key or os.environ.get("TURBOPUFFER_API_KEY") or "").strip() or None
        self._tpuf_url = (turbopuffer_api_url or os.environ.get("TURBOPUFFER_API_URL") or DEFAULT_TURBOPUFFER_URL
                          ).rstrip("/")

    @staticmethod
    def _request(op: Op, path_args: tuple[Any, ...], body: Any, query: dict[str, Any],
                 headers: dict[str, Any]) -> Request:
        pairs = list(op.fixed_query) + [(k, _wire(v)) for k, v in query.items() if v is not None]
        path = fill_path(op.path, path_args)
        if pairs:
            path += "?" + urlencode(pairs, quote_via=quote)
        sent = {}
        for name, value in headers.items():
            if value is None:
                continue
            text = clean_tags(value) if name == "x-hevlayer-tags" else str(value).strip()
            if text:
                sent[name] = text
        return Request(op.method, path, sent, _json_ready(body))

    def _fall_through(self, op: Op, path_args: tuple[Any, ...], req: Request, exc: Exception) -> Request:
        """The request for Turbopuffer when the gateway could not be connected to, or GatewayUnreachableError."""
        body, why = req.body, None
        if not self._fallback:
            why = "fall-through to Turbopuffer is disabled (fallback_to_turbopuffer=False)"
        elif op.fallback == "none" or op.upstream_path is None:
            why = f"{op.name} is a Layer-only call"
        elif self._tpuf_key is None:
            why = "no Turbopuffer key (TURBOPUFFER_API_KEY) to fall through with"
        elif op.fallback == "simple-vector":
            body, why = simple_vector(req.body)
        if why is not None:
            raise GatewayUnreachableError(f"cannot reach the gateway ({exc}); {op.name} cannot fall through: {why}",
                                          why) from exc
        query = req.path.partition("?")[2]
        path = fill_path(op.upstream_path or "", path_args) + (f"?{query}" if query else "")
        log.warning("hevlayer: gateway unreachable (%s); sending %s directly to Turbopuffer at %s", exc, op.name,
                    self._tpuf_url)
        return Request(op.upstream_method or op.method, path, {"authorization": f"Bearer {self._tpuf_key}"}, body)

    @staticmethod
    def _finish(op: Op, response: httpx.Response, started: float, fallback: str | None, with_perf: bool) -> Any:
        latency_ms = (time.perf_counter() - started) * 1000
        if response.is_error:
            raise _error(response)
        data = _parse(op, response)
        if with_perf:
            perf = LayerPerf(latency_ms=latency_ms, cache_status=response.headers.get("x-layer-cache"),
                             fallback=fallback)
            return LayerResponse(data=data, perf=perf)
        return data


def _send_args(req: Request) -> dict[str, Any]:
    content = None if req.body is None else json.dumps(req.body, separators=(",", ":")).encode()
    headers = dict(req.headers)
    if content is not None:
        headers["content-type"] = "application/json"
    return {"content": content, "headers": headers}


CONNECT_ERRORS = (httpx.ConnectError, httpx.ConnectTimeout)
# A pooled connection the gateway closed (it died) before answering: a read-only call is resent once, on a fresh
# connection, whose connect failure can then fall through. Writes are not resent.
STALE_ERRORS = (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError)


class AsyncBase(_Core):
    def __init__(self, *, api_key: str | None = None, base_url: str = DEFAULT_BASE_URL,
                 http_client: httpx.AsyncClient | None = None, timeout: float | httpx.Timeout | None = 30.0,
                 fallback_to_turbopuffer: bool = True, turbopuffer_api_key: str | None = None,
                 turbopuffer_api_url: str | None = None) -> None:
        super().__init__(api_key=api_key, base_url=base_url, timeout=timeout,
                         fallback_to_turbopuffer=fallback_to_turbopuffer, turbopuffer_api_key=turbopuffer_api_key,
                         turbopuffer_api_url=turbopuffer_api_url)
        self._owns_client = http_client is None
        self._client = http_client or httpx.AsyncClient(base_url=base_url, timeout=timeout)
        self._client.headers.update(self._headers)
        self._tpuf: httpx.AsyncClient | None = None

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._owns_client:
            await self._client.aclose()
        if self._tpuf is not None:
            await self._tpuf.aclose()

    async def _call(self, op: Op, path_args: tuple[Any, ...], body: Any, query: dict[str, Any],
                    headers: dict[str, Any], with_perf: bool) -> Any:
        req = self._request(op, path_args, body, query, headers)
        started = time.perf_counter()
        try:
            try:
                response = await self._client.request(req.method, req.path, **_send_args(req))
            except STALE_ERRORS:
                if not op.read:
                    raise
                response = await self._client.request(req.method, req.path, **_send_args(req))
            fallback = None
        except CONNECT_ERRORS as exc:
            direct = self._fall_through(op, path_args, req, exc)
            if self._tpuf is None:
                self._tpuf = httpx.AsyncClient(base_url=self._tpuf_url, timeout=self._timeout)
            response = await self._tpuf.request(direct.method, direct.path, **_send_args(direct))
            fallback = TURBOPUFFER_DIRECT
        return self._finish(op, response, started, fallback, with_perf)


class SyncBase(_Core):
    def __init__(self, *, api_key: str | None = None, base_url: str = DEFAULT_BASE_URL,
                 http_client: httpx.Client | None = None, timeout: float | httpx.Timeout | None = 30.0,
                 fallback_to_turbopuffer: bool = True, turbopuffer_api_key: str | None = None,
                 turbopuffer_api_url: str | None = None) -> None:
        super().__init__(api_key=api_key, base_url=base_url, timeout=timeout,
                         fallback_to_turbopuffer=fallback_to_turbopuffer, turbopuffer_api_key=turbopuffer_api_key,
                         turbopuffer_api_url=turbopuffer_api_url)
        self._owns_client = http_client is None
        self._client = http_client or httpx.Client(base_url=base_url, timeout=timeout)
        self._client.headers.update(self._headers)
        self._tpuf: httpx.Client | None = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._owns_client:
            self._client.close()
        if self._tpuf is not None:
            self._tpuf.close()

    def _call(self, op: Op, path_args: tuple[Any, ...], body: Any, query: dict[str, Any], headers: dict[str, Any],
              with_perf: bool) -> Any:
        req = self._request(op, path_args, body, query, headers)
        started = time.perf_counter()
        try:
            try:
                response = self._client.request(req.method, req.path, **_send_args(req))
            except STALE_ERRORS:
                if not op.read:
                    raise
                response = self._client.request(req.method, req.path, **_send_args(req))
            fallback = None
        except CONNECT_ERRORS as exc:
            direct = self._fall_through(op, path_args, req, exc)
            if self._tpuf is None:
                self._tpuf = httpx.Client(base_url=self._tpuf_url, timeout=self._timeout)
            response = self._tpuf.request(direct.method, direct.path, **_send_args(direct))
            fallback = TURBOPUFFER_DIRECT
        return self._finish(op, response, started, fallback, with_perf)
