"""Document fetch through the cache (layer.md §3.6): GET one document, POST a batch of ids.

Phases: parse (ids, include_attributes, tags) -> cache lookup (hits, and a token per miss) -> upstream fetch of
what the cache did not have -> backfill (each document only against its miss's token: docs/cache.md) -> response
with `x-layer-cache: hit|miss|partial|miss-on-error`. An upstream error answer is relayed as upstream sent it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any
from urllib.parse import quote

import msgspec

from gateway import metrics
from gateway.cache.base import CacheDoc, CacheError, doc_from_row, project
from gateway.cache.coherence import Token
from gateway.cache.partition import cache_namespace
from gateway.cache.service import CacheService, backfill
from gateway.cache.warm import maybe_reactive_warm
from gateway.http import Ctx, GatewayError, Response, json_encode, json_response, upstream_error, validation_error
from gateway.router import RouteSpec
from gateway.routes.passthrough import relayed_error
from gateway.routes.query import parse_tags
from gateway.state import WorkerState

log = logging.getLogger("gateway.cache")
MAX_IDS = 10_000
UPSTREAM_CHUNK = 1000
VECTOR_WARNING = ("x-layer-warning", "vector_attribute_dropped")


class FetchRequest(msgspec.Struct):
    ids: list[str | int]
    include_attributes: list[str] | bool | None = None


class Rows(msgspec.Struct):
    rows: list[dict[str, Any]] = []


_fetch_request = msgspec.json.Decoder(FetchRequest).decode
_rows = msgspec.json.Decoder(Rows).decode


def _include(names: list[str] | bool | None) -> tuple[list[str] | None, bool]:
    """(projection or None for all, vector-warning flag). The vector is never part of the attributes."""
    if names is None or names is True:
        return None, False
    if names is False:
        return [], False
    warn = "vector" in names
    return [n for n in names if n and n != "vector"], warn


async def _service(ctx: Ctx, state: WorkerState, ns: str) -> tuple[CacheService | None, str]:
    """The cache and this caller's name for `ns` in it (gateway/cache/partition.py); no cache when the namespace's
    identity is unknown."""
    cache = state.cache
    if not isinstance(cache, CacheService):
        return None, ns
    cache_ns = await cache_namespace(state, ns, ctx.upstream_key, ctx)
    return (cache, cache_ns) if cache_ns is not None else (None, ns)


async def fetch_rows(ctx: Ctx, state: WorkerState, ns: str, ids: list[Any]) -> list[dict[str, Any]]:
    """Fetch documents by id from the upstream (all attributes). 404 namespace -> 404; other failures -> 502."""
    top_k = len(ids)
    flt: list[Any] = ["id", "Eq", ids[0]] if top_k == 1 else ["id", "In", ids]
    body = json_encode({"rank_by": ["id", "asc"], "top_k": top_k, "filters": flt, "include_attributes": True})
    path = f"/v2/namespaces/{quote(ns, safe='')}/query"
    resp = await state.upstream.request("POST", path, ctx.upstream_key, body, "fetch", ctx, idempotent=True)
    if resp.status == 404:
        raise GatewayError("not_found", f"namespace '{ns}' not found", status=404)
    if resp.status == 400 and all(isinstance(i, str) and i.isascii() and i.isdigit() for i in ids):
        # The namespace may use integer ids, which a string filter cannot match: ask again with numbers.
        return await fetch_rows(ctx, state, ns, [int(i) for i in ids])
    if not resp.ok:
        raise relayed_error(resp, "fetch")
    try:
        return _rows(resp.body).rows
    except msgspec.DecodeError as exc:
        raise upstream_error(f"Turbopuffer fetch failed: unexpected response body: {exc}") from None


async def fetch_upstream(ctx: Ctx, state: WorkerState, ns: str, ids: list[Any]) -> dict[str, CacheDoc]:
    chunks = [ids[i: i + UPSTREAM_CHUNK] for i in range(0, len(ids), UPSTREAM_CHUNK)]
    found: dict[str, CacheDoc] = {}
    for rows in await asyncio.gather(*(fetch_rows(ctx, state, ns, c) for c in chunks)):
        for row in rows:
            if "id" in row:
                doc = doc_from_row(row)
                found[doc.id] = doc
    return found


def _count_lookups(svc: CacheService, cache_ns: str, ns: str, hits: int, misses: int, errors: int) -> None:
    labels = (metrics.ns_label(svc.store.set_name(cache_ns)), metrics.ns_label(ns))
    for result, n in (("hit", hits), ("miss", misses), ("error", errors)):
        if n:
            metrics.inc(metrics.child(metrics.CACHE_LOOKUPS, *labels, result), n)


def _document(doc_id: str, attrs: dict[str, Any]) -> dict[str, Any]:
    return {"id": doc_id, "attributes": attrs}


async def get_document(ctx: Ctx, state: WorkerState) -> Response:
    ns, doc_id = ctx.params["ns"], ctx.params["doc_id"]
    parse_tags(ctx)
    raw = ctx.query.get("include_attributes")
    names = [n.strip() for n in raw.split(",")] if raw is not None else None
    include, warn = _include(names)
    extra = [VECTOR_WARNING] if warn else []
    svc, cache_ns = await _service(ctx, state, ns)
    result = "miss-on-error"
    tokens: dict[str, Token] = {}
    if svc is not None:
        try:
            found = await svc.store.lookup(cache_ns, (doc_id,), include)
            attrs, tokens = found.hits.get(doc_id), found.tokens
            result = "miss" if attrs is None else "hit"
        except CacheError:
            attrs = None
        _count_lookups(svc, cache_ns, ns, result == "hit", result == "miss", result == "miss-on-error")
        if attrs is not None:
            _observe("get_doc", ns, "hit", ctx)
            return json_response(200, _document(doc_id, attrs), [("x-layer-cache", "hit"), *extra])
    found = await fetch_upstream(ctx, state, ns, [doc_id])
    doc = found.get(doc_id)
    _observe("get_doc", ns, "miss", ctx)
    if doc is None:
        raise GatewayError("not_found", f"Document '{doc_id}' not found in namespace '{ns}'", status=404)
    if svc is not None and result == "miss":
        await backfill(svc, cache_ns, tokens, [doc])
        _reactive_warm(ctx, state, svc, ns, cache_ns)
    attrs = project(doc.attrs or {}, include)
    return json_response(200, _document(doc_id, attrs), [("x-layer-cache", result), *extra])


async def get_documents(ctx: Ctx, state: WorkerState) -> Response:
    ns = ctx.params["ns"]
    parse_tags(ctx)
    try:
        req = _fetch_request(ctx.body or b"{}")
    except msgspec.ValidationError as exc:
        raise validation_error(f"invalid fetch request: {exc}") from None
    except msgspec.DecodeError as exc:
        raise GatewayError("bad_request", f"invalid JSON body: {exc}", status=400) from None
    if not req.ids:
        raise validation_error("ids list cannot be empty")
    if len(req.ids) > MAX_IDS:
        raise validation_error(f"at most {MAX_IDS} ids per request, got {len(req.ids)}")
    include, warn = _include(req.include_attributes)
    keys = [str(i) for i in req.ids]
    unique = list(dict.fromkeys(keys))
    metrics.FETCH_BATCH_SIZE.labels("get_batch").observe(len(req.ids))
    svc, cache_ns = await _service(ctx, state, ns)
    cached: dict[str, dict[str, Any]] = {}
    tokens: dict[str, Token] = {}
    errored = svc is None
    if svc is not None:
        try:
            found = await svc.store.lookup(cache_ns, unique, include)
            cached, tokens = found.hits, found.tokens
        except CacheError:
            errored = True
        hits = len(cached)
        _count_lookups(svc, cache_ns, ns, hits, 0 if errored else len(unique) - hits, len(unique) if errored else 0)
    originals = {str(i): i for i in req.ids}
    wanted = [originals[k] for k in unique if k not in cached]
    fetched = await fetch_upstream(ctx, state, ns, wanted) if wanted else {}
    if svc is not None and not errored:
        await backfill(svc, cache_ns, tokens, list(fetched.values()))
        if wanted:
            _reactive_warm(ctx, state, svc, ns, cache_ns)
    documents, missing = [], []
    for key in keys:
        if key in cached:
            documents.append(_document(key, cached[key]))
        elif key in fetched:
            documents.append(_document(key, project(fetched[key].attrs or {}, include)))
        else:
            missing.append(key)
    result = "miss-on-error" if errored else "hit" if not wanted else "partial" if cached else "miss"
    _observe("get_batch", ns, "miss" if result == "miss-on-error" else result, ctx)
    headers = [("x-layer-cache", result)] + ([VECTOR_WARNING] if warn else [])
    return json_response(200, {"documents": documents, "missing": missing}, headers)


def _reactive_warm(ctx: Ctx, state: WorkerState, svc: CacheService, ns: str, cache_ns: str) -> None:
    w = state.watcher.state(cache_ns)  # the cache name is the watch name
    maybe_reactive_warm(svc, state.upstream, ctx.upstream_key, cache_ns, w.watermark if w is not None else None)


def _observe(operation: str, ns: str, cache_result: str, ctx: Ctx) -> None:
    metrics.observe(metrics.child(metrics.FETCH_DURATION, operation, metrics.ns_label(ns), cache_result),
                    time.perf_counter() - ctx.started)


NS = "/v2/namespaces/{ns}"
ROUTES = (
    RouteSpec("GET", NS + "/documents/{doc_id}", get_document),
    RouteSpec("POST", NS + "/documents", get_documents),
)
