"""The embedded document cache: one SQLite file (WAL) under LAYER_DATA_DIR shared by every worker on the host.

Why SQLite and not LMDB (micro-benchmark on this 2-vCPU box, 20k docs of ~3.3 KB): point read 17 µs vs 1.5 µs,
100-id batch read 1.5 ms vs 0.12 ms, batched writes 27 vs 16 µs/doc. LMDB reads are faster, but 17 µs is noise next
to a proxied request, and SQLite gives size accounting, eviction and the job table in SQL, multi-process safety and
no new C dependency.

Threads: point reads run inline on the event loop (a WAL read never waits for writers and costs less than one
executor hop; its busy timeout is tiny so a lock can never stall the loop). Small writes (a few ids: a 1-row write's
fences) are tried inline too, without waiting for the write lock: an executor hop costs more CPU than their
transaction, and the ones made in one loop iteration (concurrent requests) share one transaction and one commit, the
larger part of their cost. When the lock is taken, a pool write is running or queued, or the write would need
eviction, they go to the pool like every other write. Writes, and reads of many ids, run in the worker's small thread
pool with per-thread connections, where waiting on another process's write lock is harmless and bounded by the cache
timeout. Writes that arrive while a write transaction runs are committed together in the next one (group commit): a
busy worker pays one executor hop and one commit for many concurrent writes. The inline connection never checkpoints
the WAL (an fsync on the loop): every CHECKPOINT_EVERY commits (inline or pool ones), a thread of its own does,
outside the breaker and the deadline (gateway/sqlite_wal.py: past its bound the WAL is copied whole and truncated).

Coherence: every change is a gateway/cache/coherence.py function applied inside one write transaction (read the
record and the namespace's epoch, compute, write). Versions come from one counter in the file, so a record removed
and created again never repeats a version a token saw.

Bounded size: a byte total in `meta`, moved by every statement that changes a record's size (a write transaction
adds its one delta; per-row triggers cost a third of a 100-row write's SQLite time); past LAYER_CACHE_MAX_BYTES the oldest-written records are removed
down to 90 % (FIFO by write time: an LRU would turn every read into a write and serialize all workers), except
records written within the fill window or holding a fence: those only lose their data (coherence.py explains why).

The schema is created once, by `prepare()` in the serve process before the workers start (two workers switching a
new file to WAL at the same moment would fail with "database is locked"). A file of an older schema is recreated:
the cache is soft, its contents can always be dropped.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import msgspec

from gateway.cache import coherence as co
from gateway.cache._runner import Runner
from gateway.cache.base import CacheError, CacheStatus, WarmJob, decode_attrs, record_size, unpack_vector
from gateway.cache.coherence import Change, Lookup, Record, Space, Token
from gateway.config import CacheSettings
from gateway.per_tick import Batch, PerTick
from gateway.sqlite_wal import Checkpoints, checkpoint
from gateway.tasks import Tasks

log = logging.getLogger("gateway.cache")
FILE_NAME = "cache.sqlite3"
SCHEMA_VERSION = 4
SCHEMA_WAIT_S = 10.0
JOBS_KEPT = 100
INLINE_MAX_IDS = 32
INLINE_BUSY_MS = 5
BUSY_CODES = (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)
EVICT_TO = 0.9
CHUNK = 500
SCHEMA = f"""
drop table if exists docs;
drop table if exists spaces;
drop table if exists meta;
drop table if exists jobs;
drop table if exists result_gens;
create table docs(
  ns text not null, id text not null, attrs blob, vec blob, ok integer not null, epoch integer not null,
  pending blob, unknown_until integer not null, busy_until integer not null, ver integer not null,
  size integer not null, seq integer not null, primary key (ns, id)) without rowid;
