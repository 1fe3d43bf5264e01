"""Faults: the cache answers an error fast, the breaker bounds added latency, and it recovers by itself."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway.cache import CacheDoc, CacheError, DocumentCache

from .conftest import BREAKER_MS, aerospike_env, run_with, start_server

TIMEOUT_MS = 200
# What one failed call may cost: the client deadline plus scheduling slack on a busy 2-core box.
ERROR_BOUND_S = TIMEOUT_MS / 1000 * 2 + 0.15
FAST_S = 0.02  # a call while the breaker is open


def env_for(tmp_path: Path, **extra: str) -> dict[str, str]:
    return {"LAYER_DATA_DIR": str(tmp_path / "data"), "LAYER_CACHE_BREAKER_MS": str(BREAKER_MS),
            "AEROSPIKE_TIMEOUT_MS": str(TIMEOUT_MS), **extra}


async def timed_error(call: Any) -> tuple[CacheError, float]:
    t0 = time.perf_counter()
    with pytest.raises(CacheError) as info:
        await call
    return info.value, time.perf_counter() - t0


async def breaker_bounds_latency(c: DocumentCache, ns: str) -> None:
    """While open, every call fails in well under a millisecond-scale bound, and nothing reaches the backend."""
    t0 = time.perf_counter()
    for i in range(50):
        err, took = await timed_error(c.get(ns, f"k{i}"))
        assert err.kind == "breaker_open" and took < FAST_S
    assert time.perf_counter() - t0 < 0.25


async def wait_recovered(c: DocumentCache, ns: str, within_s: float) -> float:
    """Poll (bounded) until a read succeeds; returns how long it took."""
    t0 = time.perf_counter()
    while True:
        try:
            await c.get(ns, "probe")
            return time.perf_counter() - t0
        except CacheError:
            if time.perf_counter() - t0 > within_s:
                raise
            await _sleep(0.05)


async def _sleep(s: float) -> None:
    import asyncio

    await asyncio.sleep(s)


# -- embedded backend -------------------------------------------------------------------------------------------

def test_local_locked_database_fails_fast_then_replays_invalidations(tmp_path: Path) -> None:
    env = env_for(tmp_path, LAYER_CACHE_MAX_RECORD_BYTES="4096")

    async def body(c: Any) -> None:
        await c.put_many("ns", [CacheDoc("stale", {"v": 1}), CacheDoc("other", {"v": 2})])
        locker = sqlite3.connect(c.path, isolation_level=None)
        locker.execute("begin immediate")  # another process holds the write lock
        try:
            _, took = await timed_error(c.delete_many("ns", ["stale"]))
            assert took < ERROR_BOUND_S and not c.status().connected
            await breaker_bounds_latency(c, "ns")
        finally:
            locker.execute("rollback")
            locker.close()
        await _sleep(BREAKER_MS / 1000 + 0.05)
        assert await c.get("ns", "other") == {"v": 2}  # the half-open probe succeeds
        assert c.status().connected and c.status().generation == 2
        await _sleep(0.05)
        # the delete that failed during the outage was replayed on recovery: no stale copy survives
        assert await c.get_many("ns", ["stale", "other"]) == {"other": {"v": 2}}

    run_with(env, body)


def test_local_size_bound_evicts_oldest(tmp_path: Path) -> None:
    env = env_for(tmp_path, LAYER_CACHE_MAX_BYTES=str(64 * 1024))

    async def body(c: Any) -> None:
        for batch in range(20):
            await c.put_many("ns", [CacheDoc(f"b{batch}-{i}", {"pad": "x" * 900}) for i in range(10)])
        assert c.stored_bytes() <= 64 * 1024
        assert c.evicted_total > 0
        assert await c.get("ns", "b0-0") is None  # oldest written went first
        assert await c.get("ns", "b19-9") == {"pad": "x" * 900}

    run_with(env, body)


# -- Aerospike ---------------------------------------------------------------------------------------------------

@pytest.fixture
def server() -> Iterator[Any]:
    srv = start_server()
    yield srv
    srv.stop()


def test_aerospike_refused_port_fails_fast(tmp_path: Path) -> None:
    from support.procs import free_port

    env = env_for(tmp_path, AEROSPIKE_HOSTS=f"127.0.0.1:{free_port()}")

    async def body(c: DocumentCache) -> None:
        err, took = await timed_error(c.get("ns", "a"))
        assert took < ERROR_BOUND_S and err.kind != "breaker_open"
        assert c.status().connected is False and c.status().generation == 0 and c.status().last_error
        await breaker_bounds_latency(c, "ns")
        await _sleep(BREAKER_MS / 1000 + 0.05)
        _, took = await timed_error(c.put_many("ns", [CacheDoc("a", {})]))  # the probe fails again, fast
        assert took < ERROR_BOUND_S

    run_with(env, body)


def test_aerospike_hung_server_times_out_and_breaker_bounds_latency(tmp_path: Path, server: Any) -> None:
    env = env_for(tmp_path, **aerospike_env(server))

    async def body(c: DocumentCache) -> None:
        await c.put_many("ns", [CacheDoc("a", {"v": 1})])
        server.delay(1000)
        _, took = await timed_error(c.get("ns", "a"))
        assert took < ERROR_BOUND_S, took
        await breaker_bounds_latency(c, "ns")
        await _sleep(BREAKER_MS / 1000 + 0.05)
        _, took = await timed_error(c.get_many("ns", ["a", "b"]))  # batch: checked result codes, not a raise
        assert took < ERROR_BOUND_S
        server.clear_hooks()
        await _sleep(BREAKER_MS / 1000 + 0.05)
        assert await c.get("ns", "a") == {"v": 1}
        assert c.status().connected and c.status().generation == 2

    run_with(env, body)


def test_aerospike_swallowed_batch_is_an_error(tmp_path: Path, server: Any) -> None:
    env = env_for(tmp_path, **aerospike_env(server))

    async def body(c: DocumentCache) -> None:
        await c.put_many("ns", [CacheDoc("a", {"v": 1})])
        server.drop()
        _, took = await timed_error(c.get_many("ns", ["a", "b", "c"]))
        assert took < ERROR_BOUND_S
        await _sleep(BREAKER_MS / 1000 + 0.05)
        _, took = await timed_error(c.put_many("ns", [CacheDoc("a", {"v": 2})]))
        assert took < ERROR_BOUND_S

    run_with(env, body)


@pytest.mark.parametrize("code", [1, 8, 22])
def test_aerospike_injected_error_codes(tmp_path: Path, server: Any, code: int) -> None:
    env = env_for(tmp_path, **aerospike_env(server))

    async def body(c: DocumentCache) -> None:
        await c.put_many("ns", [CacheDoc("a", {"v": 1})])
        server.fail(code)
        err, took = await timed_error(c.get("ns", "a"))
        assert took < ERROR_BOUND_S and str(code) in str(err)
        server.clear_hooks()
        await _sleep(BREAKER_MS / 1000 + 0.05)
        assert await c.get("ns", "a") == {"v": 1}

    run_with(env, body)


def test_aerospike_killed_mid_load_recovers_by_itself(tmp_path: Path, server: Any) -> None:
    env = env_for(tmp_path, **aerospike_env(server))

    async def body(c: DocumentCache) -> None:
        ok = errors = 0
        for i in range(40):
            if i == 10:
                server.kill()
            if i == 20:
                server.restart()
            try:
                await c.put_many("ns", [CacheDoc(f"d{i}", {"i": i})])
                ok += 1
            except CacheError:
                errors += 1
            await _sleep(0.02)
        assert ok >= 10 and errors >= 1
        took = await wait_recovered(c, "ns", within_s=5.0)
        assert took < 5.0
        await c.put_many("ns", [CacheDoc("after", {"ok": True})])
        assert await c.get("ns", "after") == {"ok": True}
        assert c.status().connected and c.status().generation >= 2

    run_with(env, body)


def test_aerospike_outage_invalidations_are_replayed(tmp_path: Path, server: Any) -> None:
    """A document deleted while the cache was unreachable must not be served once it answers again."""
    env = env_for(tmp_path, **aerospike_env(server))

    async def body(c: DocumentCache) -> None:
        await c.put_many("ns", [CacheDoc("stale", {"v": 1}), CacheDoc("other", {"v": 2})])
        server.delay(1000)
        await timed_error(c.delete_many("ns", ["stale"]))
        server.clear_hooks()
        await _sleep(BREAKER_MS / 1000 + 0.05)
        assert await c.get("ns", "other") == {"v": 2}
        await _sleep(0.1)
        assert await c.get_many("ns", ["stale", "other"]) == {"other": {"v": 2}}

    run_with(env, body)
