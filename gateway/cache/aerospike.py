"""The Aerospike document cache: the official client, one per worker process, every call in a bounded thread pool.

Layout: namespace AEROSPIKE_NAMESPACE, set AEROSPIKE_SET_PREFIX + Turbopuffer namespace (hashed past 63 bytes),
record key = document id, bins `attrs` (msgpack attribute map), `vec` (float32 LE vector bytes), `ok`, `e` (epoch),
`pw` (pending writes, msgpack), `uu` (unknown until, ms). Each Turbopuffer namespace's state (epoch, unknown
until) is one record in set `_hevlayer_spaces`, read in the same batch as the documents. No CDT ops, no
expressions, no truncate. Batch calls never raise on timeouts, so every record's result code is checked.

Coherence: every change is a gateway/cache/coherence.py function applied with check-and-set on the record's
generation (`POLICY_GEN_EQ`, or create-only when absent); a record that changed meanwhile is read again and the
function asked again. A record of the current epoch is never removed, so its generation never starts over; the
16-bit generation wraps after 65,536 writes, which a fill's token would have to span (it lives seconds).
"""

from __future__ import annotations

import asyncio
import builtins
import itertools
import random
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from functools import partial
from typing import Any

import aerospike
import msgspec
from aerospike import exception as aex
from aerospike_helpers.batch.records import BatchRecords, Remove, Write  # type: ignore[import-untyped]
from aerospike_helpers.operations import operations as op  # type: ignore[import-untyped]

from gateway.cache import coherence as co
from gateway.cache._runner import Runner, log
from gateway.cache.base import (
    JOBS_SET,
    CacheError,
    CacheStatus,
    WarmJob,
    decode_attrs,
    set_name,
    unpack_vector,
)
from gateway.cache.coherence import Change, Lookup, Record, Space, Token
from gateway.config import CacheSettings

OK, NOT_FOUND, GENERATION_ERROR, RECORD_EXISTS, RECORD_TOO_BIG, BATCH_FAILED = 0, 2, 3, 5, 13, -16
SPACES_SET = "_hevlayer_spaces"
RESULTS_SET = "_hevlayer_results"  # record key = Turbopuffer namespace, bin `g` = its write generation
CREATE = {"exists": aerospike.POLICY_EXISTS_CREATE}
REPLACE = {"exists": aerospike.POLICY_EXISTS_REPLACE, "gen": aerospike.POLICY_GEN_EQ}
READ_BINS = ["attrs", "ok", "e", "pw", "uu"]
VECTOR_BINS = ["vec", "ok", "e", "pw", "uu"]
# A change that keeps losing check-and-set rounds to other writers counts as a cache failure only after at least
# CONFLICT_TRIES rounds and the cache timeout (a fence that fails is a stale copy other workers may serve).
CONFLICT_TRIES = 8
CONFLICT_PAUSE_S = 0.002  # at most this long (random) after a lost round, so colliding writers fall out of step
SCAN_TIMEOUT_S = 30.0

_job_decode = msgspec.json.Decoder(WarmJob).decode
_job_encode = msgspec.json.encode


def cluster_config(settings: CacheSettings, **extra: Any) -> dict[str, Any]:
    """Client settings for the cluster of `settings` (shared by the cache and the watch records)."""
    cfg: dict[str, Any] = {"hosts": list(settings.hosts), "connect_timeout": max(settings.timeout_ms, 250),
                           "tend_interval": settings.tend_ms, **extra}
    if settings.cluster_name:
        cfg["cluster_name"] = settings.cluster_name
    return cfg


