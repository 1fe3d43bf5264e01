"""Discovery (design §2.3): page through a UDF's target namespaces and enqueue the rows not done at its version.

A row is done when its marker `M_v` equals the spec's version and its `M_stale_after` is null or in the future.
Predicate parts naming a marker the namespace's schema does not have yet are dropped (no row can carry it, and
the store rejects filters on unknown attributes). Pages are `rank_by id asc` with an `id Gt cursor` filter.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import msgspec

from gateway import metrics
from gateway.http import GatewayError, validation_error
from gateway.queue import items, rows
from gateway.queue.service import SWEEP_LOCK_MS, SWEEP_RENEW_S, QueueService, now_ms
from gateway.queue.spec import UdfSpec, marker

log = logging.getLogger("gateway.queue")
_encode_id = msgspec.json.encode


def not_done_filter(spec: UdfSpec, stem: str, schema: dict[str, Any], now: int) -> Any | None:
    """The "not done at this version" predicate, or None when every row qualifies (no row has the marker yet)."""
    version, stale = f"{stem}_v", f"{stem}_stale_after"
    if version not in schema:
        return None
    parts: list[Any] = [[version, "Eq", None], [version, "NotEq", spec.version]]
    if stale in schema:  # Lte matches null: exclude null explicitly
        parts.append(["And", [[stale, "NotEq", None], [stale, "Lte", now]]])
    return ["Or", parts]


def _and(parts: list[Any]) -> Any:
    present = [p for p in parts if p is not None]
    return present[0] if len(present) == 1 else ["And", present]


async def sweep_namespace(svc: QueueService, udf_id: str, spec: UdfSpec, ns: str, page_size: int,
                          key: str | None, now: int) -> int:
    schema = await rows.schema(svc.state, ns, key)
    if schema is None:
        return 0
    done = not_done_filter(spec, marker(udf_id), schema, now)
    cursor: Any = None
    enqueued = 0
    while True:
        flt = _and([spec.filter, done, ["id", "Gt", cursor] if cursor is not None else None])
        body: dict[str, Any] = {"rank_by": ["id", "asc"], "top_k": page_size, "include_attributes": False}
        if flt is not None:
            body["filters"] = flt
        page = await rows.query(svc.state, ns, body, key)
        if not page:
            return enqueued
        keyed = [(str(r["id"]), _encode_id(r["id"]).decode()) for r in page]
        enqueued += await svc.db.write(items.enqueue, udf_id, ns, keyed, "discovery", now)
        if len(page) < page_size:
            return enqueued
        cursor = page[-1]["id"]


async def sweep(svc: QueueService, udf_id: str, spec: UdfSpec, namespaces: list[str], page_size: int,
                key: str | None, trigger: str) -> tuple[int, list[str]]:
    """Sweep `namespaces` (at most `max_concurrent_scans` at once) and count the sweep. An upstream failure raises
    502 after the other namespaces finished; what was enqueued stays enqueued and the sweep is not counted."""
    assert spec.schedule is not None
    now = now_ms()
    limit = asyncio.Semaphore(spec.schedule.max_concurrent_scans)

    async def one(ns: str) -> int:
        async with limit:
            return await sweep_namespace(svc, udf_id, spec, ns, page_size, key, now)

    results = await asyncio.gather(*(one(ns) for ns in namespaces), return_exceptions=True)
    enqueued = sum(r for r in results if isinstance(r, int))
    label = metrics.queue_label(udf_id)
    if enqueued:
        metrics.inc(metrics.UDF_ENQUEUED.labels(label, "discovery"), enqueued)
    error = next((r for r in results if isinstance(r, BaseException)), None)
    if error is not None:
        metrics.inc(metrics.UDF_DISCOVERY_SWEEPS.labels(label, trigger, "error"))
        raise error
    await svc.db.write(items.record_sweep, udf_id, spec.schedule.discovery_interval_seconds * 1000, now_ms())
    metrics.inc(metrics.UDF_DISCOVERY_SWEEPS.labels(label, trigger, "ok"))
    svc.status_cache.clear()
    return enqueued, namespaces


def namespaces_for(spec: UdfSpec, requested: list[str]) -> list[str]:
    for i, ns in enumerate(requested):
        if ns not in spec.target_namespaces:
            raise validation_error(f"namespace '{ns}' is not a target of this UDF - at `$.namespaces[{i}]`")
    return list(requested) if requested else list(spec.target_namespaces)


async def tick(svc: QueueService) -> None:
    """Periodic discovery: lock one due UDF (across workers and gateways), sweep it with the store key, release."""
    row = await svc.db.write(items.lock_due_sweep, svc.owner, SWEEP_LOCK_MS, now_ms())
    if row is None:
        return
    spec = svc.spec_of(row)
    assert spec.schedule is not None
    interval = spec.schedule.discovery_interval_seconds * 1000
    key = svc.state.config.upstream_key
    if "discovery" not in spec.triggers or key is None:  # no store key: periodic sweeps have no key to use
        await svc.db.write(items.skip_sweep, row["id"], svc.owner, interval, now_ms())
        return
    renew = asyncio.ensure_future(_renew(svc, row["id"]))
    try:
        await sweep(svc, row["id"], spec, list(spec.target_namespaces), 10_000, key, "scheduled")
    except (GatewayError, OSError) as exc:
        log.warning("scheduled discovery of UDF %s failed: %s", row["id"], exc)
        await svc.db.write(items.skip_sweep, row["id"], svc.owner, interval, now_ms())
    finally:
        renew.cancel()


async def _renew(svc: QueueService, udf_id: str) -> None:
    while True:
        await asyncio.sleep(SWEEP_RENEW_S)
        await svc.db.write(items.renew_sweep_lock, udf_id, svc.owner, SWEEP_LOCK_MS, now_ms())
