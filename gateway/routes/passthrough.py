"""Turbopuffer routes the gateway proxies verbatim: status, body and content type are relayed."""

from __future__ import annotations

from typing import Any

import msgspec

from gateway import metrics
from gateway.auth import can_read
from gateway.compression import forwarded_encoding, identity_body
from gateway.http import JSON, Ctx, GatewayError, Response, json_decode, json_encode, upstream_error
from gateway.router import RouteSpec
from gateway.state import WorkerState
from gateway.upstream import UpstreamResponse

STAMP = "_hevlayer_upserted_at"
RESERVED_PREFIX = "_hevlayer_"


def upstream_path(ctx: Ctx, template: str | None = None) -> str:
    """The path sent upstream: the matched route's template (or `template`) filled with the decoded parameters,
    each percent-encoded once, plus the query string as received."""
    path = ctx.route.upstream_path(ctx.params, template)
    return f"{path}?{ctx.query_string}" if ctx.query_string else path


def relay(resp: UpstreamResponse, extra: list[tuple[str, str]] | None = None) -> Response:
    """Upstream's status, body (as it came, gzipped or not) and the headers the client acts on."""
    headers = [("content-type", resp.content_type or JSON), *resp.headers]
    if extra:
        headers.extend(extra)
    return Response(resp.status, resp.body, headers, relayed=True)


def rewritten(resp: UpstreamResponse, body: bytes) -> Response:
    """A body the gateway rebuilt from an upstream answer: upstream's status and headers, minus its content encoding
    (the new body is plain; gateway.compression gzips it again when the client asked)."""
    headers = [("content-type", JSON), *((h, v) for h, v in resp.headers if h != "content-encoding")]
    return Response(resp.status, body, headers)


def readable_body(resp: UpstreamResponse) -> bytes:
    """The plain bytes of an upstream body the gateway must read (502 when it cannot be inflated)."""
    body = identity_body(resp)
    if body is None:
        raise upstream_error("Turbopuffer answered with a body the gateway cannot decode (corrupt or too large)")
    return body


async def send(ctx: Ctx, state: WorkerState, template: str | None = None, what: str = "request",
               idempotent: bool = False) -> UpstreamResponse:
    """The request as routed (upstream_path), to upstream, with the client's Accept-Encoding (the `prefer` header
    is never forwarded, so upstream never goes async and the official client's respond-async polling cannot leave
    the gateway). `idempotent`: a read sent with POST (see Upstream.request)."""
    return await state.upstream.request(ctx.method, upstream_path(ctx, template), ctx.upstream_key, ctx.body or None,
                                        what, ctx, accept_encoding=forwarded_encoding(ctx), idempotent=idempotent)


def relayed_error(resp: UpstreamResponse, what: str) -> GatewayError:
    """An upstream error answer, to be relayed verbatim from inside a phase (status, body, `retry-after`...)."""
    return GatewayError("upstream_status", f"Turbopuffer {what} answered {resp.status}", status=resp.status,
                        source="upstream", raw=resp.body, headers=relay(resp).headers)


async def forward(ctx: Ctx, state: WorkerState, template: str | None = None, what: str = "request") -> Response:
    return relay(await send(ctx, state, template, what))


async def passthrough(ctx: Ctx, state: WorkerState) -> Response:
    return await forward(ctx, state, what=f"{ctx.method} {ctx.route.template}")


async def read_passthrough(ctx: Ctx, state: WorkerState) -> Response:
    """A read-only route sent with POST (explain_query, _debug/recall): proxied verbatim, but treated like a query:
    idempotent for the transport, and one immediate retry on 429 (a persisting 429 is relayed)."""
    what = f"{ctx.method} {ctx.route.template}"
    resp = await send(ctx, state, what=what, idempotent=True)
    if resp.status != 429:
        return relay(resp)
    retry = await send(ctx, state, what=what + " (retry)", idempotent=True)
    metrics.QUERY_RETRIES.labels(metrics.ns_label(ctx.params["ns"]), "ok" if retry.ok else str(retry.status)).inc()
    return relay(retry)


async def list_v1(ctx: Ctx, state: WorkerState) -> Response:
    """`GET /v1/namespaces` verbatim, except that a scoped key sees only the namespaces it may read."""
    resp = await send(ctx, state, what="namespace list")
    principal = ctx.principal
    if principal is None or principal.admin or resp.status != 200:
        return relay(resp)
    try:
        page = json_decode(readable_body(resp))
        page["namespaces"] = [n for n in page["namespaces"] if can_read(principal, str(n.get("id")))]
    except (msgspec.DecodeError, TypeError, KeyError, AttributeError):
        raise upstream_error("Turbopuffer namespace list returned an unexpected body") from None
    return rewritten(resp, json_encode(page))


def reserved_attribute(name: str, where: str) -> GatewayError:
    return GatewayError("validation_error", f"attribute '{name}' uses the reserved _hevlayer_* prefix - at `{where}`",
                        status=422, extra={"attribute": name})


def check_schema_update(body: bytes) -> None:
    """`POST /v1/namespaces/{ns}/schema` may not touch `_hevlayer_*` attributes (the stamp must stay filterable).
    A body that is not a JSON object is upstream's to reject."""
    try:
        schema = json_decode(body)
    except msgspec.DecodeError:
        return
    for name in schema if isinstance(schema, dict) else ():
        if name.startswith(RESERVED_PREFIX):
            raise reserved_attribute(name, "schema")


def without_stamp(schema: Any) -> bool:
    """Drop the gateway's `_hevlayer_upserted_at` from a schema map (Turbopuffer never shows it); True if changed."""
    return isinstance(schema, dict) and schema.pop(STAMP, None) is not None


async def schema_or_metadata(ctx: Ctx, state: WorkerState) -> Response:
    """Proxied like any route, but the stamp attribute is hidden from the schema (v1 schema and v1 metadata)."""
    if ctx.method == "POST":
        check_schema_update(ctx.body)
    resp = await send(ctx, state, what=f"{ctx.method} {ctx.route.template}")
    if not resp.ok:
        return relay(resp)
    try:
        doc = json_decode(readable_body(resp))
    except msgspec.DecodeError:
        return relay(resp)
    target = doc.get("schema") if ctx.route.template.endswith("/metadata") and isinstance(doc, dict) else doc
    if not without_stamp(target):
        return relay(resp)
    return rewritten(resp, json_encode(doc))


NS = "/v2/namespaces/{ns}"
V1NS = "/v1/namespaces/{ns}"
ROUTES = (
    RouteSpec("GET", "/v1/namespaces", list_v1),
    RouteSpec("GET", V1NS + "/metadata", schema_or_metadata),
    RouteSpec("PATCH", V1NS + "/metadata", schema_or_metadata),
    RouteSpec("GET", V1NS + "/schema", schema_or_metadata),
    RouteSpec("POST", V1NS + "/schema", schema_or_metadata),
    RouteSpec("POST", NS + "/explain_query", read_passthrough),
    RouteSpec("POST", V1NS + "/_debug/recall", read_passthrough),
    RouteSpec("POST", NS + "/async", passthrough),
    RouteSpec("GET", V1NS + "/operations/{op_id}", passthrough),
    RouteSpec("GET", V1NS + "/hint_cache_warm", passthrough),  # gateway.routes.warm replaces it when present
)