def connect(config: dict[str, Any]) -> Any:
    client = aerospike.client(config)
    if not client.is_connected():
        client.connect()
    return client


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
        self.runner.replay = self._replay
        self._client: Any = None
        self._lock = threading.Lock()
        self._sets: dict[str, str] = {}
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
        policies = {"read": self._read, "write": self._write, "batch": self._batch, "remove": self._write,
                    "operate": self._write, "info": {"timeout": max(self._s.timeout_ms, 250)}}
        return cluster_config(self._s, thread_pool_size=2, policies=policies)

    def _conn(self) -> Any:
        """The worker's client, created lazily in a pool thread (after fork); a failed connect is retried later."""
        client = self._client
        if client is not None:
            return client
        with self._lock:
            if self._client is None:
                self._client = connect(self._config())
            return self._client

    async def start(self) -> None:
        """Connect before serving (best effort: while Aerospike is down the breaker takes over)."""
        try:
            await self.runner.call("connect", "", self._conn)
        except CacheError as exc:
            log.warning("aerospike cache not reachable at startup: %s", exc)

    def _key(self, ns: str, doc_id: str) -> tuple[str, str, str]:
        return (self._ns, self.set_name(ns), doc_id)

    def _space_key(self, ns: str) -> tuple[str, str, str]:
        return (self._ns, SPACES_SET, ns)

    # -- reads ---------------------------------------------------------------------------------------------------

    async def lookup(self, ns: str, ids: Sequence[str], include: Sequence[str] | None = None) -> Lookup:
        return await self._lookup("get", ns, ids, READ_BINS, partial(_attrs_of, include))

    async def lookup_vectors(self, ns: str, ids: Sequence[str]) -> Lookup:
        return await self._lookup("get_vector", ns, ids, VECTOR_BINS, _vector_of)

    async def _lookup(self, op_name: str, ns: str, ids: Sequence[str], bins: list[str],
                      serve: Callable[[Record], Any]) -> Lookup:
        unique = [i for i in dict.fromkeys(ids) if not self.runner.suspect(ns, i)]
        if not unique:
            return Lookup({}, {})
        return await self.runner.call(op_name, self.set_name(ns), self._read_records, ns, unique, bins, serve)

    def _read_records(self, ns: str, ids: list[str], bins: list[str], serve: Callable[[Record], Any]) -> Lookup:
        """One batch round trip: the records and the namespace's state."""
        space, records = self._fetch(ns, ids, bins)
        hits: dict[str, Any] = {}
        tokens: dict[str, Token] = {}
        now = co.now_ms()
        for doc_id, (rec, gen) in zip(ids, records):
            value = serve(rec) if co.servable(rec, space) else None  # type: ignore[arg-type]
            if value is not None:
                hits[doc_id] = value
            else:
                tokens[doc_id] = co.token(rec, gen, space, now)
        return Lookup(hits, tokens)

    def _fetch(self, ns: str, ids: list[str], bins: list[str] | None) -> tuple[Space, list[tuple[Record | None, int]]]:
        keys = [self._key(ns, i) for i in ids] + [self._space_key(ns)]
        res = (self._conn().batch_read(keys, bins, policy=self._batch) if bins is not None
               else self._conn().batch_read(keys, policy=self._batch))
        _check_batch(res, "batch_read", len(keys))
        out = []
        for rec in res.batch_records:
            if rec.result == NOT_FOUND:
                out.append((None, 0))
            elif rec.result == OK:
                _, meta, found = rec.record
                out.append((_record(found or {}), meta["gen"]))
            else:
                raise CacheError(f"cache batch_read failed: record result {rec.result}",
                                 "timeout" if rec.result == 9 else "error")
        space_rec = res.batch_records[-1]
        space = _space(space_rec.record[2] if space_rec.result == OK and space_rec.record else None)
        return space, out[:-1]

    async def space(self, ns: str) -> Token:
        space, _ = await self.runner.call("get_space", SPACES_SET, self._fetch, ns, [], ["e", "uu"])
        return co.token(None, 0, space, co.now_ms())

    async def result_generation(self, ns: str) -> int:
        """The namespace's write generation for the query-result cache (0 before its first bump)."""
        gen: int = await self.runner.call("result_gen", RESULTS_SET, self._result_gen, ns)
        return gen

    def _result_gen(self, ns: str) -> int:
        try:
            _, _, bins = self._conn().get((self._ns, RESULTS_SET, ns), policy=self._read)
        except aex.RecordNotFound:
            return 0
        return int((bins or {}).get("g") or 0)

    async def bump_results(self, ns: str) -> None:
        """A write to `ns` happened (or may have): every cached query result of `ns` is stale, on every host."""
        await self.runner.call("result_bump", RESULTS_SET, self._bump_results, ns, fence=True)

    def _bump_results(self, ns: str) -> None:
        self._conn().operate((self._ns, RESULTS_SET, ns), [op.increment("g", 1)], policy=self._write)

    # -- changes -------------------------------------------------------------------------------------------------

    async def update(self, ns: str, changes: Mapping[str, Change], fence: bool = False) -> dict[str, Token]:
        if not changes:
            return {}
        written: dict[str, Token] = await self.runner.call("batch_put", self.set_name(ns), self._update, ns,
                                                           dict(changes), fence=fence)
        return written

    def _update(self, ns: str, changes: dict[str, Change]) -> dict[str, Token]:
        """Read, compute, write with generation checks; ids whose record changed meanwhile go round again."""
        client = self._conn()
        versions: dict[str, Token] = {}
        todo = list(changes)
        for _ in self._rounds():
            space, records = self._fetch(ns, todo, None)
            now = co.now_ms()
            rows: list[tuple[str, Record, int]] = []
            for doc_id, (rec, gen) in zip(todo, records):
                new = changes[doc_id](rec, gen, space, now)
                if new is not None:
                    rows.append((doc_id, new, gen))
            if not rows:
                return versions
            results = self._write_rows(client, [self._row(ns, doc_id, new, gen) for doc_id, new, gen in rows])
            todo = []
            for (doc_id, new, gen), (result, new_gen) in zip(rows, results):
                if result == OK:
                    versions[doc_id] = Token(new_gen, new.epoch, now, False)
                elif result == RECORD_TOO_BIG:  # keep the fences, drop the data
                    too_big = partial(_without_data, changes[doc_id])
                    changes[doc_id] = too_big
                    todo.append(doc_id)
                elif result in (GENERATION_ERROR, RECORD_EXISTS, NOT_FOUND):
                    todo.append(doc_id)
                else:
                    raise CacheError(f"cache batch_write failed: record result {result}")
            if not todo:
                return versions
        raise CacheError(f"cache write of {len(todo)} record(s) kept conflicting with other writers")

    def _rounds(self) -> Iterator[int]:
        """Check-and-set rounds: at least CONFLICT_TRIES, and more until the cache timeout has passed."""
        deadline = time.monotonic() + self._s.timeout_ms / 1000
        for n in itertools.count():
            if n:
                time.sleep(random.uniform(0, CONFLICT_PAUSE_S))
            yield n
            if n + 1 >= CONFLICT_TRIES and time.monotonic() >= deadline:
                return

    def _row(self, ns: str, doc_id: str, rec: Record, gen: int) -> Write:
        ops = [op.write("attrs", rec.attrs), op.write("vec", None if rec.vec is None else bytearray(rec.vec)),
               op.write("ok", int(rec.ok)), op.write("e", rec.epoch),
               op.write("pw", co.encode_pending(rec.pending)), op.write("uu", rec.unknown_until)]
        if gen == 0:
            return Write(self._key(ns, doc_id), ops, policy=CREATE)
        return Write(self._key(ns, doc_id), ops, meta={"gen": gen}, policy=REPLACE)

    def _write_rows(self, client: Any, rows: list[Write]) -> list[tuple[int, int]]:
        records = BatchRecords(rows)
        res = client.batch_write(records, policy_batch=self._batch) or records
        _check_batch(res, "batch_write", len(rows))
        return [(rec.result, rec.record[1]["gen"] if rec.result == OK and rec.record else 0)
                for rec in res.batch_records]

    async def reset(self, ns: str, unknown_until: int) -> None:
        await self.runner.call("reset", SPACES_SET, self._reset, ns, unknown_until, fence=True)

    def _reset(self, ns: str, unknown_until: int) -> None:
        client = self._conn()
        key = self._space_key(ns)
        for _ in self._rounds():
            try:
                _, meta, bins = client.get(key, policy=self._read)
            except aex.RecordNotFound:
                meta, bins = None, None
            new = co.reset(_space(bins), unknown_until)
            ops = [op.write("e", new.epoch), op.write("uu", new.unknown_until)]
            row = (Write(key, ops, policy=CREATE) if meta is None
                   else Write(key, ops, meta={"gen": meta["gen"]}, policy=REPLACE))
            result, _ = self._write_rows(client, [row])[0]
            if result == OK:
                return
            if result not in (GENERATION_ERROR, RECORD_EXISTS, NOT_FOUND):
                raise CacheError(f"cache namespace reset failed: record result {result}")
        raise CacheError("cache namespace reset kept conflicting with other writers")

    async def collect(self, ns: str) -> int:
        """Scan the set; remove old-epoch records without a fence, each only if unchanged since the scan."""
        removed: int = await self.runner.call("collect", self.set_name(ns), self._collect, ns, guard_s=SCAN_TIMEOUT_S)
        return removed

    def _collect(self, ns: str) -> int:
        client = self._conn()
        space, _ = self._fetch(ns, [], ["e", "uu"])
        query = client.query(self._ns, self.set_name(ns))
        query.select("e", "pw", "uu")
        now = co.now_ms()
        garbage = []
        for key, meta, bins in query.results({"total_timeout": int(SCAN_TIMEOUT_S * 1000)}):
            rec = _record(bins or {})
            if rec.epoch < space.epoch and rec.busy_until < now:
                garbage.append(Remove(key, policy={"gen": aerospike.POLICY_GEN_EQ, "generation": meta["gen"]}))
        removed = 0
        for i in range(0, len(garbage), 1000):
            res = client.batch_write(BatchRecords(garbage[i: i + 1000]), policy_batch=self._batch)
            removed += sum(1 for rec in res.batch_records if rec.result == OK)
        return removed

    def _remove(self, client: Any, keys: list[Any]) -> None:
        res = client.batch_remove(keys, policy_batch=self._batch)
        _check_batch(res, "batch_remove", len(keys))
        for rec in res.batch_records:
            if rec.result not in (OK, NOT_FOUND):
                raise CacheError(f"cache batch_remove failed: record result {rec.result}")

    async def _replay(self, ns: str, reset: int | None, ids: dict[str, int]) -> None:
        if reset is not None:
            await self.reset(ns, reset)
        await self.update(ns, {i: co.settle(until) for i, until in ids.items()}, fence=True)

    async def close(self) -> None:
        client, self._client = self._client, None
        await self.runner.close()
        if client is not None:
            try:  # closing joins the client's tend thread: not on the event loop
                await asyncio.get_running_loop().run_in_executor(None, client.close)
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


