"""Shared watch records: one per namespace in a SQLite file under LAYER_DATA_DIR, for every worker on the host.

Why: per-worker watermarks cannot see another worker's writes in flight, so with clock skew a row stamped by one
worker can sit at or below the watermark another worker polled (and every worker polls every namespace). The record
holds what gateway/consistency.py holds per worker (status, watermark, the highest watermark ever, generation) and the
writes in flight, so the stamp/fence/poll rules hold across workers; and a poll slot, so one worker polls a
namespace per interval. Every change is one short write transaction: record order replaces clock order.

Soft state: an error here (locked too long, disk full) makes the watcher fall back to its own per-worker record
(consistency.py); the file can be removed at any time (wmax restarts at 0: stamps are then bounded by the clock).
Records are never deleted otherwise (a namespace gone upstream keeps its record: `forget`), one small row each.
"""

from __future__ import annotations

import copy
import os
import random
import sqlite3
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any, NamedTuple

from gateway.sqlite_wal import checkpoint

FILE_NAME = "watch-v3.sqlite3"  # a new schema gets a new file (the records are soft)
BUSY_MS = 2000
INFLIGHT_TTL_MS = 120_000  # a write in flight longer than this (its worker died) stops capping the watermark
# fenced_since: the generation the poll slot was last claimed at; fenced_min: the lowest stamp fenced since then
SCHEMA = """
create table if not exists watch(ns text primary key, status text not null, watermark integer, wmax integer not null,
  gen integer not null, observed_ms integer not null, poller text, poll_until integer not null, prev_poller text,
  meta text, fenced_since integer, fenced_min integer) without rowid;
create table if not exists inflight(id integer primary key, ns text not null, stamp integer not null,
  expires integer not null);
create index if not exists inflight_ns on inflight(ns, stamp);
"""

# A stable answer's watermark (SQL, parameters :w = poll start - margin, :ns, :now): below every write in flight; a
# voided one's (`publish`) also below every stamp fenced since the claim
MARK = "min(:w, coalesce((select min(stamp) from inflight where ns = :ns and expires > :now) - 1, :w))"
RAISED = f"min({MARK}, coalesce(fenced_min - 1, :w))"
BEGIN_WRITE = ("insert into inflight(ns, stamp, expires) select ?, max(?, wmax + 1), ? from watch where ns = ? "
               "returning id, stamp")


def host_ms() -> int:
    """The board's own clock for its bookkeeping (poll slots, observation ages, in-flight expiry): one clock per
    file, whatever clocks the watchers stamp and poll with."""
    return int(time.time() * 1000)


class WatchRecord(NamedTuple):
    status: str
    watermark: int | None
    wmax: int
    gen: int
    observed_ms: int
    meta: str | None  # digest of the last metadata body published (readers learn "upstream metadata changed")


class Settle(NamedTuple):
    """A settling poll's answer for `end_write`; `gen`: the record's generation read before the call."""

    gen: int
    status: str
    started_ms: int
    margin_ms: int
    meta: str | None


