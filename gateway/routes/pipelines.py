"""Pipeline routes (/v2/pipelines, design §1.1 and §2.1): stage chunked documents, lease them to embedding workers,
write their vectors into the pipeline's target namespace through the gateway's write path.

Namespace grants of minted keys apply to the pipeline's `target_namespace` (checked here, after the pipeline is
known; the route class comes from gateway/auth.py).
"""

from __future__ import annotations

import json
import re
from typing import Any

import msgspec
from msgspec import UNSET, Struct, UnsetType

from gateway import metrics
from gateway.auth import READ, WRITE, authorize, can_read
from gateway.cache.partition import cache_namespace
from gateway.http import Ctx, GatewayError, Response, json_response, validation_error
from gateway.queue import documents
from gateway.queue.api import decode, in_range, not_found, now_ms, rfc3339, service, worker_id
from gateway.queue.spec import check_namespace
from gateway.router import RouteSpec
from gateway.routes.namespaces import write_rows
from gateway.routes.passthrough import relay
from gateway.state import WorkerState

PIPELINE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
STAGE = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")
METRICS = ("cosine_distance", "euclidean_squared")
MAX_CHUNKS = MAX_IDS = 10_000
MAX_DOC_ID_BYTES = 512


class CreatePipelineRequest(Struct):
    id: str
    target_namespace: str
    distance_metric: str | None = None


class Chunk(Struct, omit_defaults=True):
    id: str
    text: str | None | UnsetType = UNSET
    metadata: dict[str, Any] | None | UnsetType = UNSET


class PutChunksRequest(Struct):
    chunks: list[Chunk]


class ClaimDocumentsRequest(Struct):
    worker_id: str
    stage: str | None = None
    claim_stage: str | None = None
    limit: int | None = None
    lease_seconds: int | None = None
    document_id_prefix: str | None = None


class HeartbeatDocumentsRequest(Struct):
    document_ids: list[str]
    worker_id: str
    stage: str | None = None


class SetDocumentsStageRequest(Struct):
    document_ids: list[str]
    stage: str
    from_stage: str | None = None
    worker_id: str | None = None
    create_missing: bool | None = None
    reason: str | None = None


class VectorEntry(Struct):
    id: str | int
    vector: list[float] | None = None
    vectors: list[list[float]] | None = None
    attributes: dict[str, Any] | None = None


class PutVectorsRequest(Struct):
    vectors: list[VectorEntry]


_chunks_encode = msgspec.json.Encoder().encode


# ---- validation helpers ----
def _stage(value: str, where: str) -> str:
    if not STAGE.match(value):
        raise validation_error(f"stage must match {STAGE.pattern}, got {value!r} - at `{where}`")
    return value






def _ids(ids: list[str]) -> list[str]:
    if len(ids) > MAX_IDS:
        raise validation_error(f"at most {MAX_IDS} document_ids per request, got {len(ids)} - at `$.document_ids`")
    return list(dict.fromkeys(ids))


def _doc_id(ctx: Ctx) -> str:
    doc_id = ctx.params["doc_id"]
    if len(doc_id.encode()) > MAX_DOC_ID_BYTES:
        raise validation_error(f"document ids are at most {MAX_DOC_ID_BYTES} bytes")
    return doc_id


def _pipeline_json(row: Any) -> dict[str, Any]:
    return {"id": row["id"], "target_namespace": row["target_namespace"], "distance_metric": row["distance_metric"],
            "created_at": rfc3339(row["created_at"])}


async def _pipeline(ctx: Ctx, state: WorkerState, scope: str) -> Any:
    """The pipeline of the path, after checking the caller's grant on its target namespace (404 / 403)."""
    row = await service(state).db.read(documents.get_pipeline, ctx.params["pipeline_id"])
    if row is None:
        raise not_found("pipeline", ctx.params["pipeline_id"])
    assert ctx.principal is not None
    authorize(ctx.principal, scope, row["target_namespace"])
    return row


# ---- handlers ----
async def create_pipeline(ctx: Ctx, state: WorkerState) -> Response:
    req = decode(ctx.body, CreatePipelineRequest)
    if not PIPELINE_ID.match(req.id):
        raise validation_error(f"pipeline id must match {PIPELINE_ID.pattern}, got {req.id!r} - at `$.id`")
    metric = req.distance_metric or "cosine_distance"
    if metric not in METRICS:
        raise validation_error(f"distance_metric must be one of {', '.join(METRICS)}, got {metric!r} - "
                               "at `$.distance_metric`")
    check_namespace(req.target_namespace, "$.target_namespace")
    svc = service(state)
    row = await svc.db.write(documents.create_pipeline, req.id, req.target_namespace, metric, now_ms())
    if row is None:
        raise GatewayError("conflict", f"pipeline '{req.id}' already exists", status=409)
    return json_response(200, _pipeline_json(row))


async def list_pipelines(ctx: Ctx, state: WorkerState) -> Response:
    found = await service(state).db.read(documents.list_pipelines)
    visible = [_pipeline_json(r) for r in found if can_read(ctx.principal, r["target_namespace"])]
    return json_response(200, {"pipelines": visible})


