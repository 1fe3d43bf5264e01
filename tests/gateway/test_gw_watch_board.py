"""The shared watch record's ordering rules, on a real SQLite file shared by two handles (two workers of a host,
gateway/watch_board.py) and on the Aerospike wire test server with two clients (two hosts,
gateway/watch_board_aerospike.py)."""

from __future__ import annotations

import asyncio
import sqlite3
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aerospike import exception as aex
from gw_support import call
from support.aerospike import start_aerospike
from support.procs import STORE_KEY, Proc, start_localstore
from support.wal import smallest_wal_once_unpinned

from gateway import sqlite_wal, watch_board
from gateway.config import load_cache_settings, load_config
from gateway.consistency import Watcher, now_ms
from gateway.state import WorkerState
from gateway.upstream import Upstream
from gateway.watch_board import Settle, WatchBoard, host_ms
from gateway.watch_board_aerospike import AerospikeWatchBoard

MARGIN = 500


@pytest.fixture(scope="module")
def aerospike_hosts() -> Iterator[str]:
    server = start_aerospike()
    yield server.hosts_env
    server.stop()


@pytest.fixture(params=["sqlite", "aerospike"])
def boards(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Any, Any]]:
    if request.param == "sqlite":
        path = str(tmp_path / "watch.sqlite3")
        yield WatchBoard(path), WatchBoard(path)
        return
    settings = load_cache_settings({"AEROSPIKE_HOSTS": request.getfixturevalue("aerospike_hosts"),
                                    "AEROSPIKE_TIMEOUT_MS": "1000"})
    pair = AerospikeWatchBoard(settings), AerospikeWatchBoard(settings)
    try:  # the record of an earlier test (same server) starts over
        pair[0]._conn().remove(pair[0]._key("ns"))
    except aex.RecordNotFound:
        pass
    yield pair
    for board in pair:
        board.close()


def test_a_fence_voids_a_poll_that_started_before_it(boards: tuple[Any, Any]) -> None:
    a, b = boards
    now = host_ms()
    gen = a.claim_poll("ns", "a", 0, 10_000)
    assert gen is not None
    stamp, ticket = b.begin_write("ns", now)
    b.end_write("ns", ticket, stamp, landed=True)
    assert not a.publish("ns", "stable", now + 1000, MARGIN, gen)  # answered "up-to-date" before the write landed
    rec = a.read(["ns"])["ns"]
    assert rec.status == "updating" and rec.gen == gen + 1


def test_stamps_stay_above_every_watermark_and_in_flight_writes_cap_it(boards: tuple[Any, Any]) -> None:
    a, b = boards
    now = host_ms()
    gen = a.claim_poll("ns", "a", 0, 10_000)
    assert gen is not None and a.publish("ns", "stable", now + 5000, MARGIN, gen)  # a poller 5 s ahead
    w = a.read(["ns"])["ns"].watermark
    assert w == now + 4500
    stamp, ticket = b.begin_write("ns", now - 2000)  # a writer 2 s behind
    assert stamp == w + 1
    gen = a.read(["ns"])["ns"].gen
    assert a.claim_poll("ns", "a", 0, 10_000) == gen
    assert a.publish("ns", "stable", now + 9000, MARGIN, gen)  # up-to-date while the write is still in flight
    assert a.read(["ns"])["ns"].watermark == stamp - 1
    b.end_write("ns", ticket, stamp, landed=True)
    rec = a.read(["ns"])["ns"]
    assert rec.status == "updating" and rec.watermark == stamp - 1


