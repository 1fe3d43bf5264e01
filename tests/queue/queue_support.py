"""Helpers of the queue tests (a module of its own: test modules import it, never a conftest).

Every stack runs on one of two queue backends: `sqlite` (the default, in the gateway's data dir) or `postgres` (the
server on 127.0.0.1:5432, trust auth, database `test`, user `postgres` or `root`), each stack in a fresh schema that
is dropped afterwards. With no server answering, the PostgreSQL half skips with a message, unless
LAYER_TESTS_REQUIRE_POSTGRES=1 (as .ci/run sets), which turns that into a failure.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from support.procs import Proc, start_gateway, start_localstore

KEY = "queue-test-key"
PG_HOST, PG_PORT, PG_DB = "127.0.0.1", 5432, "test"
PG_USERS = ("postgres", "root")
BACKENDS = ("sqlite", "postgres")


def _pg_answers() -> bool:
    try:
        with socket.create_connection((PG_HOST, PG_PORT), timeout=2):
            return True
    except OSError:
        return False


async def _pg(user: str, sql: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(host=PG_HOST, port=PG_PORT, user=user, database=PG_DB, timeout=10)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@contextmanager
def pg_schema() -> Iterator[str]:
    """A DATABASE_URL whose search_path is a fresh schema (dropped on exit)."""
    if not _pg_answers():
        if os.environ.get("LAYER_TESTS_REQUIRE_POSTGRES") == "1":
            pytest.fail(f"no PostgreSQL server answers on {PG_HOST}:{PG_PORT} (LAYER_TESTS_REQUIRE_POSTGRES=1)")
        pytest.skip(f"no PostgreSQL server answers on {PG_HOST}:{PG_PORT}: the PostgreSQL half of the queue tests "
                    "did not run")
    schema = f"layer_test_{uuid.uuid4().hex[:12]}"
    last: Exception | None = None
    for user in PG_USERS:
        try:
            asyncio.run(_pg(user, f"CREATE SCHEMA {schema}"))
        except Exception as exc:  # noqa: BLE001 - try the next user; report the last failure
            last = exc
            continue
        try:
            yield f"postgresql://{user}@{PG_HOST}:{PG_PORT}/{PG_DB}?search_path={schema}"
        finally:
            asyncio.run(_pg(user, f"DROP SCHEMA IF EXISTS {schema} CASCADE"))
        return
    pytest.fail(f"PostgreSQL on {PG_HOST}:{PG_PORT} answers but refused every user {PG_USERS}: {last}")


@contextmanager
def backend_env(backend: str) -> Iterator[dict[str, str]]:
    """Gateway environment for a queue backend (sqlite: the gateway's own LAYER_DATA_DIR)."""
    if backend == "sqlite":
        yield {}
    else:
        with pg_schema() as url:
            yield {"DATABASE_URL": url}


class QueueStack:
    def __init__(self, store: Proc, gateways: list[Proc], backend: str, env: dict[str, str]) -> None:
        self.store, self.gateways, self.backend, self.env = store, gateways, backend, env
        self.gw = gateways[0]
        self.url = self.gw.url

    def logs(self) -> str:
        return "\n".join(f"--- {p.name} ---\n{p.log()}" for p in (*self.gateways, self.store))


@contextmanager
def queue_stack(tmp: Path, backend: str, gateways: int = 1, workers: int = 2, **gw_env: str) -> Iterator[QueueStack]:
    """Local store + `gateways` gateways (sharing one queue database) of `workers` workers each."""
    with backend_env(backend) as env:
        store = start_localstore(tmp / "store", LOCALSTORE_API_KEY=KEY)
        procs: list[Proc] = []
        try:
            data_dir = tmp / "gw"  # shared: with SQLite, gateways on one host share the file
            for _ in range(gateways):
                procs.append(start_gateway(store.url, KEY, data_dir, workers=workers, **env, **gw_env))
            yield QueueStack(store, procs, backend, env)
        finally:
            for p in procs:
                p.stop()
            store.stop()


def call(base: str, method: str, path: str, body: Any = None, key: str | None = KEY, raw: bytes | None = None,
         timeout: float = 30.0) -> tuple[int, Any]:
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    req = urllib.request.Request(base + path, data=data, method=method)
    if key is not None:
        req.add_header("Authorization", f"Bearer {key}")
    if data is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            status, text = resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        status, text = exc.code, exc.read()
    try:
        return status, json.loads(text) if text else None
    except ValueError:
        return status, text.decode(errors="replace")
