"""The queue's state machines straight on each backend (no HTTP): retries with backoff, the last attempt, lease
expiry, re-runs after a write, reset, and the pure helpers (backoff, spec echo, cycles, discovery predicate)."""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import Iterator
from typing import Any

import pytest
from queue_support import BACKENDS, pg_schema

from gateway.queue import items
from gateway.queue.discovery import not_done_filter
from gateway.queue.schema import POSTGRES, SQLITE
from gateway.queue.spec import RetrySpec, backoff_ms, find_cycle, normalised, parse_spec

NOW = 1_000_000
RETRY = RetrySpec(max_attempts=3, initial_backoff_seconds=5, max_backoff_seconds=300)


@pytest.fixture(params=BACKENDS)
def run(request: pytest.FixtureRequest) -> Iterator[Any]:
    """run(fn, *args) -> fn's result, in one write transaction on a fresh database of the backend."""
    if request.param == "sqlite":
        from gateway.queue.sqlite import SqliteDb, migrate

        path = tempfile.mkdtemp() + "/queue.sqlite3"
        migrate(path)
        yield _runner(lambda: SqliteDb(path))
        return
    from gateway.queue.postgres import PostgresDb
    from gateway.queue.postgres import migrate as pg_migrate

    with pg_schema() as url:
        asyncio.run(pg_migrate(url))
        yield _runner(lambda: PostgresDb(url, 5000))


def _runner(make: Any) -> Any:
    def run(fn: Any, *args: Any) -> Any:
        async def once() -> Any:
            db = make()
            try:
                return await db.write(fn, *args)
            finally:
                await db.close()
        return asyncio.run(once())
    return run


def _setup(run: Any, n: int = 2) -> list[tuple[str, str]]:
    assert run(items.create_udf, "u", "_hevlayer_udf_u", "{}", 60_000, NOW) is not None
    keyed = [(f"k{i}", f'"k{i}"') for i in range(n)]
    assert run(items.enqueue, "u", "ns", keyed, "discovery", NOW) == n
    assert run(items.enqueue, "u", "ns", keyed, "discovery", NOW) == 0  # existing items keep their state
    return [("ns", k) for k, _ in keyed]


def _state(run: Any, key: str) -> Any:
    async def read(tx: Any) -> Any:
        return await tx.row("SELECT state, attempts, ready_at, failed_reason, last_error, rerun FROM udf_items "
                            "WHERE udf_id = 'u' AND doc_key = :k", k=key)
    return run(read)


def test_transient_failures_back_off_then_fail_at_max_attempts(run: Any) -> None:
    _setup(run, 1)
    now = NOW
    for attempt in (1, 2):
        picked, _ = run(items.claim, "u", "w", 10, 60_000, RETRY.max_attempts, now)
        assert [r["doc_key"] for r in picked] == ["k0"]
        assert run(items.fail, "u", "w", {("ns", "k0"): ("transient", "boom")}, RETRY, now)["retry"] == 1
        row = _state(run, "k0")
        assert (row["state"], row["attempts"], row["ready_at"], row["last_error"]) == (
            "pending", attempt, now + backoff_ms(attempt, RETRY), "boom")
        assert run(items.claim, "u", "w", 10, 60_000, RETRY.max_attempts, now)[0] == []  # not ready during backoff
        now = row["ready_at"]
    run(items.claim, "u", "w", 10, 60_000, RETRY.max_attempts, now)
    assert run(items.fail, "u", "w", {("ns", "k0"): ("transient", "again")}, RETRY, now) == {
        "retry": 0, "rerun": 0, "permanent": 0, "max_attempts": 1}
    row = _state(run, "k0")
    assert (row["state"], row["failed_reason"]) == ("failed", "max_attempts")
    assert run(items.reset_failed, "u", now) == 1
    assert (_state(run, "k0")["state"], _state(run, "k0")["attempts"]) == ("pending", 0)


def test_expired_lease_returns_the_item_and_the_last_attempt_fails_it(run: Any) -> None:
    keys = _setup(run, 1)
    one = RetrySpec(max_attempts=2)
    assert len(run(items.claim, "u", "a", 10, 1000, one.max_attempts, NOW)[0]) == 1
    assert run(items.heartbeat, "u", "b", keys, NOW) == 0  # not the owner
    picked, expired = run(items.claim, "u", "b", 10, 1000, one.max_attempts, NOW + 1001)
    assert [r["doc_key"] for r in picked] == ["k0"] and expired == 0
    assert run(items.finish, "u", "a", keys, [], [], [], NOW + 1002) == 0  # the old owner's completion is refused
    picked, expired = run(items.claim, "u", "c", 10, 1000, one.max_attempts, NOW + 3000)
    assert picked == [] and expired == 1
    assert (_state(run, "k0")["state"], _state(run, "k0")["failed_reason"]) == ("failed", "lease_expired")


