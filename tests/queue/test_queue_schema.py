"""The queue schema is created and migrated by the gateway at start: two gateways starting together on one fresh
database both come up on one schema; a database migrated by a newer gateway is refused with a clear message."""

from __future__ import annotations

import asyncio
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from queue_support import BACKENDS, KEY, backend_env
from queue_support import call as http
from support.procs import Proc, base_env, free_port, start_gateway, start_localstore

from gateway.queue.schema import SCHEMA_VERSION


def _version(backend: str, env: dict[str, str], data_dir: Path) -> int:
    sql = "SELECT value FROM queue_meta WHERE key = 'schema_version'"
    if backend == "sqlite":
        with sqlite3.connect(data_dir / "queue.sqlite3") as db:
            return int(db.execute(sql).fetchone()[0])

    async def read() -> int:
        import asyncpg

        conn = await asyncpg.connect(env["DATABASE_URL"])
        try:
            return int(await conn.fetchval(sql))
        finally:
            await conn.close()
    return asyncio.run(read())


def _set_version(backend: str, env: dict[str, str], data_dir: Path, version: int) -> None:
    sql = f"UPDATE queue_meta SET value = '{version}' WHERE key = 'schema_version'"
    if backend == "sqlite":
        with sqlite3.connect(data_dir / "queue.sqlite3") as db:
            db.execute(sql)
        return

    async def write() -> None:
        import asyncpg

        conn = await asyncpg.connect(env["DATABASE_URL"])
        try:
            await conn.execute(sql)
        finally:
            await conn.close()
    asyncio.run(write())


@pytest.mark.timeout(180)
@pytest.mark.parametrize("backend", BACKENDS)
def test_two_gateways_starting_together_share_one_schema(backend: str, tmp_path: Path) -> None:
    with backend_env(backend) as env:
        store = start_localstore(tmp_path / "store", LOCALSTORE_API_KEY=KEY)
        started: list[Proc] = []
        errors: list[BaseException] = []

        def start() -> None:
            try:
                started.append(start_gateway(store.url, KEY, tmp_path / "gw", workers=2, **env))
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

        threads = [threading.Thread(target=start) for _ in range(2)]
        try:
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            assert not errors, errors
            assert _version(backend, env, tmp_path / "gw") == SCHEMA_VERSION
            first, second = started
            assert http(first.url, "POST", "/v2/pipelines", {"id": "p", "target_namespace": "n"})[0] == 200
            assert [p["id"] for p in http(second.url, "GET", "/v2/pipelines")[1]["pipelines"]] == ["p"]
            assert "schema version 1" in first.log()
        finally:
            for p in started:
                p.stop()
            store.stop()

        _set_version(backend, env, tmp_path / "gw", SCHEMA_VERSION + 1)
        cmd = [sys.executable, "-m", "gateway", "serve", "--port", str(free_port()), "--ops-port", "0"]
        proc = subprocess.run(cmd, env=base_env(TURBOPUFFER_API_URL=store.url, TURBOPUFFER_API_KEY=KEY,
                                                LAYER_DATA_DIR=str(tmp_path / "gw"), **env),
                              capture_output=True, text=True, timeout=60, check=False)
        assert proc.returncode == 1
        assert "queue database" in proc.stderr and f"schema version {SCHEMA_VERSION + 1}" in proc.stderr, proc.stderr


def test_bad_database_url_exits_2_naming_the_variable(tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "gateway", "serve", "--port", str(free_port()), "--ops-port", "0"]
    proc = subprocess.run(cmd, env=base_env(TURBOPUFFER_API_URL="http://127.0.0.1:9", TURBOPUFFER_API_KEY=KEY,
                                            LAYER_DATA_DIR=str(tmp_path), DATABASE_URL="mysql://x@y/z"),
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 2 and "DATABASE_URL" in proc.stderr, proc.stderr