async def delete_pipeline(ctx: Ctx, state: WorkerState) -> Response:
    svc = service(state)
    if not await svc.db.write(documents.delete_pipeline, ctx.params["pipeline_id"]):
        raise not_found("pipeline", ctx.params["pipeline_id"])
    svc.status_cache.clear()
    return json_response(200, {"status": "OK"})


async def pipeline_status(ctx: Ctx, state: WorkerState) -> Response:
    row = await _pipeline(ctx, state, READ)
    svc = service(state)
    window = svc.settings.rate_window_seconds
    pid = row["id"]
    found = await svc.status_cache.get("p:" + pid, lambda: svc.db.read(documents.pipeline_status, pid, now_ms(),
                                                                           window))
    if found is None:
        raise not_found("pipeline", pid)
    counts = found["counts"]
    pending, processing = counts["pending"], found["processing"]
    status = "pending" if pending + processing else "idle"
    last = row["last_vectors_at"]
    if status == "idle" and last is not None:
        name = await cache_namespace(state, row["target_namespace"], ctx.upstream_key)
        if name is not None:
            state.watcher.watch(name, ctx.upstream_key)
        w = state.watcher.state(name) if name is not None else None
        if w is None or w.watermark is None or w.watermark < last:
            status = "waiting_on_upstream"
    return json_response(200, {
        "pipeline_id": pid, "status": status, "counts": counts, "failed_reasons": found["failed_reasons"],
        "pending_count": pending, "processing_count": processing, "failed_count": counts["failed"],
        "indexed_rate_per_min": found["rate"], "rate_window_seconds": window})


async def put_chunks(ctx: Ctx, state: WorkerState) -> Response:
    doc_id = _doc_id(ctx)
    req = decode(ctx.body, PutChunksRequest)
    row = await _pipeline(ctx, state, WRITE)
    ids = [c.id for c in req.chunks]
    if len(ids) > MAX_CHUNKS:
        raise validation_error(f"at most {MAX_CHUNKS} chunks per document, got {len(ids)} - at `$.chunks`")
    if len(set(ids)) != len(ids):
        dup = next(i for i in ids if ids.count(i) > 1)
        raise validation_error(f"duplicate chunk id {dup!r} - at `$.chunks`")
    body = _chunks_encode(req.chunks)
    svc = service(state)
    if len(body) > svc.settings.max_document_bytes:
        raise validation_error(f"the chunks of one document are at most {svc.settings.max_document_bytes} bytes, "
                               f"got {len(body)} - at `$.chunks`")
    if not await svc.db.write(documents.stage_document, row["id"], doc_id, ids, body, now_ms()):
        raise not_found("pipeline", row["id"])
    svc.status_cache.clear()
    return json_response(200, {"pipeline_id": row["id"], "document_id": doc_id, "stage": "pending",
                               "chunk_count": len(ids), "chunk_ids": ids})


async def get_chunks(ctx: Ctx, state: WorkerState) -> Response:
    doc_id = _doc_id(ctx)
    row = await _pipeline(ctx, state, READ)
    _, body = await service(state).db.read(documents.document_chunks, row["id"], doc_id)
    if body is None:
        raise not_found("document", doc_id)
    return Response(200, body)


async def claim_documents(ctx: Ctx, state: WorkerState) -> Response:
    req = decode(ctx.body, ClaimDocumentsRequest)
    stage = _stage(req.stage or "pending", "$.stage")
    claim_stage = _stage(req.claim_stage or "embedding", "$.claim_stage")
    if claim_stage == stage:
        raise validation_error("claim_stage must differ from stage - at `$.claim_stage`")
    limit = in_range(req.limit if req.limit is not None else 100, 1, 1000, "$.limit")
    lease = in_range(req.lease_seconds if req.lease_seconds is not None else 900, 1, 86_400, "$.lease_seconds")
    worker = worker_id(req.worker_id)
    row = await _pipeline(ctx, state, WRITE)
    svc = service(state)
    ids = await svc.db.write(documents.claim_documents, row["id"], stage, claim_stage, limit, worker, lease * 1000,
                             req.document_id_prefix, now_ms())
    if ids is None:
        raise not_found("pipeline", row["id"])
    if ids:
        svc.status_cache.clear()
        metrics.inc(metrics.QUEUE_CLAIMED.labels("pipeline", metrics.queue_label(row["id"])), len(ids))
    return json_response(200, {"pipeline_id": row["id"], "stage": stage, "claim_stage": claim_stage,
                               "worker_id": worker, "documents": ids})


async def heartbeat_documents(ctx: Ctx, state: WorkerState) -> Response:
    req = decode(ctx.body, HeartbeatDocumentsRequest)
    stage = _stage(req.stage or "embedding", "$.stage")
    worker, ids = worker_id(req.worker_id), _ids(req.document_ids)
    row = await _pipeline(ctx, state, WRITE)
    updated = await service(state).db.write(documents.heartbeat_documents, row["id"], ids, stage, worker, now_ms())
    return json_response(200, {"pipeline_id": row["id"], "stage": stage, "updated": updated or 0})


