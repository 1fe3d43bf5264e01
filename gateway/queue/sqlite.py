"""The embedded backend: SQLite in `$LAYER_DATA_DIR/queue.sqlite3`, WAL mode, one connection per gateway worker used
from one dedicated thread (busy waits never block the event loop). Write transactions take the write lock up front
(BEGIN IMMEDIATE), so two workers never pick the same rows. Never on a network filesystem.
"""

from __future__ import annotations

import asyncio
import fcntl
import sqlite3
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from gateway.queue.db import QueueUnavailable, T, TxFn, drive
from gateway.queue.schema import META, READ_VERSION, SQLITE, WRITE_VERSION, pending_versions

FILE_NAME = "queue.sqlite3"
BUSY_TIMEOUT_MS = 10_000


class SqliteTx:
    __slots__ = ("db",)

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    async def rows(self, sql: str, **params: Any) -> list[Any]:
        return self.db.execute(SQLITE.compile(sql)[0], params).fetchall()

    async def row(self, sql: str, **params: Any) -> Any | None:
        return self.db.execute(SQLITE.compile(sql)[0], params).fetchone()

    async def run(self, sql: str, **params: Any) -> int:
        return self.db.execute(SQLITE.compile(sql)[0], params).rowcount


def connect(path: str) -> sqlite3.Connection:
    db = sqlite3.connect(path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None, check_same_thread=False)
    db.row_factory = sqlite3.Row
    db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    db.execute("PRAGMA journal_mode = WAL")
    db.execute("PRAGMA synchronous = NORMAL")  # WAL + NORMAL: a commit survives kill -9 of any process
    db.execute("PRAGMA foreign_keys = ON")
    return db


def migrate(path: str) -> int:
    """Create or upgrade the schema. Gateways starting at once take turns on a lock file: switching a new file to
    WAL can answer "database is locked" at once, without waiting out the busy timeout."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(f"{path}.migrate-lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return _migrate_locked(path)


def _migrate_locked(path: str) -> int:
    db = connect(path)
    try:
        db.execute("BEGIN IMMEDIATE")
        try:
            db.execute(META)
            row = db.execute(READ_VERSION).fetchone()
            todo = pending_versions(row[0] if row else None, SQLITE)
            for version, statements in todo:
                for stmt in statements:
                    db.execute(stmt)
                db.execute(WRITE_VERSION, {"v": str(version)})
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return todo[-1][0] if todo else int(row[0])
    finally:
        db.close()


class SqliteDb:
    backend = "sqlite"

    def __init__(self, path: str) -> None:
        self.path = path
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="queue-sqlite")
        self._db: sqlite3.Connection | None = None

    def _run(self, fn: TxFn[Any], args: tuple[Any, ...], write: bool) -> Any:
        if self._db is None:
            self._db = connect(self.path)
        db = self._db
        if not write:  # each statement on its own (autocommit): no lock, no BEGIN/COMMIT
            return drive(fn(SqliteTx(db), *args))
        db.execute("BEGIN IMMEDIATE")
        try:
            result = drive(fn(SqliteTx(db), *args))
            db.execute("COMMIT")
            return result
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise

    async def _submit(self, fn: TxFn[T], args: tuple[Any, ...], write: bool) -> T:
        loop = asyncio.get_running_loop()
        try:
            result: T = await loop.run_in_executor(self._pool, self._run, fn, args, write)
        except sqlite3.Error as exc:
            raise QueueUnavailable(f"queue database (SQLite): {exc}") from exc
        return result

    async def write(self, fn: TxFn[T], *args: Any) -> T:
        return await self._submit(fn, args, True)

    async def read(self, fn: TxFn[T], *args: Any) -> T:
        return await self._submit(fn, args, False)

    async def close(self) -> None:
        def shut() -> None:
            if self._db is not None:
                self._db.close()
                self._db = None
        await asyncio.get_running_loop().run_in_executor(self._pool, shut)
        self._pool.shutdown(wait=True)