create index docs_seq on docs(seq);
create table spaces(ns text primary key, epoch integer not null, unknown_until integer not null) without rowid;
create table meta(k text primary key, v integer not null);
insert into meta values ('bytes', 0), ('ver', 0);
create table jobs(id text primary key, ns text not null, created_at text not null, body blob not null);
create index jobs_ns on jobs(ns, created_at);
create table result_gens(ns text primary key, gen integer not null) without rowid;
pragma user_version = {SCHEMA_VERSION};
"""
COLUMNS = "attrs, vec, ok, epoch, pending, unknown_until, ver, size"
# The hot path: one statement deciding in SQL whether the record is served (current and of the namespace's
# epoch), with what a miss's token needs; a row even when the record is absent. {0} = attrs or vec.
_LOOKUP_ONE = ("select d.{0}, d.ok and d.epoch = ifnull(s.epoch, 0), d.epoch, d.pending, d.unknown_until, d.ver, "
               "ifnull(s.epoch, 0), ifnull(s.unknown_until, 0) from (select ?1 as ns, ?2 as id) q "
               "left join docs d on d.ns = q.ns and d.id = q.id left join spaces s on s.ns = q.ns")
# Many ids: served blobs first (few columns: the hit path), then what the tokens of the rest need.
_SERVED = "select id, {0} from docs where ok and epoch = ? and ns = ? and id in "
_MISSED = "select id, {0}, ok and epoch = ?, epoch, pending, unknown_until, ver from docs where ns = ? and id in "
LOOKUP_ONE = {column: _LOOKUP_ONE.format(column) for column in ("attrs", "vec")}
SERVED = {column: _SERVED.format(column) for column in ("attrs", "vec")}
MISSED = {column: _MISSED.format(column) for column in ("attrs", "vec")}
# The whole row, new or not (REPLACE: ~10% cheaper than an upsert's update; there are no triggers to fire).
WRITE_ROW = "insert or replace into docs values (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
ADD_BYTES = "update meta set v = v + ? where k = 'bytes'"

_job_decode = msgspec.json.Decoder(WarmJob).decode
_job_encode = msgspec.json.encode


def cache_path(data_dir: str) -> str:
    return str(Path(data_dir) / FILE_NAME)


def prepare(data_dir: str) -> None:
    """Create (or recreate, when its schema is older) the cache file. Called by the serve process before the
    workers start; workers only check it. Raises sqlite3.Error."""
    path = cache_path(data_dir)
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    conn = sqlite3.connect(path, timeout=SCHEMA_WAIT_S, isolation_level=None)
    try:
        if conn.execute("pragma user_version").fetchone()[0] != SCHEMA_VERSION:
            conn.execute("pragma journal_mode=wal")
            conn.executescript(f"begin immediate; {SCHEMA} commit;")
    finally:
        conn.close()


class LocalCache:
    backend = "local"

    def __init__(self, settings: CacheSettings, threads: int = 2) -> None:
        self._s = self.settings = settings
        self.path = cache_path(settings.data_dir)
        self.runner = Runner("local", threads, settings.timeout_ms / 1000, settings.breaker_open_ms / 1000)
        self.runner.replay = self._replay
        self._tls = threading.local()
        self._loop_conn: sqlite3.Connection | None = None
        self._loop_wconn: sqlite3.Connection | None = None
        self._pid = 0
        self._ready = False
        self.evicted_total = 0
        self.jobs = LocalJobStore(self)
        self._queued: list[tuple[Callable[[Tx], Any], asyncio.Future[Any], bool]] = []
        self._committing = False
        self._this_tick: PerTick[Callable[[Tx], Any]] = PerTick(self._commit_this_tick)
        self._tasks = Tasks()  # the background commit of writes queued meanwhile, checkpoints
        self._checkpoints = Checkpoints(self._tasks, "cache checkpoint", lambda: checkpoint(self._thread_conn(), self.path))

    def set_name(self, ns: str) -> str:
        return ns  # one table keyed (ns, id); the "set" only labels metrics

    def status(self) -> CacheStatus:
        return self.runner.status()

    # -- connections ---------------------------------------------------------------------------------------------

    def _open(self, busy_ms: int) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, timeout=busy_ms / 1000, isolation_level=None, check_same_thread=False)
        conn.execute(f"pragma busy_timeout={busy_ms}")
        conn.execute("pragma synchronous=normal")
        return conn

    def _thread_conn(self) -> sqlite3.Connection:
        """The pool thread's connection (opened on first use, after fork); it also makes sure the schema exists."""
        conn: sqlite3.Connection | None = getattr(self._tls, "conn", None)
        if conn is None:
            if not self._ready:
                prepare(self._s.data_dir)
                self._ready = True
            conn = self._tls.conn = self._open(max(self._s.timeout_ms, 50))
        return conn

    async def start(self) -> None:
        """Check (or create, when no serve process did) the file and schema before serving."""
        try:
            await asyncio.get_running_loop().run_in_executor(None, prepare, self._s.data_dir)
            self._ready = True
        except sqlite3.Error as exc:
            log.warning("local cache: schema setup failed (will retry on use): %s", exc)

    def _inline_conn(self) -> sqlite3.Connection | None:
        """The event-loop thread's read connection, or None until a pool call has created the schema."""
        if self._pid != os.getpid():
            self._loop_conn, self._loop_wconn, self._pid = None, None, os.getpid()
        if not self.runner.connected:
            return None
        if self._loop_conn is None:
            try:
                self._loop_conn = self._open(INLINE_BUSY_MS)
            except sqlite3.Error:
                return None  # the pool path will report it
        return self._loop_conn

    def _inline_write_conn(self) -> sqlite3.Connection | None:
        """The event-loop thread's write connection: it never waits for a lock and never checkpoints."""
        if self._inline_conn() is None:
            return None
        if self._loop_wconn is None:
            try:
                self._loop_wconn = conn = self._open(0)
                conn.execute("pragma wal_autocheckpoint=0")
            except sqlite3.Error:
                return None
        return self._loop_wconn

    async def _read(self, op: str, ns: str, fn: Any, *args: Any) -> Any:
        """A short read: inline on the loop thread while the cache is healthy, else through the pool (probe).
        A WAL read is rarely busy (another process checkpointing or recovering the WAL); then it waits in the pool,
        within the cache timeout, rather than stall the loop or count as an outage."""
        conn = self._inline_conn()
        if conn is not None:
            try:
                return fn(conn, *args)
            except sqlite3.OperationalError as exc:
                if getattr(exc, "sqlite_errorcode", None) not in BUSY_CODES:
                    self.runner._failed(op, ns, exc, 0.0)
                    raise CacheError(f"cache {op} failed: {exc}") from exc
            except sqlite3.Error as exc:
                self.runner._failed(op, ns, exc, 0.0)
                raise CacheError(f"cache {op} failed: {exc}") from exc
        return await self.runner.call(op, ns, lambda: fn(self._thread_conn(), *args))

    # -- reads ---------------------------------------------------------------------------------------------------

    async def lookup(self, ns: str, ids: Sequence[str], include: Sequence[str] | None = None) -> Lookup:
        found = await self._lookup("get", ns, ids, "attrs")
        if found.hits:
            found.hits = {i: _decode(blob, include) for i, blob in found.hits.items()}
        return found

    async def lookup_vectors(self, ns: str, ids: Sequence[str]) -> Lookup:
        found = await self._lookup("get_vector", ns, ids, "vec")
        found.hits = {i: unpack_vector(blob) for i, blob in found.hits.items()}
        return found

    async def _lookup(self, op: str, ns: str, ids: Sequence[str], column: str) -> Lookup:
        """Served blobs of `column` by id; a token for every other id (a served record without a vector too)."""
        unique = [i for i in dict.fromkeys(ids) if not self.runner.suspect(ns, i)]
        if not unique:
            return Lookup({}, {})
        if len(unique) <= INLINE_MAX_IDS:
            found: Lookup = await self._read(op, ns, _lookup, ns, unique, column)
        else:
            found = await self.runner.call(op, ns, lambda: _lookup(self._thread_conn(), ns, unique, column))
        return found

    async def space(self, ns: str) -> Token:
        space = await self._read("get_space", ns, _select_space, ns)
        return co.token(None, 0, space, co.now_ms())

    async def result_generation(self, ns: str) -> int:
        """The namespace's write generation for the query-result cache (0 before its first bump)."""
        gen: int = await self._read("result_gen", ns, _select_result_gen, ns)
        return gen

    async def bump_results(self, ns: str) -> None:
        """A write to `ns` happened (or may have): every cached query result of `ns` is stale, on every worker."""
        await self._write(partial(_bump_result_gen, ns), fence=True, inline=True)

    # -- changes -------------------------------------------------------------------------------------------------

    async def update(self, ns: str, changes: Mapping[str, Change], fence: bool = False) -> dict[str, Token]:
        if not changes:
            return {}
        written: dict[str, Token] = await self._write(partial(self._update_tx, ns, changes), fence,
                                                      inline=len(changes) <= INLINE_MAX_IDS)
        return written

    def _update_tx(self, ns: str, changes: Mapping[str, Change], conn: Tx) -> dict[str, Token]:
        now, seq = co.now_ms(), time.time_ns()
        codec = _PendingCodec()
        space, rows = _select(conn, ns, list(changes), codec)
        ver = conn.ver()
        grown = 0
        written: dict[str, Token] = {}
        out = []
        for doc_id, change in changes.items():
            rec, old, old_size = rows.get(doc_id, NO_ROW)
            new = change(rec, old, space, now)
            if new is not None:
                pending, busy = codec.encode(new.pending)
                size = record_size(doc_id, new.attrs, new.vec) + (len(pending) if pending else 0)
                grown += size - old_size
                ver += 1
                written[doc_id] = Token(ver, new.epoch, now, False)
                out.append((ns, doc_id, new.attrs, new.vec, new.ok, new.epoch, pending, new.unknown_until,
                            max(busy, new.unknown_until), ver, size, seq))
        if not out:
            return {}
        conn.moved(ver, grown)
        conn.executemany(WRITE_ROW, out)
        return written

    async def reset(self, ns: str, unknown_until: int) -> None:
        def tx(conn: Tx) -> None:
            new = co.reset(_select_space(conn, ns), unknown_until)
            conn.execute("insert into spaces values (?, ?, ?) on conflict (ns) do update set epoch = excluded.epoch, "
                         "unknown_until = excluded.unknown_until", (ns, new.epoch, new.unknown_until))

        await self._write(tx, fence=True)

    async def collect(self, ns: str) -> int:
        """Old-epoch records without a fence, a chunk per transaction so other writes keep going."""
        removed = 0
        while True:
            n = await self._write(partial(_collect_chunk, ns))
            removed += n
            if n < CHUNK:
                return removed

    async def _write(self, fn: Callable[[Tx], Any], fence: bool = False,
                     inline: bool = False) -> Any:
        """Run fn(conn) in a write transaction, together with the other writes queued meanwhile (group commit).
        With no commit running, this write commits at once itself; writes that arrive during a commit are
        committed together by a background task. A failed transaction fails every write in it, each with the
        CacheError its own call would have raised. A batch holding a fence is tried even while the breaker is open.
        `inline`: first try it on the loop thread (see the module docstring)."""
        if inline and not self._committing and not self._queued:
            done, result = await self._this_tick.add(fn)
            if done:
                return result
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._queued.append((fn, future, fence))
        if self._committing:
            return await future
        self._committing = True
        try:
            await self._commit_batch()
        finally:
            if self._queued:
                self._tasks.spawn("cache group commit", self._commit_rest())
            else:
                self._committing = False
        return future.result()

    async def _commit_rest(self) -> None:
        try:
            while self._queued:
                await self._commit_batch()
        finally:
            self._committing = False

    async def _commit_batch(self) -> None:
        batch, self._queued = self._queued, []
        fence = any(f for _, _, f in batch)
        try:
            results = await self.runner.call("write_batch", "*", self._write_tx, [fn for fn, _, _ in batch],
                                             fence=fence)
        except BaseException as exc:  # handed to every write of the batch; a cancellation is re-raised
            error = exc if isinstance(exc, Exception) else CacheError("cache write cancelled")
            for _, future, _ in batch:
                if not future.done():
                    future.set_exception(error)
            if error is not exc:
                raise
            return
        self._checkpoints.committed()
        for (_, future, _), result in zip(batch, results):
            if not future.done():
                future.set_result(result)

    def _commit_this_tick(self, batch: Batch[Callable[[Tx], Any]]) -> None:
        """The small writes of one loop iteration: each future gets (True, its result) once committed together on
        the loop thread, or (False, None): the pool must do it (see _write_inline)."""
        outcome: tuple[bool, Any] = (False, None)
        if not self._committing and not self._queued:  # else the pool has earlier writes: these go after them
            try:
                outcome = self._write_inline(lambda conn: [fn(conn) for fn, _ in batch])
            except Exception as exc:  # noqa: BLE001 - a CacheError (or a bug) for every write of the batch
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                return
        done, results = outcome
        for i, (fn, future) in enumerate(batch):
            if not future.done():
                future.set_result((True, results[i]) if done else outcome)
            elif not done:  # its caller was cancelled meanwhile: the pool still makes it, as it would have
                self._queued.append((fn, future.get_loop().create_future(), True))
        if self._queued and not self._committing:
            self._committing = True
            self._tasks.spawn("cache group commit", self._commit_rest())

    def _write_inline(self, fn: Callable[[Tx], Any]) -> tuple[bool, Any]:
        """(True, fn's result) when committed on the loop thread; (False, None) when the pool must do it: the write
        lock is taken (never waited for here) or the file is past its size bound (eviction runs in the pool)."""
        conn = self._inline_write_conn()
        if conn is None:
            return False, None
        try:
            conn.execute("begin immediate")
        except sqlite3.OperationalError as exc:
            if getattr(exc, "sqlite_errorcode", None) in BUSY_CODES:
                return False, None
            self.runner._failed("write_inline", "*", exc, 0.0)
            raise CacheError(f"cache write failed: {exc}") from exc
        try:
            tx = Tx(conn)
            result = fn(tx)
            if tx.finish() > self._s.max_bytes:
                conn.execute("rollback")
                return False, None
            conn.execute("commit")
        except BaseException as exc:
            if conn.in_transaction:
                conn.execute("rollback")
            if not isinstance(exc, Exception):
                raise
            if getattr(exc, "sqlite_errorcode", None) in BUSY_CODES:
                return False, None
            self.runner._failed("write_inline", "*", exc, 0.0)
            raise CacheError(f"cache write failed: {exc}") from exc
        self._checkpoints.committed()
        return True, result

    def _write_tx(self, fns: list[Callable[[Tx], Any]]) -> list[Any]:
        conn = self._thread_conn()
        conn.execute("begin immediate")
        try:
            tx = Tx(conn)
            results = [fn(tx) for fn in fns]
            self.evicted_total += _evict(conn, tx.finish(), self._s.max_bytes, self._s.fill_window_ms)
            conn.execute("commit")
        except BaseException:
            conn.execute("rollback")
            raise
        return results

    async def _replay(self, ns: str, reset: int | None, ids: dict[str, int]) -> None:
        if reset is not None:
            await self.reset(ns, reset)
        await self.update(ns, {i: co.settle(until) for i, until in ids.items()}, fence=True)

    async def close(self) -> None:
        await self._tasks.stop(grace_s=self.runner.timeout_s * 2)  # let queued writes commit first
        self._checkpoints.close()
        await self.runner.close()
        for conn in (self._loop_conn, self._loop_wconn):
            if conn is not None:
                conn.close()
        self._loop_conn = self._loop_wconn = None

    def stored_bytes(self) -> int:
        return int(self._thread_conn().execute("select v from meta where k = 'bytes'").fetchone()[0])


