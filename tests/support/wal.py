"""A SQLite WAL file pinned past its bound by a reader, then written on without it (gateway/sqlite_wal.py)."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Awaitable, Callable

from gateway import sqlite_wal


async def smallest_wal_once_unpinned(db_path: str, table: str, write: Callable[[int], Awaitable[object]],
                                     within_s: float = 30.0) -> tuple[int, int]:
    """Writes (`write(i)`, one commit each) while a reader's open transaction keeps every checkpoint from finishing,
    until the WAL file is past its bound; then, with the reader gone, until the file is under half that size; both
    within `within_s`. Returns (the pinned size, the smallest size seen after). SQLite itself never shrinks the
    file: only a truncating checkpoint does."""
    deadline = time.monotonic() + within_s
    reader = sqlite3.connect(db_path, isolation_level=None)
    try:
        reader.execute("begin")
        reader.execute(f"select count(*) from {table}").fetchone()
        i = 0
        while sqlite_wal.wal_bytes(db_path) <= sqlite_wal.WAL_MAX_BYTES and time.monotonic() < deadline:
            await write(i)
            i += 1
        pinned = sqlite_wal.wal_bytes(db_path)
        reader.execute("rollback")
    finally:
        reader.close()
    smallest = pinned
    while smallest >= pinned // 2 and time.monotonic() < deadline:
        await write(i)
        i += 1
        await asyncio.sleep(0.001)  # the checkpoint runs in a thread meanwhile
        smallest = min(smallest, sqlite_wal.wal_bytes(db_path))
    return pinned, smallest
