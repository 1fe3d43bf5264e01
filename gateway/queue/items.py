"""UDF transactions (design §2.2): definitions, work items, leases, retries. Each function is one transaction
(gateway/queue/db.py); `now` is the request's epoch ms, read once by the caller.

An item is (udf_id, namespace, doc_key): pending, processing (leased to one worker) or failed. Done is deletion (the
row's version marker stops it being enqueued again). `doc_key` is the id as a string (what workers see); `doc_id` is
the typed id as JSON (what writes and filters use).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from gateway.queue import rates
from gateway.queue.db import Tx
from gateway.queue.spec import RetrySpec, backoff_ms

UDF_COLS = ("id, marker, spec, paused, created_at, updated_at, sweeps_completed, last_sweep_at, next_sweep_at")
RELEASE = "worker_id = NULL, lease_until = NULL, lease_ms = NULL"
OWNED = ("udf_id = :u AND state = 'processing' AND worker_id = :w "
         "AND (namespace, doc_key) IN (SELECT a, b FROM ({pairs}) AS p)")
RECOVER = (f"UPDATE udf_items SET state = CASE WHEN attempts >= :max THEN 'failed' ELSE 'pending' END, "
           "failed_reason = CASE WHEN attempts >= :max THEN 'lease_expired' ELSE failed_reason END, "
           f"ready_at = :now, {RELEASE}, updated_at = :now WHERE (udf_id, namespace, doc_key) IN ("
           "SELECT udf_id, namespace, doc_key FROM udf_items WHERE udf_id = :u AND state = 'processing' "
           "AND lease_until < :now {skip_locked}) RETURNING state")
# One statement picks (oldest ready first; PostgreSQL skips rows other claimers hold) and leases; RETURNING order is
# unspecified, so the caller sorts by the picking order.
CLAIM = ("WITH picked AS (SELECT namespace AS pn, doc_key AS pk FROM udf_items WHERE udf_id = :u "
         "AND state = 'pending' AND ready_at <= :now ORDER BY ready_at, namespace, doc_key LIMIT :limit {skip_locked}) "
         "UPDATE udf_items SET state = 'processing', worker_id = :w, lease_until = :until, lease_ms = :lease, "
         "attempts = attempts + 1, rerun = 0, input_hash = NULL, updated_at = :now FROM picked "
         "WHERE udf_id = :u AND namespace = picked.pn AND doc_key = picked.pk "
         "RETURNING namespace, doc_key, doc_id, ready_at")
ENQUEUE = ("INSERT INTO udf_items (udf_id, namespace, doc_key, doc_id, state, ready_at, source, enqueued_at, "
           "updated_at) SELECT :u, :ns, a, b, 'pending', :now, :source, :now, :now FROM ({pairs}) AS p WHERE true "
           "ON CONFLICT (udf_id, namespace, doc_key) DO NOTHING")
# A write trigger revives: absent -> pending; pending -> ready now, attempts reset; processing -> rerun after the
# running attempt; failed -> pending, error cleared. (Columns qualified: PostgreSQL rejects the bare form.)
REVIVE = ("INSERT INTO udf_items (udf_id, namespace, doc_key, doc_id, state, ready_at, source, enqueued_at, "
          "updated_at) SELECT :u, :ns, a, b, 'pending', :now, 'write', :now, :now FROM ({pairs}) AS p WHERE true "
          "ON CONFLICT (udf_id, namespace, doc_key) DO UPDATE SET "
          "state = CASE WHEN udf_items.state = 'processing' THEN 'processing' ELSE 'pending' END, "
          "attempts = CASE WHEN udf_items.state = 'processing' THEN udf_items.attempts ELSE 0 END, "
          "rerun = CASE WHEN udf_items.state = 'processing' THEN 1 ELSE udf_items.rerun END, "
          "ready_at = CASE WHEN udf_items.state = 'processing' OR udf_items.ready_at < :now "
          "THEN udf_items.ready_at ELSE :now END, "
          "failed_reason = CASE WHEN udf_items.state = 'failed' THEN NULL ELSE udf_items.failed_reason END, "
          "last_error = CASE WHEN udf_items.state = 'failed' THEN NULL ELSE udf_items.last_error END, "
          "updated_at = :now")
COUNTS = ("SELECT CASE WHEN state = 'processing' AND lease_until < :now THEN 'pending' ELSE state END AS s, "
          "COUNT(*) AS n FROM udf_items WHERE udf_id = :u GROUP BY 1")


def pairs(items: Sequence[tuple[str, str]]) -> str:
    return json.dumps([list(i) for i in items])


# ---- definitions ----
async def get_udf(tx: Tx, udf_id: str) -> Any | None:
    return await tx.row(f"SELECT {UDF_COLS} FROM udfs WHERE id = :u", u=udf_id)


async def list_udfs(tx: Tx) -> list[Any]:
    return list(await tx.rows(f"SELECT {UDF_COLS} FROM udfs ORDER BY id"))


async def invalidation_graph(tx: Tx) -> dict[str, list[str]]:
    """Every UDF's `invalidates` list, under the UDF-definition lock (held to the end of the transaction)."""
    await tx.row("{lock_udfs}")
    return {r["id"]: json.loads(r["spec"]).get("invalidates", []) for r in await tx.rows("SELECT id, spec FROM udfs")}


