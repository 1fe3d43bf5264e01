"""Namespace routes Layer enhances: write (validate, stamp, cache mirror), delete, metadata, list."""

from __future__ import annotations

import asyncio
import re
import time
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote, urlencode

import msgspec

from gateway import metrics
from gateway.auth import can_read
from gateway.cache import mirror
from gateway.cache.mirror import COPIES as COPY_KEYS
from gateway.cache.mirror import WritePlan
from gateway.cache.partition import cache_namespace
from gateway.compression import forwarded_encoding, identity_body
from gateway.consistency import STABLE, UNKNOWN, UPDATING, NamespaceWatch, now_ms, status_from_metadata
from gateway.http import (
    Ctx,
    GatewayError,
    Response,
    json_decode,
    json_encode,
    json_response,
    parse_count,
    upstream_error,
    validation_error,
)
from gateway.router import RouteSpec
from gateway.routes.passthrough import RESERVED_PREFIX, relay, reserved_attribute, upstream_path, without_stamp
from gateway.state import WorkerState
from gateway.upstream import UpstreamResponse

STAMP = "_hevlayer_upserted_at"
ROW_KEYS = ("upsert_rows", "patch_rows")
COLUMN_KEYS = ("upsert_columns", "patch_columns")
MANAGED_KEYS = (*ROW_KEYS, *COLUMN_KEYS, "deletes", "delete_by_filter", "patch_by_filter")
FRACTION_DIGITS = re.compile(r"(\.\d{6})\d+")


def _check_names(names: Any, where: str, allowed: str | None = STAMP, system: bool = False) -> None:
    if system:
        return
    for name in names:
        if isinstance(name, str) and name.startswith(RESERVED_PREFIX) and name != allowed:
            raise reserved_attribute(name, where)


def stamp_write(doc: dict[str, Any], stamp: int, system: bool = False) -> int:
    """Reject reserved attributes (unless `system`: the gateway's own UDF write-backs) and stamp `_hevlayer_upserted_at` on every upserted/patched row (overwriting a
    caller's value). Returns the number of rows stamped. Parts whose shape is not Turbopuffer's are left as they
    are: upstream rejects the whole write with its own error, so nothing unstamped is ever stored."""
    rows = 0
    if isinstance(doc.get("schema"), dict):
        _check_names(doc["schema"], "$.schema", allowed=None)  # the stamp's type is the gateway's to declare
    for key in ROW_KEYS:
        for i, row in enumerate(doc.get(key) if isinstance(doc.get(key), list) else ()):
            if isinstance(row, dict):
                _check_names(row, f"$.{key}[{i}]", system=system)
                row[STAMP] = stamp
                rows += 1
    for key in COLUMN_KEYS:
        cols = doc.get(key)
        if isinstance(cols, dict):
            _check_names(cols, f"$.{key}", system=system)
            if isinstance(cols.get("id"), list):
                cols[STAMP] = [stamp] * len(cols["id"])
                rows += len(cols["id"])
    pbf = doc.get("patch_by_filter")
    if isinstance(pbf, dict) and isinstance(pbf.get("patch"), dict):
        _check_names(pbf["patch"], "$.patch_by_filter.patch", system=system)
        pbf["patch"][STAMP] = stamp
    return rows


def decode_object(body: bytes) -> dict[str, Any] | None:
    """The body as a JSON object, or None when it is not one (upstream answers that with its own error)."""
    try:
        doc = json_decode(body)
    except msgspec.DecodeError:
        return None
    return doc if isinstance(doc, dict) else None


# ---- cache seams (each is a no-op while state.cache is None, or for a cache name None: gateway/cache/partition.py)
async def cache_name(state: WorkerState, ns: str, key: str | None, ctx: Ctx | None = None) -> str | None:
    """This caller's cache name for `ns`; None while there is no cache or the namespace's identity is unknown."""
    if state.cache is None:
        return None
    return await cache_namespace(state, ns, key, ctx)


