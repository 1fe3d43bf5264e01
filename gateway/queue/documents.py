"""Pipeline transactions (design §2.1): pipelines, staged documents and their leases. Each function is one
transaction (gateway/queue/db.py); `now` is the request's epoch ms, read once by the caller.

A document in a claim stage holds a lease (worker_id, lease_until, lease_ms, claimed_from) and returns to
`claimed_from` when the lease expires: lazily at the next claim, and in the lease sweep.
"""

from __future__ import annotations

import json
from typing import Any

from gateway.queue import rates
from gateway.queue.db import Tx

CLEAR_LEASE = "worker_id = NULL, lease_until = NULL, lease_ms = NULL, claimed_from = NULL, claimed_at = NULL"
PIPELINE_COLS = "id, target_namespace, distance_metric, created_at, last_vectors_at"

RECOVER = (f"UPDATE pipeline_documents SET stage = claimed_from, {CLEAR_LEASE}, stage_entered_at = :now, "
           "updated_at = :now WHERE (pipeline_id, doc_id) IN (SELECT pipeline_id, doc_id FROM pipeline_documents "
           "WHERE pipeline_id = :p AND lease_until < :now {skip_locked})")
RECOVER_ALL = (f"UPDATE pipeline_documents SET stage = claimed_from, {CLEAR_LEASE}, stage_entered_at = :now, "
               "updated_at = :now WHERE (pipeline_id, doc_id) IN (SELECT pipeline_id, doc_id FROM pipeline_documents "
               "WHERE lease_until < :now {skip_locked})")
PICK = ("SELECT doc_id FROM pipeline_documents WHERE pipeline_id = :p AND stage = :stage AND lease_until IS NULL "
        "ORDER BY stage_entered_at, doc_id LIMIT :limit {skip_locked}")
PICK_PREFIX = ("SELECT doc_id FROM pipeline_documents WHERE pipeline_id = :p AND stage = :stage "
               "AND lease_until IS NULL AND substr(doc_id, 1, :plen) = :prefix "
               "ORDER BY stage_entered_at, doc_id LIMIT :limit {skip_locked}")
TAKE = ("UPDATE pipeline_documents SET stage = :claim_stage, worker_id = :w, lease_until = :until, lease_ms = :lease, "
        "claimed_from = :stage, claimed_at = :now, stale_claim = 0, stage_entered_at = :now, updated_at = :now "
        "WHERE pipeline_id = :p AND doc_id IN ({ids})")
STAGE = ("INSERT INTO pipeline_documents (pipeline_id, doc_id, stage, chunk_count, chunk_ids, staged_at, "
         "stage_entered_at, updated_at) VALUES (:p, :d, 'pending', :count, :chunk_ids, :now, :now, :now) "
         "ON CONFLICT (pipeline_id, doc_id) DO UPDATE SET stage = 'pending', chunk_count = excluded.chunk_count, "
         "chunk_ids = excluded.chunk_ids, stale_claim = CASE WHEN pipeline_documents.lease_until IS NOT NULL "
         f"THEN 1 ELSE pipeline_documents.stale_claim END, {CLEAR_LEASE}, failed_reason = NULL, "
         "staged_at = :now, stage_entered_at = :now, updated_at = :now")
CHUNKS = ("INSERT INTO pipeline_chunks (pipeline_id, doc_id, body) VALUES (:p, :d, :body) "
          "ON CONFLICT (pipeline_id, doc_id) DO UPDATE SET body = excluded.body")
COUNTS = ("SELECT CASE WHEN lease_until IS NOT NULL AND lease_until < :now THEN claimed_from ELSE stage END AS s, "
          "COUNT(*) AS n FROM pipeline_documents WHERE pipeline_id = :p GROUP BY 1")


async def get_pipeline(tx: Tx, pid: str) -> Any | None:
    return await tx.row(f"SELECT {PIPELINE_COLS} FROM pipelines WHERE id = :p", p=pid)


async def create_pipeline(tx: Tx, pid: str, target: str, metric: str, now: int) -> Any | None:
    """The new pipeline, or None when the id exists."""
    n = await tx.run("INSERT INTO pipelines (id, target_namespace, distance_metric, created_at) "
                     "VALUES (:p, :t, :m, :now) ON CONFLICT (id) DO NOTHING", p=pid, t=target, m=metric, now=now)
    return await get_pipeline(tx, pid) if n else None