async def create_udf(tx: Tx, udf_id: str, marker: str, spec_json: str, interval_ms: int, now: int) -> Any | None:
    """The new UDF, or None when the id (or another id with the same marker stem) exists."""
    n = await tx.run("INSERT INTO udfs (id, marker, spec, created_at, updated_at, next_sweep_at) "
                     "VALUES (:u, :m, :spec, :now, :now, :next) ON CONFLICT DO NOTHING",
                     u=udf_id, m=marker, spec=spec_json, now=now, next=now + interval_ms)
    return await get_udf(tx, udf_id) if n else None


async def update_udf(tx: Tx, udf_id: str, spec_json: str, version_changed: bool, now: int) -> Any:
    """Replace the spec (paused and created_at kept). A new version gives failed items another chance."""
    await tx.run("UPDATE udfs SET spec = :spec, updated_at = :now WHERE id = :u", u=udf_id, spec=spec_json, now=now)
    if version_changed:
        await tx.run("UPDATE udf_items SET state = 'pending', attempts = 0, ready_at = :now, failed_reason = NULL, "
                     "last_error = NULL, updated_at = :now WHERE udf_id = :u AND state = 'failed'", u=udf_id, now=now)
    return await get_udf(tx, udf_id)


async def delete_udf(tx: Tx, udf_id: str) -> bool:
    await tx.run("DELETE FROM udf_items WHERE udf_id = :u", u=udf_id)
    await rates.forget(tx, rates.UDF, udf_id)
    return await tx.run("DELETE FROM udfs WHERE id = :u", u=udf_id) > 0


async def set_paused(tx: Tx, udf_id: str, paused: bool, now: int) -> Any | None:
    await tx.run("UPDATE udfs SET paused = :p, updated_at = CASE WHEN paused = :p THEN updated_at ELSE :now END "
                 "WHERE id = :u", u=udf_id, p=int(paused), now=now)
    return await get_udf(tx, udf_id)


async def record_sweep(tx: Tx, udf_id: str, interval_ms: int, now: int) -> None:
    await tx.run("UPDATE udfs SET sweeps_completed = sweeps_completed + 1, last_sweep_at = :now, next_sweep_at = :next,"
                 " sweep_owner = NULL, sweep_lock_until = NULL WHERE id = :u", u=udf_id, now=now, next=now + interval_ms)


async def lock_due_sweep(tx: Tx, owner: str, lock_ms: int, now: int) -> Any | None:
    """Take the sweep lock of one UDF whose periodic discovery is due (the caller checks its triggers)."""
    row = await tx.row("SELECT id FROM udfs WHERE paused = 0 AND next_sweep_at <= :now AND "
                       "(sweep_lock_until IS NULL OR sweep_lock_until < :now) ORDER BY next_sweep_at, id LIMIT 1 "
                       "{skip_locked}", now=now)
    if row is None:
        return None
    await tx.run("UPDATE udfs SET sweep_owner = :o, sweep_lock_until = :until WHERE id = :u",
                 u=row["id"], o=owner, until=now + lock_ms)
    return await get_udf(tx, row["id"])


