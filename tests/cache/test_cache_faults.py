"""Faults: the cache answers an error within its deadline, the breaker keeps calls off a failing backend, fences
that could not land are replayed, and it all recovers by itself.

Timing bounds here are ten times the cache deadline (a busy 2-core box must not fail them); what the breaker does is
checked by counting the calls that reached the backend, not by timing them.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support.wal import smallest_wal_once_unpinned

from gateway import sqlite_wal
from gateway.cache import CacheError, DocumentCache, local, open_cache
from gateway.cache import coherence as co

from .cache_ops import begin, delete, doc, finish, get, get_many, upsert
from .conftest import BREAKER_MS, aerospike_env, run_with, start_server

TIMEOUT_MS = 200
ERROR_BOUND_S = TIMEOUT_MS / 1000 * 10  # a failed call is bounded by the deadline (~0.2 s); 10x for a busy box
HUNG_MS = 30_000  # a hung server answers far later than the bound, so only the deadline can end the call
BREAKER_S = BREAKER_MS / 1000


def env_for(tmp_path: Path, **extra: str) -> dict[str, str]:
    return {"LAYER_DATA_DIR": str(tmp_path / "data"), "LAYER_CACHE_BREAKER_MS": str(BREAKER_MS),
            "AEROSPIKE_TIMEOUT_MS": str(TIMEOUT_MS), "LAYER_CACHE_MAX_RECORD_BYTES": "4096", **extra}


async def timed_error(call: Any) -> tuple[CacheError, float]:
    t0 = time.perf_counter()
    with pytest.raises(CacheError) as info:
        await call
    return info.value, time.perf_counter() - t0


async def breaker_keeps_calls_off_the_backend(c: DocumentCache, ns: str) -> None:
    """While open, every read fails as breaker_open and none reaches the backend (counted, not timed)."""
    seen: list[str] = []
    c.runner.observe = lambda op, set_, status, seconds: seen.append(status)
    try:
        for i in range(50):
            err, _ = await timed_error(c.lookup(ns, [f"k{i}"]))
            assert err.kind == "breaker_open"
    finally:
        c.runner.observe = None
    assert seen == ["breaker_open"] * 50


async def until(check: Any, within_s: float = 10.0) -> Any:
    deadline = time.monotonic() + within_s
    while True:
        try:
            value = await check()
        except CacheError:
            value = None
        if value or time.monotonic() > deadline:
            return value
        await asyncio.sleep(0.05)


async def other_worker_sees(env: dict[str, str], ns: str, ids: list[str]) -> dict[str, dict[str, Any]]:
    """What another worker (a fresh cache object, nothing in its memory) is served."""
    other = open_cache(env)
    try:
        return await get_many(other, ns, ids)
    finally:
        await other.close()


# -- embedded backend -------------------------------------------------------------------------------------------

def test_local_locked_database_fails_in_time_then_replays_fences(tmp_path: Path) -> None:
    env = env_for(tmp_path)

    async def body(c: Any) -> None:
        await upsert(c, "ns", [doc("stale", v=1), doc("other", v=2)])
        locker = sqlite3.connect(c.path, isolation_level=None)
        locker.execute("begin immediate")  # another process holds the write lock
        try:
            _, took = await timed_error(_begin_delete(c))
            assert took < ERROR_BOUND_S and not c.status().connected
            assert await get(c, "ns", "stale") is None  # this worker remembers the fence: a miss here
            await breaker_keeps_calls_off_the_backend(c, "ns")
        finally:
            locker.execute("rollback")
            locker.close()
        # the fence that failed during the outage is replayed: no worker is served the stale copy
        assert await until(lambda: _only_other(env)), "the remembered fence was never replayed"
        assert c.runner.remembered == 0 and c.status().connected and c.status().generation == 2

    run_with(env, body)


async def _begin_delete(c: DocumentCache) -> None:
    from gateway.cache import mirror

    plan = await mirror.before_write(c, "ns", {"deletes": ["stale"]})
    assert plan.fenced is None  # the cache did not take the fence: remembered for replay
    raise CacheError("fence not taken")


async def _only_other(env: dict[str, str]) -> bool:
    return await other_worker_sees(env, "ns", ["stale", "other"]) == {"other": {"v": 2}}


def test_local_size_bound_evicts_oldest_but_keeps_young_fences(tmp_path: Path) -> None:
    env = env_for(tmp_path, LAYER_CACHE_MAX_BYTES=str(64 * 1024))

    async def body(c: Any) -> None:
        await delete(c, "ns", ["fenced"])  # young: within the fill window
        for batch in range(20):
            await upsert(c, "ns", [doc(f"b{batch}-{i}", pad="x" * 900) for i in range(10)])
        assert c.stored_bytes() <= 64 * 1024
        assert c.evicted_total > 0
        assert await get(c, "ns", "b0-0") is None  # oldest written lost its data first
        assert await get(c, "ns", "b19-9") == {"pad": "x" * 900}
        tok = (await c.lookup("ns", ["fenced"])).tokens["fenced"]
        assert tok.ver != 0  # the fence survived: a fill read before the delete cannot land as "absent"

    run_with(env, body)


def test_local_evicts_old_records_whole(tmp_path: Path) -> None:
    """Records older than the fill window and without a fence go entirely (rows, not only their data)."""
    env = env_for(tmp_path, LAYER_CACHE_MAX_BYTES=str(64 * 1024))

    async def body(c: Any) -> None:
        await upsert(c, "ns", [doc(f"old-{i}", pad="x" * 900) for i in range(40)])
        aged = sqlite3.connect(c.path, isolation_level=None)  # as if written an hour ago
        aged.execute("update docs set seq = seq - ?", (3600 * 10**9,))
        aged.close()
        for batch in range(10):
            await upsert(c, "ns", [doc(f"b{batch}-{i}", pad="x" * 900) for i in range(10)])
        assert c.stored_bytes() <= 64 * 1024
        assert (await c.lookup("ns", ["old-0"])).tokens["old-0"].ver == 0  # the row is gone

    run_with(env, body)


def test_local_small_writes_commit_on_the_loop_and_the_byte_total_holds(tmp_path: Path) -> None:
    """A few ids commit inline (no pool call); past the bound, or with many ids, the pool does it. Whatever path
    and whatever statement changed sizes (write, eviction, collection), the byte total is the records' sum."""
    env = env_for(tmp_path, LAYER_CACHE_MAX_BYTES=str(64 * 1024))

    async def body(c: Any) -> None:
        await upsert(c, "ns", [doc("first", v=0)])  # the first call connects, in the pool
        calls: list[str] = []
        c.runner.observe = lambda op, set_, status, seconds: calls.append(op)
        for i in range(5):
            await upsert(c, "ns", [doc(f"one-{i}", v=i)])
        assert calls == []
        c.runner.observe = None
        assert await get(c, "ns", "one-4") == {"v": 4}
        for batch in range(12):
            await upsert(c, "ns", [doc(f"b{batch}-{i}", pad="x" * 900) for i in range(10)])
        assert c.evicted_total > 0 and c.stored_bytes() <= 64 * 1024
        await upsert(c, "ns", [doc(f"many-{i}", pad="y" * 40) for i in range(50)])
        await delete(c, "ns", ["many-0", "many-1"])
        await c.reset("ns", 0)
        assert await c.collect("ns") > 0
        conn = sqlite3.connect(c.path)
        try:
            assert c.stored_bytes() == conn.execute("select total(size) from docs").fetchone()[0]
        finally:
            conn.close()

    run_with(env, body)