def test_a_write_while_processing_reruns_the_item_after_it_completes(run: Any) -> None:
    keys = _setup(run, 2)
    run(items.claim, "u", "w", 10, 60_000, 8, NOW)
    assert run(items.revive, "u", "ns", [("k0", '"k0"')], NOW + 1) == 1
    assert _state(run, "k0")["rerun"] == 1 and _state(run, "k0")["state"] == "processing"
    assert run(items.finish, "u", "w", keys, [], [], [], NOW + 2) == 2
    assert (_state(run, "k0")["state"], _state(run, "k0")["attempts"]) == ("pending", 0)
    assert _state(run, "k1") is None  # done is deletion


def test_permanent_failure_fails_unless_rewritten_and_revive_clears_it(run: Any) -> None:
    _setup(run, 2)
    run(items.claim, "u", "w", 10, 60_000, 8, NOW)
    run(items.revive, "u", "ns", [("k1", '"k1"')], NOW)
    out = run(items.fail, "u", "w", {("ns", "k0"): ("permanent", "bad"), ("ns", "k1"): ("permanent", "bad")},
              RETRY, NOW)
    assert out == {"retry": 0, "rerun": 1, "permanent": 1, "max_attempts": 0}
    assert (_state(run, "k0")["state"], _state(run, "k0")["failed_reason"]) == ("failed", "permanent")
    assert _state(run, "k1")["state"] == "pending"
    run(items.revive, "u", "ns", [("k0", '"k0"')], NOW + 5)
    row = _state(run, "k0")
    assert (row["state"], row["attempts"], row["failed_reason"], row["last_error"]) == ("pending", 0, None, None)


def test_claim_order_is_ready_time_then_namespace_then_id(run: Any) -> None:
    run(items.create_udf, "u", "_hevlayer_udf_u", "{}", 60_000, NOW)
    run(items.enqueue, "u", "b", [("2", "2"), ("1", "1")], "discovery", NOW)
    run(items.enqueue, "u", "a", [("9", "9")], "discovery", NOW)
    run(items.enqueue, "u", "a", [("0", "0")], "discovery", NOW + 1)
    picked, _ = run(items.claim, "u", "w", 3, 1000, 8, NOW + 5)
    assert [(r["namespace"], r["doc_key"], r["doc_id"]) for r in picked] == [("a", "9", "9"), ("b", "1", "1"),
                                                                               ("b", "2", "2")]


@pytest.mark.parametrize(("attempt", "seconds"), [(1, 5), (2, 10), (3, 20), (4, 40), (5, 80), (6, 160), (7, 300),
                                                   (50, 300)])
def test_default_backoff_schedule(attempt: int, seconds: int) -> None:
    assert backoff_ms(attempt, RetrySpec()) == seconds * 1000


def test_spec_echo_fills_every_default_and_drops_unknown_keys() -> None:
    spec = parse_spec({"target_namespaces": [], "inputs": [], "version": "v1", "worker": {"batch_size": 32,
                       "timeout_seconds": 30, "dispatch": "x"}, "triggers": ["discovery"], "invalidates": [],
                       "scaling": {}, "paused": True}, "u")
    assert normalised(spec) == {
        "target_namespaces": [], "inputs": [], "version": "v1",
        "worker": {"batch_size": 32, "timeout_seconds": 30},
        "schedule": {"discovery_interval_seconds": 60, "lease_seconds": 120, "max_in_flight_batches": 8,
                     "max_concurrent_scans": 4},
        "retry": {"max_attempts": 8, "initial_backoff_seconds": 5, "max_backoff_seconds": 300},
        "triggers": ["discovery"], "invalidates": []}


def test_invalidation_cycles() -> None:
    assert find_cycle("a", ["b"], {"b": ["c"], "c": []}) is None
    assert find_cycle("a", ["b"], {"b": ["c"], "c": ["a"]}) == ["a", "b", "c", "a"]


def test_discovery_predicate_names_only_markers_the_schema_has() -> None:
    spec = parse_spec({"worker": {}, "version": "v3"}, "u")
    assert not_done_filter(spec, "_m", {}, 7) is None
    assert not_done_filter(spec, "_m", {"_m_v": {}}, 7) == ["Or", [["_m_v", "Eq", None], ["_m_v", "NotEq", "v3"]]]
    assert not_done_filter(spec, "_m", {"_m_v": {}, "_m_stale_after": {}}, 7)[1][2] == [
        "And", [["_m_stale_after", "NotEq", None], ["_m_stale_after", "Lte", 7]]]


def test_postgres_parameters_are_numbered_once_per_name() -> None:
    text, names = POSTGRES.compile("SELECT :a, :b, :a WHERE x = '{skip_locked}' ")
    assert text.startswith("SELECT $1, $2, $1") and names == ("a", "b") and "SKIP LOCKED" in text
    assert SQLITE.compile("SELECT :a {skip_locked}")[0] == "SELECT :a "
