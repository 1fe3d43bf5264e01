"""KeyStore on SQLite in LAYER_DATA_DIR: WAL mode, one connection per worker on its own thread."""

from __future__ import annotations

import sqlite3
from typing import Any

from msgspec.structs import replace

from gateway.keys.model import KeyRecord, record_decoder, record_encoder
from gateway.keys.store import ThreadedStore

BUSY_TIMEOUT_MS = 5000
SCHEMA = (
    ("CREATE TABLE IF NOT EXISTS api_keys (key_id TEXT PRIMARY KEY, lookup_hash TEXT NOT NULL UNIQUE,"
     " record BLOB NOT NULL, created_ms INTEGER NOT NULL, revoked_ms INTEGER, last_seen_ms INTEGER)"),
    "CREATE TABLE IF NOT EXISTS api_key_meta (k TEXT PRIMARY KEY, v INTEGER NOT NULL)",
    "CREATE TABLE IF NOT EXISTS api_key_rate (bucket TEXT PRIMARY KEY, win INTEGER NOT NULL, n INTEGER NOT NULL)",
    "INSERT OR IGNORE INTO api_key_meta (k, v) VALUES ('generation', 0)",
)
COLUMNS = "record, revoked_ms, last_seen_ms"
BUMP = "UPDATE api_key_meta SET v = v + 1 WHERE k = 'generation'"
HIT = ("INSERT INTO api_key_rate (bucket, win, n) VALUES (?, ?, 1) ON CONFLICT(bucket) DO UPDATE SET"
       " n = CASE WHEN win = excluded.win THEN n + 1 ELSE 1 END, win = excluded.win RETURNING n")
PRUNE_EVERY = 256


def _row(row: Any) -> KeyRecord | None:
    if row is None:
        return None
    rec = record_decoder.decode(row[0])
    return replace(rec, revoked_ms=row[1], last_seen_ms=row[2])


class SqliteKeyStore(ThreadedStore):
    errors = (sqlite3.Error,)
    backend = "sqlite"

    def __init__(self, path: str) -> None:
        super().__init__(1, "keys-sqlite")
        self._path = path
        self._db: sqlite3.Connection | None = None
        self._hits = 0

    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            db = sqlite3.connect(self._path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None,
                                 check_same_thread=False)
            db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            db.execute("PRAGMA journal_mode = WAL")
            db.execute("PRAGMA synchronous = NORMAL")
            with db:
                for stmt in SCHEMA:
                    db.execute(stmt)
            self._db = db
        return self._db

    def _create(self, rec: KeyRecord) -> None:
        db = self._conn()
        immutable = replace(rec, revoked_ms=None, last_seen_ms=None)
        with db:
            db.execute("BEGIN IMMEDIATE")
            db.execute("INSERT INTO api_keys (key_id, lookup_hash, record, created_ms, revoked_ms, last_seen_ms)"
                       " VALUES (?, ?, ?, ?, ?, ?)", (rec.key_id, rec.lookup_hash, record_encoder.encode(immutable),
                                                      rec.created_ms, rec.revoked_ms, rec.last_seen_ms))
            db.execute(BUMP)

    def _get(self, key_id: str) -> KeyRecord | None:
        return _row(self._conn().execute(f"SELECT {COLUMNS} FROM api_keys WHERE key_id = ?", (key_id,)).fetchone())

    def _find(self, lookup_hash: str) -> KeyRecord | None:
        cur = self._conn().execute(f"SELECT {COLUMNS} FROM api_keys WHERE lookup_hash = ?", (lookup_hash,))
        return _row(cur.fetchone())

    def _list(self) -> list[KeyRecord]:
        rows = self._conn().execute(f"SELECT {COLUMNS} FROM api_keys ORDER BY created_ms, key_id").fetchall()
        return [r for r in map(_row, rows) if r is not None]

    def _revoke(self, key_id: str, at_ms: int) -> KeyRecord | None:
        db = self._conn()
        with db:
            db.execute("BEGIN IMMEDIATE")
            cur = db.execute("UPDATE api_keys SET revoked_ms = COALESCE(revoked_ms, ?) WHERE key_id = ?",
                             (at_ms, key_id))
            if cur.rowcount:
                db.execute(BUMP)
        return self._get(key_id)

    def _delete(self, key_id: str) -> bool:
        db = self._conn()
        with db:
            db.execute("BEGIN IMMEDIATE")
            found = db.execute("DELETE FROM api_keys WHERE key_id = ?", (key_id,)).rowcount > 0
            if found:
                db.execute(BUMP)
        return found

    def _touch(self, key_id: str, at_ms: int) -> None:
        with self._conn() as db:
            db.execute("UPDATE api_keys SET last_seen_ms = ? WHERE key_id = ?"
                       " AND (last_seen_ms IS NULL OR last_seen_ms < ?)", (at_ms, key_id, at_ms))

    def _generation(self) -> int:
        row = self._conn().execute("SELECT v FROM api_key_meta WHERE k = 'generation'").fetchone()
        return int(row[0]) if row else 0

    def _hit(self, bucket: str, window: int, window_seconds: int) -> int:  # old windows are pruned by number
        db = self._conn()
        with db:
            n = int(db.execute(HIT, (bucket, window)).fetchone()[0])
            self._hits += 1
            if self._hits % PRUNE_EVERY == 0:
                db.execute("DELETE FROM api_key_rate WHERE win < ?", (window - 1,))
        return n

    def _close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None
