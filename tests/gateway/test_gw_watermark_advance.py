"""Sustained writes through the gateway void every poll answer (a write is acknowledged during each poll): the
watermark must still advance, and never reach a row upstream has not indexed (gateway/consistency.py, module doc).
Real watchers, per worker or sharing a SQLite / Aerospike board, an upstream that is always up to date with what
was acknowledged before each poll's call, and clocks skewed by +/- 2 s between the two workers."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aerospike import exception as aex
from support.aerospike import start_aerospike

from gateway.config import load_cache_settings
from gateway.consistency import UPDATING, Watcher, WriteTicket
from gateway.upstream import UpstreamResponse
from gateway.watch_board import WatchBoard, host_ms
from gateway.watch_board_aerospike import AerospikeWatchBoard

NS = "ns"
MARGIN = 100
ROUNDS = 40
STEP = 100  # ms of every clock between the events of a round (4 steps a round)
UP_TO_DATE = UpstreamResponse(200, b'{"index": {"status": "up-to-date"}}', "application/json", [])


@pytest.fixture(scope="module")
def aerospike_hosts() -> Iterator[str]:
    server = start_aerospike()
    yield server.hosts_env
    server.stop()


@pytest.fixture(params=["off", "sqlite", "aerospike"])
def boards(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[list[Any]]:
    """One board per worker (the same records), or none: one worker with its own record."""
    if request.param == "off":
        yield [None]
    elif request.param == "sqlite":
        yield [WatchBoard(str(tmp_path / "watch.sqlite3")) for _ in range(2)]
    else:
        settings = load_cache_settings({"AEROSPIKE_HOSTS": request.getfixturevalue("aerospike_hosts"),
                                        "AEROSPIKE_TIMEOUT_MS": "1000"})
        pair = [AerospikeWatchBoard(settings), AerospikeWatchBoard(settings)]
        try:  # the record of an earlier test (same server) starts over
            pair[0]._conn().remove(pair[0]._key(NS))
        except aex.RecordNotFound:
            pass
        yield pair
        for board in pair:
            board.close()


class Store:
    """Upstream: each metadata answer is computed when the call arrives (up to date with every write acknowledged
    before it); `during` runs before the answer comes back."""

    store_key = "k"

    def __init__(self) -> None:
        self.during: Any = None
        self.acked: dict[int, bool] = {}  # stamp -> indexed

    async def request(self, method: str, path: str, key: str, *_: Any, **__: Any) -> UpstreamResponse:
        assert (method, path) == ("GET", f"/v2/namespaces/{NS}/metadata")
        covered = list(self.acked)
        await self.during()
        for stamp in covered:  # the answer says they are indexed
            self.acked[stamp] = True
        return UP_TO_DATE


def test_a_write_acknowledged_during_every_poll_does_not_stall_the_watermark(boards: list[Any]) -> None:
    now = [10_000_000]
    store = Store()
    watchers = []
    for i, board in enumerate(boards):
        w = Watcher(store, poll_ms=0, stable_poll_ms=0, margin_ms=MARGIN, board=board)  # type: ignore[arg-type]
        w.clock_ms = lambda off=(2000 if i == 0 else -2000): now[0] + off  # type: ignore[misc]
        watchers.append(w)
    inflight: dict[int, tuple[WriteTicket, Watcher]] = {}  # stamp -> the write and the worker it went through

    def unindexed() -> list[int]:
        return sorted([*inflight, *(s for s, indexed in store.acked.items() if not indexed)])

    async def write(i: int) -> int:
        w = watchers[i % len(watchers)]
        t = await w.begin_write(NS, None)
        inflight[t.stamp] = t, w
        return t.stamp

    async def ack(stamp: int) -> None:
        t, w = inflight.pop(stamp)
        store.acked[stamp] = False
        await w.end_write(t, True)

    async def marks() -> list[int | None]:
        """Every worker's watermark (and the shared record's) while updating, checked against upstream's truth."""
        out = []
        for w in watchers:
            if w.board is not None:
                await w.refresh_mirror([NS])
            out.append(w.decision(NS)[0])
            assert w.state(NS).status == UPDATING  # type: ignore[union-attr]
        if boards[0] is not None:
            rec = boards[0].read([NS])[NS]
            assert rec.status == UPDATING
            out.append(rec.watermark)
        low = min(unindexed(), default=None)
        for mark in out:
            assert mark is None or low is None or mark < low, f"watermark {mark} reaches unindexed stamp {low}"
        return out

    async def main() -> list[list[int | None]]:
        for w in watchers:
            w.watch(NS, None)
        pending: list[int] = []
        store.during = lambda: asyncio.sleep(0)
        await watchers[0].poll(NS, watchers[0].state(NS))  # type: ignore[arg-type]
        history = []
        for i in range(ROUNDS):
            async def during(i: int = i) -> None:
                # While the poll's answer travels: the write begun last round is acknowledged (its fence voids
                # this answer), another is begun and acknowledged, and every other round one stays in flight.
                now[0] += STEP
                while pending:
                    await ack(pending.pop())
                await ack(await write(i + 1))
                now[0] += STEP
                if i % 2 == 0:
                    pending.append(await write(i))
                now[0] += 2 * STEP

            store.during = during
            poller = watchers[i % len(watchers)]
            await poller.poll(NS, poller.state(NS))  # type: ignore[arg-type]
            history.append(await marks())
        for w in watchers:
            await w.stop()
        return history

    history = asyncio.run(main())
    assert all(m is not None for m in history[2]), history[2]
    for before, after in itertools.pairwise(history[2:]):
        assert all(b <= a for b, a in zip(before, after, strict=True)), (before, after)  # type: ignore[operator]
    # It keeps up with the slowest clock that stamps writes (the record's stamps of the worker 2 s behind are
    # its clock, or the highest watermark + 1 while that clock is behind the watermark), two rounds behind
    assert all(m >= now[0] - 2000 - 2 * 4 * STEP for m in history[-1]), (history[-1], now[0])  # type: ignore[operator]