class LocalJobStore:
    def __init__(self, cache: LocalCache) -> None:
        self._c = cache

    async def put(self, job: WarmJob) -> None:
        await self._c._write(partial(_put_job, job))

    async def get(self, job_id: str) -> WarmJob | None:
        body = await self._c._read("job_get", "jobs", _select_job, job_id)
        return None if body is None else _job_decode(body)

    async def list(self, ns: str | None) -> list[WarmJob]:
        # decoding many job bodies is work: done in the pool, not on the loop
        return await self._c.runner.call("job_list", "jobs", self._list, ns)

    def _list(self, ns: str | None) -> list[WarmJob]:
        return [_job_decode(body) for (body,) in _select_jobs(self._c._thread_conn(), ns)]

    async def delete_namespace(self, ns: str) -> None:
        await self._c._write(partial(_delete_jobs, ns))


class Tx:
    """A write transaction's connection, as the write functions get it. The `meta` counters its record changes move
    (the version counter, the byte total) are kept here and written once, by `finish`, however many changes the
    transaction holds (a loop iteration's writes, a group commit)."""

    __slots__ = ("_conn", "_grown", "_ver", "_ver_read", "execute", "executemany")

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn, self.execute, self.executemany = conn, conn.execute, conn.executemany
        self._ver = 0
        self._ver_read: int | None = None  # the counter when this transaction first read it
        self._grown = 0

    def ver(self) -> int:
        """The version counter as this transaction left it so far (the transaction holds the write lock)."""
        if self._ver_read is None:
            self._ver = self._ver_read = int(self._conn.execute("select v from meta where k = 'ver'").fetchone()[0])
        return self._ver

    def moved(self, ver: int, grown: int) -> None:
        """Changes were written: the version counter is at `ver` now and the records grew by `grown` bytes."""
        self._ver, self._grown = ver, self._grown + grown

    def finish(self) -> int:
        """Write the counters; the byte total afterwards."""
        if self._ver_read is not None and self._ver != self._ver_read:
            self._conn.execute("update meta set v = ? where k = 'ver'", (self._ver,))
        if self._grown:
            return _add_bytes(self._conn, self._grown)
        return int(self._conn.execute("select v from meta where k = 'bytes'").fetchone()[0])


