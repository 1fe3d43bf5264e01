"""The cache inside the real gateway (2 workers) in front of the local store, for both cache backends.

Writes go through the official turbopuffer client (which sends base64 vectors); fetches and warm jobs through the
official hevlayer client where it has the call, else plain HTTP on fresh connections (so both workers answer).
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import turbopuffer
from hevlayer import AsyncHevlayer
from support.procs import Proc, in_bursts, start_gateway, start_localstore, worker_pids

from .conftest import BACKENDS, aerospike_env, start_server, store_with_backend

KEY = "cache-test-key"
CACHE_ENV = {"LAYER_CACHE_BREAKER_MS": "300", "AEROSPIKE_TIMEOUT_MS": "200"}


class Stack:
    def __init__(self, gw: Proc, store: Proc) -> None:
        self.gw, self.store = gw, store

    def tpuf(self, direct: bool = False, compression: bool = False) -> turbopuffer.Turbopuffer:
        """The official client, through the gateway or (direct=True) straight at the store, bypassing the cache."""
        return turbopuffer.Turbopuffer(api_key=KEY, base_url=self.store.url if direct else self.gw.url, max_retries=0,
                                       compression=compression)

    def call(self, method: str, path: str, body: Any = None,
             base: str | None = None) -> tuple[int, dict[str, str], Any]:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request((base or self.gw.url) + path, data=data, method=method,
                                     headers={"authorization": f"Bearer {KEY}", "content-type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=15) as resp:
                status, headers, raw = resp.status, dict(resp.headers), resp.read()
        except urllib.error.HTTPError as exc:
            status, headers, raw = exc.code, dict(exc.headers), exc.read()
        return status, {k.lower(): v for k, v in headers.items()}, json.loads(raw) if raw else None

    def ops_health(self) -> list[dict[str, Any]]:
        """Every worker's detailed health, from the gateway's ops listener."""
        return self.call("GET", "/health", base=self.gw.ops_url)[2]["workers"]  # type: ignore[no-any-return]

    def layer(self, fn: Any) -> Any:
        async def main() -> Any:
            client = AsyncHevlayer(api_key=KEY, base_url=self.gw.url)
            try:
                return await fn(client)
            finally:
                await client.aclose()

        return asyncio.run(main())


@pytest.fixture(scope="module", params=BACKENDS)
def stack(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    root = tmp_path_factory.mktemp(f"stack-{request.param}")
    with store_with_backend(request.param, root, KEY) as (store, backend_env):
        gw = start_gateway(store.url, KEY, root / "gateway", **CACHE_ENV, **backend_env)
        try:
            yield Stack(gw, store)
        finally:
            gw.stop()


def fetch(stack: Stack, ns: str, doc_id: str, include: list[str] | None = None) -> tuple[str | None, dict[str, Any]]:
    res = stack.layer(lambda c: c.fetch_document(ns, doc_id, include_attributes=include, with_perf=True))
    return res.perf.cache_status, res.data.attributes


def wait_for(check: Any, within_s: float = 10.0) -> Any:
    deadline = time.monotonic() + within_s
    while True:
        value = check()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.05)


def test_fetch_cache_through(stack: Stack, ns: str) -> None:
    stack.tpuf(direct=True).namespace(ns).write(
        upsert_rows=[{"id": f"d{i}", "vector": [i, 1.0], "n": i, "s": f"v{i}"} for i in range(5)],
        distance_metric="cosine_distance")
    assert fetch(stack, ns, "d1") == ("miss", {"n": 1, "s": "v1"})
    assert fetch(stack, ns, "d1") == ("hit", {"n": 1, "s": "v1"})  # backfilled; either worker sees it
    assert fetch(stack, ns, "d1", ["s", "nope"]) == ("hit", {"s": "v1"})
    status, headers, body = stack.call("GET", f"/v2/namespaces/{ns}/documents/d1?include_attributes=n,vector")
    assert (status, headers["x-layer-cache"], headers["x-layer-warning"], body["attributes"]) == (
        200, "hit", "vector_attribute_dropped", {"n": 1})
    res = stack.layer(lambda c: c.fetch_documents(ns, {"ids": ["d1", "d2", "gone", "d1", "d3"],
                                                      "include_attributes": ["n"]}, with_perf=True))
    assert res.perf.cache_status == "partial"
    assert [(d.id, d.attributes) for d in res.data.documents] == [
        ("d1", {"n": 1}), ("d2", {"n": 2}), ("d1", {"n": 1}), ("d3", {"n": 3})]
    assert res.data.missing == ["gone"]
    res = stack.layer(lambda c: c.fetch_documents(ns, {"ids": ["d2", "d3"]}, with_perf=True))
    assert res.perf.cache_status == "hit" and res.data.documents[0].attributes == {"n": 2, "s": "v2"}
    res = stack.layer(lambda c: c.fetch_documents(ns, {"ids": ["d4", "gone"]}, with_perf=True))
    assert res.perf.cache_status == "miss" and res.data.missing == ["gone"]
    assert stack.call("GET", f"/v2/namespaces/{ns}/documents/gone")[0] == 404
    status, _, body = stack.call("GET", f"/v2/namespaces/missing-{ns}/documents/x")
    assert (status, body["error"]) == (404, "not_found")
    assert stack.call("POST", f"/v2/namespaces/{ns}/documents", {"ids": []})[0] == 422


def test_write_mirror_keeps_cache_coherent(stack: Stack, ns: str) -> None:
    gw = stack.tpuf().namespace(ns)
    gw.write(upsert_rows=[{"id": "a", "vector": [0.5, 0.5], "v": 1, "k": "x"},
                          {"id": "b", "vector": [0.1, 0.9], "v": 1, "k": "x"}], distance_metric="cosine_distance")
    status, attrs = fetch(stack, ns, "a")
    assert status == "hit" and attrs["v"] == 1 and "_hevlayer_upserted_at" in attrs
    gw.write(patch_rows=[{"id": "a", "v": 2, "extra": True}])
    assert fetch(stack, ns, "a", ["v", "extra", "k"]) == ("hit", {"v": 2, "extra": True, "k": "x"})
    # A patch of a document the cache does not hold must not create a thin record served as a hit.
    stack.tpuf(direct=True).namespace(ns).write(upsert_rows=[{"id": "u", "vector": [1.0, 0.0], "v": 1, "keep": "me"}])
    gw.write(patch_rows=[{"id": "u", "v": 5}])
    assert fetch(stack, ns, "u", ["v", "keep"]) == ("miss", {"v": 5, "keep": "me"})
    gw.write(deletes=["b"])
    assert stack.call("GET", f"/v2/namespaces/{ns}/documents/b")[0] == 404
    # The upstream rejects a write after the mirror ran: the mirrored copy is invalidated, not left stale.
    stack.call("POST", "/_localstore/faults", {"route": "write", "status": 500, "count": 1, "namespace": ns},
               base=stack.store.url)
    status, _, _ = stack.call("POST", f"/v2/namespaces/{ns}", {"upsert_rows": [{"id": "a", "v": 99}]})
    assert status == 500
    status, attrs = fetch(stack, ns, "a", ["v"])
    assert (status, attrs) == ("miss", {"v": 2})


def test_filter_and_conditional_writes_mirror_affected_ids(stack: Stack, ns: str) -> None:
    gw = stack.tpuf().namespace(ns)
    gw.write(upsert_rows=[{"id": f"f{i}", "vector": [1.0, float(i)], "k": "x" if i < 2 else "y", "v": i}
                          for i in range(4)], distance_metric="cosine_distance")
    assert fetch(stack, ns, "f0")[0] == "hit" and fetch(stack, ns, "f2")[0] == "hit"
    gw.write(delete_by_filter=["k", "Eq", "x"])
    for doc_id in ("f0", "f1"):
        assert stack.call("GET", f"/v2/namespaces/{ns}/documents/{doc_id}")[0] == 404
    gw.write(patch_by_filter={"filters": ["k", "Eq", "y"], "patch": {"tag": "patched"}})
    assert fetch(stack, ns, "f2", ["tag", "v"]) == ("miss", {"tag": "patched", "v": 2})
    res = gw.write(upsert_rows=[{"id": "f3", "vector": [0.0, 1.0], "k": "y", "v": 30}],
                   upsert_condition=["v", "Lt", 10])
    assert [str(i) for i in (res.upserted_ids or [])] == ["f3"]
    assert fetch(stack, ns, "f3", ["v"]) == ("hit", {"v": 30})


def test_mirror_reads_gzipped_write_answers(stack: Stack, ns: str) -> None:
    """A client asking for gzip gets the store's gzipped write answer relayed; the mirror still reads its affected
    ids (inflated), so documents deleted by filter leave the cache instead of being served stale."""
    gw = stack.tpuf(compression=True).namespace(ns)
    docs = [{"id": f"gz-{i:03d}-" + "x" * 40, "vector": [1.0, float(i)], "k": "x"} for i in range(60)]
    gw.write(upsert_rows=docs, distance_metric="cosine_distance")
    assert fetch(stack, ns, docs[7]["id"])[0] == "hit"
    res = gw.with_raw_response.write(delete_by_filter=["k", "Eq", "x"])
    assert res.headers.get("content-encoding") == "gzip"  # the affected ids make it > 1 KiB
    assert res.parse().rows_deleted == 60
    for doc in (docs[7], docs[59]):
        assert stack.call("GET", f"/v2/namespaces/{ns}/documents/{doc['id']}")[0] == 404


def test_nearest_to_id_uses_cached_vectors(stack: Stack, ns: str) -> None:
    gw = stack.tpuf().namespace(ns)
    gw.write(upsert_rows=[{"id": "q", "vector": [1.0, 0.0]}, {"id": "r", "vector": [0.0, 1.0]}],
             distance_metric="cosine_distance")
    # Remove q's vector upstream behind the gateway's back: only the cache can still resolve it.
    stack.tpuf(direct=True).namespace(ns).write(deletes=["q"])
    status, _, body = stack.call("POST", f"/v2/namespaces/{ns}/query", {"nearest_to_id": ["q"], "top_k": 1})
    assert status == 200 and [row["id"] for row in body["rows"]] == ["r"]
    status, _, body = stack.call("POST", f"/v2/namespaces/{ns}/query", {"nearest_to_id": ["nobody"], "top_k": 1})
    assert status == 404


def test_warm_jobs_shared_by_workers(stack: Stack, ns: str) -> None:
    stack.tpuf(direct=True).namespace(ns).write(
        upsert_rows=[{"id": f"w{i:02d}", "vector": [1.0, float(i)], "i": i} for i in range(7)],
        distance_metric="cosine_distance")
    job = stack.layer(lambda c: c.warm_namespace(ns, page_size=3))
    assert job.status in ("running", "completed") and job.namespace == ns

    def finished() -> Any:
        status, _, body = stack.call("GET", f"/v2/namespaces/{ns}/warm-jobs/{job.id}")
        return body if status == 200 and body["status"] != "running" else None

    done = wait_for(finished)
    assert done and done["status"] == "completed" and done["documents_scanned"] == 7 and done["progress"] == 1.0
    # Concurrent fresh connections land on both workers; every one answers for the same job.
    assert len(worker_pids(stack.gw.url)) == 2
    replies = in_bursts(lambda: stack.call("GET", f"/v2/namespaces/{ns}/warm-jobs/{job.id}"), 16)
    assert [body["id"] for _, _, body in replies] == [job.id] * 16
    assert fetch(stack, ns, "w05") == ("hit", {"i": 5})
    listed = stack.layer(lambda c: c.list_warm_jobs(ns))
    assert [j.id for j in listed.warm_jobs] == [job.id]
    assert stack.call("GET", f"/v2/namespaces/other-{ns}/warm-jobs/{job.id}")[0] == 404
    assert stack.call("POST", f"/v2/namespaces/{ns}/warm?page_size=0")[0] == 422

    def warm_in_health() -> Any:
        states = [s for w in stack.ops_health() for s in w["cache_state"]]
        return [s for s in states if s["namespace"] == ns and s["state"] == "warm"]

    assert wait_for(warm_in_health, 6.0)


def test_hint_cache_warm(stack: Stack, ns: str) -> None:
    stack.tpuf(direct=True).namespace(ns).write(upsert_rows=[{"id": "h", "vector": [1.0, 0.0], "x": 1}],
                                                distance_metric="cosine_distance")
    status, _, raw = stack.call("GET", f"/v1/namespaces/{ns}/hint_cache_warm")
    direct = stack.call("GET", f"/v1/namespaces/{ns}/hint_cache_warm", base=stack.store.url)
    assert (status, raw) == (direct[0], direct[2])  # passthrough, verbatim
    res = stack.layer(lambda c: c.hint_cache_warm(ns, documents=True, page_size=10))
    assert res.turbopuffer.status == "completed" and res.documents.status == "started"
    assert res.snapshots.status == "no_snapshot" and res.blobs.status == "skipped"
    res = stack.layer(lambda c: c.hint_cache_warm(ns, turbopuffer=False, documents=False, snapshots=False))
    assert (res.turbopuffer.status, res.documents.status, res.snapshots.status) == ("skipped",) * 3
    assert stack.call("GET", f"/v1/namespaces/{ns}/hint_cache_warm?page_size=0")[0] == 422
    assert stack.call("GET", f"/v1/namespaces/{ns}/hint_cache_warm?blobs=true")[0] == 422
    assert stack.call("GET", f"/v1/namespaces/{ns}/hint_cache_warm?documents=yes")[0] == 400
    assert wait_for(lambda: fetch(stack, ns, "h")[0] == "hit")


def test_metrics_and_health(stack: Stack, ns: str) -> None:
    stack.tpuf().namespace(ns).write(upsert_rows=[{"id": "m", "vector": [1.0, 0.0]}], distance_metric="cosine_distance")
    fetch(stack, ns, "m")
    workers = wait_for(lambda: w if len(w := stack.ops_health()) == 2 else None)
    assert all(w["aerospike"]["connected"] is True and w["aerospike"]["generation"] >= 1 for w in workers)

    def scrape() -> str:
        with urllib.request.urlopen(urllib.request.Request(f"{stack.gw.ops_url}/metrics"), timeout=10) as resp:
            text: str = resp.read().decode()
        return text

    def counts_the_hit(text: str) -> bool:
        return any(line.startswith("layer_cache_lookups_total") and f'namespace="{ns}"' in line
                   and 'result="hit"' in line for line in text.splitlines())

    # the fetch may have run on the other worker, which flushes its metrics within a second
    text = wait_for(lambda: t if counts_the_hit(t := scrape()) else None, 5.0)
    assert text, "no layer_cache_lookups_total hit for the namespace within 5 s"
    assert "layer_fetch_duration_seconds_bucket" in text and "layer_aerospike_op_duration_seconds" in text


def test_local_cache_outage_is_soft_and_heals(tmp_path: Path) -> None:
    """The embedded cache's write lock held by another process: writes still succeed quickly, warm says 503
    cache_cold, and once the lock is gone the invalidations are replayed (no stale copy survives)."""
    store = start_localstore(tmp_path / "store", LOCALSTORE_API_KEY=KEY)
    gw = start_gateway(store.url, KEY, tmp_path / "gw", LAYER_CACHE_REACTIVE_WARM="1", **CACHE_ENV)
    stack = Stack(gw, store)
    try:
        gwns = stack.tpuf().namespace("outage")
        gwns.write(upsert_rows=[{"id": "s", "vector": [1.0, 0.0], "v": 1}], distance_metric="cosine_distance")
        assert fetch(stack, "outage", "s", ["v"]) == ("hit", {"v": 1})
        locker = sqlite3.connect(tmp_path / "gw" / "cache.sqlite3", isolation_level=None)
        locker.execute("begin immediate")
        try:
            t0 = time.perf_counter()
            gwns.write(upsert_rows=[{"id": "s", "vector": [1.0, 0.0], "v": 2}])
            # the fence gave up after the 200 ms cache timeout and the write went on (bound: 10x); the lock is held
            # until the finally, so a write waiting on the cache would not return at all
            assert time.perf_counter() - t0 < 2.5
            status, _, body = stack.call("POST", "/v2/namespaces/outage/warm")
            assert (status, body["error"], body["cache_state"]) == (503, "cache_cold", "cold")
        finally:
            locker.execute("rollback")
            locker.close()
        # Until the failed invalidation is replayed (one breaker pause) the other worker may still serve v=1; after
        # that every worker answers v=2 (a miss: the replayed invalidation leaves a young tombstone).
        assert wait_for(lambda: all(fetch(stack, "outage", "s", ["v"]) == ("miss", {"v": 2}) for _ in range(6)), 3.0)
        # Reactive warm (enabled here): the first clean miss in a namespace warms all of it in the background.
        stack.tpuf(direct=True).namespace("reactive").write(
            upsert_rows=[{"id": f"r{i}", "vector": [1.0, float(i)], "i": i} for i in range(5)],
            distance_metric="cosine_distance")
        # the six checks above may all have reached one worker: the other may still be in its breaker pause
        # (miss-on-error, which warms nothing) until its probe finds the lock gone
        first = wait_for(lambda: (got := fetch(stack, "reactive", "r0")[0]) != "miss-on-error" and got)
        assert first == "miss", first

        def reactive_done() -> bool:  # a worker that saw the outage may answer 503 for one breaker pause
            status, _, body = stack.call("GET", "/v2/namespaces/reactive/warm-jobs")
            jobs = body.get("warm_jobs") if status == 200 else None
            return bool(jobs) and len(jobs) == 1 and jobs[0]["status"] == "completed"

        assert wait_for(reactive_done)
        assert fetch(stack, "reactive", "r4") == ("hit", {"i": 4})
    finally:
        gw.stop()
        store.stop()


def test_aerospike_outage_is_soft_and_recovers(tmp_path: Path) -> None:
    """Aerospike killed, hung and restarted under a running gateway: fetches degrade to miss-on-error within the
    cache timeout, warm endpoints answer 503 cache_cold, and everything recovers without a gateway restart."""
    server = start_server()
    store = start_localstore(tmp_path / "store", LOCALSTORE_API_KEY=KEY)
    gw = None
    try:
        gw = start_gateway(store.url, KEY, tmp_path / "gw", **CACHE_ENV, **aerospike_env(server))
        stack = Stack(gw, store)
        stack.tpuf().namespace("down").write(upsert_rows=[{"id": "a", "vector": [1.0, 0.0], "v": 1}],
                                             distance_metric="cosine_distance")
        assert fetch(stack, "down", "a", ["v"]) == ("hit", {"v": 1})
        server.delay(30_000)  # hung: every cache call runs into its 200 ms timeout, then the breaker answers
        for _ in range(4):
            t0 = time.perf_counter()
            assert fetch(stack, "down", "a", ["v"]) == ("miss-on-error", {"v": 1})
            assert time.perf_counter() - t0 < 2.5  # 10x the cache timeout, far below the hang
        server.clear_hooks()
        server.kill()
        t0 = time.perf_counter()
        res = stack.layer(lambda c: c.fetch_documents("down", {"ids": ["a", "zz"]}, with_perf=True))
        assert res.perf.cache_status == "miss-on-error" and res.data.missing == ["zz"]
        assert time.perf_counter() - t0 < 2.5
        status, _, body = stack.call("POST", "/v2/namespaces/down/warm")
        assert (status, body["error"]) == (503, "cache_cold")
        assert stack.call("GET", "/v2/namespaces/down/warm-jobs")[0] == 503

        def both_workers_see_it(up: bool) -> bool:  # each worker's refresher probes within STATE_REFRESH_S
            seen = {w["pid"]: w["aerospike"] for w in stack.ops_health()}
            return len(seen) == 2 and all(a["connected"] == up and (up or a.get("last_error")) for a in seen.values())

        assert wait_for(lambda: both_workers_see_it(up=False), 6.0)
        server.restart()
        assert wait_for(lambda: both_workers_see_it(up=True), 10.0), "every worker recovers by itself"
        assert wait_for(lambda: fetch(stack, "down", "a", ["v"])[0] == "hit", 10.0)
        assert stack.call("POST", "/v2/namespaces/down/warm")[0] == 202
    finally:
        if gw is not None:
            gw.stop()
        store.stop()
        server.stop()


def test_workers_write_nothing_to_an_existing_cache_file_at_start(tmp_path: Path) -> None:
    """The serve process creates the embedded cache file once, before the workers start; workers only check it (two
    workers switching a new file to WAL at the same moment printed "database is locked")."""
    from gateway.cache.local import cache_path, prepare

    data_dir = str(tmp_path / "gw")
    prepare(data_dir)
    locker = sqlite3.connect(cache_path(data_dir), isolation_level=None)
    locker.execute("begin immediate")  # any write at start-up would now wait, then fail
    store = start_localstore(tmp_path / "store", LOCALSTORE_API_KEY=KEY)
    gw = None
    try:
        gw = start_gateway(store.url, KEY, data_dir, **CACHE_ENV)
        log = gw.log()
    finally:
        locker.execute("rollback")
        locker.close()
        if gw is not None:
            gw.stop()
        store.stop()
    assert "locked" not in log and "schema setup failed" not in log, log