async def watch_and_cache_names(state: WorkerState, ns: str, key: str | None,
                                ctx: Ctx | None = None) -> tuple[str | None, str | None]:
    """The caller's name of `ns` for the watch state and for the cache: one value (`name@fingerprint` in derive
    mode), the cache's None while there is no cache."""
    name = await cache_namespace(state, ns, key, ctx)
    return name, name if state.cache is not None else None


async def cache_before_write(state: WorkerState, cache_ns: str | None, doc: dict[str, Any]) -> WritePlan | None:
    """Phase: fence the documents this write names in the cache before the upstream call (may add
    `return_affected_ids` to doc for conditional/filter writes, so it runs before the body is encoded)."""
    if state.cache is None or cache_ns is None:
        return None
    return await mirror.before_write(state.cache.store, cache_ns, doc)


async def cache_after_write(state: WorkerState, cache_ns: str | None, plan: WritePlan | None, status: int | None,
                            body: bytes) -> None:
    """Phase: after the upstream answered `status` (None: no answer, the outcome is unknown)."""
    if state.cache is None or cache_ns is None or plan is None:
        return
    await mirror.after_write(state.cache.store, cache_ns, plan, status, body)


async def cache_after_unnamed_write(state: WorkerState, ns: str, key: str | None) -> None:
    """Phase, derive-from-request mode: a write acknowledged for a namespace whose identity was unknown before it
    (it did not exist yet: this write or a concurrent one created it). Nothing of it was fenced, so a fill that
    read upstream before it landed could still store an older version: a new epoch refuses such fills."""
    cache_ns = await cache_name(state, ns, key)
    if state.cache is not None and cache_ns is not None:
        await mirror.apply(state.cache.store, cache_ns, {}, 0, 0)


async def cache_after_namespace_delete(state: WorkerState, cache_ns: str | None, status: int | None) -> None:
    """Phase: after a namespace delete answered `status` (None: no answer); soft."""
    if state.cache is None or cache_ns is None:
        return
    await state.cache.namespace_deleted(cache_ns, status)


def cache_state(state: WorkerState, ns: str) -> dict[str, Any]:
    getter = getattr(state.cache, "namespace_state", None)
    if getter is None:
        return {"state": "cold", "warm_inflight": False}
    return getter(ns)


# ---- write ----
async def write(ctx: Ctx, state: WorkerState) -> Response:
    ns = ctx.params["ns"]
    doc = decode_object(ctx.body) or {}
    if "upserts" in doc or "patches" in doc:
        raise validation_error("custom write bodies were removed; use native Turbopuffer write keys "
                               "(upsert_rows, upsert_columns, patch_rows, patch_columns, deletes, ...)")
    if not any(k in doc for k in MANAGED_KEYS):  # nothing to stamp; a copy into `ns` still resets its cache
        copy = any(k in doc for k in COPY_KEYS)
        cache_ns = await cache_name(state, ns, ctx.upstream_key, ctx) if copy else None
        plan = await cache_before_write(state, cache_ns, doc) if copy else None
        resp = await fenced_write(state, ns, cache_ns, plan, upstream_path(ctx), ctx.upstream_key, ctx.body, ctx,
                                  forwarded_encoding(ctx))
        if copy and resp.ok and cache_ns is None and state.verdicts is not None:
            await cache_after_unnamed_write(state, ns, ctx.upstream_key)
        _observe_write(ctx, ns, resp.status, 0)
        return relay(resp)
    resp, rows = await write_rows(state, ns, doc, ctx.upstream_key, ctx, path=upstream_path(ctx),
                                  accept_encoding=forwarded_encoding(ctx))
    _observe_write(ctx, ns, resp.status, rows)
    return relay(resp)


