"""The write mirror (layer.md §3.5, with fixes): keep cached documents in step with writes through the gateway.

Explicit-id writes are mirrored before the upstream call: upserts replace the record (attributes + vector),
patches merge into cached records only (an uncached document is invalidated, never created thin), deletes
delete. If the upstream then rejects the write, every id mirrored for it is invalidated. Conditional and by-filter
writes ask the upstream for `return_affected_ids` and are mirrored from those ids after success.
Everything here is best effort: a cache failure is logged, counted and turned into an invalidation (replayed by
the backend once the cache answers again); it never fails or delays the write beyond the cache timeout.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import msgspec

from gateway import metrics
from gateway.cache.base import CacheDoc, CacheError, DocumentCache, pack_vector

log = logging.getLogger("gateway.cache")
RESPONSE_DRIVEN = ("upsert_condition", "patch_condition", "delete_condition", "delete_by_filter", "patch_by_filter")
NOT_ATTRIBUTES = frozenset({"id", "vector", "vectors"})


class AffectedIds(msgspec.Struct):
    upserted_ids: list[Any] = []
    patched_ids: list[Any] = []
    deleted_ids: list[Any] = []


_affected_decode = msgspec.json.Decoder(AffectedIds).decode


class MirrorPlan:
    """What the pre-write phase did, for the post-write phase."""

    __slots__ = ("mirrored", "response_driven")

    def __init__(self, response_driven: bool) -> None:
        self.response_driven = response_driven
        self.mirrored: list[str] = []  # ids whose cached record now reflects this (not yet accepted) write


def _rows(doc: dict[str, Any], rows_key: str, columns_key: str) -> Iterator[dict[str, Any]]:
    rows = doc.get(rows_key)
    if isinstance(rows, list):
        yield from (r for r in rows if isinstance(r, dict) and "id" in r)
    cols = doc.get(columns_key)
    if isinstance(cols, dict) and isinstance(cols.get("id"), list):
        names = [k for k, v in cols.items() if isinstance(v, list)]
        for i in range(len(cols["id"])):
            yield {k: cols[k][i] for k in names if i < len(cols[k])}


def upsert_docs(doc: dict[str, Any]) -> list[CacheDoc]:
    return [CacheDoc(str(row["id"]), {k: v for k, v in row.items() if k not in NOT_ATTRIBUTES},
                     pack_vector(row.get("vector"))) for row in _rows(doc, "upsert_rows", "upsert_columns")]


def patch_items(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {str(row["id"]): {k: v for k, v in row.items() if k not in NOT_ATTRIBUTES}
            for row in _rows(doc, "patch_rows", "patch_columns")}


def delete_ids(doc: dict[str, Any]) -> list[str]:
    ids = doc.get("deletes")
    return [str(i) for i in ids] if isinstance(ids, list) else []


async def invalidate(store: DocumentCache, ns: str, ids: list[str], kind: str = "invalidate") -> None:
    if not ids:
        return
    try:
        await store.delete_many(ns, ids)
        metrics.CACHE_MIRROR.labels(kind, "ok").inc(len(ids))
    except CacheError as exc:  # remembered by the backend and replayed on recovery
        metrics.CACHE_MIRROR.labels(kind, "error").inc(len(ids))
        log.warning("cache invalidation of %d id(s) in %s failed: %s", len(ids), ns, exc)


async def put_upserts(store: DocumentCache, ns: str, docs: list[CacheDoc]) -> list[str]:
    """Replace the cached records; returns the ids now holding the new version."""
    try:
        report = await store.put_many(ns, docs, "replace")
    except CacheError as exc:
        log.warning("cache mirror of %d upsert(s) in %s failed: %s", len(docs), ns, exc)
        metrics.CACHE_MIRROR.labels("upsert", "error").inc(len(docs))
        await invalidate(store, ns, [d.id for d in docs])
        return []
    metrics.CACHE_MIRROR.labels("upsert", "ok").inc(report.stored)
    if report.oversized:
        metrics.CACHE_OVERSIZED.labels(metrics.ns_label(store.set_name(ns))).inc(len(report.oversized))
    skipped = set(report.oversized)
    return [d.id for d in docs if d.id not in skipped]


async def merge_patches(store: DocumentCache, ns: str, patches: dict[str, dict[str, Any]]) -> list[str]:
    """Merge patches into cached records; uncached ids are invalidated rather than created partially."""
    ids = list(patches)
    try:
        cached = await store.get_many(ns, ids)
    except CacheError as exc:
        log.warning("cache mirror of %d patch(es) in %s could not read: %s", len(ids), ns, exc)
        await invalidate(store, ns, ids)
        return []
    merged = [CacheDoc(i, {**cached[i], **patches[i]}) for i in ids if i in cached]
    absent = [i for i in ids if i not in cached]
    done = []
    if merged:
        try:
            report = await store.put_many(ns, merged, "update")
            metrics.CACHE_MIRROR.labels("patch", "ok").inc(report.stored)
            done = [d.id for d in merged if d.id not in set(report.oversized)]
        except CacheError as exc:
            log.warning("cache mirror of %d patch(es) in %s failed: %s", len(merged), ns, exc)
            absent += [d.id for d in merged]
    await invalidate(store, ns, absent)
    return done


async def before_write(store: DocumentCache, ns: str, doc: dict[str, Any]) -> MirrorPlan:
    """Pre-write phase. For response-driven writes it only asks the upstream for the affected ids."""
    if any(k in doc for k in RESPONSE_DRIVEN):
        doc["return_affected_ids"] = True
        return MirrorPlan(response_driven=True)
    plan = MirrorPlan(response_driven=False)
    ups = upsert_docs(doc)
    if ups:
        plan.mirrored += await put_upserts(store, ns, ups)
    patches = patch_items(doc)
    if patches:
        plan.mirrored += await merge_patches(store, ns, patches)
    await invalidate(store, ns, delete_ids(doc), "delete")
    return plan


async def after_write(store: DocumentCache, ns: str, doc: dict[str, Any], ok: bool, body: bytes,
                      plan: MirrorPlan) -> None:
    """Post-write phase: undo a rejected write's mirror, or mirror a response-driven write from its ids."""
    if not ok:
        await invalidate(store, ns, plan.mirrored, "rollback")
        return
    if not plan.response_driven:
        return
    try:
        affected = _affected_decode(body)
    except msgspec.DecodeError:
        log.warning("write response for %s had no readable affected ids; invalidating the write's ids", ns)
        affected = AffectedIds([r.id for r in upsert_docs(doc)], list(patch_items(doc)), delete_ids(doc))
    upserted = {str(i) for i in affected.upserted_ids}
    ups = [d for d in upsert_docs(doc) if d.id in upserted]
    if ups:
        await put_upserts(store, ns, ups)
    # Patched documents (conditional or by filter) are invalidated: the full new version is not known here.
    await invalidate(store, ns, [str(i) for i in affected.patched_ids])
    await invalidate(store, ns, [str(i) for i in affected.deleted_ids], "delete")