async def renew_sweep_lock(tx: Tx, udf_id: str, owner: str, lock_ms: int, now: int) -> bool:
    return await tx.run("UPDATE udfs SET sweep_lock_until = :until WHERE id = :u AND sweep_owner = :o",
                        u=udf_id, o=owner, until=now + lock_ms) > 0


async def skip_sweep(tx: Tx, udf_id: str, owner: str, interval_ms: int, now: int) -> None:
    """Release the sweep lock without counting a sweep (not due by trigger, or the sweep failed)."""
    await tx.run("UPDATE udfs SET next_sweep_at = :next, sweep_owner = NULL, sweep_lock_until = NULL "
                 "WHERE id = :u AND sweep_owner = :o", u=udf_id, o=owner, next=now + interval_ms)


# ---- items ----
async def enqueue(tx: Tx, udf_id: str, ns: str, keyed: list[tuple[str, str]], source: str, now: int) -> int:
    """Insert absent items as pending (existing items keep their state); returns the number inserted."""
    return await tx.run(ENQUEUE, u=udf_id, ns=ns, pairs=pairs(keyed), source=source, now=now) if keyed else 0


async def revive(tx: Tx, udf_id: str, ns: str, keyed: list[tuple[str, str]], now: int) -> int:
    return await tx.run(REVIVE, u=udf_id, ns=ns, pairs=pairs(keyed), now=now) if keyed else 0


async def recover(tx: Tx, udf_id: str, max_attempts: int, now: int) -> int:
    """Expired leases back to pending, or to failed (`lease_expired`) after the last attempt; returns failures."""
    rows = await tx.rows(RECOVER, u=udf_id, max=max_attempts, now=now)
    return sum(1 for r in rows if r["state"] == "failed")


async def claim(tx: Tx, udf_id: str, worker: str, limit: int, lease_ms: int, max_attempts: int,
                now: int) -> tuple[list[Any], int]:
    """(claimed rows in order, lease-expiry failures). Recovery first, then up to `limit` ready items."""
    failed = await recover(tx, udf_id, max_attempts, now)
    picked = await tx.rows(CLAIM, u=udf_id, now=now, limit=limit, w=worker, until=now + lease_ms, lease=lease_ms)
    return sorted(picked, key=lambda r: (r["ready_at"], r["namespace"], r["doc_key"])), failed


async def claimed_inputs(tx: Tx, udf_id: str, worker: str, hashes: list[tuple[str, str, str]],
                         gone: list[tuple[str, str]]) -> None:
    """After a claim read its inputs: remember what was handed out; drop items whose rows no longer exist."""
    for ns, key, digest in hashes:
        await tx.run("UPDATE udf_items SET input_hash = :h WHERE udf_id = :u AND namespace = :ns AND doc_key = :k "
                     "AND state = 'processing' AND worker_id = :w", u=udf_id, ns=ns, k=key, h=digest, w=worker)
    if gone:
        await tx.run("DELETE FROM udf_items WHERE " + OWNED, u=udf_id, w=worker, pairs=pairs(gone))


async def owned(tx: Tx, udf_id: str, worker: str, keys: list[tuple[str, str]]) -> list[Any]:
    """The listed items that are processing and leased to `worker` (others are skipped silently)."""
    if not keys:
        return []
    return list(await tx.rows("SELECT namespace, doc_key, doc_id, input_hash FROM udf_items WHERE " + OWNED,
                              u=udf_id, w=worker, pairs=pairs(keys)))


async def heartbeat(tx: Tx, udf_id: str, worker: str, keys: list[tuple[str, str]], now: int) -> int:
    if not keys:
        return 0
    return await tx.run("UPDATE udf_items SET lease_until = :now + lease_ms, updated_at = :now WHERE " + OWNED,
                        u=udf_id, w=worker, pairs=pairs(keys), now=now)