async def write_rows(state: WorkerState, ns: str, doc: dict[str, Any], upstream_key: str | None,
                     ctx: Ctx | None = None, *, system: bool = False, path: str | None = None,
                     accept_encoding: str | None = None) -> tuple[UpstreamResponse, int]:
    """The one write path (routes and the queue's write-backs): reserved attributes -> stamp -> cache fences ->
    upstream -> cache fences finished -> watch -> write triggers. `system` writes (UDF results) may set the
    `_hevlayer_udf_*` markers and never fire triggers. Returns (upstream response, rows stamped)."""
    name, cache_ns = await watch_and_cache_names(state, ns, upstream_key, ctx)
    ticket = await state.watcher.begin_write(name, upstream_key)
    landed = False  # the watermark fence (gateway/consistency.py) is set unless upstream surely refused the write
    try:
        rows = stamp_write(doc, ticket.stamp, system=system)
        plan = await cache_before_write(state, cache_ns, doc)
        trigger = None if system else queue_trigger_before_write(state, ns, doc)
        path = path or f"/v2/namespaces/{quote(ns, safe='')}"
        landed = True
        resp = await fenced_write(state, ns, cache_ns, plan, path, upstream_key, json_encode(doc), ctx,
                                  accept_encoding)
        landed = not 400 <= resp.status < 500
    finally:
        if landed and ticket.ns is None:  # the write may have created the namespace: fence the one there now
            ticket = ticket._replace(ns=await identity_after_write(state, ns, upstream_key))
        await state.watcher.end_write(ticket, landed)
    if resp.ok:
        if cache_ns is None and state.cache is not None and state.verdicts is not None:
            await cache_after_unnamed_write(state, ns, upstream_key)
        if ticket.ns is not None:
            state.watcher.watch(ticket.ns, upstream_key, due=True)
        if trigger is not None:
            trigger.fire(doc, identity_body(resp) or b"", upstream_key)
    return resp, rows


async def identity_after_write(state: WorkerState, ns: str, key: str | None) -> str | None:
    """Derive mode: the cache name of `ns` after a write sent while it had none (None: still none, or upstream
    could not be asked; the namespace's polls will then see the write)."""
    try:
        return await cache_namespace(state, ns, key)
    except GatewayError:
        return None


async def fenced_write(state: WorkerState, ns: str, cache_ns: str | None, plan: WritePlan | None, path: str,
                       upstream_key: str | None, body: bytes, ctx: Ctx | None,
                       accept_encoding: str | None) -> UpstreamResponse:
    """The upstream call of a write, then its cache fences finished with the outcome, whatever happens."""
    try:
        resp = await state.upstream.request("POST", path, upstream_key, body, "write", ctx,
                                            accept_encoding=accept_encoding)
    except BaseException:  # no answer (timeout, transport failure, cancelled): the write may still land upstream
        if plan is not None:  # shielded: a cancelled request still leaves its fences (as "unknown") in the cache
            await asyncio.shield(cache_after_write(state, cache_ns, plan, None, b""))
        await asyncio.shield(results_after_write(state, ns, ctx))
        raise
    if plan is not None:
        await cache_after_write(state, cache_ns, plan, resp.status, (identity_body(resp) or b"") if resp.ok else b"")
    await results_after_write(state, ns, ctx)
    return resp


async def results_after_write(state: WorkerState, ns: str, ctx: Ctx | None) -> None:
    """Phase: the query-result cache's generation of `ns` bumped before the write is acknowledged. A write-class
    request on `ns` itself is bumped by the request driver (gateway.app, for every such route); this covers the
    writes into `ns` made for other requests (pipelines) and by the queue (UDF write-backs)."""
    if state.results is not None and (ctx is None or ctx.namespace != ns):
        await state.results.written(ns)


def queue_trigger_before_write(state: WorkerState, ns: str, doc: dict[str, Any]) -> Any:
    """Phase: UDF write triggers (gateway/queue/triggers.py); None while no UDF's write trigger targets `ns`."""
    if state.queue is None or ns not in state.queue.write_triggers:
        return None
    from gateway.queue.triggers import WriteTrigger

    return WriteTrigger.before_write(state.queue, ns, doc)


def _observe_write(ctx: Ctx, ns: str, status: int, rows: int) -> None:
    children = metrics.observe_op("w", ns, status, time.perf_counter() - ctx.started, ctx.upstream_seconds)
    if rows:
        metrics.observe(children[3], rows)


