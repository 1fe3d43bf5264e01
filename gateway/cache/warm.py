"""Warm jobs: page through a namespace upstream (by id) and fill the cache, with progress in the shared job store.

A job record lives in the cache backend's job store, so any worker (any host with Aerospike) answers for it. The
worker running the job refreshes it after every page (`updated_ms` heartbeat); a running job whose heartbeat stops
is reported as failed. A page fills only ids that have no cache record at all, checked against a namespace token
read before the page: an id without a record was not written through any gateway since (docs/cache.md).
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from typing import Any
from urllib.parse import quote

import msgspec

from gateway import metrics
from gateway.cache import coherence as co
from gateway.cache.base import CacheError, WarmJob, doc_from_row, encode_attrs, record_size
from gateway.cache.coherence import Token
from gateway.cache.partition import namespace_of
from gateway.cache.service import CacheService, now_ms, rfc3339_ms
from gateway.http import GatewayError, json_decode, json_encode
from gateway.upstream import Upstream

log = logging.getLogger("gateway.cache")
MAX_PAGE = 10_000


class Rows(msgspec.Struct):
    rows: list[dict[str, Any]] = []


_rows = msgspec.json.Decoder(Rows).decode


class ScanFailed(Exception):
    pass


async def start_warm_job(svc: CacheService, upstream: Upstream, key: str | None, ns: str, page_size: int,
                         watermark: int | None) -> WarmJob:
    """Record the job (raises CacheError when the cache cannot), then run it in the background. `ns` is the cache
    name (gateway/cache/partition.py); the job scans the upstream namespace of that name."""
    now = now_ms()
    job = WarmJob(id=str(uuid.uuid4()), namespace=ns, status="running", progress=0.0, documents_scanned=0,
                  created_at=rfc3339_ms(now), updated_ms=now)
    await svc.jobs.put(job)
    svc.warm_started(ns)
    svc.spawn(run_warm_job(svc, upstream, key, job, page_size, watermark))
    return job


def maybe_reactive_warm(svc: CacheService, upstream: Upstream, key: str | None, ns: str,
                        watermark: int | None) -> None:
    """After a clean fetch miss: warm the whole namespace once per cache (re)connect, if LAYER_CACHE_REACTIVE_WARM
    is on (off by default: one miss would trigger a full scan of a possibly huge namespace)."""
    settings = getattr(svc.store, "settings", None)
    if settings is None or not settings.reactive_warm:
        return
    generation = svc.store.status().generation
    if svc.reactive_generation.get(ns) == generation:
        return
    svc.reactive_generation[ns] = generation
    svc.spawn(_start_quietly(svc, upstream, key, ns, watermark))


async def _start_quietly(svc: CacheService, upstream: Upstream, key: str | None, ns: str,
                         watermark: int | None) -> None:
    try:
        await start_warm_job(svc, upstream, key, ns, 1000, watermark)
    except CacheError as exc:
        log.info("reactive warm of %s not started: %s", ns, exc)


async def _row_count(upstream: Upstream, key: str | None, ns: str) -> int | None:
    try:
        resp = await upstream.request("GET", f"/v2/namespaces/{quote(ns, safe='')}/metadata", key, None, "metadata")
        count = json_decode(resp.body).get("approx_row_count") if resp.ok else None
    except (GatewayError, msgspec.DecodeError, AttributeError):
        return None
    return count if isinstance(count, int) and count > 0 else None


async def scan_page(upstream: Upstream, key: str | None, ns: str, cursor: Any, page_size: int) -> list[dict[str, Any]]:
    body: dict[str, Any] = {"rank_by": ["id", "asc"], "top_k": page_size, "include_attributes": True}
    if cursor is not None:
        body["filters"] = ["id", "Gt", cursor]
    try:
        resp = await upstream.request("POST", f"/v2/namespaces/{quote(ns, safe='')}/query", key, json_encode(body),
                                      "warm scan", idempotent=True)
    except GatewayError as exc:
        raise ScanFailed(exc.message) from None
    if not resp.ok:
        raise ScanFailed(f"Turbopuffer scan failed: upstream returned {resp.status}: "
                         f"{resp.body[:200].decode(errors='replace')}")
    try:
        return _rows(resp.body).rows
    except msgspec.DecodeError as exc:
        raise ScanFailed(f"Turbopuffer scan failed: unexpected response body: {exc}") from None


async def _save(svc: CacheService, job: WarmJob) -> None:
    job.updated_ms = now_ms()
    try:
        await svc.jobs.put(job)
    except CacheError as exc:
        log.warning("warm job %s: progress not recorded: %s", job.id, exc)


async def _fill(svc: CacheService, job: WarmJob, ns: str, page: Token, rows: list[dict[str, Any]]) -> None:
    settings = svc.store.settings
    changes = {}
    oversized = 0
    for doc in (doc_from_row(r) for r in rows):
        attrs = encode_attrs(doc.attrs)
        if record_size(doc.id, attrs, doc.vector) > settings.max_record_bytes:
            oversized += 1
        else:
            changes[doc.id] = co.fill_absent(page, doc, attrs, settings.fill_window_ms)
    if oversized:
        metrics.CACHE_OVERSIZED.labels(metrics.ns_label(svc.store.set_name(ns))).inc(oversized)
    try:
        written = await svc.store.update(ns, changes)
        metrics.WARM_DOCUMENTS.labels(metrics.ns_label(namespace_of(ns))).inc(len(written))
    except CacheError as exc:
        log.warning("warm job %s: a page of %d docs was not cached: %s", job.id, len(rows), exc)


async def run_warm_job(svc: CacheService, upstream: Upstream, key: str | None, job: WarmJob, page_size: int,
                       watermark: int | None) -> None:
    ns, name = job.namespace, namespace_of(job.namespace)
    try:
        total = await _row_count(upstream, key, name)
        cursor: Any = None
        while True:
            try:
                page = await svc.store.space(ns)
            except CacheError as exc:
                log.warning("warm job %s: cache unavailable, this page is not cached: %s", job.id, exc)
                page = None
            rows = [r for r in await scan_page(upstream, key, name, cursor, page_size) if "id" in r]
            if rows and page is not None:
                await _fill(svc, job, ns, page, rows)
            job.documents_scanned += len(rows)
            if total:
                job.progress = min(job.documents_scanned / total, 0.99)
            if len(rows) < page_size:
                break
            cursor = rows[-1]["id"]
            await _save(svc, job)
        job.status, job.progress, job.stable_as_of = "completed", 1.0, watermark
    except ScanFailed as exc:
        job.status, job.error = "failed", str(exc)
    except asyncio.CancelledError:
        job.status, job.error = "failed", "warm job cancelled: the worker is shutting down"
        raise
    except Exception as exc:
        log.exception("warm job %s crashed", job.id)
        job.status, job.error = "failed", f"warm job failed: {exc}"
    finally:
        job.completed_at = rfc3339_ms(now_ms())
        try:
            await asyncio.shield(_save(svc, job))
        finally:
            svc.warm_finished(ns, job)