class _PendingCodec:
    """decode/encode_pending for one transaction: a write's ids mostly share one `pending` (same write, same
    deadline), so each distinct value is converted once. Decoded dicts are shared: changes never mutate them."""

    __slots__ = ("_decoded", "_last", "_last_blob", "_last_busy")

    def __init__(self) -> None:
        self._decoded: dict[bytes, dict[str, int]] = {}
        self._last: dict[str, int] | None = None
        self._last_blob: bytes | None = None
        self._last_busy = 0

    def decode(self, blob: bytes | None) -> dict[str, int]:
        if not blob:
            return {}
        found = self._decoded.get(blob)
        if found is None:
            found = self._decoded[blob] = co.decode_pending(blob)
        return found

    def encode(self, pending: dict[str, int]) -> tuple[bytes | None, int]:
        """(the stored blob, the latest deadline in it: Record.busy_until without the unknown outcome)."""
        if not pending:
            return None, 0
        if pending != self._last:
            self._last, self._last_blob = pending, co.encode_pending(pending)
            self._last_busy = max(pending.values())
        return self._last_blob, self._last_busy


def _select_space(conn: sqlite3.Connection | Tx, ns: str) -> Space:
    row = conn.execute("select epoch, unknown_until from spaces where ns = ?", (ns,)).fetchone()
    return Space() if row is None else Space(row[0], row[1])


