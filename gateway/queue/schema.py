"""The queue's tables, their versioned migrations, and the few SQL fragments that differ between SQLite and PostgreSQL.

No index on (udf_id, state): before a fresh table is analysed, PostgreSQL would claim through it and sort every
pending item (status counts scan the udf's primary-key range instead).

Every statement elsewhere is written once, with `:name` parameters and `{fragment}` slots that `Dialect.compile`
fills per backend: JSON-array parameters become row sources (`{ids}`, `{pairs}`), and PostgreSQL's claims add
`FOR UPDATE SKIP LOCKED`. Times are epoch milliseconds; flags are small integers on both backends (one SQL text).
"""

from __future__ import annotations

import re
from typing import Any

SCHEMA_VERSION = 1
# PostgreSQL advisory lock keys (arbitrary constants): schema migration, and UDF definition changes.
MIGRATION_LOCK = 7_261_001
UDF_DEFINITION_LOCK = 7_261_002

_TABLES = """
CREATE TABLE IF NOT EXISTS pipelines (id TEXT PRIMARY KEY, target_namespace TEXT NOT NULL,
  distance_metric TEXT NOT NULL, created_at {i64} NOT NULL, last_vectors_at {i64});
CREATE TABLE IF NOT EXISTS pipeline_documents (
  pipeline_id TEXT NOT NULL REFERENCES pipelines(id) ON DELETE CASCADE, doc_id TEXT NOT NULL, stage TEXT NOT NULL,
  chunk_count INTEGER NOT NULL, chunk_ids TEXT NOT NULL, vector_ids TEXT,
  worker_id TEXT, lease_until {i64}, lease_ms {i64}, claimed_from TEXT, claimed_at {i64},
  stale_claim SMALLINT NOT NULL DEFAULT 0, failed_reason TEXT,
  staged_at {i64} NOT NULL, stage_entered_at {i64} NOT NULL, updated_at {i64} NOT NULL,
  PRIMARY KEY (pipeline_id, doc_id));
CREATE INDEX IF NOT EXISTS pipeline_documents_ready
  ON pipeline_documents (pipeline_id, stage, stage_entered_at, doc_id) WHERE lease_until IS NULL;
CREATE INDEX IF NOT EXISTS pipeline_documents_leased
  ON pipeline_documents (pipeline_id, lease_until) WHERE lease_until IS NOT NULL;
CREATE TABLE IF NOT EXISTS pipeline_chunks (
  pipeline_id TEXT NOT NULL, doc_id TEXT NOT NULL, body {blob} NOT NULL, PRIMARY KEY (pipeline_id, doc_id),
  FOREIGN KEY (pipeline_id, doc_id) REFERENCES pipeline_documents(pipeline_id, doc_id) ON DELETE CASCADE);
CREATE TABLE IF NOT EXISTS udfs (id TEXT PRIMARY KEY, marker TEXT NOT NULL UNIQUE, spec TEXT NOT NULL,
  paused SMALLINT NOT NULL DEFAULT 0, created_at {i64} NOT NULL, updated_at {i64} NOT NULL,
  sweeps_completed INTEGER NOT NULL DEFAULT 0, last_sweep_at {i64},
  next_sweep_at {i64}, sweep_owner TEXT, sweep_lock_until {i64});
CREATE TABLE IF NOT EXISTS udf_items (
  udf_id TEXT NOT NULL REFERENCES udfs(id) ON DELETE CASCADE,
  namespace TEXT NOT NULL, doc_key TEXT NOT NULL, doc_id TEXT NOT NULL,
  state TEXT NOT NULL CHECK (state IN ('pending', 'processing', 'failed')),
  attempts INTEGER NOT NULL DEFAULT 0, ready_at {i64} NOT NULL,
  worker_id TEXT, lease_until {i64}, lease_ms {i64}, input_hash TEXT, rerun SMALLINT NOT NULL DEFAULT 0,
  failed_reason TEXT, last_error TEXT, source TEXT NOT NULL,
  enqueued_at {i64} NOT NULL, updated_at {i64} NOT NULL,
  PRIMARY KEY (udf_id, namespace, doc_key));
CREATE INDEX IF NOT EXISTS udf_items_ready ON udf_items (udf_id, ready_at, namespace, doc_key)
  WHERE state = 'pending';
CREATE INDEX IF NOT EXISTS udf_items_leased ON udf_items (udf_id, lease_until) WHERE state = 'processing';
CREATE TABLE IF NOT EXISTS queue_rates (kind TEXT NOT NULL, owner_id TEXT NOT NULL, bucket {i64} NOT NULL,
  n INTEGER NOT NULL, PRIMARY KEY (kind, owner_id, bucket)){without_rowid};
"""
META = "CREATE TABLE IF NOT EXISTS queue_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)"
READ_VERSION = "SELECT value FROM queue_meta WHERE key = 'schema_version'"
WRITE_VERSION = ("INSERT INTO queue_meta (key, value) VALUES ('schema_version', :v) "
                 "ON CONFLICT (key) DO UPDATE SET value = excluded.value")
