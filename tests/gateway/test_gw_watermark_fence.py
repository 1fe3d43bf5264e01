"""The write fence and the unindexed-documents hint, through the real gateway and a store that defers indexing."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from gw_support import FAST_WATCH, KEY, Reply, Stack, _stack, call, wait_for, wait_until
from support.aerospike import start_aerospike
from support.procs import in_bursts

from gateway.config import load_cache_settings
from gateway.watch_board_aerospike import AerospikeWatchBoard

LAG_MS = 5000
WRITE_DELAY_MS = 1200  # the write waits this long before the store applies it (polls meanwhile say up-to-date)
Q = {"rank_by": ["id", "asc"], "top_k": 100}


@pytest.fixture(scope="module", params=["sqlite", "aerospike", "off"])
def lag(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    # "off": no shared records, one worker (the fence is per worker then); "aerospike": the records on the wire test
    # server, one client per worker (as two hosts would)
    shared = request.param
    env = {**FAST_WATCH, "CONSISTENCY_STABLE_POLL_INTERVAL_MS": "100", "LAYER_WATCH_SHARED": shared,
           "LAYER_WATCH_FENCE": "on"}
    server = start_aerospike() if shared == "aerospike" else None
    if server is not None:
        env["AEROSPIKE_HOSTS"] = server.hosts_env
    try:
        for stack in _stack(Path(tmp_path_factory.mktemp(f"fence-{shared}")),
                            {"LOCALSTORE_INDEX_LAG_MS": str(LAG_MS), "LOCALSTORE_ENABLE_FAULTS": "1"}, env,
                            workers=1 if shared == "off" else 2):
            stack.watch_board = AerospikeWatchBoard(load_cache_settings(env)) if server is not None else None  # type: ignore[attr-defined]
            yield stack
    finally:
        if server is not None:
            server.stop()


@pytest.fixture(scope="module")
def slow_polls(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    env = {**FAST_WATCH, "CONSISTENCY_STABLE_POLL_INTERVAL_MS": "600000"}
    yield from _stack(Path(tmp_path_factory.mktemp("hint")), {"LOCALSTORE_INDEX_LAG_MS": str(LAG_MS)}, env)


def _write(stack: Stack, ns: str, ids: range) -> Reply:
    rows = [{"id": i, "vector": [float(i), 1.0]} for i in ids]
    return stack("POST", f"/v2/namespaces/{ns}", {"upsert_rows": rows, "distance_metric": "euclidean_squared"})


def _store_status(stack: Stack, ns: str) -> str:
    return call(stack.store.url, "GET", f"/v2/namespaces/{ns}/metadata", key=KEY).json()["index"]["status"]


def _stamps(stack: Stack, ns: str) -> dict[int, int]:
    rows = stack("POST", f"/v2/namespaces/{ns}/query", {**Q, "include_attributes": ["_hevlayer_upserted_at"],
                                                        "consistency": {"level": "strong"}}).json()["rows"]
    return {row["id"]: row["_hevlayer_upserted_at"] for row in rows}


def _stable_everywhere(stack: Stack, ns: str) -> None:
    wait_for(lambda: _store_status(stack, ns) == "up-to-date", timeout=LAG_MS / 1000 + 10)
    # concurrent calls, so every worker answers some: a worker that never saw the namespace stable takes no hint
    wait_for(lambda: all(r.json()["layer"]["is_stable"]
                         for r in in_bursts(lambda: stack("GET", f"/v2/namespaces/{ns}/metadata"), 16)), timeout=10)


def test_a_slow_write_is_fenced_whatever_polls_said_meanwhile(lag: Stack) -> None:
    ns = "fence"
    assert _write(lag, ns, range(1, 6)).status == 200
    _stable_everywhere(lag, ns)
    lag.fault(route="write", namespace=ns, delay_ms=WRITE_DELAY_MS, count=1)
    done: list[Reply] = []
    writer = threading.Thread(target=lambda: done.append(_write(lag, ns, range(6, 11))))
    writer.start()
    # While the write is held back, polls (every 100 ms) keep answering up-to-date: watermarks move past its stamp.
    seen = [lag("POST", f"/v2/namespaces/{ns}/query", Q) for _ in range(5)]
    writer.join(timeout=30)
    assert done and done[0].status == 200, done
    assert _store_status(lag, ns) == "updating"
    stamp = min(s for i, s in _stamps(lag, ns).items() if i >= 6)
    replies: list[Reply] = []

    def ten_filtered_in_a_row() -> bool:
        replies.append(lag("POST", f"/v2/namespaces/{ns}/query", Q))
        return len(replies) >= 10 and all(r.headers.get("x-layer-watermark-applied") for r in replies[-10:])

    # The fence reaches every worker: the writer's at once, the others with their next mirror refresh (250 ms).
    wait_for(ten_filtered_in_a_row, timeout=3, interval=0.01)
    assert _store_status(lag, ns) == "updating"  # all of the above happened while the rows were unindexed
    if lag.watch_board is not None:  # type: ignore[attr-defined]
        record = lag.watch_board.read([ns])[ns]  # type: ignore[attr-defined]
        assert record.status == "updating" and record.watermark < stamp, record
    for r in seen + replies:
        assert r.status == 200, r
        if r.headers.get("x-layer-watermark-applied"):
            assert int(r.headers["x-layer-stable-as-of"]) < stamp, "an unindexed row passed the watermark filter"
            assert {row["id"] for row in r.json()["rows"]} == set(range(1, 6))


def test_a_response_showing_unindexed_documents_marks_updating(slow_polls: Stack) -> None:
    ns = "hint"
    assert _write(slow_polls, ns, range(1, 6)).status == 200
    _stable_everywhere(slow_polls, ns)
    # A write that does not come through the gateway: stable polls are 10 minutes apart, so only the hint tells.
    rows = [{"id": i, "vector": [float(i), 1.0]} for i in range(6, 11)]
    assert call(slow_polls.store.url, "POST", f"/v2/namespaces/{ns}", {"upsert_rows": rows}, key=KEY).status == 200
    r = slow_polls("POST", f"/v2/namespaces/{ns}/query", Q)
    assert "x-layer-watermark-applied" not in r.headers
    strong = slow_polls("POST", f"/v2/namespaces/{ns}/query", {**Q, "consistency": {"level": "strong"}})
    assert strong.json()["performance"]["exhaustive_search_count"] > 0
    r = wait_until(lambda: slow_polls("POST", f"/v2/namespaces/{ns}/query", Q),
                   lambda r: r.headers.get("x-layer-watermark-applied"), timeout=10)
    assert {row["id"] for row in r.json()["rows"]} == set(range(1, 6))
    layer = slow_polls("GET", f"/v2/namespaces/{ns}/metadata").json()["layer"]
    assert layer["status"] == "updating"