NO_ROW: tuple[None, int, int] = (None, 0, 0)


def _select(conn: Tx, ns: str, ids: list[str],
            codec: _PendingCodec) -> tuple[Space, dict[str, tuple[Record, int, int]]]:
    """The namespace's state and the full records of `ids` with their versions and sizes (for changes)."""
    rows: dict[str, tuple[Record, int, int]] = {}
    for i in range(0, len(ids), CHUNK):
        chunk = ids[i: i + CHUNK]
        marks = ",".join("?" * len(chunk))
        for row in conn.execute(f"select id, {COLUMNS} from docs where ns = ? and id in ({marks})", (ns, *chunk)):
            doc_id, attrs, vec, ok, epoch, pending, unknown_until, ver, size = row
            rows[doc_id] = (Record(attrs, vec, bool(ok), epoch, codec.decode(pending), unknown_until), ver, size)
    return _select_space(conn, ns), rows


def _lookup(conn: sqlite3.Connection, ns: str, ids: list[str], column: str) -> Lookup:
    """Served `column` blobs and miss tokens; a record is only built (pending decoded) for a miss."""
    if len(ids) == 1:  # the hot path: one statement
        row = conn.execute(LOOKUP_ONE[column], (ns, ids[0])).fetchone()
        if row[1] and row[0] is not None:
            return Lookup({ids[0]: row[0]}, {})
        return Lookup({}, {ids[0]: _token(row[:6] if row[5] is not None else None, Space(row[6], row[7]))})
    space = _select_space(conn, ns)
    hits: dict[str, Any] = dict(_rows(conn, SERVED[column], space.epoch, ns, ids))
    hits = {i: blob for i, blob in hits.items() if blob is not None}
    missed = [i for i in ids if i not in hits]
    rows = {row[0]: row[1:] for row in _rows(conn, MISSED[column], space.epoch, ns, missed)} if missed else {}
    return Lookup(hits, {i: _token(rows.get(i), space) for i in missed})