def _record(bins: dict[str, Any]) -> Record:
    pending = bins.get("pw")
    vec = bins.get("vec")
    return Record(bins.get("attrs"), None if vec is None else bytes(vec), bins.get("ok") == 1, bins.get("e") or 0,
                  co.decode_pending(bytes(pending)) if pending else {}, bins.get("uu") or 0)


def _space(bins: dict[str, Any] | None) -> Space:
    return Space(bins.get("e") or 0, bins.get("uu") or 0) if bins else Space()


def _without_data(change: Change, rec: Record | None, ver: int, space: Space, now: int) -> Record | None:
    new = change(rec, ver, space, now)
    return None if new is None else msgspec.structs.replace(new, attrs=None, vec=None, ok=False)


def _attrs_of(include: Sequence[str] | None, rec: Record) -> dict[str, Any] | None:
    return None if rec.attrs is None else decode_attrs(rec.attrs, include)


def _vector_of(rec: Record) -> list[float] | None:
    return unpack_vector(rec.vec) if rec.vec else None


def _check_batch(res: Any, what: str, expected: int) -> None:
    """A batch call reports transport failures in its result instead of raising (aerospike-wire.md §10.2); a
    node-less cluster even answers with no records at all, which must not read as "all missing"."""
    if res.result not in (OK, BATCH_FAILED):  # BATCH_FAILED: some records failed; their codes say which
        raise CacheError(f"cache {what} failed: batch result {res.result}",
                         "timeout" if res.result == 9 else "error")
    if len(res.batch_records) != expected:
        raise CacheError(f"cache {what} failed: {len(res.batch_records)} of {expected} records answered")
