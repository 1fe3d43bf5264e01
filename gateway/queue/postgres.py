"""The shared backend: PostgreSQL through asyncpg when DATABASE_URL is set, so any number of gateways share one queue.

One pool per gateway worker (min 1, max 4 connections), `idle_in_transaction_session_timeout` set per session.
Claims use `FOR UPDATE SKIP LOCKED` (READ COMMITTED): concurrent claimers skip each other's rows instead of
waiting. A transaction that loses a deadlock or serialization check is run again (transaction functions do no
other I/O, so that is safe). Migrations run at start-up under an advisory lock.
"""

from __future__ import annotations

import asyncio
from typing import Any

from gateway.queue.db import QueueUnavailable, T, TxFn
from gateway.queue.schema import META, MIGRATION_LOCK, POSTGRES, READ_VERSION, WRITE_VERSION, pending_versions

POOL_MIN, POOL_MAX = 1, 4
RETRIES = 5
CONNECT_TIMEOUT_S = 10.0


class PostgresTx:
    __slots__ = ("conn",)

    def __init__(self, conn: Any) -> None:
        self.conn = conn

    @staticmethod
    def _args(sql: str, params: dict[str, Any]) -> tuple[str, list[Any]]:
        text, names = POSTGRES.compile(sql)
        return text, [params[n] for n in names]

    async def rows(self, sql: str, **params: Any) -> list[Any]:
        text, args = self._args(sql, params)
        return list(await self.conn.fetch(text, *args))

    async def row(self, sql: str, **params: Any) -> Any | None:
        text, args = self._args(sql, params)
        return await self.conn.fetchrow(text, *args)

    async def run(self, sql: str, **params: Any) -> int:
        text, args = self._args(sql, params)
        status: str = await self.conn.execute(text, *args)  # e.g. "UPDATE 3", "INSERT 0 5"
        tail = status.rsplit(" ", 1)[-1]
        return int(tail) if tail.isdigit() else 0


def _settings(idle_ms: int) -> dict[str, str]:
    return {"idle_in_transaction_session_timeout": str(idle_ms)}


async def _keep_session(conn: Any) -> None:
    """Pool release hook: the queue keeps no session state (no LISTEN, cursors or session locks), so the default
    reset query, a round trip on every release, is skipped."""


async def migrate(url: str, idle_ms: int = 5000) -> int:
    """Create or upgrade the schema under an advisory lock (gateways starting together wait for each other)."""
    import asyncpg

    conn = await asyncpg.connect(url, timeout=CONNECT_TIMEOUT_S, server_settings=_settings(idle_ms))
    try:
        await conn.execute(f"SELECT pg_advisory_lock({MIGRATION_LOCK})")
        try:
            async with conn.transaction():
                await conn.execute(META)
                current = await conn.fetchval(READ_VERSION)
                todo = pending_versions(current, POSTGRES)
                for version, statements in todo:
                    for stmt in statements:
                        await conn.execute(stmt)
                    await conn.execute(POSTGRES.compile(WRITE_VERSION)[0], str(version))
        finally:
            await conn.execute(f"SELECT pg_advisory_unlock({MIGRATION_LOCK})")
        return todo[-1][0] if todo else int(current)
    finally:
        await conn.close()


class PostgresDb:
    backend = "postgres"

    def __init__(self, url: str, idle_ms: int) -> None:
        self.url = url
        self.idle_ms = idle_ms
        self._pool: Any = None
        self._lock = asyncio.Lock()

    async def _get_pool(self) -> Any:
        if self._pool is None:
            import asyncpg

            async with self._lock:
                if self._pool is None:
                    self._pool = await asyncpg.create_pool(self.url, min_size=POOL_MIN, max_size=POOL_MAX,
                                                           timeout=CONNECT_TIMEOUT_S, reset=_keep_session,
                                                           server_settings=_settings(self.idle_ms))
        return self._pool

    async def _transact(self, fn: TxFn[T], args: tuple[Any, ...], write: bool) -> T:
        import asyncpg

        retryable = (asyncpg.exceptions.DeadlockDetectedError, asyncpg.exceptions.SerializationError)
        for attempt in range(RETRIES):
            try:
                pool = await self._get_pool()
                async with pool.acquire() as conn:
                    if not write:  # each statement on its own: saves BEGIN/COMMIT round trips on the hot path
                        return await fn(PostgresTx(conn), *args)
                    async with conn.transaction():
                        return await fn(PostgresTx(conn), *args)
            except retryable:
                if attempt == RETRIES - 1:
                    raise QueueUnavailable("queue database (PostgreSQL): transaction kept conflicting") from None
                await asyncio.sleep(0.005 * (attempt + 1))
            except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError) as exc:
                raise QueueUnavailable(f"queue database (PostgreSQL): {exc}") from exc
        raise AssertionError("unreachable")

    async def write(self, fn: TxFn[T], *args: Any) -> T:
        return await self._transact(fn, args, True)

    async def read(self, fn: TxFn[T], *args: Any) -> T:
        return await self._transact(fn, args, False)

    async def close(self) -> None:
        if self._pool is not None:
            pool, self._pool = self._pool, None
            await pool.close()