async def set_documents_stage(ctx: Ctx, state: WorkerState) -> Response:
    req = decode(ctx.body, SetDocumentsStageRequest)
    stage = _stage(req.stage, "$.stage")
    from_stage = _stage(req.from_stage, "$.from_stage") if req.from_stage is not None else None
    worker = worker_id(req.worker_id) if req.worker_id is not None else None
    ids = _ids(req.document_ids)
    row = await _pipeline(ctx, state, WRITE)
    svc = service(state)
    updated = await svc.db.write(documents.set_stage, row["id"], ids, stage, from_stage, worker,
                                 bool(req.create_missing), (req.reason or "")[:256] or None, now_ms())
    if updated:
        svc.status_cache.clear()
        label = metrics.queue_label(row["id"])
        if stage == "indexed":
            metrics.inc(metrics.PIPELINE_INDEXED.labels(label), updated)
            metrics.inc(metrics.QUEUE_COMPLETED.labels("pipeline", label), updated)
        elif stage == "failed":
            metrics.inc(metrics.PIPELINE_FAILED.labels(label, (req.reason or "worker")[:64]), updated)
    return json_response(200, {"pipeline_id": row["id"], "stage": stage, "updated": updated or 0})


def _vector_rows(req: PutVectorsRequest) -> list[dict[str, Any]]:
    out = []
    for i, entry in enumerate(req.vectors):
        if entry.vector is not None and entry.vectors is not None:
            raise validation_error(f"give `vector` or `vectors`, not both - at `$.vectors[{i}]`")
        row: dict[str, Any] = {"id": entry.id}
        if entry.vector is not None:
            row["vector"] = entry.vector
        elif entry.vectors is not None:
            row["vectors"] = entry.vectors
        for name, value in (entry.attributes or {}).items():
            if name in ("id", "vector", "vectors"):
                raise validation_error(f"attribute '{name}' is reserved - at `$.vectors[{i}].attributes`")
            row[name] = value
        out.append(row)
    ids = [str(r["id"]) for r in out]
    if len(set(ids)) != len(ids):
        raise validation_error("duplicate vector ids - at `$.vectors`")
    return out


async def put_vectors(ctx: Ctx, state: WorkerState) -> Response:
    doc_id = _doc_id(ctx)
    upserts = _vector_rows(decode(ctx.body, PutVectorsRequest))
    row = await _pipeline(ctx, state, WRITE)
    svc = service(state)
    pipeline, doc = await svc.db.read(documents.vectors_target, row["id"], doc_id)
    if pipeline is None:
        raise not_found("pipeline", row["id"])
    if doc is None:
        raise not_found("document", doc_id)
    new_ids = {str(r["id"]) for r in upserts}
    deletes = [i for i in json.loads(doc["vector_ids"] or "[]") if str(i) not in new_ids]
    write: dict[str, Any] = {}
    if upserts:
        write.update(upsert_rows=upserts, distance_metric=pipeline["distance_metric"])
    if deletes:
        write["deletes"] = deletes
    result: dict[str, Any] = {"status": "OK"}
    if write:
        resp, _ = await write_rows(state, pipeline["target_namespace"], write, ctx.upstream_key, ctx)
        if not resp.ok:
            return relay(resp)
        result.update(_counts(resp.body))
    stage = await svc.db.write(documents.vectors_written, row["id"], doc_id, [r["id"] for r in upserts], now_ms())
    svc.status_cache.clear()
    if stage == "indexed":
        label = metrics.queue_label(row["id"])
        metrics.inc(metrics.PIPELINE_INDEXED.labels(label))
        metrics.inc(metrics.QUEUE_COMPLETED.labels("pipeline", label))
    return json_response(200, result)


def _counts(body: bytes) -> dict[str, int]:
    try:
        doc = json.loads(body)
    except ValueError:
        return {}
    return {k: doc[k] for k in ("rows_affected", "rows_upserted") if isinstance(doc, dict) and isinstance(doc.get(k), int)}


P = "/v2/pipelines/{pipeline_id}"
ROUTES = (
    RouteSpec("POST", "/v2/pipelines", create_pipeline),
    RouteSpec("GET", "/v2/pipelines", list_pipelines),
    RouteSpec("DELETE", P, delete_pipeline),
    RouteSpec("GET", P + "/status", pipeline_status),
    RouteSpec("PUT", P + "/documents/{doc_id}", put_chunks),
    RouteSpec("GET", P + "/documents/{doc_id}/chunks", get_chunks),
    RouteSpec("PUT", P + "/documents/{doc_id}/vectors", put_vectors),
    RouteSpec("POST", P + "/claim", claim_documents),
    RouteSpec("POST", P + "/documents/heartbeat", heartbeat_documents),
    RouteSpec("POST", P + "/documents/stage", set_documents_stage),
)