async def list_pipelines(tx: Tx) -> list[Any]:
    return list(await tx.rows(f"SELECT {PIPELINE_COLS} FROM pipelines ORDER BY id"))


async def delete_pipeline(tx: Tx, pid: str) -> bool:
    await tx.run("DELETE FROM pipeline_chunks WHERE pipeline_id = :p", p=pid)
    await tx.run("DELETE FROM pipeline_documents WHERE pipeline_id = :p", p=pid)
    await rates.forget(tx, rates.PIPELINE, pid)
    return await tx.run("DELETE FROM pipelines WHERE id = :p", p=pid) > 0


async def stage_document(tx: Tx, pid: str, doc_id: str, chunk_ids: list[str], body: bytes, now: int) -> bool:
    """Replace a document's chunks and make it pending (False: no such pipeline). A document leased at this moment
    gets `stale_claim`: its worker's vectors (for the old chunks) will not mark it indexed."""
    if await get_pipeline(tx, pid) is None:
        return False
    await tx.run(STAGE, p=pid, d=doc_id, count=len(chunk_ids), chunk_ids=json.dumps(chunk_ids), now=now)
    await tx.run(CHUNKS, p=pid, d=doc_id, body=body)
    return True


async def document_chunks(tx: Tx, pid: str, doc_id: str) -> tuple[bool, bytes | None]:
    """(pipeline exists, the document's chunk array as JSON bytes, or None when there is no such document)."""
    if await get_pipeline(tx, pid) is None:
        return False, None
    if await tx.row("SELECT 1 FROM pipeline_documents WHERE pipeline_id = :p AND doc_id = :d", p=pid, d=doc_id) is None:
        return True, None
    row = await tx.row("SELECT body FROM pipeline_chunks WHERE pipeline_id = :p AND doc_id = :d", p=pid, d=doc_id)
    return True, bytes(row["body"]) if row is not None else b"[]"


async def claim_documents(tx: Tx, pid: str, stage: str, claim_stage: str, limit: int, worker: str, lease_ms: int,
                          prefix: str | None, now: int) -> list[str] | None:
    """Lease up to `limit` unleased documents in `stage`, oldest first (None: no such pipeline)."""
    if await get_pipeline(tx, pid) is None:
        return None
    await tx.run(RECOVER, p=pid, now=now)
    if prefix:
        picked = await tx.rows(PICK_PREFIX, p=pid, stage=stage, limit=limit, prefix=prefix, plen=len(prefix))
    else:
        picked = await tx.rows(PICK, p=pid, stage=stage, limit=limit)
    ids = [r["doc_id"] for r in picked]
    if ids:
        await tx.run(TAKE, p=pid, ids=json.dumps(ids), claim_stage=claim_stage, w=worker, until=now + lease_ms,
                     lease=lease_ms, stage=stage, now=now)
    return ids


async def heartbeat_documents(tx: Tx, pid: str, ids: list[str], stage: str, worker: str, now: int) -> int | None:
    if await get_pipeline(tx, pid) is None:
        return None
    if not ids:
        return 0
    return await tx.run("UPDATE pipeline_documents SET lease_until = :now + lease_ms, updated_at = :now "
                        "WHERE pipeline_id = :p AND doc_id IN ({ids}) AND stage = :stage AND worker_id = :w "
                        "AND lease_until IS NOT NULL", p=pid, ids=json.dumps(ids), stage=stage, w=worker, now=now)


