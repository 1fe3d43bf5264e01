"""The Aerospike document cache: the official client, one per worker process, every call in a bounded thread pool.

Layout: namespace AEROSPIKE_NAMESPACE, set AEROSPIKE_SET_PREFIX + Turbopuffer namespace (hashed past 63 bytes),
record key = document id, bin `attrs` = msgpack attribute map, bin `vec` = float32 LE vector bytes. No CDT ops,
no expressions, no truncate. Batch calls never raise on timeouts, so every record's result code is checked.
"""

from __future__ import annotations

import builtins
import threading
import time
from collections.abc import Sequence
from typing import Any

import aerospike
import msgspec
from aerospike import exception as aex
from aerospike_helpers.batch.records import BatchRecords, Write  # type: ignore[import-untyped]
from aerospike_helpers.operations import operations as op  # type: ignore[import-untyped]

from gateway.cache._runner import Runner, log
from gateway.cache.base import (
    JOBS_SET,
    CacheDoc,
    CacheError,
    CacheStatus,
    PutMode,
    PutReport,
    WarmJob,
    decode_attrs,
    encode_attrs,
    record_size,
    set_name,
    unpack_vector,
)
from gateway.config import CacheSettings

OK, NOT_FOUND, GENERATION_ERROR, RECORD_EXISTS, RECORD_TOO_BIG, BATCH_FAILED = 0, 2, 3, 5, 13, -16
EXISTS = {"replace": aerospike.POLICY_EXISTS_CREATE_OR_REPLACE, "fill": aerospike.POLICY_EXISTS_CREATE,
          "update": aerospike.POLICY_EXISTS_UPDATE}
TOMBSTONE = {"exists": aerospike.POLICY_EXISTS_CREATE_OR_REPLACE}
REVIVE = {"exists": aerospike.POLICY_EXISTS_REPLACE, "gen": aerospike.POLICY_GEN_EQ}
# A per-mode result code that is an expected outcome, not a failure.
EXPECTED_SKIP = {"fill": RECORD_EXISTS, "update": NOT_FOUND}
SCAN_TIMEOUT_S = 30.0

_job_decode = msgspec.json.Decoder(WarmJob).decode
_job_encode = msgspec.json.encode


