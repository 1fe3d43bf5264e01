"""The watcher's poll intervals hold whatever the metadata round trip (the fleet model, G·W·N/T, counts on them).

Ticks come one tick after the previous tick started, not after its polls returned; a namespace found due late is
next due one interval after it was due, not after the late tick. Before, every interval grew by the round trip and
the rest of a tick (measured: 2.2 s instead of 2 s, so 15 % fewer calls than the model in bench/watermark_sim.py).
"""

from __future__ import annotations

import asyncio
import time
from types import SimpleNamespace
from typing import Any

from gateway.consistency import STABLE, NamespaceWatch, Watcher

RTT_S = 0.2


class SlowUpstream:
    """Metadata that answers after RTT_S: `stable-*` namespaces up to date, the others updating."""

    store_key = "k"

    def __init__(self) -> None:
        self.calls: dict[str, list[float]] = {}

    async def request(self, method: str, path: str, key: str | None, body: Any = None, what: str = "") -> Any:
        ns = path.split("/")[3]
        self.calls.setdefault(ns, []).append(time.monotonic())
        await asyncio.sleep(RTT_S)
        status = "up-to-date" if ns.startswith("stable") else "updating"
        return SimpleNamespace(status=200, ok=True, body=b'{"index": {"status": "%s"}}' % status.encode())


def _mean_gap(times: list[float]) -> float:
    return (times[-1] - times[1]) / (len(times) - 2)  # from the second call: the first comes when it is watched


def test_polls_keep_their_intervals_whatever_the_round_trip() -> None:
    async def main() -> None:
        upstream = SlowUpstream()
        watcher = Watcher(upstream, poll_ms=300, stable_poll_ms=1200, margin_ms=0)  # type: ignore[arg-type]
        watcher.watch("stable-a", None)
        watcher.watch("updating-b", None)
        watcher.start()
        try:
            deadline = time.monotonic() + 60
            while len(upstream.calls.get("stable-a", ())) < 6:
                assert time.monotonic() < deadline, upstream.calls
                await asyncio.sleep(0.05)
        finally:
            await watcher.stop()
        # before: ticks every 0.3 s + the round trip, so 0.5 s updating and 1.5 s stable (the first tick >= 1.2 s);
        # each bound is midway, so a late first or last call (a busy machine) has ~0.6 s of slack
        assert _mean_gap(upstream.calls["updating-b"]) < 0.4, upstream.calls
        assert _mean_gap(upstream.calls["stable-a"]) < 1.35, upstream.calls

    asyncio.run(main())


def test_a_late_poll_keeps_the_schedule_a_stall_or_a_requested_poll_restarts_it() -> None:
    watcher = Watcher(SlowUpstream(), poll_ms=500, stable_poll_ms=2000, margin_ms=0)  # type: ignore[arg-type]
    w = NamespaceWatch()
    w.status, w.due = STABLE, False
    w.last_polled = time.monotonic() - 2.3  # found due 0.3 s late: next due at the regular time
    watcher._schedule(w)
    assert abs(w.last_polled - (time.monotonic() - 0.3)) < 0.1
    w.last_polled = before = time.monotonic() - 9  # stalled for longer than an interval: no burst of catch-up polls
    watcher._schedule(w)
    assert w.last_polled > before + 8
    w.last_polled, w.due = time.monotonic() - 0.1, True  # a write asked for a poll now
    at = time.monotonic()
    watcher._schedule(w)
    assert w.last_polled >= at and not w.due


def test_a_namespace_watched_while_a_tick_polls_is_polled_when_that_tick_ends() -> None:
    """A namespace watched (its first query) while the watcher's tick waits for other namespaces' polls is polled
    as soon as that tick ends. Before, its wake-up was cleared at the tick's end and it waited a whole interval (a
    likely cause of rare failures of a gateway test whose intervals are 600 s: test_gw_paths' watermark poll)."""
    async def main() -> None:
        upstream = SlowUpstream()
        watcher = Watcher(upstream, poll_ms=600_000, stable_poll_ms=600_000, margin_ms=0)  # type: ignore[arg-type]
        watcher.watch("stable-a", None)
        watcher.start()
        try:
            deadline = time.monotonic() + 30
            while "stable-a" not in upstream.calls:  # its poll is under way now, for RTT_S
                assert time.monotonic() < deadline
                await asyncio.sleep(0.005)
            watcher.watch("stable-b", None)
            while "stable-b" not in upstream.calls:
                assert time.monotonic() < deadline, upstream.calls
                await asyncio.sleep(0.01)
        finally:
            await watcher.stop()

    asyncio.run(main())