def test_local_small_writes_made_together_share_one_commit_or_wait_for_the_pool_together(tmp_path: Path) -> None:
    """Small writes that concurrent requests make in one loop iteration commit in one inline transaction, each with
    its own result. While another process holds the write lock, none is committed inline: all go to the pool,
    wait there for the lock, and land."""
    env = env_for(tmp_path, AEROSPIKE_TIMEOUT_MS="5000")

    async def body(c: Any) -> None:
        await upsert(c, "ns", [doc("first", v=0)])  # the first call connects, in the pool
        statements: list[str] = []
        c._inline_write_conn().set_trace_callback(statements.append)
        calls: list[str] = []
        c.runner.observe = lambda op, set_, status, seconds: calls.append(op)
        begun = await asyncio.gather(*(begin(c, "ns", [f"t-{i}"]) for i in range(10)))
        assert len({tokens[f"t-{i}"].ver for i, (_, tokens) in enumerate(begun)}) == 10  # one counter, moved once
        await asyncio.gather(*(finish(c, "ns", b, {f"t-{i}": co.Upsert({"v": i}, None)}) for i, b in enumerate(begun)))
        assert calls == [] and statements.count("commit") == 2  # ten begins, then ten finishes
        assert await get_many(c, "ns", [f"t-{i}" for i in range(10)], ["v"]) == \
            {f"t-{i}": {"v": i} for i in range(10)}

        blocker = sqlite3.connect(c.path, isolation_level=None)
        blocker.execute("begin immediate")
        try:
            writes = asyncio.gather(*(upsert(c, "ns", [doc(f"u-{i}", v=i)]) for i in range(5)))
            await asyncio.sleep(0.1)  # the inline try finds the lock taken; the pool waits for it (5 s at most)
            assert statements.count("commit") == 2
            blocker.execute("rollback")
            await writes
        finally:
            blocker.close()
        assert "write_batch" in calls
        assert await get_many(c, "ns", [f"u-{i}" for i in range(5)], ["v"]) == {f"u-{i}": {"v": i} for i in range(5)}

    run_with(env, body)



