"""One KeyStore suite, run against every backend (SQLite file, Aerospike wire test server)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest
from keys_support import aerospike_env

from gateway.keys.model import Entitlement, KeyRecord, now_ms
from gateway.keys.store import KeyStore, open_key_store
from gateway.keys.tokens import lookup_hash, new_token

T = TypeVar("T")


def run(aw: Awaitable[T]) -> T:
    return asyncio.run(_one(aw))


async def _one(aw: Awaitable[T]) -> T:
    return await aw


@pytest.fixture(params=["sqlite", "aerospike"])
def make_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[[], KeyStore]]:
    if request.param == "sqlite":
        env = {}
    else:
        server = request.getfixturevalue("aerospike_server")
        ns = "ks" + uuid.uuid4().hex[:8]
        env = {**aerospike_env(server), "AEROSPIKE_KEYS_SET_PREFIX": ns + "_"}
    yield lambda: open_key_store(str(tmp_path / "data"), env)


def record(name: str = "svc", *, expires_ms: int | None = None, created: int | None = None) -> tuple[str, KeyRecord]:
    token = new_token()
    rec = KeyRecord(
        key_id=str(uuid.uuid4()), name=name, lookup_hash=lookup_hash(token),
        entitlements={"vectorstore.default": Entitlement(scopes=["read"], namespaces=["cohort-*"])},
        expires_after="365d", created_ms=created or now_ms(), owner="team-a", expires_ms=expires_ms,
    )
    return token, rec


async def with_store(make: Callable[[], KeyStore], fn: Callable[[KeyStore], Awaitable[T]]) -> T:
    store = make()
    try:
        return await fn(store)
    finally:
        await store.close()


def test_create_get_find_list(make_store: Callable[[], KeyStore]) -> None:
    token, rec = record()

    async def body(s: KeyStore) -> None:
        g0 = await s.generation()
        await s.create(rec)
        assert await s.generation() > g0
        assert await s.get(rec.key_id) == rec
        assert await s.find(lookup_hash(token)) == rec
        assert await s.find(lookup_hash(new_token())) is None
        assert await s.get(str(uuid.uuid4())) is None
        assert [r.key_id for r in await s.list()] == [rec.key_id]

    run(with_store(make_store, body))


def test_list_is_in_creation_order(make_store: Callable[[], KeyStore]) -> None:
    recs = [record(f"k{i}", created=1_700_000_000_000 + i)[1] for i in (3, 1, 2)]

    async def body(s: KeyStore) -> None:
        for r in recs:
            await s.create(r)
        assert [r.name for r in await s.list()] == ["k1", "k2", "k3"]

    run(with_store(make_store, body))


def test_revoke_is_idempotent_and_bumps_generation(make_store: Callable[[], KeyStore]) -> None:
    token, rec = record()

    async def body(s: KeyStore) -> None:
        await s.create(rec)
        g1 = await s.generation()
        first = await s.revoke(rec.key_id, 1000)
        assert first is not None and first.revoked_ms == 1000
        g2 = await s.generation()
        assert g2 > g1
        again = await s.revoke(rec.key_id, 2000)
        assert again is not None and again.revoked_ms == 1000
        found = await s.find(lookup_hash(token))
        assert found is not None and found.revoked_ms == 1000 and found.phase(now_ms()) == "Revoked"
        assert await s.revoke(str(uuid.uuid4()), 1) is None

    run(with_store(make_store, body))


def test_delete_removes_key_and_lookup(make_store: Callable[[], KeyStore]) -> None:
    token, rec = record()

    async def body(s: KeyStore) -> None:
        await s.create(rec)
        g1 = await s.generation()
        assert await s.delete(rec.key_id) is True
        assert await s.generation() > g1
        assert await s.get(rec.key_id) is None
        assert await s.find(lookup_hash(token)) is None
        assert await s.list() == []
        assert await s.delete(rec.key_id) is False

    run(with_store(make_store, body))


def test_touch_sets_last_seen(make_store: Callable[[], KeyStore]) -> None:
    _, rec = record()

    async def body(s: KeyStore) -> None:
        await s.create(rec)
        await s.touch(rec.key_id, 5000)
        got = await s.get(rec.key_id)
        assert got is not None and got.last_seen_ms == 5000
        await s.touch(str(uuid.uuid4()), 5000)  # unknown ids are ignored

    run(with_store(make_store, body))


def test_rate_window_counts_per_bucket(make_store: Callable[[], KeyStore]) -> None:
    async def body(s: KeyStore) -> list[int]:
        b = "auth:" + uuid.uuid4().hex
        return [await s.hit(b, 7, 60), await s.hit(b, 7, 60), await s.hit(b + "x", 7, 60), await s.hit(b, 8, 60)]

    assert run(with_store(make_store, body)) == [1, 2, 1, 1]


def test_two_store_instances_share_state(make_store: Callable[[], KeyStore]) -> None:
    """Two instances (as two worker processes would hold) see each other's writes and generation bumps."""
    token, rec = record()

    async def body() -> None:
        a, b = make_store(), make_store()
        try:
            g = await b.generation()
            await a.create(rec)
            assert await b.generation() > g
            assert await b.find(lookup_hash(token)) == rec
            await b.revoke(rec.key_id, 42)
            got = await a.get(rec.key_id)
            assert got is not None and got.revoked_ms == 42
        finally:
            await a.close()
            await b.close()

    run(body())