async def set_stage(tx: Tx, pid: str, ids: list[str], target: str, from_stage: str | None, worker: str | None,
                    create_missing: bool, reason: str | None, now: int) -> int | None:
    """Move documents to `target` (guards: current stage `from_stage`, owner `worker`); counts documents whose stage
    or lease changed, plus inserts (None: no such pipeline)."""
    if await get_pipeline(tx, pid) is None:
        return None
    if not ids:
        return 0
    guards = (" AND stage = :from_stage" if from_stage is not None else "") + (
        " AND worker_id = :w" if worker is not None else "")
    failed_reason = (reason or "worker") if target == "failed" else None
    updated = await tx.run(
        f"UPDATE pipeline_documents SET stage = :t, {CLEAR_LEASE}, failed_reason = :reason, stage_entered_at = :now, "
        "updated_at = :now WHERE pipeline_id = :p AND doc_id IN ({ids}) AND NOT (stage = :t AND lease_until IS NULL)"
        + guards, p=pid, ids=json.dumps(ids), t=target, reason=failed_reason, now=now, from_stage=from_stage, w=worker)
    if create_missing:
        updated += await tx.run(
            "INSERT INTO pipeline_documents (pipeline_id, doc_id, stage, chunk_count, chunk_ids, failed_reason, "
            "staged_at, stage_entered_at, updated_at) SELECT :p, value, :t, 0, '[]', :reason, :now, :now, :now "
            "FROM ({ids}) AS v WHERE true ON CONFLICT (pipeline_id, doc_id) DO NOTHING",
            p=pid, ids=json.dumps(ids), t=target, reason=failed_reason, now=now)
    if target == "indexed":
        await rates.bump(tx, rates.PIPELINE, pid, updated, now)
    return updated


async def vectors_target(tx: Tx, pid: str, doc_id: str) -> tuple[Any | None, Any | None]:
    """(pipeline, the document's previous vector ids as a JSON list or None) for PUT vectors."""
    pipeline = await get_pipeline(tx, pid)
    if pipeline is None:
        return None, None
    return pipeline, await tx.row("SELECT vector_ids FROM pipeline_documents WHERE pipeline_id = :p AND doc_id = :d",
                                  p=pid, d=doc_id)


async def vectors_written(tx: Tx, pid: str, doc_id: str, vector_ids: list[Any], now: int) -> str | None:
    """After the upstream accepted a document's vectors: indexed, or still pending when its chunks were re-staged
    while a worker held them (`stale_claim`, consumed here). Returns the document's stage (None: gone)."""
    row = await tx.row(f"UPDATE pipeline_documents SET stage = CASE WHEN stale_claim = 1 THEN stage ELSE 'indexed' END,"
                       f" stale_claim = 0, {CLEAR_LEASE}, vector_ids = :v, stage_entered_at = :now, updated_at = :now "
                       "WHERE pipeline_id = :p AND doc_id = :d RETURNING stage",
                       p=pid, d=doc_id, v=json.dumps(vector_ids), now=now)
    await tx.run("UPDATE pipelines SET last_vectors_at = :now WHERE id = :p", p=pid, now=now)
    if row is not None and row["stage"] == "indexed":
        await rates.bump(tx, rates.PIPELINE, pid, 1, now)
    return row["stage"] if row is not None else None


async def pipeline_status(tx: Tx, pid: str, now: int, window_s: int) -> dict[str, Any] | None:
    pipeline = await get_pipeline(tx, pid)
    if pipeline is None:
        return None
    counts = {"pending": 0, "indexed": 0, "failed": 0}
    for r in await tx.rows(COUNTS, p=pid, now=now):
        counts[r["s"]] = int(r["n"])
    live = await tx.row("SELECT COUNT(*) AS n FROM pipeline_documents WHERE pipeline_id = :p AND lease_until >= :now",
                        p=pid, now=now)
    reasons = await tx.rows("SELECT failed_reason AS r, COUNT(*) AS n FROM pipeline_documents WHERE pipeline_id = :p "
                            "AND stage = 'failed' GROUP BY failed_reason", p=pid)
    return {"pipeline": pipeline, "counts": counts, "processing": int(live["n"]) if live else 0,
            "failed_reasons": {r["r"] or "worker": int(r["n"]) for r in reasons},
            "rate": await rates.per_minute(tx, rates.PIPELINE, pid, now, window_s)}


async def recover_all(tx: Tx, now: int) -> int:
    """The lease sweep: expired document leases back to the stage they were claimed from."""
    return await tx.run(RECOVER_ALL, now=now)


async def stage_counts(tx: Tx) -> list[Any]:
    return list(await tx.rows("SELECT pipeline_id, stage, COUNT(*) AS n FROM pipeline_documents "
                              "GROUP BY pipeline_id, stage"))
