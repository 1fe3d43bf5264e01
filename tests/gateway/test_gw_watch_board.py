"""The shared watch record's ordering rules, on a real SQLite file shared by two handles (two workers of a host,
gateway/watch_board.py) and on the Aerospike wire test server with two clients (two hosts,
gateway/watch_board_aerospike.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support.aerospike import start_aerospike

from gateway.config import load_cache_settings, load_config
from gateway.state import WorkerState
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
    for board in pair:  # records of an earlier test (same server) start over
        board.forget("ns")
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