class WatchBoard:
    """Blocking calls (run them off the event loop, except `read`: a WAL read never waits for writers)."""

    reads_inline = True
    busy_ms = BUSY_MS

    def __init__(self, path: str) -> None:
        self.path = path
        self._local = threading.local()
        self.slot_changes = 0  # poll slots this process took from another worker (or first): a lease change
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        for attempt in range(50):  # workers starting together: switching a new file to WAL fails while one does
            try:
                self._conn().executescript(SCHEMA)
                break
            except sqlite3.OperationalError:
                self._local.conn = None
                if attempt == 49:
                    raise
                time.sleep(0.05 + random.random() * 0.05)

    @classmethod
    def in_dir(cls, data_dir: str) -> WatchBoard:
        return cls(os.path.join(data_dir, FILE_NAME))

    def nowait(self) -> WatchBoard:
        """This board with connections that never wait for the write lock: for the event-loop thread, where a change
        costs less than a thread hop. A change that finds the lock taken raises sqlite3.OperationalError (busy)
        having changed nothing; make it again here, in a thread. It never checkpoints the WAL (an fsync): its user
        calls `checkpoint` in a thread every CHECKPOINT_EVERY commits (gateway/sqlite_wal.py)."""
        view = copy.copy(self)
        view._local, view.busy_ms = threading.local(), 0
        return view

    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, timeout=self.busy_ms / 1000, isolation_level=None,
                                   check_same_thread=False)
            conn.execute("pragma journal_mode=wal")
            conn.execute("pragma synchronous=normal")
            if not self.busy_ms:
                conn.execute("pragma wal_autocheckpoint=0")
            self._local.conn = conn
        return conn

    def checkpoint(self) -> None:
        checkpoint(self._conn(), self.path)

    def _ensure(self, conn: sqlite3.Connection, ns: str) -> None:
        conn.execute("insert or ignore into watch values (?, 'unknown', null, 0, 0, 0, null, 0, null, null, null, null)",
                     (ns,))

    def read(self, names: Iterable[str]) -> dict[str, WatchRecord]:
        names = list(names)
        out: dict[str, WatchRecord] = {}
        conn = self._conn()
        for i in range(0, len(names), 500):
            chunk = names[i:i + 500]
            rows = conn.execute(f"select ns, status, watermark, wmax, gen, observed_ms, meta from watch where ns in "
                                f"({','.join('?' * len(chunk))})", chunk)
            for ns, *rest in rows:
                out[ns] = WatchRecord(*rest)
        return out

    # Every change below is one statement (autocommit; RETURNING rows fetched at once so the statement ends and
    # commits): the file's write lock is held only inside SQLite, never while this thread waits for the GIL. The
    # exceptions are `end_write`, a few statements in one short transaction, and `changes`, several changes in one.
    def begin_write(self, ns: str, now_ms: int) -> tuple[int, int]:
        """(stamp, ticket): a stamp above every watermark ever published, held in flight until `end_write`."""
        conn = self._conn()
        args = (ns, now_ms, host_ms() + INFLIGHT_TTL_MS, ns)
        rows = conn.execute(BEGIN_WRITE, args).fetchall()
        if not rows:  # no record yet (records are never deleted: later writes skip this statement)
            self._ensure(conn, ns)
            rows = conn.execute(BEGIN_WRITE, args).fetchall()
        ticket, stamp = rows[0]
        return int(stamp), int(ticket)

    def end_write(self, ns: str, ticket: int | None, stamp: int, landed: bool, settle: Settle | None = None) -> int:
        """The write's outcome; `landed`: fence (updating, watermark below the stamp, generation + 1), then the
        in-flight entry goes (in that order: a poll between the two is voided by the generation).
        `settle`: the answer of a metadata call made after the write was acknowledged, published in the same
        transaction if no other fence or hint came since `settle.gen` was read before that call (so other workers
        never see this write's fence without its settling answer). Returns the record's generation afterwards."""
        conn = self._conn()
        own = not conn.in_transaction  # else part of the one `changes` opened
        if own:
            conn.execute("begin immediate")
        try:
            self._ensure(conn, ns)
            if landed:
                row = conn.execute("update watch set status = 'updating', gen = gen + 1, watermark = case when "
                                   "watermark >= :s then :s - 1 else watermark end, fenced_min = "
                                   "min(coalesce(fenced_min, :s), :s) where ns = :ns returning gen",
                                   {"s": stamp, "ns": ns}).fetchall()[0]
            else:
                row = conn.execute("select gen from watch where ns = ?", (ns,)).fetchone()
            conn.execute("delete from inflight where id = ?", (ticket,))
            if settle is not None and int(row[0]) == settle.gen + landed:
                self._publish(conn, ns, settle.status, settle.started_ms, settle.margin_ms, int(row[0]), settle.meta)
            if own:
                conn.execute("commit")
        except BaseException:
            if own:
                conn.execute("rollback")
            raise
        return int(row[0])

    def changes(self, calls: list[tuple[str, tuple[Any, ...]]]) -> list[Any]:
        """Several changes (method name, arguments) in one transaction, one commit: their results. If one of them
        raises, none is made (the caller makes each on its own then)."""
        conn = self._conn()
        conn.execute("begin immediate")
        try:
            out = [getattr(self, name)(*args) for name, args in calls]
            conn.execute("commit")
        except BaseException:
            conn.execute("rollback")
            raise
        return out

    def hint_updating(self, ns: str) -> int:
        """Mark a stable namespace updating (generation + 1); returns the record's generation afterwards."""
        conn = self._conn()
        self._ensure(conn, ns)
        conn.execute("update watch set status = 'updating', gen = gen + 1 where ns = ? and status = 'stable'", (ns,))
        return int(conn.execute("select gen from watch where ns = ?", (ns,)).fetchone()[0])

    def claim_poll(self, ns: str, worker: str, interval_ms: int, hold_ms: int) -> int | None:
        """The record's generation if `worker` should poll `ns` now (last observation older than `interval_ms`
        and nobody else holding the poll slot); None otherwise. The slot lapses after `hold_ms` (failover)."""
        now = host_ms()
        conn = self._conn()
        self._ensure(conn, ns)
        rows = conn.execute("update watch set prev_poller = poller, poller = ?, poll_until = ?, fenced_since = gen, "
                           "fenced_min = null where ns = ? and (poll_until <= ? or poller = ?) and ? - observed_ms >= ? "
                           "returning gen, prev_poller",
                           (worker, now + hold_ms, ns, now, worker, now, interval_ms)).fetchall()
        if not rows:
            return None
        row = rows[0]
        if row[1] != worker:
            self.slot_changes += 1
        return int(row[0])

    def publish(self, ns: str, status: str, started_ms: int, margin_ms: int, gen: int, meta: str | None = None,
                claimed: bool = False) -> bool:
        """A poll's answer, applied only if no fence or hint came since the poll read `gen`. False: voided.
        Stable: watermark = poll start - margin, below every write in flight. Read the record afterwards.
        `claimed` (`gen` is what `claim_poll` returned): a voided stable answer still raises the watermark, to below
        the lowest stamp fenced since the claim too, if the slot was not claimed again since (gateway/consistency.py)."""
        conn = self._conn()
        self._ensure(conn, ns)
        conn.execute("delete from inflight where ns = ? and expires <= ?", (ns, host_ms()))  # their workers died
        if self._publish(conn, ns, status, started_ms, margin_ms, gen, meta):
            return True
        if claimed and status == "stable" and conn.execute(
                f"update watch set watermark = max(coalesce(watermark, {RAISED}), {RAISED}), wmax = max(wmax, "
                f"{RAISED}), observed_ms = :now, poll_until = 0, meta = coalesce(:meta, meta) where ns = :ns and "
                f"fenced_since <= :gen returning gen",
                {"w": max(started_ms - margin_ms, 0), "ns": ns, "now": host_ms(), "gen": gen, "meta": meta}).fetchall():
            return False  # raised (or held: never lowered)
        conn.execute("update watch set poll_until = 0 where ns = ?", (ns,))
        return False

    @staticmethod
    def _publish(conn: sqlite3.Connection, ns: str, status: str, started_ms: int, margin_ms: int, gen: int,
                 meta: str | None) -> bool:
        now = host_ms()
        mark = MARK if status == "stable" else "watermark"
        row = conn.execute(f"update watch set status = :status, watermark = {mark}, wmax = max(wmax, "
                           f"coalesce({mark}, 0)), observed_ms = :now, poll_until = 0, meta = coalesce(:meta, meta) "
                           f"where ns = :ns and gen = :gen returning gen",
                           {"w": max(started_ms - margin_ms, 0), "ns": ns, "now": now, "status": status, "gen": gen,
                            "meta": meta}).fetchall()
        return bool(row)

    def release(self, ns: str, worker: str) -> None:
        """Give the poll slot back after a failed poll (the next worker need not wait for it to lapse)."""
        self._conn().execute("update watch set poll_until = 0 where ns = ? and poller = ?", (ns, worker))

    def forget(self, ns: str, gen: int) -> bool:
        """A poll that read `gen` found no namespace upstream: `unknown` and the poll slot free, unless a fence or
        hint came since (False: voided). Never a delete: the generation, wmax and writes in flight stay (a write
        creating the namespace may be in flight; consistency.Watcher.forget)."""
        rows = self._conn().execute("update watch set poll_until = 0, status = case when gen = ? then 'unknown' "
                                    "else status end where ns = ? returning gen", (gen, ns)).fetchall()
        return bool(rows) and int(rows[0][0]) == gen
