"""Handing items to workers and writing their results back (design §2.2, §3).

Claim: lease items, then read their inputs from the store; remember a hash of what was handed out; items whose row
is gone leave the queue unreturned. Complete: re-read the inputs (the whole row when a vector is written), then one
write per namespace through the gateway's write path (`system=True`: the `_hevlayer_udf_*` markers are allowed,
triggers do not fire), then the queue transition, conditioned on the worker still owning each item.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import msgspec

from gateway import metrics
from gateway.http import upstream_error, validation_error
from gateway.queue import items, rows
from gateway.queue.service import QueueService
from gateway.queue.spec import UdfSpec, marker
from gateway.routes.namespaces import write_rows

Key = tuple[str, str]
NOT_ATTRIBUTES = frozenset({"id", "vector", "vectors"})
_decode = msgspec.json.decode


class CompleteItem(msgspec.Struct):
    namespace: str
    id: str | int
    vector: list[float] | None = None
    vectors: list[list[float]] | None = None
    attributes: dict[str, Any] | None = None


def check_results(results: list[CompleteItem]) -> None:
    """422 before any state changes: reserved or structural attribute names, both vector forms."""
    for i, item in enumerate(results):
        for name in item.attributes or {}:
            if name.startswith("_hevlayer_") or name in NOT_ATTRIBUTES:
                raise validation_error(f"attribute '{name}' cannot be written by a UDF (reserved) - "
                                       f"at `$.items[{i}].attributes`")
        if item.vector is not None and item.vectors is not None:
            raise validation_error(f"give `vector` or `vectors`, not both - at `$.items[{i}]`")


async def claim(svc: QueueService, udf_id: str, spec: UdfSpec, worker: str, limit: int, lease_ms: int,
                key: str | None, now: int) -> list[dict[str, Any]]:
    assert spec.retry is not None
    picked, expired = await svc.db.write(items.claim, udf_id, worker, limit, lease_ms, spec.retry.max_attempts, now)
    label = metrics.queue_label(udf_id)
    if expired:
        metrics.inc(metrics.UDF_FAILURES.labels(label, "lease_expired"), expired)
    if not picked:
        return []
    svc.status_cache.clear()
    metrics.inc(metrics.QUEUE_CLAIMED.labels("udf", label), len(picked))
    typed = {(r["namespace"], r["doc_key"]): _decode(r["doc_id"]) for r in picked}
    names = rows.attribute_names(spec.inputs)
    if not names:
        return [{"namespace": ns, "id": k, "input": rows.input_of(spec.inputs, typed[(ns, k)], {})} for ns, k in typed]
    found = await _read(svc, typed, names, key)
    out, hashes, gone = [], [], []
    for (ns, k), doc_id in typed.items():
        row = found.get((ns, k))
        if row is None:
            gone.append((ns, k))
            continue
        value = rows.input_of(spec.inputs, doc_id, row)
        hashes.append((ns, k, rows.input_hash(value)))
        out.append({"namespace": ns, "id": k, "input": value})
    await svc.db.write(items.claimed_inputs, udf_id, worker, hashes, gone)
    return out


async def _read(svc: QueueService, typed: dict[Key, Any], include: list[str] | bool,
                key: str | None) -> dict[Key, dict[str, Any]]:
    by_ns: dict[str, list[Any]] = defaultdict(list)
    for (ns, _), doc_id in typed.items():
        by_ns[ns].append(doc_id)
    found: dict[Key, dict[str, Any]] = {}
    for ns, ids in by_ns.items():
        for k, row in (await rows.by_ids(svc.state, ns, ids, include, key)).items():
            found[(ns, k)] = row
    return found


class Outcome:
    def __init__(self) -> None:
        self.written: list[Key] = []
        self.changed: list[Key] = []
        self.gone: list[Key] = []
        self.rejected: list[tuple[str, str, str]] = []


async def complete(svc: QueueService, udf_id: str, spec: UdfSpec, worker: str, results: list[CompleteItem],
                   key: str | None, now: int) -> int:
    wanted = {(r.namespace, str(r.id)): r for r in results}
    owned = await svc.db.read(items.owned, udf_id, worker, list(wanted))
    if not owned:
        return 0
    outcome = Outcome()
    by_ns: dict[str, list[Any]] = defaultdict(list)
    for row in owned:
        by_ns[row["namespace"]].append(row)
    for ns, ns_rows in by_ns.items():
        await _complete_namespace(svc, udf_id, spec, ns, ns_rows, wanted, key, now, outcome)
    done = await svc.db.write(items.finish, udf_id, worker, outcome.written, outcome.changed, outcome.gone,
                              outcome.rejected, now)
    svc.status_cache.clear()
    label = metrics.queue_label(udf_id)
    metrics.inc(metrics.QUEUE_COMPLETED.labels("udf", label), done)
    if outcome.rejected:
        metrics.inc(metrics.UDF_FAILURES.labels(label, "writeback_rejected"), len(outcome.rejected))
    return done


async def _complete_namespace(svc: QueueService, udf_id: str, spec: UdfSpec, ns: str, owned: list[Any],
                              wanted: dict[Key, CompleteItem], key: str | None, now: int, outcome: Outcome) -> None:
    vectors = any(wanted[(ns, r["doc_key"])].vector is not None or wanted[(ns, r["doc_key"])].vectors is not None
                  for r in owned)
    names = rows.attribute_names(spec.inputs)
    fresh: dict[str, dict[str, Any]] | None = None
    if vectors or names:
        fresh = await rows.by_ids(svc.state, ns, [_decode(r["doc_id"]) for r in owned], True if vectors else names, key)
    current: list[tuple[Any, Any, dict[str, Any]]] = []  # (owned row, typed id, stored row)
    for r in owned:
        doc_id, stored = _decode(r["doc_id"]), None
        if fresh is not None:
            stored = fresh.get(r["doc_key"])
            if stored is None:
                outcome.gone.append((ns, r["doc_key"]))
                continue
            if r["input_hash"] and rows.input_hash(rows.input_of(spec.inputs, doc_id, stored)) != r["input_hash"]:
                outcome.changed.append((ns, r["doc_key"]))
                continue
        current.append((r, doc_id, stored or {}))
    if not current:
        return
    markers = _markers(udf_id, spec, now)
    if vectors:
        docs = [_upsert_row(stored, doc_id, wanted[(ns, r["doc_key"])], markers) for r, doc_id, stored in current]
        write: dict[str, Any] = {"upsert_rows": docs}
        schema = await rows.schema(svc.state, ns, key)
        if schema is not None and not rows.has_vector(schema):
            write["distance_metric"] = "cosine_distance"
    else:
        docs = [{"id": doc_id, **(wanted[(ns, r["doc_key"])].attributes or {}), **markers}
                for r, doc_id, _ in current]
        write = {"patch_rows": docs, "return_affected_ids": True}
    await _write(svc, ns, write, [r["doc_key"] for r, _, _ in current], key, outcome)


def _markers(udf_id: str, spec: UdfSpec, now: int) -> dict[str, Any]:
    stem = marker(udf_id)
    out: dict[str, Any] = {f"{stem}_v": spec.version, f"{stem}_stale_after": None}
    for other in spec.invalidates:
        out[f"{marker(other)}_stale_after"] = now
    return out


def _upsert_row(stored: dict[str, Any], doc_id: Any, result: CompleteItem, markers: dict[str, Any]) -> dict[str, Any]:
    row = {k: v for k, v in stored.items() if not k.startswith("$") and k != "_hevlayer_upserted_at"}
    row.update(result.attributes or {})
    if result.vector is not None:
        row["vector"] = result.vector
    elif result.vectors is not None:
        row["vectors"] = result.vectors
    row.update(markers, id=doc_id)
    return row


async def _write(svc: QueueService, ns: str, write: dict[str, Any], keys: list[str], key: str | None,
                 outcome: Outcome) -> None:
    """One write for the namespace; a 4xx rejects the whole batch, so retry row by row to find the bad rows."""
    part = "upsert_rows" if "upsert_rows" in write else "patch_rows"
    resp, _ = await write_rows(svc.state, ns, dict(write, **{part: list(write[part])}), key, system=True)
    if resp.ok:
        _accepted(write, part, resp.body, keys, ns, outcome)
        return
    if resp.status >= 500 or resp.status == 429:
        raise upstream_error(f"writing UDF results to '{ns}' failed: upstream returned {resp.status}")
    if len(keys) == 1:
        outcome.rejected.append((ns, keys[0], resp.body[:2000].decode(errors="replace")))
        return
    for row, k in zip(write[part], keys):
        await _write(svc, ns, {**write, part: [row]}, [k], key, outcome)


def _accepted(write: dict[str, Any], part: str, body: bytes, keys: list[str], ns: str, outcome: Outcome) -> None:
    if part == "upsert_rows":
        outcome.written += [(ns, k) for k in keys]
        return
    try:
        patched = {str(i) for i in _decode(body).get("patched_ids") or ()}
    except (msgspec.DecodeError, AttributeError):
        patched = set()
    for k in keys:  # a patch ignores missing ids: those rows were deleted meanwhile
        (outcome.written if k in patched else outcome.gone).append((ns, k))