class AerospikeCache:
    backend = "aerospike"

    def __init__(self, settings: CacheSettings) -> None:
        self._s = self.settings = settings
        self._ns = settings.as_namespace
        t = settings.timeout_ms
        self._read = {"total_timeout": t, "socket_timeout": t, "max_retries": 1}
        self._write = {"total_timeout": t, "socket_timeout": t, "max_retries": 0}
        self._batch = {"total_timeout": t, "socket_timeout": t, "max_retries": 1}
        self.runner = Runner("aerospike", settings.pool_size, t / 1000, settings.breaker_open_ms / 1000)
        self.runner.on_recover = self._replay
        self._client: Any = None
        self._lock = threading.Lock()
        self._sets: dict[str, str] = {}
        self.oversized_total = 0
        self.jobs = AerospikeJobStore(self)

    # -- plumbing ------------------------------------------------------------------------------------------------

    def set_name(self, ns: str) -> str:
        name = self._sets.get(ns)
        if name is None:
            name = self._sets[ns] = set_name(self._s.set_prefix, ns)
        return name

    def status(self) -> CacheStatus:
        return self.runner.status()

    def _config(self) -> dict[str, Any]:
        t = self._s.timeout_ms
        cfg: dict[str, Any] = {
            "hosts": list(self._s.hosts),
            "connect_timeout": max(t, 250),
            "tend_interval": self._s.tend_ms,
            "thread_pool_size": 2,
            "policies": {"read": self._read, "write": self._write, "batch": self._batch,
                         "remove": self._write, "operate": self._write, "info": {"timeout": max(t, 250)}},
        }
        if self._s.cluster_name:
            cfg["cluster_name"] = self._s.cluster_name
        return cfg

    def _conn(self) -> Any:
        """The worker's client, created lazily in a pool thread (after fork); a failed connect is retried later."""
        client = self._client
        if client is not None:
            return client
        with self._lock:
            if self._client is None:
                client = aerospike.client(self._config())
                if not client.is_connected():
                    client.connect()
                self._client = client
            return self._client

    async def start(self) -> None:
        """Connect before serving (best effort: while Aerospike is down the breaker takes over)."""
        try:
            await self.runner.call("connect", "", self._conn)
        except CacheError as exc:
            log.warning("aerospike cache not reachable at startup: %s", exc)

    def _key(self, ns: str, doc_id: str) -> tuple[str, str, str]:
        return (self._ns, self.set_name(ns), doc_id)

    # -- reads ---------------------------------------------------------------------------------------------------

    async def get(self, ns: str, doc_id: str, include: Sequence[str] | None = None) -> dict[str, Any] | None:
        if self.runner.suspect(ns, doc_id):
            return None
        return await self.runner.call("get", self.set_name(ns), self._get, self._key(ns, doc_id), include)

    def _get(self, key: tuple[str, str, str], include: Sequence[str] | None) -> dict[str, Any] | None:
        try:
            _, _, bins = self._conn().select(key, ["attrs"], policy=self._read)
        except (aex.RecordNotFound, aex.BinNotFound):  # type: ignore[attr-defined]
            return None
        blob = bins.get("attrs") if bins else None
        return None if blob is None else decode_attrs(blob, include)

    async def get_many(
        self, ns: str, ids: Sequence[str], include: Sequence[str] | None = None
    ) -> dict[str, dict[str, Any]]:
        unique = [i for i in dict.fromkeys(ids) if not self.runner.suspect(ns, i)]
        if not unique:
            return {}
        return await self.runner.call("batch_get", self.set_name(ns), self._get_many, ns, unique, include)

    def _get_many(self, ns: str, ids: list[str], include: Sequence[str] | None) -> dict[str, dict[str, Any]]:
        keys = [self._key(ns, i) for i in ids]
        res = self._conn().batch_read(keys, ["attrs"], policy=self._batch)
        _check_batch(res, "batch_read", len(keys))
        out: dict[str, dict[str, Any]] = {}
        for doc_id, rec in zip(ids, res.batch_records):
            if rec.result == NOT_FOUND:
                continue
            if rec.result != OK:
                raise CacheError(f"cache batch_read failed: record result {rec.result}")
            bins = rec.record[2] if rec.record else None
            blob = bins.get("attrs") if bins else None
            if blob is not None:
                out[doc_id] = decode_attrs(blob, include)
        return out

    async def get_vector(self, ns: str, doc_id: str) -> list[float] | None:
        if self.runner.suspect(ns, doc_id):
            return None
        return await self.runner.call("get_vector", self.set_name(ns), self._get_vector, self._key(ns, doc_id))

    def _get_vector(self, key: tuple[str, str, str]) -> list[float] | None:
        try:
            _, _, bins = self._conn().select(key, ["vec", "del"], policy=self._read)
        except (aex.RecordNotFound, aex.BinNotFound):  # type: ignore[attr-defined]
            return None
        blob = bins.get("vec") if bins and "del" not in bins else None
        return unpack_vector(blob) if blob else None

    # -- writes --------------------------------------------------------------------------------------------------

    async def put_many(self, ns: str, docs: Sequence[CacheDoc], mode: PutMode = "replace") -> PutReport:
        if not docs:
            return PutReport()
        report = await self.runner.call("batch_put", self.set_name(ns), self._put_many, ns, docs, mode)
        self.oversized_total += len(report.oversized)
        return report

    def _put_many(self, ns: str, docs: Sequence[CacheDoc], mode: PutMode) -> PutReport:
        report = PutReport()
        rows: list[Write] = []
        ids: list[str] = []
        policy = {"exists": EXISTS[mode]}
        for doc in docs:
            blob = None if doc.attrs is None else encode_attrs(doc.attrs)
            if record_size(doc.id, blob, doc.vector) > self._s.max_record_bytes:
                report.oversized.append(doc.id)
                continue
            ops = [] if blob is None else [op.write("attrs", blob)]
            if doc.vector is not None:
                ops.append(op.write("vec", bytearray(doc.vector)))
            if not ops:
                continue
            rows.append(Write(self._key(ns, doc.id), ops, policy=policy))
            ids.append(doc.id)
        client = self._conn()
        if rows:
            skip = EXPECTED_SKIP.get(mode)
            existing = []
            for row, doc_id, result in zip(rows, ids, self._write_rows(client, rows)):
                if result == OK:
                    report.stored += 1
                elif result == skip:
                    report.skipped += 1
                    if mode == "fill":
                        existing.append(row)
                elif result == RECORD_TOO_BIG:
                    report.oversized.append(doc_id)
                else:
                    raise CacheError(f"cache batch_write failed: record result {result}")
            if existing:
                revived = self._revive(client, existing)
                report.stored += revived
                report.skipped -= revived
        if report.oversized and mode != "fill":
            # The new version is not cacheable, so the old one must not be served either.
            self._remove(client, [self._key(ns, i) for i in report.oversized])
        return report

    def _write_rows(self, client: Any, rows: list[Write]) -> list[int]:
        records = BatchRecords(rows)
        res = client.batch_write(records, policy_batch=self._batch) or records
        _check_batch(res, "batch_write", len(rows))
        return [rec.result for rec in res.batch_records]

    def _revive(self, client: Any, rows: list[Write]) -> int:
        """Fill over tombstones older than tombstone_ms (read generation, then replace only if it is unchanged)."""
        res = client.batch_read([row.key for row in rows], ["del"], policy=self._batch)
        _check_batch(res, "batch_read", len(rows))
        cutoff = int(time.time() * 1000) - self._s.tombstone_ms
        again = []
        for row, rec in zip(rows, res.batch_records):
            bins = rec.record[2] if rec.result == OK and rec.record else None
            if bins and isinstance(bins.get("del"), int) and bins["del"] < cutoff:
                again.append(Write(row.key, row.ops, meta={"gen": rec.record[1]["gen"]}, policy=REVIVE))
        if not again:
            return 0
        results = self._write_rows(client, again)
        bad = [r for r in results if r not in (OK, NOT_FOUND, GENERATION_ERROR)]
        if bad:
            raise CacheError(f"cache batch_write failed: record result {bad[0]}")
        return results.count(OK)

    async def delete_many(self, ns: str, ids: Sequence[str]) -> None:
        unique = list(dict.fromkeys(ids))
        if not unique:
            return
        try:
            await self.runner.call("batch_delete", self.set_name(ns), self._delete_many, ns, unique)
        except CacheError:
            self.runner.remember_invalidation(ns, unique)
            raise

    def _delete_many(self, ns: str, ids: list[str]) -> None:
        """Replace each record by a tombstone (`del` = now): reads see nothing, young tombstones refuse fills."""
        now = int(time.time() * 1000)
        rows = [Write(self._key(ns, i), [op.write("del", now)], policy=TOMBSTONE) for i in ids]
        bad = [r for r in self._write_rows(self._conn(), rows) if r != OK]
        if bad:
            raise CacheError(f"cache batch_write (tombstones) failed: record result {bad[0]}")

    def _remove(self, client: Any, keys: list[Any]) -> None:
        res = client.batch_remove(keys, policy_batch=self._batch)
        _check_batch(res, "batch_remove", len(keys))
        for rec in res.batch_records:
            if rec.result not in (OK, NOT_FOUND):
                raise CacheError(f"cache batch_remove failed: record result {rec.result}")

    async def _replay(self, pending: dict[str, set[str]]) -> None:
        for ns, ids in pending.items():
            await self.delete_many(ns, list(ids))

    async def drop_namespace(self, ns: str) -> None:
        """Remove every cached document of ns by scanning its set (no truncate: it stalls the whole process)."""
        await self.runner.call("drop_set", self.set_name(ns), self._drop_set, self.set_name(ns),
                               guard_s=SCAN_TIMEOUT_S)
        await self.jobs.delete_namespace(ns)

    def _drop_set(self, set_: str) -> None:
        client = self._conn()
        query = client.query(self._ns, set_)
        query.select()  # digests only
        keys = [rec[0] for rec in query.results({"total_timeout": int(SCAN_TIMEOUT_S * 1000)})]
        for i in range(0, len(keys), 1000):
            self._remove(client, keys[i: i + 1000])

    async def close(self) -> None:
        client, self._client = self._client, None
        self.runner.close()
        if client is not None:
            try:
                client.close()
            except Exception as exc:  # noqa: BLE001 - closing a broken client must not fail shutdown
                log.debug("aerospike close failed: %s", exc)


