"""Fixtures for the cache tests: each backend as an env mapping, the Aerospike wire test server as a subprocess."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from support.aerospike import AerospikeServer, start_aerospike
from support.procs import Proc, start_localstore

from gateway.cache import DocumentCache, open_cache

BACKENDS = ["local", "aerospike"]
BREAKER_MS = 300
MAX_RECORD = 4096


def start_server() -> AerospikeServer:
    return start_aerospike()


def aerospike_env(server: AerospikeServer) -> dict[str, str]:
    return {"AEROSPIKE_HOSTS": server.hosts_env}


@pytest.fixture(scope="module")
def aerospike_server() -> Iterator[Any]:
    server = start_server()
    yield server
    server.stop()


@pytest.fixture(params=BACKENDS)
def cache_env(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[dict[str, str]]:
    env = {"LAYER_DATA_DIR": str(tmp_path / "data"), "LAYER_CACHE_MAX_RECORD_BYTES": str(MAX_RECORD),
           "LAYER_CACHE_BREAKER_MS": str(BREAKER_MS)}
    server = None
    if request.param == "aerospike":
        server = request.getfixturevalue("aerospike_server")
        server.clear_hooks()
        env.update(aerospike_env(server))
    yield env
    if server is not None:
        server.clear_hooks()


@pytest.fixture
def ns(request: pytest.FixtureRequest) -> str:
    """A fresh namespace named after the test (its name without the parameters), for reading logs."""
    return f"{request.node.name.split('[')[0][5:25]}-{uuid.uuid4().hex[:10]}"


@contextmanager
def store_with_backend(backend: str, root: Path, key: str) -> Iterator[tuple[Proc, dict[str, str]]]:
    """A local store with `key` under root/store, and the env that points a gateway at the cache backend (starting
    the Aerospike wire test server for "aerospike"); both are stopped on exit."""
    server = start_server() if backend == "aerospike" else None
    try:
        store = start_localstore(root / "store", LOCALSTORE_API_KEY=key)
        try:
            yield store, aerospike_env(server) if server else {}
        finally:
            store.stop()
    finally:
        if server:
            server.stop()


def run_with(env: dict[str, str], body: Callable[[DocumentCache], Awaitable[Any]]) -> Any:
    """Run body(cache) on a fresh event loop with a fresh cache (as a new worker would), then close it."""

    async def main() -> Any:
        cache = open_cache(env)
        try:
            return await body(cache)
        finally:
            await cache.close()

    return asyncio.run(main())