def test_local_a_change_whose_caller_was_cancelled_still_lands_when_its_batch_goes_to_the_pool(tmp_path: Path) -> None:
    """A request cancelled while its fence waits for this loop iteration's commit: when that commit finds the lock
    taken, the fence still goes to the pool (as it would have without the wait) instead of being dropped."""
    env = env_for(tmp_path, AEROSPIKE_TIMEOUT_MS="5000")

    async def body(c: Any) -> None:
        await upsert(c, "ns", [doc("first", v=0)])  # the first call connects, in the pool
        assert (await c.lookup("ns", ["x"])).tokens["x"].fill
        blocker = sqlite3.connect(c.path, isolation_level=None)
        blocker.execute("begin immediate")
        try:
            kept = asyncio.create_task(c.update("ns", {"y": co.settle(0)}, fence=True))
            gone = asyncio.create_task(c.update("ns", {"x": co.settle(co.now_ms() + 60_000)}, fence=True))
            await asyncio.sleep(0)  # both joined this iteration's commit
            gone.cancel()
            await asyncio.sleep(0.1)  # that commit found the lock taken; the pool waits for it (5 s at most)
            blocker.execute("rollback")
            await kept
        finally:
            blocker.close()
        assert gone.cancelled()
        assert not (await c.lookup("ns", ["x"])).tokens["x"].fill  # x's unknown outcome landed: no fill

    run_with(env, body)


@pytest.mark.parametrize("ids", [1, 40], ids=["inline", "pool"])
def test_local_wal_file_past_its_bound_is_truncated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, ids: int) -> None:
    """Under steady writes a passive checkpoint never catches up, SQLite never restarts its log, and the WAL file grew
    for as long as the writes went on (148 MB after 5 s of 1-row writes). Past its bound, a checkpoint (every 64
    commits: small writes' inline ones, or the pool's) copies it all and truncates the file."""
    monkeypatch.setattr(sqlite_wal, "WAL_MAX_BYTES", 256 << 10)
    env = env_for(tmp_path, AEROSPIKE_TIMEOUT_MS="5000")

    async def body(c: Any) -> None:
        await upsert(c, "ns", [doc("first", v=0)])  # the first call creates the file
        pinned, smallest = await smallest_wal_once_unpinned(
            c.path, "docs", lambda i: upsert(c, "ns", [doc(f"d-{i}-{j}", v=i) for j in range(ids)]))
        assert pinned > sqlite_wal.WAL_MAX_BYTES and smallest < pinned // 2

    run_with(env, body)


