"""Pipelines and Functions (UDFs): durable leased work queues (docs/queue.md, design pipelines-udfs.md).

The store is SQLite in LAYER_DATA_DIR by default and PostgreSQL when DATABASE_URL is set. `layer-gateway serve`
migrates the schema before the workers start (`migrate`); each worker then opens its own connection(s) in
`attach(state)` and runs the lease sweep, the discovery tick and the write-trigger refresh in the background.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

from gateway.config import QueueSettings
from gateway.queue.db import Db, QueueUnavailable

__all__ = ["Db", "QueueUnavailable", "attach", "detach", "migrate", "open_db"]


def sqlite_path(data_dir: str) -> str:
    from gateway.queue.sqlite import FILE_NAME

    return os.path.join(data_dir, FILE_NAME)


def open_db(settings: QueueSettings, data_dir: str) -> Db:
    """This worker's database handle; nothing connects until the first transaction (after fork)."""
    if settings.database_url:
        from gateway.queue.postgres import PostgresDb

        return PostgresDb(settings.database_url, settings.idle_in_transaction_timeout_ms)
    from gateway.queue.sqlite import SqliteDb

    return SqliteDb(sqlite_path(data_dir))


def migrate(settings: QueueSettings, data_dir: str) -> tuple[str, int]:
    """Create or upgrade the schema once, before workers start: (backend, schema version)."""
    if settings.database_url:
        from gateway.queue import postgres

        return "postgres", asyncio.run(postgres.migrate(settings.database_url,
                                                         settings.idle_in_transaction_timeout_ms))
    from gateway.queue import sqlite

    return "sqlite", sqlite.migrate(sqlite_path(data_dir))


async def attach(state: Any) -> None:
    """Worker startup hook (gateway.app): put this worker's QueueService into `state.queue` and start its tasks."""
    from gateway.queue.service import QueueService

    service = QueueService(state, open_db(state.config.queue, state.config.data_dir))
    service.start()
    state.queue = service


async def detach(state: Any) -> None:
    service, state.queue = state.queue, None
    if service is not None:
        await service.stop()