def test_a_voided_answer_raises_the_record_only_below_the_fences_since_its_claim(boards: list[Any]) -> None:
    a = boards[0]
    if a is None:
        pytest.skip("shared records only")
    b = boards[1]
    t = host_ms()
    gen = a.claim_poll(NS, "a", 0, 10_000)
    assert gen is not None and a.publish(NS, "stable", t, MARGIN, gen)
    # a polls again; meanwhile one of b's writes is acknowledged (fenced), and another begins
    gen = a.claim_poll(NS, "a", 0, 10_000)
    s1, k1 = b.begin_write(NS, t + 500)
    b.end_write(NS, k1, s1, landed=True)
    s2, _ = b.begin_write(NS, t + 700)
    assert not a.publish(NS, "stable", t + 1000, MARGIN, gen, claimed=True)
    rec = a.read([NS])[NS]
    assert rec.status == "updating" and rec.gen == gen + 1 and rec.watermark == s1 - 1, rec
    # an answer whose generation did not come from a claim (a request path's metadata call) is only voided
    s3, k3 = b.begin_write(NS, t + 800)
    b.end_write(NS, k3, s3, landed=True)
    assert not a.publish(NS, "stable", t + 2000, MARGIN, gen + 1)
    assert a.read([NS])[NS].watermark == s1 - 1
    # a claim made after this poll's drops the fences before it: the older answer is only voided
    old = a.claim_poll(NS, "a", 0, 10_000)
    s4, k4 = b.begin_write(NS, t + 900)
    b.end_write(NS, k4, s4, landed=True)
    a.release(NS, "a")
    assert b.claim_poll(NS, "b", 0, 10_000) == old + 1
    assert not a.publish(NS, "stable", t + 3000, MARGIN, old, claimed=True)
    assert a.read([NS])[NS].watermark == s1 - 1
    # b's answer: raised, and below the write still in flight; an older answer never lowers it
    s5, k5 = b.begin_write(NS, t + 950)
    b.end_write(NS, k5, s5, landed=True)
    assert not b.publish(NS, "stable", t + 3000, MARGIN, old + 1, claimed=True)
    rec = a.read([NS])[NS]
    assert rec.status == "updating" and rec.watermark == s2 - 1 < s5 - 1, (rec, s2, s5)
    assert b.claim_poll(NS, "b", 0, 10_000) == old + 2
    s6, k6 = b.begin_write(NS, t + 960)
    b.end_write(NS, k6, s6, landed=True)
    assert not b.publish(NS, "stable", t, MARGIN, old + 2, claimed=True)
    rec = a.read([NS])[NS]
    assert rec.status == "updating" and rec.watermark == s2 - 1 and rec.wmax >= s2 - 1, rec