def _rows(conn: sqlite3.Connection, sql: str, epoch: int, ns: str, ids: list[str]) -> Iterator[Any]:
    for i in range(0, len(ids), CHUNK):
        chunk = ids[i: i + CHUNK]
        yield from conn.execute(sql + f"({','.join('?' * len(chunk))})", (epoch, ns, *chunk))


def _token(row: Sequence[Any] | None, space: Space) -> Token:
    """The token of a miss from a lookup row (blob, served, epoch, pending, unknown_until, ver) or None."""
    if row is None:
        return co.token(None, 0, space, co.now_ms())
    rec = Record(ok=bool(row[1]), epoch=row[2], pending=co.decode_pending(row[3]), unknown_until=row[4])
    return co.token(rec, row[5], space, co.now_ms())


def _decode(blob: bytes, include: Sequence[str] | None) -> dict[str, Any]:
    try:
        return decode_attrs(blob, include)
    except msgspec.DecodeError as exc:
        raise CacheError(f"cache record is not readable: {exc}") from exc


def _collect_chunk(ns: str, conn: Tx) -> int:
    epoch = _select_space(conn, ns).epoch
    sizes = conn.execute("delete from docs where ns = ?1 and id in (select id from docs where ns = ?1 and epoch < ?2 "
                         "and busy_until < ?3 limit ?4) returning size", (ns, epoch, co.now_ms(), CHUNK)).fetchall()
    conn.execute(ADD_BYTES, (-sum(size for (size,) in sizes),))
    return len(sizes)


