"""Function (UDF) routes (/v2/udfs, design §1.2 and §2.2): definitions, discovery, and the leased work items that
pull workers claim, heartbeat, complete and fail.

Namespace grants of minted keys: reads need read on every target namespace, a claim needs write on every target,
item routes need write on each item's namespace (checked here; the route class comes from gateway/auth.py).
"""

from __future__ import annotations

from typing import Any, Literal

import msgspec
from msgspec import Struct

from gateway import metrics
from gateway.auth import READ, WRITE, authorize, can_read
from gateway.http import Ctx, GatewayError, Response, json_response, validation_error
from gateway.queue import discovery, items, writeback
from gateway.queue.api import decode, in_range, not_found, now_ms, rfc3339, service, worker_id
from gateway.queue.spec import UdfSpec, check_udf_id, find_cycle, marker, normalised, parse_spec
from gateway.router import RouteSpec
from gateway.state import WorkerState

MAX_ITEMS = 10_000


class CreateUdfRequest(Struct):
    id: str
    spec: Any = None


class UpdateUdfRequest(Struct):
    spec: Any = None


class DiscoverRequest(Struct):
    namespaces: list[str] | None = None
    page_size: int | None = None


class ClaimRequest(Struct):
    worker_id: str
    limit: int | None = None
    lease_seconds: int | None = None


class ItemRef(Struct):
    namespace: str
    id: str | int


class HeartbeatRequest(Struct):
    worker_id: str
    items: list[ItemRef]


class CompleteRequest(Struct):
    worker_id: str
    items: list[writeback.CompleteItem]


class FailItem(Struct):
    namespace: str
    id: str | int
    kind: Literal["transient", "permanent"]
    message: str | None = None


class FailRequest(Struct):
    worker_id: str
    items: list[FailItem]


def _udf_json(row: Any, spec: UdfSpec) -> dict[str, Any]:
    return {"id": row["id"], "spec": normalised(spec), "paused": bool(row["paused"]),
            "created_at": rfc3339(row["created_at"]), "updated_at": rfc3339(row["updated_at"])}






def _keys(refs: list[Any], principal: Any) -> list[tuple[str, str]]:
    """(namespace, id as string) per item, after checking write access to each item's namespace."""
    if len(refs) > MAX_ITEMS:
        raise validation_error(f"at most {MAX_ITEMS} items per request, got {len(refs)} - at `$.items`")
    for ns in {r.namespace for r in refs}:
        authorize(principal, WRITE, ns)
    return list(dict.fromkeys((r.namespace, str(r.id)) for r in refs))


async def _udf(ctx: Ctx, state: WorkerState, scope: str | None) -> tuple[Any, UdfSpec]:
    """The UDF of the path (404), after checking `scope` on every target namespace (403)."""
    svc = service(state)
    row = await svc.db.read(items.get_udf, ctx.params["udf_id"])
    if row is None:
        raise not_found("UDF", ctx.params["udf_id"])
    spec = svc.spec_of(row)
    if scope is not None:
        assert ctx.principal is not None
        for ns in spec.target_namespaces:
            authorize(ctx.principal, scope, ns)
    return row, spec


async def _status(state: WorkerState, row: Any, spec: UdfSpec) -> dict[str, Any]:
    svc = service(state)
    window = svc.settings.rate_window_seconds
    udf_id = row["id"]
    found = await svc.status_cache.get("u:" + udf_id, lambda: svc.db.read(items.udf_status, udf_id, now_ms(), window))
    if found is None:
        raise not_found("UDF", udf_id)
    udf, counts = found["udf"], found["counts"]
    return {"udf_id": udf_id, "paused": bool(udf["paused"]), "active_namespaces": sorted(spec.target_namespaces),
            "discovery": {"sweeps_completed": int(udf["sweeps_completed"]),
                          "last_completed_at": rfc3339(udf["last_sweep_at"])},
            "counts": counts, "pending_count": counts["pending"], "processing_count": counts["processing"],
            "failed_count": counts["failed"], "indexed_rate_per_min": found["rate"], "rate_window_seconds": window}