def test_local_a_checkpoint_slower_than_the_deadline_neither_fails_writes_nor_opens_the_breaker(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A checkpoint (a truncating one copies the whole WAL and fsyncs) may take longer than the cache deadline: it
    runs outside the breaker and the deadline, so the cache keeps answering meanwhile. Before, a slow checkpoint
    timed out as a cache call and opened the breaker (reads cold for LAYER_CACHE_BREAKER_MS)."""
    started: list[float] = []

    def slow_checkpoint(conn: sqlite3.Connection, db_path: str) -> None:
        started.append(time.monotonic())
        time.sleep(TIMEOUT_MS / 1000 * 4)  # past the deadline of a call (twice the timeout)

    monkeypatch.setattr(local, "checkpoint", slow_checkpoint)

    async def body(c: Any) -> None:
        for i in range(sqlite_wal.CHECKPOINT_EVERY + 1):  # one inline commit each: the last ones start a checkpoint
            await upsert(c, "ns", [doc(f"d-{i}", v=i)])
        assert await until(lambda: asyncio.sleep(0, bool(started)))
        await asyncio.sleep(TIMEOUT_MS / 1000 * 3)  # it has outlived the deadline, and still runs
        assert c.status().connected
        assert await get(c, "ns", "d-0") == {"v": 0}  # served from the cache: no breaker_open, no error

    run_with(env_for(tmp_path), body)


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
        err, took = await timed_error(c.lookup("ns", ["a"]))
        assert took < ERROR_BOUND_S and err.kind != "breaker_open"
        assert c.status().connected is False and c.status().generation == 0 and c.status().last_error
        await breaker_keeps_calls_off_the_backend(c, "ns")
        await asyncio.sleep(BREAKER_S + 0.05)  # the breaker's pause is over: the next call probes
        _, took = await timed_error(upsert(c, "ns", [doc("a")]))  # the probe fails again, within its deadline
        assert took < ERROR_BOUND_S

    run_with(env, body)


def test_aerospike_hung_server_times_out_and_breaker_bounds_latency(tmp_path: Path, server: Any) -> None:
    env = env_for(tmp_path, **aerospike_env(server))

    async def body(c: DocumentCache) -> None:
        await upsert(c, "ns", [doc("a", v=1)])
        server.delay(HUNG_MS)
        _, took = await timed_error(c.lookup("ns", ["a"]))
        assert took < ERROR_BOUND_S, took
        await breaker_keeps_calls_off_the_backend(c, "ns")
        await asyncio.sleep(BREAKER_S + 0.05)
        _, took = await timed_error(c.lookup("ns", ["a", "b"]))  # batch: checked result codes, not a raise
        assert took < ERROR_BOUND_S
        server.clear_hooks()
        assert await until(lambda: get(c, "ns", "a")) == {"v": 1}
        assert c.status().connected and c.status().generation == 2

    run_with(env, body)


def test_aerospike_swallowed_batch_is_an_error(tmp_path: Path, server: Any) -> None:
    env = env_for(tmp_path, **aerospike_env(server))

    async def body(c: DocumentCache) -> None:
        await upsert(c, "ns", [doc("a", v=1)])
        server.drop()
        _, took = await timed_error(c.lookup("ns", ["a", "b", "c"]))
        assert took < ERROR_BOUND_S
        await asyncio.sleep(BREAKER_S + 0.05)
        _, took = await timed_error(upsert(c, "ns", [doc("a", v=2)]))
        assert took < ERROR_BOUND_S

    run_with(env, body)


@pytest.mark.parametrize("code", [1, 8, 22])
def test_aerospike_injected_error_codes(tmp_path: Path, server: Any, code: int) -> None:
    env = env_for(tmp_path, **aerospike_env(server))

    async def body(c: DocumentCache) -> None:
        await upsert(c, "ns", [doc("a", v=1)])
        server.fail(code)
        err, took = await timed_error(c.lookup("ns", ["a"]))
        assert took < ERROR_BOUND_S and str(code) in str(err)
        server.clear_hooks()
        assert await until(lambda: get(c, "ns", "a")) == {"v": 1}

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
                await upsert(c, "ns", [doc(f"d{i}", i=i)])
                ok += 1
            except CacheError:
                errors += 1
            await asyncio.sleep(0.02)
        assert ok >= 10 and errors >= 1
        assert await until(lambda: _write_and_read(c)), "the cache did not recover within 10 s"
        assert c.status().connected and c.status().generation >= 2

    run_with(env, body)


async def _write_and_read(c: DocumentCache) -> bool:
    await upsert(c, "ns", [doc("after", ok=True)])
    return await get(c, "ns", "after") == {"ok": True}


def test_aerospike_outage_fences_are_replayed(tmp_path: Path, server: Any) -> None:
    """A document written while the cache was unreachable is not served by any worker once it answers again."""
    env = env_for(tmp_path, **aerospike_env(server))

    async def body(c: DocumentCache) -> None:
        await upsert(c, "ns", [doc("stale", v=1), doc("other", v=2)])
        server.delay(HUNG_MS)
        await timed_error(_begin_delete(c))
        server.clear_hooks()
        assert await until(lambda: _only_other(env)), "the remembered fence was never replayed"

    run_with(env, body)
