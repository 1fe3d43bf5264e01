"""The cache never serves what upstream does not hold (docs/cache.md, "The invariant"): one focused test per way it
used to fail, against real gateways (2 workers, or two gateways sharing one cache) in front of the local store, for
both cache backends. Upstream timing is forced with the local store's faults; nothing here sleeps to synchronise."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from support.procs import Proc, start_gateway, start_localstore

from .coherence_support import Api, api, without_stamp
from .conftest import BACKENDS, aerospike_env, start_server

KEY = "coherence-key"
# The gateway gives up on upstream after 1.5 s; faults hold requests for 2.5 s to outlast it, or 0.5-1 s to stay
# within it (far more than a local request takes, so the order they force is the order that happens).
ENV = {"LAYER_UPSTREAM_TIMEOUT_MS": "1500", "LAYER_CACHE_UNKNOWN_MS": "4000", "LAYER_CACHE_BREAKER_MS": "300",
       "AEROSPIKE_TIMEOUT_MS": "200"}
LATE_MS = 2500
READS = 8  # fetches per check: concurrent fresh connections, so both workers answer some


class Stack:
    def __init__(self, gw: Proc, store: Proc, server: Any) -> None:
        self.gw, self.store, self.server = gw, store, server

    def run(self, body: Callable[[Api], Awaitable[Any]], gateway: Proc | None = None) -> Any:
        async def main() -> Any:
            async with api((gateway or self.gw).url, self.store.url, KEY) as a:
                try:
                    return await body(a)
                finally:
                    await a.clear_faults()

        return asyncio.run(main())


@pytest.fixture(scope="module", params=BACKENDS)
def stack(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    root = tmp_path_factory.mktemp(f"coherence-{request.param}")
    server = start_server() if request.param == "aerospike" else None
    store = start_localstore(root / "store", LOCALSTORE_API_KEY=KEY)
    try:
        gw = start_gateway(store.url, KEY, root / "gw", **ENV, **(aerospike_env(server) if server else {}))
    except Exception:
        store.stop()
        if server:
            server.stop()
        raise
    yield Stack(gw, store, server)
    gw.stop()
    store.stop()
    if server:
        server.stop()


async def until(check: Callable[[], Awaitable[Any]], within_s: float = 10.0) -> Any:
    deadline = time.monotonic() + within_s
    while True:
        value = await check()
        if value or time.monotonic() > deadline:
            return value
        await asyncio.sleep(0.02)


async def fault_taken(a: Api) -> bool:
    """True once every fault rule was consumed (the request it holds is inside the local store)."""
    r = await a.call("GET", f"{a.store}/_localstore/faults")
    return not r.body["faults"]


async def reads(a: Api, ns: str, doc_id: str, n: int = READS) -> list[tuple[int, dict[str, Any] | None]]:
    replies = await asyncio.gather(*(a.fetch(ns, doc_id) for _ in range(n)))  # concurrent: both workers answer
    return [(r.status, without_stamp(r.body)) for r in replies]


async def cached(a: Api, ns: str, doc_id: str) -> bool:
    """Fetch until a hit (the write mirror or the first miss's backfill put it in the shared cache)."""
    return bool(await until(lambda: _is_hit(a, ns, doc_id), 5.0))


async def _is_hit(a: Api, ns: str, doc_id: str) -> bool:
    return (await a.fetch(ns, doc_id)).cache == "hit"


def test_a_write_with_unknown_outcome_is_never_served_wrong(stack: Stack, ns: str) -> None:
    """A write that timed out, or failed after reaching upstream, must not leave the cache serving a version
    upstream never took (v=2), nor an old one once upstream took the new one (v=3, v=4)."""
    async def body(a: Api) -> None:
        assert (await a.write(ns, {"upsert_rows": [{"id": "x", "v": 1}]})).status == 200
        assert await cached(a, ns, "x")
        # held past the gateway's timeout, then rejected: upstream never applies v=2
        await a.fault(route="write", namespace=ns, delay_ms=LATE_MS, status=500, count=1)
        r = await a.write(ns, {"upsert_rows": [{"id": "x", "v": 2}]})
        assert r.status == 502 and "timed out" in r.body["message"], r
        assert await reads(a, ns, "x") == [(200, {"v": 1})] * READS
        # held past the gateway's timeout, then applied: upstream takes v=3 after the client saw 502
        await a.fault(route="write", namespace=ns, delay_ms=LATE_MS, count=1)
        assert (await a.write(ns, {"upsert_rows": [{"id": "x", "v": 3}]})).status == 502
        assert await until(lambda: _upstream_is(a, ns, "x", {"v": 3}))
        assert await reads(a, ns, "x") == [(200, {"v": 3})] * READS
        # applied, then answered 500
        await a.fault(route="write", namespace=ns, status=500, apply=True, count=1)
        assert (await a.write(ns, {"upsert_rows": [{"id": "x", "v": 4}]})).status == 500
        assert await reads(a, ns, "x") == [(200, {"v": 4})] * READS

    stack.run(body)


async def _upstream_is(a: Api, ns: str, doc_id: str, attrs: dict[str, Any]) -> bool:
    return without_stamp((await a.upstream_docs(ns)).get(doc_id)) == attrs


def test_b_upserts_reordered_upstream_leave_no_stale_copy(stack: Stack, ns: str) -> None:
    """W1 then W2 are mirrored in that order but reach upstream as W2 then W1: upstream ends with W1's version."""
    async def body(a: Api) -> None:
        assert (await a.write(ns, {"upsert_rows": [{"id": "x", "v": 0}]})).status == 200
        assert await cached(a, ns, "x")
        await a.fault(route="write", namespace=ns, delay_ms=500, count=1)  # within the gateway's timeout
        first = asyncio.ensure_future(a.write(ns, {"upsert_rows": [{"id": "x", "v": 1}]}))
        assert await until(lambda: fault_taken(a))  # W1 is held inside the store
        assert (await a.write(ns, {"upsert_rows": [{"id": "x", "v": 2}]})).status == 200
        assert (await first).status == 200
        final = without_stamp((await a.upstream_docs(ns))["x"])  # {"v": 1} unless W2 took longer than the hold
        assert await reads(a, ns, "x") == [(200, final)] * READS

    stack.run(body)


def test_c_concurrent_patches_keep_every_field(stack: Stack, ns: str) -> None:
    async def body(a: Api) -> None:
        for i in range(12):
            assert (await a.write(ns, {"upsert_rows": [{"id": "p", "a": -1, "b": -1}]})).status == 200
            await a.fetch(ns, "p")  # cached either by the mirror or by this fetch's backfill
            both = await asyncio.gather(a.write(ns, {"patch_rows": [{"id": "p", "a": i}]}),
                                        a.write(ns, {"patch_rows": [{"id": "p", "b": i}]}))
            assert [r.status for r in both] == [200, 200]
            assert await reads(a, ns, "p", 4) == [(200, {"a": i, "b": i})] * 4, f"round {i}"

    stack.run(body)


def test_d_patch_racing_a_delete_never_resurrects(stack: Stack, ns: str) -> None:
    async def body(a: Api) -> None:
        for i in range(12):
            assert (await a.write(ns, {"upsert_rows": [{"id": "d", "v": i}]})).status == 200
            await a.fetch(ns, "d")
            both = await asyncio.gather(a.write(ns, {"patch_rows": [{"id": "d", "w": i}]}),
                                        a.write(ns, {"deletes": ["d"]}))
            assert [r.status for r in both] == [200, 200]
            assert "d" not in await a.upstream_docs(ns)  # either order ends deleted upstream
            assert await reads(a, ns, "d", 4) == [(404, None)] * 4, f"round {i}"

    stack.run(body)


@pytest.mark.parametrize("backend", BACKENDS)
def test_e_a_writers_open_breaker_does_not_skip_its_fence(tmp_path: Path, backend: str) -> None:
    """Two gateways share one cache. Gateway A's breaker opened on an unrelated cache failure; a write through A
    meanwhile must still fence the document in the shared cache, so gateway B never serves the old version."""
    root = tmp_path
    server = start_server() if backend == "aerospike" else None
    store = start_localstore(root / "store", LOCALSTORE_API_KEY=KEY)
    shared = dict(ENV, **(aerospike_env(server) if server else {}))
    gws: list[Proc] = []
    try:
        long_breaker = dict(shared, LAYER_CACHE_BREAKER_MS="20000")
        gws.append(start_gateway(store.url, KEY, root / "gw", workers=1, **long_breaker))
        gws.append(start_gateway(store.url, KEY, root / "gw", workers=1, **shared))
        stack = Stack(gws[0], store, server)
        gw_a, gw_b = gws
        ns = "two-gateways"

        async def body(a: Api) -> None:
            b = Api(a.session, gw_b.url, a.store, KEY)
            assert (await a.write(ns, {"upsert_rows": [{"id": "x", "v": 1}]})).status == 200
            assert await cached(b, ns, "x")
            assert gw_a.ops_url is not None
            await _open_breaker(a, gw_a.ops_url, root, server)
            assert (await a.write(ns, {"upsert_rows": [{"id": "x", "v": 2}]})).status == 200
            assert await reads(b, ns, "x") == [(200, {"v": 2})] * READS

        stack.run(body, gw_a)
    finally:
        for gw in gws:
            gw.stop()
        store.stop()
        if server:
            server.stop()


async def _open_breaker(a: Api, ops_url: str, root: Path, server: Any) -> None:
    """Make one cache call of gateway A fail, then heal the cache: A's breaker stays open (20 s), the cache works.
    The failing call is a backfill, not a fence: a fence would be replayed, and its success closes the breaker."""
    assert (await a.upstream_write("elsewhere", {"upsert_rows": [{"id": "y", "v": 1}]})).status == 200
    if server is None:
        locker = sqlite3.connect(root / "gw" / "cache.sqlite3", isolation_level=None)
        locker.execute("begin immediate")  # another process holds the write lock: the backfill times out
        try:
            assert (await a.fetch("elsewhere", "y")).status == 200
        finally:
            locker.execute("rollback")
            locker.close()
    else:
        server.fail(1, count=1)
        assert (await a.fetch("elsewhere", "y")).status == 200
        server.clear_hooks()

    async def breaker_open() -> bool:  # A's worker publishes its health to the ops listener every second
        workers = (await a.call("GET", f"{ops_url}/health")).body["workers"]
        return bool(workers) and workers[0]["aerospike"]["connected"] is False

    assert await until(breaker_open), "gateway A's cache breaker did not open"


def test_f_namespace_delete_stops_an_in_flight_backfill(stack: Stack, ns: str) -> None:
    """A fetch read the document upstream just before the namespace was deleted and backfills after it."""
    async def body(a: Api) -> None:
        assert (await a.upstream_write(ns, {"upsert_rows": [{"id": "x", "v": 1}]})).status == 200
        await a.fault(route="query", namespace=ns, after_ms=1000, count=1)  # read now, answered late
        fetch = asyncio.ensure_future(a.fetch(ns, "x"))
        assert await until(lambda: fault_taken(a))
        assert (await a.delete_namespace(ns)).status == 200
        assert (await fetch).status == 200  # concurrent with the delete: the old document is a fair answer
        assert [status for status, _ in await reads(a, ns, "x")] == [404] * READS

    stack.run(body)


def test_f_eviction_keeps_young_fences(tmp_path: Path) -> None:
    """A full embedded cache evicts old documents, never the fence a delete left moments ago."""
    store = start_localstore(tmp_path / "store", LOCALSTORE_API_KEY=KEY)
    gw = None
    try:
        gw = start_gateway(store.url, KEY, tmp_path / "gw", LAYER_CACHE_MAX_BYTES=str(64 * 1024), **ENV)
        ns = "evict"

        async def body(a: Api) -> None:
            assert (await a.upstream_write(ns, {"upsert_rows": [{"id": "x", "v": 1}]})).status == 200
            await a.fault(route="query", namespace=ns, after_ms=1000, count=1)
            fetch = asyncio.ensure_future(a.fetch(ns, "x"))
            assert await until(lambda: fault_taken(a))
            assert (await a.write(ns, {"deletes": ["x"]})).status == 200
            for batch in range(3):  # ~300 KiB of new documents through a 64 KiB cache
                rows = [{"id": f"pad{batch}-{i}", "pad": "p" * 1000} for i in range(100)]
                assert (await a.write(ns, {"upsert_rows": rows})).status == 200
            assert (await fetch).status == 200
            assert [status for status, _ in await reads(a, ns, "x")] == [404] * READS

        Stack(gw, store, None).run(body)
    finally:
        if gw is not None:
            gw.stop()
        store.stop()
