"""Stable reads (watermarks) against a store that really defers indexing, and the one-shot 429 retry."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from gw_support import FAST_WATCH, Stack, _stack, wait_for, wait_until
from support.procs import in_bursts

LAG_MS = 3000  # how long "updating" lasts: every step below that needs it takes ~0.1-0.2 s


@pytest.fixture(scope="module")
def lag(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    yield from _stack(Path(tmp_path_factory.mktemp("lag")), {"LOCALSTORE_INDEX_LAG_MS": str(LAG_MS)},
                      {**FAST_WATCH, "CONSISTENCY_STABLE_POLL_INTERVAL_MS": "100"})


def _watch_on_every_worker(stack: Stack, ns: str) -> dict:
    # Watermarks are per worker (shared-nothing): let both workers see the namespace while it is stable.
    layers = in_bursts(lambda: _stable_layer(stack, ns), 32)  # concurrent, so both workers answer some
    assert all(layer["is_stable"] for layer in layers)
    return layers[-1]


def _ids(reply) -> set[int]:  # type: ignore[no-untyped-def]
    assert reply.status == 200, reply
    return {row["id"] for row in reply.json()["rows"]}


def _store_status(stack: Stack, ns: str) -> str:
    from gw_support import KEY, call

    return call(stack.store.url, "GET", f"/v2/namespaces/{ns}/metadata", key=KEY).json()["index"]["status"]


def _write(stack: Stack, ns: str, ids: range) -> None:
    rows = [{"id": i, "vector": [float(i), 1.0]} for i in ids]
    assert stack("POST", f"/v2/namespaces/{ns}", {"upsert_rows": rows, "distance_metric": "euclidean_squared"}).status == 200


def _stable_layer(stack: Stack, ns: str) -> dict:
    return stack("GET", f"/v2/namespaces/{ns}/metadata").json()["layer"]


def test_stable_reads_while_updating_and_not_after(lag: Stack) -> None:
    ns = "stable"
    q = {"rank_by": ["id", "asc"], "top_k": 100}
    _write(lag, ns, range(1, 6))
    wait_for(lambda: _store_status(lag, ns) == "up-to-date", timeout=LAG_MS / 1000 + 5)
    first = _watch_on_every_worker(lag, ns)
    _write(lag, ns, range(6, 11))
    assert _store_status(lag, ns) == "updating"
    # The watcher (polling every 100 ms) notices "updating"; stable reads then pin the watermark.
    r = wait_until(lambda: lag("POST", f"/v2/namespaces/{ns}/query", q),
                   lambda r: r.headers.get("x-layer-watermark-applied"), timeout=LAG_MS / 1000)
    assert _ids(r) == set(range(1, 6))
    stamps = {row["id"]: row["_hevlayer_upserted_at"] for row in lag(
        "POST", f"/v2/namespaces/{ns}/query", {**q, "include_attributes": ["_hevlayer_upserted_at"],
                                               "consistency": {"level": "strong"}}).json()["rows"]}
    watermark = int(r.headers["x-layer-stable-as-of"])
    assert max(stamps[i] for i in range(1, 6)) <= watermark < min(stamps[i] for i in range(6, 11))
    assert first["stable_as_of"] - 1000 < watermark
    layer = wait_until(lambda: _stable_layer(lag, ns), lambda layer: not layer["is_stable"], timeout=LAG_MS / 1000)
    assert layer["status"] == "updating"
    # An explicit strong read is honoured: no watermark, every acknowledged row.
    r = lag("POST", f"/v2/namespaces/{ns}/query", {**q, "consistency": {"level": "strong"}})
    assert "x-layer-watermark-applied" not in r.headers and _ids(r) == set(range(1, 11))
    # Once indexed and polled as stable again, reads see everything and no filter is injected.
    wait_for(lambda: _store_status(lag, ns) == "up-to-date", timeout=LAG_MS / 1000 + 5)
    r = wait_until(lambda: lag("POST", f"/v2/namespaces/{ns}/query", q), lambda r: _ids(r) == set(range(1, 11)),
                   timeout=5)
    assert "x-layer-watermark-applied" not in r.headers


def test_429_is_retried_exactly_once(lag: Stack) -> None:
    ns = "retry"
    _write(lag, ns, range(1, 4))
    wait_for(lambda: _store_status(lag, ns) == "up-to-date", timeout=LAG_MS / 1000 + 5)
    q = {"rank_by": ["id", "asc"], "top_k": 10}
    assert lag("POST", f"/v2/namespaces/{ns}/query", q).status == 200
    try:
        lag.fault(route="query", status=429, count=1)
        r = lag("POST", f"/v2/namespaces/{ns}/query", q)
        assert r.status == 200 and _ids(r) == {1, 2, 3}, "one 429 absorbed by the retry"
        assert lag.faults() == {"faults": []}
        lag.fault(route="query", status=429, count=2)
        r = lag("POST", f"/v2/namespaces/{ns}/query", q)
        assert r.status == 429, "a persisting 429 reaches the client"
        assert r.json() == {"status": "error", "error": "injected fault"}
        assert lag.faults() == {"faults": []}, "the gateway made exactly two attempts"
        assert lag("POST", f"/v2/namespaces/{ns}/query", q).status == 200
        lag.fault(route="write", status=429, count=1)
        r = lag("POST", f"/v2/namespaces/{ns}", {"upsert_rows": [{"id": 9, "vector": [1.0, 1.0]}]})
        assert r.status == 429, "writes are never retried"
    finally:
        lag.clear_faults()


def test_429_retry_forces_the_watermark(lag: Stack) -> None:
    ns = "retry-wm"
    _write(lag, ns, range(1, 4))
    wait_for(lambda: _store_status(lag, ns) == "up-to-date", timeout=LAG_MS / 1000 + 5)
    _watch_on_every_worker(lag, ns)
    q = {"rank_by": ["id", "asc"], "top_k": 10}
    r = lag("POST", f"/v2/namespaces/{ns}/query", q)
    assert r.status == 200 and "x-layer-watermark-applied" not in r.headers
    try:
        lag.fault(route="query", status=429, count=1)
        r = lag("POST", f"/v2/namespaces/{ns}/query", q)
        assert r.status == 200 and r.headers.get("x-layer-watermark-applied") == "true", r.headers
        assert _ids(r) == {1, 2, 3}
    finally:
        lag.clear_faults()