def _evict(conn: sqlite3.Connection, total: int, max_bytes: int, window_ms: int) -> int:
    """Past the size bound (`total`: the byte total now): remove the oldest records that are older than the fill
    window and hold no fence; if that is not enough, drop the data (never the fence) of the oldest records that
    still have some."""
    if total <= max_bytes:
        return 0
    evicted = 0
    target = int(max_bytes * EVICT_TO)
    now = co.now_ms()
    old = time.time_ns() - window_ms * 1_000_000
    while total > target:
        sizes = conn.execute("delete from docs where (ns, id) in (select ns, id from docs where seq < ? and "
                             "busy_until < ? order by seq limit 256) returning size", (old, now)).fetchall()
        if not sizes:
            break
        evicted += len(sizes)
        total = _add_bytes(conn, -sum(size for (size,) in sizes))
    if total > target:
        ver = conn.execute("update meta set v = v + 1 where k = 'ver' returning v").fetchone()[0]
        while total > target:
            keys = conn.execute("select ns, id, size from docs where attrs is not null or vec is not null "
                                "order by seq limit 32").fetchall()
            if not keys:
                break
            grown = 0
            for ns, doc_id, size in keys:
                (new,) = conn.execute("update docs set attrs = null, vec = null, ok = 0, ver = ?, "
                                      "size = 64 + length(cast(id as blob)) + ifnull(length(pending), 0) "
                                      "where ns = ? and id = ? returning size", (ver, ns, doc_id)).fetchone()
                grown += new - size
            evicted += len(keys)
            total = _add_bytes(conn, grown)
    return evicted


def _add_bytes(conn: sqlite3.Connection, delta: int) -> int:
    """Move the byte total by `delta` (a statement that changed sizes); the new total."""
    return int(conn.execute("update meta set v = v + ? where k = 'bytes' returning v", (delta,)).fetchone()[0])


def _select_result_gen(conn: sqlite3.Connection, ns: str) -> int:
    row = conn.execute("select gen from result_gens where ns = ?", (ns,)).fetchone()
    return 0 if row is None else int(row[0])


def _bump_result_gen(ns: str, conn: Tx) -> None:
    conn.execute("insert into result_gens values (?, 1) on conflict (ns) do update set gen = gen + 1", (ns,))


def _put_job(job: WarmJob, conn: Tx) -> None:
    conn.execute("insert into jobs values (?, ?, ?, ?) on conflict (id) do update set body = excluded.body",
                 (job.id, job.namespace, job.created_at, _job_encode(job)))
    if job.status != "running":  # keep the newest JOBS_KEPT per namespace
        conn.execute("delete from jobs where ns = ?1 and id not in "
                     "(select id from jobs where ns = ?1 order by created_at desc limit ?2)",
                     (job.namespace, JOBS_KEPT))


def _select_job(conn: sqlite3.Connection, job_id: str) -> bytes | None:
    row = conn.execute("select body from jobs where id = ?", (job_id,)).fetchone()
    return None if row is None else row[0]


def _select_jobs(conn: sqlite3.Connection, ns: str | None) -> list[tuple[bytes]]:
    if ns is None:
        return conn.execute("select body from jobs order by created_at, id").fetchall()
    return conn.execute("select body from jobs where ns = ? order by created_at, id", (ns,)).fetchall()


def _delete_jobs(ns: str, conn: Tx) -> None:
    conn.execute("delete from jobs where ns = ?", (ns,))