def test_sqlite_board_removes_a_dead_workers_writes_in_flight_at_the_next_poll(tmp_path: Path,
                                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """A worker that died mid-write leaves its in-flight entry; once expired it no longer caps the watermark, and the
    namespace's next published poll removes it (before, such entries stayed, and every poll scanned them)."""
    board = WatchBoard(str(tmp_path / "watch.sqlite3"))
    monkeypatch.setattr(watch_board, "INFLIGHT_TTL_MS", 0)
    board.begin_write("ns", host_ms())  # its worker dies: no end_write
    monkeypatch.undo()
    stamp, _ = board.begin_write("ns", host_ms())  # a live write
    board.begin_write("other", host_ms())
    gen = board.claim_poll("ns", "a", 0, 10_000)
    assert gen is not None and board.publish("ns", "stable", host_ms() + 5000, MARGIN, gen)
    assert board.read(["ns"])["ns"].watermark == stamp - 1  # the live write still caps it
    rows = board._conn().execute("select ns, stamp from inflight order by id").fetchall()
    assert [ns for ns, _ in rows] == ["ns", "other"] and rows[0][1] == stamp


def test_one_poller_per_interval_and_failover_when_the_slot_lapses(boards: tuple[Any, Any]) -> None:
    a, b = boards
    gen = a.claim_poll("ns", "a", 60_000, 200)
    assert gen is not None
    assert b.claim_poll("ns", "b", 60_000, 200) is None  # a holds the slot
    assert a.publish("ns", "stable", host_ms(), MARGIN, gen)
    assert b.claim_poll("ns", "b", 60_000, 200) is None  # polled just now
    assert b.claim_poll("ns", "b", 0, 200) is not None  # due: b takes it
    # b "dies" holding the slot: nobody else polls until it lapses, then a does
    assert a.claim_poll("ns", "a", 0, 200) is None
    deadline = host_ms() + 5000
    while a.claim_poll("ns", "a", 0, 200) is None:
        assert host_ms() < deadline, "the poll slot never lapsed"
    assert a.slot_changes == 2 and b.slot_changes == 1


def test_a_settling_answer_lands_with_its_fence_unless_another_fence_came(boards: tuple[Any, Any]) -> None:
    a, b = boards
    now = host_ms()
    gen = a.claim_poll("ns", "a", 0, 10_000)
    assert gen is not None and a.publish("ns", "stable", now, MARGIN, gen)
    # a's write: acknowledged upstream, then the record's generation is read and the settling call made
    stamp, ticket = a.begin_write("ns", now + 10)
    before = a.read(["ns"])["ns"].gen
    after = a.end_write("ns", ticket, stamp, True, Settle(before, "stable", now + 20, MARGIN, "m1"))
    rec = b.read(["ns"])["ns"]
    assert after == before + 1 and rec.status == "stable" and rec.gen == after and rec.meta == "m1"
    assert rec.watermark == now + 20 - MARGIN
    # b's write is fenced between a's read of the generation and a's fence: a's answer may predate b's write
    stamp, ticket = a.begin_write("ns", now + 30)
    before = a.read(["ns"])["ns"].gen
    stamp_b, ticket_b = b.begin_write("ns", now + 40)
    b.end_write("ns", ticket_b, stamp_b, landed=True)
    after = a.end_write("ns", ticket, stamp, True, Settle(before, "stable", now + 50, MARGIN, "m2"))
    rec = b.read(["ns"])["ns"]
    assert after == before + 2 and rec.status == "updating" and rec.meta == "m1" and rec.watermark < stamp


def test_an_unusable_data_dir_leaves_the_watch_records_per_worker(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    config = load_config({"TURBOPUFFER_API_URL": "http://127.0.0.1:9", "TURBOPUFFER_API_KEY": "k",
                          "LAYER_DATA_DIR": str(blocker / "data")})
    assert config.watch_shared == "sqlite" and config.watch_fence  # the defaults
    assert WorkerState(config, None).watcher.board is None


def test_a_namespace_gone_upstream_keeps_its_record_unless_a_fence_came_since(boards: tuple[Any, Any]) -> None:
    """A poll's 404 can race with the write creating the namespace (again): the record, its generation, highest
    watermark and writes in flight stay; a 404 answered before a fence changes nothing but the poll slot."""
    a, b = boards
    now = host_ms()
    gen = a.claim_poll("ns", "a", 0, 10_000)
    assert gen is not None and a.publish("ns", "stable", now + 5000, MARGIN, gen)  # a poller 5 s ahead
    w = a.read(["ns"])["ns"].watermark
    stamp, ticket = b.begin_write("ns", now)  # the write creating the namespace: in flight
    gen = a.claim_poll("ns", "a", 0, 10_000)
    assert gen is not None and a.forget("ns", gen)  # a's poll found no namespace
    rec = b.read(["ns"])["ns"]
    assert (rec.status, rec.wmax, rec.gen) == ("unknown", w, gen)
    gen = a.claim_poll("ns", "a", 0, 10_000)  # the slot was given back
    assert gen is not None and a.publish("ns", "stable", now + 9000, MARGIN, gen)  # the write landed, not answered
    assert a.read(["ns"])["ns"].watermark == stamp - 1
    gen = a.claim_poll("ns", "a", 0, 10_000)
    assert gen is not None
    b.end_write("ns", ticket, stamp, landed=True)
    assert not a.forget("ns", gen)  # this 404 may predate the write: voided
    rec = b.read(["ns"])["ns"]
    assert rec.status == "updating" and rec.gen == gen + 1 and rec.watermark == stamp - 1
    assert a.claim_poll("ns", "a", 0, 10_000) == gen + 1  # the slot was given back all the same


def test_sqlite_board_changes_made_together_share_one_transaction_or_wait_in_threads(tmp_path: Path) -> None:
    """A worker's board changes of one loop iteration (concurrent writes) are one transaction on the loop thread;
    if one of them fails, none is made (each is made again on its own, in a thread). While another worker holds the
    file's write lock, every change is made in a thread, once the lock is free."""
    path = str(tmp_path / "watch.sqlite3")
    board, other = WatchBoard(path), WatchBoard(path)
    now = host_ms()
    with pytest.raises(sqlite3.Error):
        board.changes([("begin_write", ("x", now)), ("end_write", ("z", ["not a ticket"], now, True))])
    assert other.read(["x", "z"]) == {}  # x's change, and z's record made before the error, were undone

    config = load_config({"TURBOPUFFER_API_URL": "http://127.0.0.1:9", "TURBOPUFFER_API_KEY": STORE_KEY})

    async def main() -> None:
        upstream = Upstream(config)
        watcher = Watcher(upstream, 0, 0, MARGIN, board=board)
        assert watcher._board_now is not None
        transactions: list[str] = []
        watcher._board_now._conn().set_trace_callback(lambda sql: sql == "begin immediate" and transactions.append(sql))
        try:
            tickets = await asyncio.gather(*(watcher.begin_write(f"n{i}", None) for i in range(8)))
            assert len(transactions) == 1
            locked = other._conn()
            locked.execute("begin immediate")
            try:
                waiting = asyncio.gather(*(watcher.begin_write(f"n{i}", None) for i in range(8)))
                await asyncio.sleep(0.1)  # the loop's try finds the lock taken; threads wait for it (2 s at most)
                assert len(transactions) == 2
            finally:
                locked.execute("rollback")
            tickets += await waiting
            assert len({t.board_ticket for t in tickets} - {None}) == 16
            await asyncio.gather(*(watcher.end_write(t, landed=False) for t in tickets))
            assert len(transactions) == 3
            assert locked.execute("select count(*) from inflight where ns like 'n%'").fetchone()[0] == 0
        finally:
            await watcher.stop()
            await upstream.close()

    asyncio.run(main())


def test_sqlite_board_wal_file_past_its_bound_is_truncated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The board's changes on the loop thread never checkpoint; every 64 of them one is made in a thread, and once the
    WAL file is past its bound it is copied whole and truncated (else it grows for as long as writes go on)."""
    monkeypatch.setattr(sqlite_wal, "WAL_MAX_BYTES", 256 << 10)
    board = WatchBoard(str(tmp_path / "watch.sqlite3"))
    config = load_config({"TURBOPUFFER_API_URL": "http://127.0.0.1:9", "TURBOPUFFER_API_KEY": STORE_KEY})

    async def main() -> None:
        upstream = Upstream(config)
        watcher = Watcher(upstream, 0, 0, MARGIN, board=board)

        async def write(i: int) -> None:
            await watcher.end_write(await watcher.begin_write(f"n{i % 8}", None), landed=True)

        try:
            pinned, smallest = await smallest_wal_once_unpinned(board.path, "watch", write)
        finally:
            await watcher.stop()
            await upstream.close()
        assert pinned > sqlite_wal.WAL_MAX_BYTES and smallest < pinned // 2

    asyncio.run(main())


def test_many_changes_on_either_board_leave_no_failed_background_task(boards: tuple[Any, Any],
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    """More than a checkpoint's worth of writes (64 commits): the SQLite board checkpoints its WAL in a thread; the
    Aerospike board has no WAL, and nothing tries to checkpoint it (before, every 64th change started a checkpoint
    that failed there, logged as a failed background task)."""
    board = boards[0]
    config = load_config({"TURBOPUFFER_API_URL": "http://127.0.0.1:9", "TURBOPUFFER_API_KEY": STORE_KEY})

    async def main() -> None:
        upstream = Upstream(config)
        watcher = Watcher(upstream, 0, 0, MARGIN, board=board)
        try:
            for _ in range(sqlite_wal.CHECKPOINT_EVERY + 1):
                await watcher.end_write(await watcher.begin_write("ns", None), landed=True)
            await asyncio.sleep(0.5)  # a checkpoint started by the last ones ends (in a thread)
        finally:
            await watcher.stop()
            await upstream.close()

    with caplog.at_level("ERROR", logger="gateway.tasks"):
        asyncio.run(main())
    assert not [r for r in caplog.records if r.name == "gateway.tasks"], caplog.text


def test_a_board_change_whose_caller_was_cancelled_is_still_made_when_its_batch_goes_to_a_thread(
        tmp_path: Path) -> None:
    """A write's end on the board, cancelled while it waits for this loop iteration's transaction: when that finds
    the lock taken, a thread still makes it (as it would have without the wait): its in-flight entry goes."""
    path = str(tmp_path / "watch.sqlite3")
    board, other = WatchBoard(path), WatchBoard(path)
    config = load_config({"TURBOPUFFER_API_URL": "http://127.0.0.1:9", "TURBOPUFFER_API_KEY": STORE_KEY})

    async def main() -> None:
        upstream = Upstream(config)
        watcher = Watcher(upstream, 0, 0, MARGIN, board=board)
        locked = other._conn()
        try:
            ticket = await watcher.begin_write("n", None)
            assert locked.execute("select count(*) from inflight").fetchone()[0] == 1
            locked.execute("begin immediate")
            try:
                gone = asyncio.create_task(watcher.end_write(ticket, landed=False))
                await asyncio.sleep(0)  # it joined this iteration's transaction
                gone.cancel()
                await asyncio.sleep(0.1)  # that found the lock taken; a thread waits for it (2 s at most)
            finally:
                locked.execute("rollback")
            for _ in range(200):
                if locked.execute("select count(*) from inflight").fetchone()[0] == 0:
                    break
                await asyncio.sleep(0.05)
            assert gone.cancelled() and locked.execute("select count(*) from inflight").fetchone()[0] == 0
        finally:
            await watcher.stop()
            await upstream.close()

    asyncio.run(main())


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proc]:
    proc = start_localstore(tmp_path_factory.mktemp("gone") / "store", LOCALSTORE_API_KEY=STORE_KEY)
    yield proc
    proc.stop()


@pytest.mark.parametrize("shared", [True, False])
def test_a_poll_finding_no_namespace_forgets_neither_writes_in_flight_nor_the_highest_watermark(
        boards: tuple[Any, Any], store: Proc, shared: bool) -> None:
    """Through Watcher.poll: a poll's 404 while the write (re)creating the namespace is in flight must keep that
    write capping the watermark, and new stamps above every watermark held (here a poller's clock 5 s ahead).
    `shared`: poller and writer are two workers sharing the record; otherwise one worker without a board."""
    ns = f"gone-{uuid.uuid4().hex[:8]}"
    config = load_config({"TURBOPUFFER_API_URL": store.url, "TURBOPUFFER_API_KEY": STORE_KEY})

    def put() -> None:
        assert call(store.url, "POST", f"/v2/namespaces/{ns}", {"upsert_rows": [{"id": 1}]},
                    key=STORE_KEY).status == 200

    async def main() -> None:
        upstream = Upstream(config)
        poller = Watcher(upstream, 0, 0, MARGIN, board=boards[0] if shared else None)
        writer = Watcher(upstream, 0, 0, MARGIN, board=boards[1]) if shared else poller
        skew = {"poller": 5000, "writer": 0}
        poller.clock_ms = lambda: now_ms() + skew["poller"]
        try:
            put()
            poller.watch(ns, None)
            await poller.poll(ns, poller.namespaces[ns])
            held = poller.namespaces[ns].watermark
            assert held is not None and held > now_ms() + 4000
            assert call(store.url, "DELETE", f"/v2/namespaces/{ns}", key=STORE_KEY).status == 200

            skew["poller"] = 0  # (one worker: its writes are stamped by the clock as it is now)
            ticket = await writer.begin_write(ns, None)  # the write creating the namespace again: not sent yet
            skew["poller"] = 5000
            assert ticket.stamp > held
            await poller.poll(ns, poller.namespaces[ns])  # 404
            await asyncio.sleep(0.2)  # whatever the poll left to a task has landed
            skew["poller"] = 0
            again = await writer.begin_write(ns, None)
            skew["poller"] = 5000
            assert again.stamp > held, "a stamp below a watermark held before the namespace was forgotten"
            await writer.end_write(again, landed=False)

            put()  # the write lands upstream; its answer is not back yet
            poller.watch(ns, None)
            await poller.poll(ns, poller.namespaces[ns])  # up-to-date, 5 s ahead
            assert poller.namespaces[ns].watermark < ticket.stamp, "the watermark passed a write in flight"
            await writer.end_write(ticket, landed=True)
        finally:
            await poller.stop()
            await writer.stop()
            await upstream.close()

    asyncio.run(main())
