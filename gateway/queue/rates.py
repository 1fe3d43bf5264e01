"""Completion rates: per owner (pipeline or UDF), counts in 10-second buckets; the lease sweep purges old buckets."""

from __future__ import annotations

from gateway.queue.db import Tx

BUCKET_MS = 10_000
KEEP_MS = 3_600_000
PIPELINE, UDF = "pipeline", "udf"

BUMP = ("INSERT INTO queue_rates (kind, owner_id, bucket, n) VALUES (:kind, :owner, :bucket, :n) "
        "ON CONFLICT (kind, owner_id, bucket) DO UPDATE SET n = queue_rates.n + excluded.n")
SINCE = ("SELECT COALESCE(SUM(n), 0) AS n FROM queue_rates "
         "WHERE kind = :kind AND owner_id = :owner AND bucket >= :bucket")


async def bump(tx: Tx, kind: str, owner: str, n: int, now: int) -> None:
    """Count `n` completions now (call last in a transaction: the bucket row is the hottest row)."""
    if n > 0:
        await tx.run(BUMP, kind=kind, owner=owner, bucket=now // BUCKET_MS, n=n)


async def per_minute(tx: Tx, kind: str, owner: str, now: int, window_s: int) -> float:
    """Completions in the last `window_s` seconds (whole buckets), per minute."""
    row = await tx.row(SINCE, kind=kind, owner=owner, bucket=(now - window_s * 1000) // BUCKET_MS + 1)
    return round(int(row["n"]) / (window_s / 60), 3) if row is not None else 0.0


async def forget(tx: Tx, kind: str, owner: str) -> None:
    await tx.run("DELETE FROM queue_rates WHERE kind = :kind AND owner_id = :owner", kind=kind, owner=owner)


async def purge(tx: Tx, now: int) -> int:
    return await tx.run("DELETE FROM queue_rates WHERE bucket < :bucket", bucket=(now - KEEP_MS) // BUCKET_MS)