class AerospikeJobStore:
    """Warm jobs as records in set `_hevlayer_jobs` (bins: ns, job JSON); listing scans that small set."""

    def __init__(self, cache: AerospikeCache) -> None:
        self._c = cache

    async def put(self, job: WarmJob) -> None:
        await self._c.runner.call("job_put", JOBS_SET, self._put, job)

    def _put(self, job: WarmJob) -> None:
        key = (self._c._ns, JOBS_SET, job.id)
        self._c._conn().put(key, {"ns": job.namespace, "job": _job_encode(job)}, policy=self._c._write)

    async def get(self, job_id: str) -> WarmJob | None:
        return await self._c.runner.call("job_get", JOBS_SET, self._get, job_id)

    def _get(self, job_id: str) -> WarmJob | None:
        try:
            _, _, bins = self._c._conn().get((self._c._ns, JOBS_SET, job_id), policy=self._c._read)
        except aex.RecordNotFound:
            return None
        return _job_decode(bins["job"]) if bins and "job" in bins else None

    async def list(self, ns: str | None) -> list[WarmJob]:
        return await self._c.runner.call("job_list", JOBS_SET, self._list, ns)

    def _list(self, ns: str | None) -> builtins.list[WarmJob]:
        jobs = [_job_decode(bins["job"]) for _, _, bins in self._scan()
                if bins and "job" in bins and (ns is None or bins.get("ns") == ns)]
        return sorted(jobs, key=lambda j: (j.created_at, j.id))

    def _scan(self) -> builtins.list[Any]:
        query = self._c._conn().query(self._c._ns, JOBS_SET)
        return list(query.results({"total_timeout": max(self._c._s.timeout_ms * 5, 1000)}))

    async def delete_namespace(self, ns: str) -> None:
        await self._c.runner.call("job_delete", JOBS_SET, self._delete_ns, ns)

    def _delete_ns(self, ns: str) -> None:
        keys = [key for key, _, bins in self._scan() if bins and bins.get("ns") == ns]
        if keys:
            self._c._remove(self._c._conn(), keys)


def _check_batch(res: Any, what: str, expected: int) -> None:
    """A batch call reports transport failures in its result instead of raising (aerospike-wire.md §10.2); a
    node-less cluster even answers with no records at all, which must not read as "all missing"."""
    if res.result not in (OK, BATCH_FAILED):  # BATCH_FAILED: some records failed; their codes say which
        raise CacheError(f"cache {what} failed: batch result {res.result}",
                         "timeout" if res.result == 9 else "error")
    if len(res.batch_records) != expected:
        raise CacheError(f"cache {what} failed: {len(res.batch_records)} of {expected} records answered")