_PARAM = re.compile(r"(?<![:\w]):([A-Za-z_]\w*)")


class SchemaTooNew(RuntimeError):
    """The database was migrated by a newer gateway; this one refuses to touch it."""


class Dialect:
    """SQL text per backend: fills the `{fragment}` slots, and for PostgreSQL turns `:name` into `$n`."""

    def __init__(self, name: str, fragments: dict[str, str], ddl_types: dict[str, str], positional: bool) -> None:
        self.name = name
        self.fragments = fragments
        self.ddl_types = ddl_types
        self.positional = positional
        self._compiled: dict[str, tuple[str, tuple[str, ...]]] = {}

    def compile(self, sql: str) -> tuple[str, tuple[str, ...]]:
        """(backend SQL, parameter names in `$n` order; empty for SQLite, which binds by name)."""
        found = self._compiled.get(sql)
        if found is None:
            text = sql.format(**self.fragments)
            names: list[str] = []
            if self.positional:
                def number(m: re.Match[str]) -> str:
                    if m.group(1) not in names:
                        names.append(m.group(1))
                    return f"${names.index(m.group(1)) + 1}"
                text = _PARAM.sub(number, text)
            found = self._compiled[sql] = (text, tuple(names))
        return found

    def migrations(self) -> list[list[str]]:
        """Statements per schema version (index 0 = version 1)."""
        v1 = [s.strip() for s in _TABLES.format(**self.ddl_types).split(";") if s.strip()]
        return [v1]


SQLITE = Dialect("sqlite", {
    "ids": "SELECT value AS value FROM json_each(:ids)",
    "pairs": "SELECT json_extract(value, '$[0]') AS a, json_extract(value, '$[1]') AS b FROM json_each(:pairs)",
    "skip_locked": "",
    "for_update": "",
    "lock_udfs": "SELECT 1",
}, {"i64": "INTEGER", "blob": "BLOB", "without_rowid": " WITHOUT ROWID"}, positional=False)

POSTGRES = Dialect("postgres", {
    "ids": "SELECT jsonb_array_elements_text(CAST(:ids AS jsonb)) AS value",
    "pairs": "SELECT e->>0 AS a, e->>1 AS b FROM jsonb_array_elements(CAST(:pairs AS jsonb)) AS e",
    "skip_locked": "FOR UPDATE SKIP LOCKED",
    "for_update": "FOR UPDATE",
    "lock_udfs": f"SELECT pg_advisory_xact_lock({UDF_DEFINITION_LOCK})",
}, {"i64": "BIGINT", "blob": "BYTEA", "without_rowid": ""}, positional=True)


def pending_versions(current: Any, dialect: Dialect) -> list[tuple[int, list[str]]]:
    """The migrations still to run on a database at `current` (None = fresh); raises SchemaTooNew."""
    version = int(current) if current is not None else 0
    if version > SCHEMA_VERSION:
        raise SchemaTooNew(f"the queue database has schema version {version}; this gateway knows up to "
                           f"{SCHEMA_VERSION} (a newer gateway migrated it)")
    return [(v, stmts) for v, stmts in enumerate(dialect.migrations(), 1) if v > version]