async def _save(state: WorkerState, udf_id: str, raw_spec: Any, create: bool) -> tuple[Any, UdfSpec]:
    spec = parse_spec(raw_spec, udf_id)
    spec_json = msgspec.json.encode(normalised(spec)).decode()
    assert spec.schedule is not None
    interval = spec.schedule.discovery_interval_seconds * 1000

    async def txn(tx: Any) -> tuple[str, Any]:
        graph = await items.invalidation_graph(tx)
        cycle = find_cycle(udf_id, spec.invalidates, graph)
        if cycle is not None:
            return "cycle", " -> ".join(cycle)
        existing = await items.get_udf(tx, udf_id)
        if existing is None:
            row = await items.create_udf(tx, udf_id, marker(udf_id), spec_json, interval, now_ms())
            return ("created", row) if row is not None else ("marker", None)
        if create:
            return "exists", None
        old_version = msgspec.json.decode(existing["spec"]).get("version")
        return "updated", await items.update_udf(tx, udf_id, spec_json, old_version != spec.version, now_ms())

    svc = service(state)
    outcome, value = await svc.db.write(txn)
    if outcome == "cycle":
        raise validation_error(f"invalidates would close a cycle ({value}) - at `$.spec.invalidates`")
    if outcome == "exists":
        raise GatewayError("conflict", f"UDF '{udf_id}' already exists", status=409)
    if outcome == "marker":
        raise GatewayError("conflict", f"UDF '{udf_id}' would share the marker attributes `{marker(udf_id)}_*` with an "
                           "existing UDF (ids differing only in - and _)", status=409)
    svc.status_cache.clear()
    await svc.refresh_triggers()
    return value, svc.spec_of(value)


# ---- definitions ----
async def create_udf(ctx: Ctx, state: WorkerState) -> Response:
    req = decode(ctx.body, CreateUdfRequest)
    check_udf_id(req.id)
    row, spec = await _save(state, req.id, req.spec, create=True)
    return json_response(200, _udf_json(row, spec))


async def put_udf(ctx: Ctx, state: WorkerState) -> Response:
    udf_id = ctx.params["udf_id"]
    check_udf_id(udf_id, "path")
    row, spec = await _save(state, udf_id, decode(ctx.body, UpdateUdfRequest).spec, create=False)
    return json_response(200, _udf_json(row, spec))


async def list_udfs(ctx: Ctx, state: WorkerState) -> Response:
    svc = service(state)
    out = []
    for row in await svc.db.read(items.list_udfs):
        spec = svc.spec_of(row)
        if all(can_read(ctx.principal, ns) for ns in spec.target_namespaces):
            out.append(_udf_json(row, spec))
    return json_response(200, {"udfs": out})


async def get_udf(ctx: Ctx, state: WorkerState) -> Response:
    row, spec = await _udf(ctx, state, READ)
    return json_response(200, {"udf": _udf_json(row, spec), "status": await _status(state, row, spec)})


async def udf_status(ctx: Ctx, state: WorkerState) -> Response:
    row, spec = await _udf(ctx, state, READ)
    return json_response(200, await _status(state, row, spec))


async def delete_udf(ctx: Ctx, state: WorkerState) -> Response:
    svc = service(state)
    if not await svc.db.write(items.delete_udf, ctx.params["udf_id"]):
        raise not_found("UDF", ctx.params["udf_id"])
    svc.status_cache.clear()
    await svc.refresh_triggers()
    return json_response(200, {"status": "OK"})


async def _pause(ctx: Ctx, state: WorkerState, paused: bool) -> Response:
    svc = service(state)
    row = await svc.db.write(items.set_paused, ctx.params["udf_id"], paused, now_ms())
    if row is None:
        raise not_found("UDF", ctx.params["udf_id"])
    svc.status_cache.clear()
    return json_response(200, _udf_json(row, svc.spec_of(row)))


async def pause_udf(ctx: Ctx, state: WorkerState) -> Response:
    return await _pause(ctx, state, True)


async def resume_udf(ctx: Ctx, state: WorkerState) -> Response:
    return await _pause(ctx, state, False)


async def reset_failed(ctx: Ctx, state: WorkerState) -> Response:
    row, _ = await _udf(ctx, state, None)
    svc = service(state)
    updated = await svc.db.write(items.reset_failed, row["id"], now_ms())
    svc.status_cache.clear()
    return json_response(200, {"udf_id": row["id"], "updated": updated})


