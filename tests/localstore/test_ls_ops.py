"""Operational behaviour: fault injection, index lag (eventual vs strong), durability across kill -9."""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import Any

from ls_support import Client
from support.procs import Proc, start_localstore


def test_fault_injection(client: Client) -> None:
    client.write("flt-ns", {"upsert_rows": [{"id": 1}]})
    q = {"rank_by": ["id", "asc"]}
    assert client.ok("POST", "/_localstore/faults", {"route": "query", "status": 429, "count": 2})
    for _ in range(2):
        code, err, headers = client.call("POST", "/v2/namespaces/flt-ns/query", q)
        assert code == 429 and err == {"status": "error", "error": "injected fault"}
        assert headers["retry-after"] == "0"
    assert client.ids("flt-ns", q) == [1]
    client.ok("POST", "/_localstore/faults", {"route": "write", "status": 503, "namespace": "other"})
    client.write("flt-ns", {"upsert_rows": [{"id": 2}]})
    assert client.call("POST", "/v2/namespaces/other", {"upsert_rows": [{"id": 2}]})[0] == 503
    listed = client.ok("GET", "/_localstore/faults")["faults"]
    assert len(listed) == 1 and listed[0]["route"] == "write" and listed[0]["remaining"] is None
    client.ok("DELETE", "/_localstore/faults")
    assert client.ok("GET", "/_localstore/faults")["faults"] == []
    client.ok("POST", "/_localstore/faults", {"route": "*", "delay_ms": 300, "count": 1})
    t0 = time.monotonic()
    assert client.ids("flt-ns", q) == [1, 2]
    assert time.monotonic() - t0 >= 0.3
    assert client.call("POST", "/_localstore/faults", {"route": "nope"})[0] == 422


def test_index_lag_states(tmp_path: Path) -> None:
    proc = start_localstore(tmp_path / "d", LOCALSTORE_INDEX_LAG_MS="600")
    try:
        c = Client(proc.url)
        c.write("lag", {"upsert_rows": [{"id": 1}]})
        time.sleep(0.7)  # let the first write index
        c.write("lag", {"upsert_rows": [{"id": 2}, {"id": 3}]})
        meta = c.ok("GET", "/v2/namespaces/lag/metadata")
        assert meta["index"]["status"] == "updating" and meta["index"]["unindexed_rows"] == 2
        assert meta["index"]["unindexed_bytes"] > 0
        q: dict[str, Any] = {"rank_by": ["id", "asc"]}
        strong = c.query("lag", q)
        assert [r["id"] for r in strong["rows"]] == [1, 2, 3] and strong["performance"]["exhaustive_search_count"] == 2
        assert c.ids("lag", {**q, "consistency": {"level": "eventual"}}) == [1]
        deadline = time.monotonic() + 5
        while c.ok("GET", "/v2/namespaces/lag/metadata")["index"] != {"status": "up-to-date"}:
            assert time.monotonic() < deadline, "index never caught up"
            time.sleep(0.05)
        assert c.ids("lag", {**q, "consistency": {"level": "eventual"}}) == [1, 2, 3]
        assert c.query("lag", q)["performance"]["exhaustive_search_count"] == 0
    finally:
        proc.stop()


def _restart(proc: Proc, data: Path) -> Proc:
    proc.stop(sig=signal.SIGKILL)
    return start_localstore(data)


def test_durability_after_kill_9(tmp_path: Path) -> None:
    data = tmp_path / "d"
    proc = start_localstore(data)
    try:
        c = Client(proc.url)
        c.write("dur", {"upsert_rows": [{"id": i, "vector": [1.0, float(i)], "t": f"w{i}"} for i in range(50)],
                        "distance_metric": "cosine_distance",
                        "schema": {"t": {"type": "string", "full_text_search": True}}})
        c.write("dur", {"deletes": [0], "patch_rows": [{"id": 1, "t": "patched"}]})
        c.write("gone", {"upsert_rows": [{"id": 1}]})
        c.ok("DELETE", "/v2/namespaces/gone")
        c.ok("PATCH", "/v1/namespaces/dur/metadata", {"read_only": True})
        before = c.query("dur", {"rank_by": ["vector", "ANN", [1.0, 3.0]], "top_k": 5, "include_attributes": True})
        proc = _restart(proc, data)
        c = Client(proc.url)
        after = c.query("dur", {"rank_by": ["vector", "ANN", [1.0, 3.0]], "top_k": 5, "include_attributes": True})
        assert after["rows"] == before["rows"]
        got = c.query("dur", {"filters": ["id", "Eq", 1], "include_attributes": ["t"]})["rows"]
        assert got == [{"id": 1, "t": "patched"}]
        meta = c.ok("GET", "/v2/namespaces/dur/metadata")
        assert meta["approx_row_count"] == 49 and meta["read_only"] is True
        assert meta["schema"]["vector"]["ann"] == {"distance_metric": "cosine_distance"}
        assert c.call("GET", "/v1/namespaces/gone/schema")[0] == 404
        assert not (data / "namespaces" / "gone").exists()
        assert c.query("dur", {"rank_by": ["t", "BM25", "patched"]})["rows"][0]["id"] == 1
        # a torn tail record (crash mid-append) is dropped; everything before it survives
        logf = data / "namespaces" / "dur" / "log.bin"
        proc.stop(sig=signal.SIGKILL)
        with open(logf, "ab") as f:
            f.write(b"\xff\x00\x00\x00partial")
        proc = start_localstore(data)
        assert Client(proc.url).ok("GET", "/v2/namespaces/dur/metadata")["approx_row_count"] == 49
    finally:
        proc.stop()


def test_compaction_keeps_data(tmp_path: Path) -> None:
    data = tmp_path / "d"
    proc = start_localstore(data, LOCALSTORE_COMPACT_BYTES="4000")
    try:
        c = Client(proc.url)
        for b in range(6):
            c.write("cmp", {"upsert_rows": [{"id": b * 20 + i, "s": "x" * 40} for i in range(20)]})
        c.write("cmp", {"deletes": [0, 1]})
        ns_dir = data / "namespaces" / "cmp"
        assert (ns_dir / "snapshot.bin").exists() and (ns_dir / "log.bin").stat().st_size < 4000
        proc.stop(sig=signal.SIGKILL)
        proc = start_localstore(data, LOCALSTORE_COMPACT_BYTES="4000")
        c = Client(proc.url)
        assert c.ok("GET", "/v2/namespaces/cmp/metadata")["approx_row_count"] == 118
        assert c.ids("cmp", {"rank_by": ["id", "asc"], "top_k": 3}) == [2, 3, 4]
    finally:
        proc.stop()