# ---- delete ----
async def delete(ctx: Ctx, state: WorkerState) -> Response:
    ns = ctx.params["ns"]
    name, cache_ns = await watch_and_cache_names(state, ns, ctx.upstream_key, ctx)  # before: then the identity is gone
    try:
        resp = await state.upstream.request("DELETE", upstream_path(ctx), ctx.upstream_key, None, "namespace delete",
                                            ctx, accept_encoding=forwarded_encoding(ctx))
    except BaseException:  # no answer: the delete may still happen upstream
        await asyncio.shield(cache_after_namespace_delete(state, cache_ns, None))
        raise
    if resp.ok:
        if name is not None and state.watcher.state(name) is not None:
            state.watcher.watch(name, ctx.upstream_key, due=True)  # the next poll's 404 forgets it (Watcher.forget)
        if state.verdicts is not None:  # a namespace created again under this name is another one
            state.verdicts.forget_namespace(ns)
    await cache_after_namespace_delete(state, cache_ns, resp.status)
    return relay(resp)


# ---- metadata ----
def rfc3339(ms: int | None) -> str | None:
    if ms is None:
        return None
    return datetime.fromtimestamp(ms / 1000, tz=UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def layer_block(w: NamespaceWatch, index: Any) -> dict[str, Any]:
    unindexed = index.get("unindexed_rows") if isinstance(index, dict) else None
    return {
        "stable_as_of": w.watermark,
        "stable_as_of_time": rfc3339(w.watermark),
        "is_stable": w.status == STABLE,
        "status": w.status,
        "indexed": w.status == STABLE,
        "index_lag_rows": unindexed if isinstance(unindexed, int) and w.status == UPDATING else 0,
        "schema_version": 1,
        "init_state": "ready",
        "init_lag_rows": 0,
        "shard_count": None,
        "shard_state": "unsharded",
        "shard_lag_rows": 0,
        "scatter_gather_active": False,
    }


async def fetch_metadata(ctx: Ctx, state: WorkerState, ns: str) -> tuple[UpstreamResponse, dict[str, Any] | None,
                                                                          NamespaceWatch | None]:
    """Upstream's metadata of `ns` for this caller, observed by the watcher (a free poll), and the watch state of
    the namespace (None: derive mode and no identity known for it)."""
    name = await cache_namespace(state, ns, ctx.upstream_key, ctx)
    started, gen = now_ms(), await state.watcher.generation(name) if name is not None else 0
    path = f"/v2/namespaces/{quote(ns, safe='')}/metadata"
    resp = await state.upstream.request("GET", path, ctx.upstream_key, None, "metadata", ctx)
    if not resp.ok:
        return resp, None, None
    try:
        doc = json_decode(resp.body)
    except msgspec.DecodeError:
        raise upstream_error(f"Turbopuffer metadata for '{ns}' was not JSON") from None
    doc = doc if isinstance(doc, dict) else {"raw": doc}
    without_stamp(doc.get("schema"))
    if name is None:
        return resp, doc, None
    return resp, doc, await state.watcher.observe(name, status_from_metadata(doc), started, ctx.upstream_key, gen)


async def metadata(ctx: Ctx, state: WorkerState) -> Response:
    ns = ctx.params["ns"]
    resp, doc, w = await fetch_metadata(ctx, state, ns)
    metrics.HEAD_DURATION.labels(metrics.ns_label(ns), metrics.status_label(resp.status)).observe(
        time.perf_counter() - ctx.started)
    if doc is None:
        return relay(resp)
    doc.setdefault("id", ns)
    doc["layer"] = layer_block(w if w is not None else NamespaceWatch(), doc.get("index"))
    return json_response(200, doc)


# ---- list ----
def _page_size(raw: str | None) -> str | None:
    if raw is None or raw == "":
        return None
    return str(parse_count(raw, "page_size", 1, 1000))


def _ms_from_rfc3339(value: Any) -> int | None:
    if not isinstance(value, str):
        return None
    value = FRACTION_DIGITS.sub(r"\1", value)  # nanosecond precision (live/minifugu) -> microseconds
    try:
        return int(datetime.fromisoformat(value).timestamp() * 1000)
    except ValueError:
        return None


def _schema_summary(schema: Any) -> dict[str, Any]:
    fields = sorted(schema) if isinstance(schema, dict) else []
    out: dict[str, Any] = {"fields": fields}
    vec = schema.get("vector") if isinstance(schema, dict) else None
    vtype = vec.get("type") if isinstance(vec, dict) else vec
    if isinstance(vtype, str) and vtype.startswith("[") and "]" in vtype:
        dims = vtype[1:vtype.index("]")]
        if dims.isascii() and dims.isdigit():
            out["vector_dim"] = int(dims)
    return out


def _labels(doc: dict[str, Any]) -> dict[str, str]:
    src = doc.get("labels") or (doc.get("config") or {}).get("labels") or {}
    return {k: v for k, v in src.items() if isinstance(v, str)} if isinstance(src, dict) else {}


async def _entry(ctx: Ctx, state: WorkerState, ns: str, sem: asyncio.Semaphore) -> dict[str, Any]:
    base: dict[str, Any] = {"name": ns}
    async with sem:
        try:
            resp, doc, w = await fetch_metadata(ctx, state, ns)
        except GatewayError as exc:
            resp, doc, w, error = None, None, None, exc.message
        else:
            error = None if doc is not None else f"upstream returned {resp.status}: {resp.body[:160].decode(errors='replace')}"
    if doc is None:
        msg = error or "metadata unavailable"
        base.update(cache_state=cache_state(state, ns), shadow=ns.endswith("-shadow"), labels={},
                    metadata_error=msg if len(msg) <= 200 else msg[:200] + "…")
        return base
    status = w.status if w is not None else UNKNOWN
    base.update(row_count=doc.get("approx_row_count", 0), size_bytes=doc.get("approx_logical_bytes"))
    if w is not None and w.watermark is not None:
        base["stable_as_of_ms"] = w.watermark
    if status != UNKNOWN:
        base["is_stable"] = status == STABLE
    base.update(schema_summary=_schema_summary(doc.get("schema")), index=doc.get("index"),
                cache_state=cache_state(state, ns),
                last_write_ms=_ms_from_rfc3339(doc.get("last_write_at") or doc.get("updated_at")),
                shadow=ns.endswith("-shadow"), labels=_labels(doc))
    return {k: v for k, v in base.items() if v is not None}


async def list_namespaces(ctx: Ctx, state: WorkerState) -> Response:
    q = ctx.query
    params = {"prefix": q.get("prefix") or None, "cursor": q.get("cursor") or None,
              "page_size": _page_size(q.get("page_size"))}
    query = urlencode({k: v for k, v in params.items() if v})
    resp = await state.upstream.request("GET", "/v1/namespaces" + (f"?{query}" if query else ""),
                                        ctx.upstream_key, None, "namespace list", ctx)
    if not resp.ok:
        metrics.LIST_DURATION.labels("tpuf_error").observe(time.perf_counter() - ctx.started)
        return relay(resp)
    try:
        page = json_decode(resp.body)
        names = [n["id"] if isinstance(n, dict) else n for n in page.get("namespaces") or []]
    except (msgspec.DecodeError, AttributeError, KeyError, TypeError):
        raise upstream_error("Turbopuffer namespace list returned an unexpected body") from None
    names = [str(n) for n in names if can_read(ctx.principal, str(n))]
    sem = asyncio.Semaphore(state.config.list_concurrency)
    entries = await asyncio.gather(*(_entry(ctx, state, ns, sem) for ns in names))
    metrics.LIST_DURATION.labels("ok").observe(time.perf_counter() - ctx.started)
    return json_response(200, {"namespaces": entries, "next_cursor": page.get("next_cursor")})


NS = "/v2/namespaces/{ns}"
ROUTES = (
    RouteSpec("POST", NS, write),
    RouteSpec("DELETE", NS, delete),
    RouteSpec("GET", NS + "/metadata", metadata),
    RouteSpec("GET", "/v2/namespaces", list_namespaces),
)