async def discover(ctx: Ctx, state: WorkerState) -> Response:
    req = decode(ctx.body, DiscoverRequest)
    page_size = in_range(req.page_size if req.page_size is not None else 10_000, 1, 10_000, "$.page_size")
    row, spec = await _udf(ctx, state, None)
    namespaces = discovery.namespaces_for(spec, req.namespaces or [])
    enqueued, swept = await discovery.sweep(service(state), row["id"], spec, namespaces, page_size, ctx.upstream_key,
                                            "manual")
    return json_response(200, {"udf_id": row["id"], "enqueued": enqueued, "namespaces": swept})


# ---- work items ----
async def claim(ctx: Ctx, state: WorkerState) -> Response:
    req = decode(ctx.body, ClaimRequest)
    worker = worker_id(req.worker_id)
    row, spec = await _udf(ctx, state, WRITE)
    assert spec.schedule is not None
    limit = in_range(req.limit if req.limit is not None else spec.worker.batch_size, 1, 1000, "$.limit")
    lease = in_range(req.lease_seconds if req.lease_seconds is not None else spec.schedule.lease_seconds, 1, 86_400,
                   "$.lease_seconds")
    claimed: list[dict[str, Any]] = []
    if not row["paused"]:
        claimed = await writeback.claim(service(state), row["id"], spec, worker, limit, lease * 1000,
                                        ctx.upstream_key, now_ms())
    return json_response(200, {"udf_id": row["id"], "worker_id": worker, "items": claimed})


async def heartbeat(ctx: Ctx, state: WorkerState) -> Response:
    req = decode(ctx.body, HeartbeatRequest)
    worker = worker_id(req.worker_id)
    keys = _keys(req.items, ctx.principal)
    row, _ = await _udf(ctx, state, None)
    updated = await service(state).db.write(items.heartbeat, row["id"], worker, keys, now_ms())
    return json_response(200, {"udf_id": row["id"], "updated": updated})


async def complete(ctx: Ctx, state: WorkerState) -> Response:
    req = decode(ctx.body, CompleteRequest)
    worker = worker_id(req.worker_id)
    _keys(req.items, ctx.principal)
    writeback.check_results(req.items)
    row, spec = await _udf(ctx, state, None)
    done = await writeback.complete(service(state), row["id"], spec, worker, req.items, ctx.upstream_key, now_ms())
    return json_response(200, {"udf_id": row["id"], "updated": done})


async def fail(ctx: Ctx, state: WorkerState) -> Response:
    req = decode(ctx.body, FailRequest)
    worker = worker_id(req.worker_id)
    keys = _keys(req.items, ctx.principal)
    row, spec = await _udf(ctx, state, None)
    assert spec.retry is not None
    failures = {(i.namespace, str(i.id)): (i.kind, i.message) for i in req.items}
    svc = service(state)
    outcomes = await svc.db.write(items.fail, row["id"], worker, {k: failures[k] for k in keys}, spec.retry, now_ms())
    svc.status_cache.clear()
    label = metrics.queue_label(row["id"])
    for outcome, n in outcomes.items():
        if n:
            kind = {"retry": "transient", "rerun": "transient"}.get(outcome, outcome)
            metrics.inc(metrics.UDF_FAILURES.labels(label, kind), n)
    return json_response(200, {"udf_id": row["id"], "updated": sum(outcomes.values())})


U = "/v2/udfs/{udf_id}"
ROUTES = (
    RouteSpec("POST", "/v2/udfs", create_udf),
    RouteSpec("GET", "/v2/udfs", list_udfs),
    RouteSpec("GET", U, get_udf),
    RouteSpec("PUT", U, put_udf),
    RouteSpec("DELETE", U, delete_udf),
    RouteSpec("GET", U + "/status", udf_status),
    RouteSpec("POST", U + "/pause", pause_udf),
    RouteSpec("POST", U + "/resume", resume_udf),
    RouteSpec("POST", U + "/reset-failed", reset_failed),
    RouteSpec("POST", U + "/discover", discover),
    RouteSpec("POST", U + "/claim", claim),
    RouteSpec("POST", U + "/items/heartbeat", heartbeat),
    RouteSpec("POST", U + "/items/complete", complete),
    RouteSpec("POST", U + "/items/fail", fail),
)