async def finish(tx: Tx, udf_id: str, worker: str, written: list[tuple[str, str]], changed: list[tuple[str, str]],
                 gone: list[tuple[str, str]], rejected: list[tuple[str, str, str]], now: int) -> int:
    """The queue side of a completion, after the write-back: written items are done (or pending again when a write
    re-triggered them meanwhile), items whose inputs changed wait for another run, items whose row is gone leave,
    rows the store rejected fail (`writeback_rejected`). Returns the completions."""
    done = 0
    if written:
        done += await tx.run(f"UPDATE udf_items SET state = 'pending', attempts = 0, rerun = 0, ready_at = :now, "
                             f"{RELEASE}, updated_at = :now WHERE rerun = 1 AND " + OWNED,
                             u=udf_id, w=worker, pairs=pairs(written), now=now)
        done += await tx.run("DELETE FROM udf_items WHERE " + OWNED, u=udf_id, w=worker, pairs=pairs(written))
    if changed:
        await tx.run(f"UPDATE udf_items SET state = 'pending', ready_at = :now, {RELEASE}, updated_at = :now WHERE "
                     + OWNED, u=udf_id, w=worker, pairs=pairs(changed), now=now)
    if gone:
        await tx.run("DELETE FROM udf_items WHERE " + OWNED, u=udf_id, w=worker, pairs=pairs(gone))
    for ns, key, message in rejected:
        await tx.run(f"UPDATE udf_items SET state = 'failed', failed_reason = 'writeback_rejected', last_error = :e, "
                     f"{RELEASE}, updated_at = :now WHERE " + OWNED, u=udf_id, w=worker, pairs=pairs([(ns, key)]),
                     e=message[:2000], now=now)
    await rates.bump(tx, rates.UDF, udf_id, done, now)
    return done


async def fail(tx: Tx, udf_id: str, worker: str, failures: dict[tuple[str, str], tuple[str, str | None]],
               retry: RetrySpec, now: int) -> dict[str, int]:
    """Transient: retry after an exponential backoff until `max_attempts` claims, then failed (`max_attempts`).
    Permanent: failed, unless a write re-triggered the row meanwhile (then pending, attempts reset).
    Returns counts by outcome: retry, rerun, permanent, max_attempts."""
    rows = await tx.rows("SELECT namespace, doc_key, attempts, rerun FROM udf_items WHERE " + OWNED + " {for_update}",
                         u=udf_id, w=worker, pairs=pairs(list(failures)))
    outcomes = {"retry": 0, "rerun": 0, "permanent": 0, "max_attempts": 0}
    for r in rows:
        kind, message = failures[(r["namespace"], r["doc_key"])]
        attempts = int(r["attempts"])
        if r["rerun"]:
            outcome, state, ready, attempts = "rerun", "pending", now, 0
        elif kind == "permanent":
            outcome, state, ready = "permanent", "failed", now
        elif attempts >= retry.max_attempts:
            outcome, state, ready = "max_attempts", "failed", now
        else:
            outcome, state, ready = "retry", "pending", now + backoff_ms(attempts, retry)
        outcomes[outcome] += 1
        await tx.run(f"UPDATE udf_items SET state = :s, attempts = :a, rerun = 0, ready_at = :ready, failed_reason = :r,"
                     f" last_error = :e, {RELEASE}, updated_at = :now WHERE udf_id = :u AND namespace = :ns "
                     "AND doc_key = :k", u=udf_id, ns=r["namespace"], k=r["doc_key"], s=state, a=attempts,
                     ready=ready, r=outcome if state == "failed" else None, e=(message or "")[:2000] or None, now=now)
    return outcomes


async def reset_failed(tx: Tx, udf_id: str, now: int) -> int:
    return await tx.run("UPDATE udf_items SET state = 'pending', attempts = 0, ready_at = :now, failed_reason = NULL, "
                        "last_error = NULL, updated_at = :now WHERE udf_id = :u AND state = 'failed'", u=udf_id, now=now)


async def udf_status(tx: Tx, udf_id: str, now: int, window_s: int) -> dict[str, Any] | None:
    udf = await get_udf(tx, udf_id)
    if udf is None:
        return None
    counts = {"pending": 0, "processing": 0, "failed": 0}
    for r in await tx.rows(COUNTS, u=udf_id, now=now):
        counts[r["s"]] = int(r["n"])
    return {"udf": udf, "counts": counts, "rate": await rates.per_minute(tx, rates.UDF, udf_id, now, window_s)}


async def state_counts(tx: Tx) -> list[Any]:
    return list(await tx.rows("SELECT udf_id, state, COUNT(*) AS n FROM udf_items GROUP BY udf_id, state"))
