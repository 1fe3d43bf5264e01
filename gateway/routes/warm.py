"""Cache warming routes (layer.md §3.8): POST /warm, GET /warm-jobs[/{job_id}], GET /v1/.../hint_cache_warm.

Warm endpoints need the cache: when it does not answer they return 503 `cache_cold` before anything else.
`hint_cache_warm` without any warm option is a raw passthrough; with one it runs the orchestrated steps.
"""

from __future__ import annotations

from typing import Any

from gateway import metrics
from gateway.cache.base import CacheError, WarmJob
from gateway.cache.partition import cache_namespace
from gateway.cache.service import STORE_KIND, CacheService, effective
from gateway.cache.warm import MAX_PAGE, start_warm_job
from gateway.http import Ctx, GatewayError, Response, json_encode, json_response, parse_count, validation_error
from gateway.router import RouteSpec
from gateway.routes.passthrough import forward, relay
from gateway.state import WorkerState

HINT_OPTIONS = frozenset({"turbopuffer", "documents", "snapshots", "blobs", "blob_budget_bytes", "page_size"})
SKIPPED = {"enabled": False, "status": "skipped"}
JSON_HEADERS = [("content-type", "application/json")]


def cache_cold(ns: str) -> GatewayError:
    metrics.CACHE_COLD_RESPONSES.labels(metrics.ns_label(ns), STORE_KIND).inc()
    return GatewayError("cache_cold", f"cache is cold for namespace '{ns}'; retry after Aerospike reconnects",
                        status=503, source="internal", extra={"cache_state": "cold"})


async def _ready_cache(ctx: Ctx, state: WorkerState, ns: str) -> tuple[CacheService, str]:
    """The cache and this caller's name for `ns` in it (gateway/cache/partition.py); 503 when either is missing."""
    svc = state.cache
    if not isinstance(svc, CacheService) or not await svc.probe():
        raise cache_cold(ns)
    cache_ns = await cache_namespace(state, ns, ctx.upstream_key, ctx)
    if cache_ns is None:  # derive mode, and upstream showed no namespace identity: nothing may be shared
        raise cache_cold(ns)
    return svc, cache_ns


def _page_size(raw: str | None) -> int:
    if raw is None or raw == "":
        return 1000
    return parse_count(raw, "page_size", 1, MAX_PAGE)


def _job_body(job: WarmJob) -> bytes:
    return json_encode(effective(job))


async def _start(ctx: Ctx, state: WorkerState, svc: CacheService, ns: str, cache_ns: str, page_size: int) -> WarmJob:
    w = state.watcher.state(cache_ns)  # the cache name is the watch name
    try:
        return await start_warm_job(svc, state.upstream, ctx.upstream_key, cache_ns, page_size,
                                    w.watermark if w is not None else None)
    except CacheError:
        raise cache_cold(ns) from None


async def warm(ctx: Ctx, state: WorkerState) -> Response:
    ns = ctx.params["ns"]
    svc, cache_ns = await _ready_cache(ctx, state, ns)
    job = await _start(ctx, state, svc, ns, cache_ns, _page_size(ctx.query.get("page_size")))
    return Response(202, _job_body(job), JSON_HEADERS)


async def list_jobs(ctx: Ctx, state: WorkerState) -> Response:
    ns = ctx.params["ns"]
    svc, cache_ns = await _ready_cache(ctx, state, ns)
    try:
        jobs = await svc.jobs.list(cache_ns)
    except CacheError:
        raise cache_cold(ns) from None
    return json_response(200, {"warm_jobs": [effective(j) for j in jobs]})


async def get_job(ctx: Ctx, state: WorkerState) -> Response:
    ns, job_id = ctx.params["ns"], ctx.params["job_id"]
    svc, cache_ns = await _ready_cache(ctx, state, ns)
    try:
        job = await svc.jobs.get(job_id)
    except CacheError:
        raise cache_cold(ns) from None
    if job is None or job.namespace != cache_ns:
        raise GatewayError("not_found", f"Warm job '{job_id}' not found", status=404)
    return Response(200, _job_body(job), JSON_HEADERS)


# ---- hint_cache_warm ----
def _option_keys(query_string: str) -> set[str]:
    return {part.split("=", 1)[0] for part in query_string.split("&") if part}


def _bool(q: dict[str, str], name: str, default: bool) -> bool:
    raw = q.get(name)
    if raw is None:
        return default
    if raw not in ("true", "false"):
        raise GatewayError("bad_request", f"Failed to deserialize query string: {name}: expected `true` or `false`",
                           status=400)
    return raw == "true"


async def _turbopuffer_step(ctx: Ctx, state: WorkerState) -> Response | None:
    """Upstream's own cache hint; its answer is relayed when it is not a success (a missing namespace: upstream's
    404)."""
    path = ctx.route.upstream_path(ctx.params)
    resp = await state.upstream.request("GET", path, ctx.upstream_key, None, "warm cache", ctx)
    return None if resp.ok else relay(resp)


async def hint_cache_warm(ctx: Ctx, state: WorkerState) -> Response:
    if not (_option_keys(ctx.query_string) & HINT_OPTIONS):
        return await forward(ctx, state, what="hint_cache_warm")
    ns, q = ctx.params["ns"], ctx.query
    steps = {name: _bool(q, name, default) for name, default in
             (("turbopuffer", True), ("documents", True), ("snapshots", True), ("blobs", False))}
    page_size = _page_size(q.get("page_size"))
    budget = q.get("blob_budget_bytes")
    if budget is not None:
        parse_count(budget, "blob_budget_bytes", 1)
    if steps["blobs"] and budget is None:
        raise validation_error("blobs=true requires a positive blob_budget_bytes")
    if budget is not None and not steps["blobs"]:
        raise validation_error("blob_budget_bytes requires blobs=true")
    if steps["blobs"]:
        raise validation_error("blob warming needs blob reference attributes, which this gateway does not configure")
    svc, cache_ns = None, ns
    if steps["documents"] or steps["snapshots"]:
        svc, cache_ns = await _ready_cache(ctx, state, ns)
    out: dict[str, Any] = {"namespace": ns, "turbopuffer": SKIPPED}
    if steps["turbopuffer"]:
        failed = await _turbopuffer_step(ctx, state)
        if failed is not None:
            return failed
        out["turbopuffer"] = {"enabled": True, "status": "completed"}
    if steps["documents"] and svc is not None:
        job = await _start(ctx, state, svc, ns, cache_ns, page_size)
        out["documents"] = {"enabled": True, "status": "started", "job": effective(job)}
    else:
        out["documents"] = SKIPPED
    # This gateway keeps no snapshots, so there is never one to mirror.
    out["snapshots"] = {"enabled": True, "status": "no_snapshot"} if steps["snapshots"] else SKIPPED
    out["blobs"] = {**SKIPPED, "documents_scanned": 0, "refs_seen": 0, "objects": 0, "bytes": 0, "missing": 0,
                    "invalid_refs": 0, "budget_exhausted": False}
    return json_response(200, out)


NS = "/v2/namespaces/{ns}"
ROUTES = (
    RouteSpec("POST", NS + "/warm", warm),
    RouteSpec("GET", NS + "/warm-jobs", list_jobs),
    RouteSpec("GET", NS + "/warm-jobs/{job_id}", get_job),
    RouteSpec("GET", "/v1/namespaces/{ns}/hint_cache_warm", hint_cache_warm),
)
