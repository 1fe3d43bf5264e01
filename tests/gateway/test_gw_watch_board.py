"""The shared watch record's ordering rules (gateway/watch_board.py), on a real SQLite file shared by two handles."""

from __future__ import annotations

from pathlib import Path

from gateway.watch_board import WatchBoard, host_ms

MARGIN = 500


def _boards(tmp_path: Path) -> tuple[WatchBoard, WatchBoard]:
    path = str(tmp_path / "watch.sqlite3")
    return WatchBoard(path), WatchBoard(path)  # two workers of one host


def test_a_fence_voids_a_poll_that_started_before_it(tmp_path: Path) -> None:
    a, b = _boards(tmp_path)
    now = host_ms()
    gen = a.claim_poll("ns", "a", 0, 10_000)
    assert gen is not None
    stamp, ticket = b.begin_write("ns", now)
    b.end_write("ns", ticket, stamp, landed=True)
    assert not a.publish("ns", "stable", now + 1000, MARGIN, gen)  # answered "up-to-date" before the write landed
    rec = a.read(["ns"])["ns"]
    assert rec.status == "updating" and rec.gen == gen + 1


def test_stamps_stay_above_every_watermark_and_in_flight_writes_cap_it(tmp_path: Path) -> None:
    a, b = _boards(tmp_path)
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


def test_one_poller_per_interval_and_failover_when_the_slot_lapses(tmp_path: Path) -> None:
    a, b = _boards(tmp_path)
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
