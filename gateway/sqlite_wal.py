"""Checkpoints that keep a SQLite WAL file bounded under steady writes (the embedded cache, the watch board).

SQLite restarts its log from the beginning only when a checkpoint has copied all of it and no reader still needs
it. Under steady writes a passive checkpoint (SQLite's automatic one, or ours) never catches up: the writers add
frames while it copies, the log is never restarted, and the file grows without bound (the cache's WAL reached
148 MB after 5 s of 1-row writes). Past WAL_MAX_BYTES a checkpoint therefore waits (briefly: TRUNCATE_WAIT_MS) for
the writer lock and for readers of old frames, copies everything and truncates the file: writers wait for one copy
of the log's distinct pages, a few milliseconds.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sqlite3
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from gateway.tasks import Tasks

log = logging.getLogger("gateway.sqlite_wal")

WAL_MAX_BYTES = 16 << 20
# SQLite's busy handler polls (it sleeps 1, 2, 5, 10 ms... between tries), and while a checkpoint waits no other one
# can run: a long wait under busy writers lets the WAL grow meanwhile. A short one gives up; the next one tries again
# (8 saturated watch-board writers, 1 MB bound: peaks 6-7 MB with 20 ms, 20-66 MB with 2 s).
TRUNCATE_WAIT_MS = 20
CHECKPOINT_EVERY = 64  # commits per checkpoint (`Checkpoints`)


def wal_bytes(db_path: str) -> int:
    try:
        return os.path.getsize(db_path + "-wal")
    except OSError:
        return 0


def checkpoint(conn: sqlite3.Connection, db_path: str) -> None:
    """Copy the WAL into the database as far as readers allow without waiting, or all of it (waiting, then
    truncating the file) once it is past WAL_MAX_BYTES. Never on the event loop: it fsyncs, and it may wait. A failure
    is left to the next checkpoint: the caller's commit stands."""
    mode = "truncate" if wal_bytes(db_path) > WAL_MAX_BYTES else "passive"
    try:
        if mode == "passive":
            conn.execute("pragma wal_checkpoint(passive)").fetchall()
            return
        busy_ms = conn.execute("pragma busy_timeout").fetchone()[0]
        conn.execute(f"pragma busy_timeout={TRUNCATE_WAIT_MS}")
        try:
            conn.execute("pragma wal_checkpoint(truncate)").fetchall()
        finally:
            conn.execute(f"pragma busy_timeout={busy_ms}")
    except sqlite3.Error as exc:
        log.debug("%s checkpoint of %s failed: %s", mode, db_path, exc)


class Checkpoints:
    """Every CHECKPOINT_EVERY commits counted here, `checkpoint_now` runs in this object's own thread, one at a time
    (two would contend for SQLite's checkpoint lock, and the second would give up at once). Its own thread: in a
    shared pool it would queue behind the very writes that grow the WAL. Counted: the event loop's commits (its
    connections never checkpoint: a checkpoint fsyncs and may wait) and the cache pool's (whose automatic
    checkpoints are passive)."""

    def __init__(self, tasks: Tasks, name: str, checkpoint_now: Callable[[], None]) -> None:
        self._tasks, self._name, self._checkpoint_now = tasks, name, checkpoint_now
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name.replace(" ", "-"))
        self._commits = 0
        self._running = False
        self._closed = False

    def committed(self) -> None:
        self._commits += 1
        if self._commits >= CHECKPOINT_EVERY and not self._running and not self._closed:
            self._commits, self._running = 0, True
            self._tasks.spawn(self._name, self._once())

    async def _once(self) -> None:
        try:
            await asyncio.get_running_loop().run_in_executor(self._thread, self._checkpoint_now)
        finally:
            self._running = False

    def close(self) -> None:
        """No checkpoint after this; one under way finishes in its thread."""
        self._closed = True
        self._thread.shutdown(wait=False)
