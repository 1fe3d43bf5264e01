"""The query-result cache (LAYER_RESULT_CACHE) in the real gateway in front of the local store.

Two gateways share one cache backend (the embedded SQLite file through one LAYER_DATA_DIR, or the Aerospike wire
test server): a write through either one must invalidate both; a write straight to the store must show within
the stable poll interval. Upstream calls are counted at the store with a fault rule that only counts (and delays).
"""

from __future__ import annotations

import json
import random
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, NamedTuple

import pytest
from support.procs import Proc, base_env, free_ports, gateway_cmd, start_gateway, start_localstore, wait_for_workers

from .conftest import BACKENDS, store_with_backend

KEY = "results-test-key"
POLL_MS, STABLE_POLL_MS = 100, 400
ENV = {"LAYER_RESULT_CACHE": "on", "CONSISTENCY_POLL_INTERVAL_MS": str(POLL_MS),
       "CONSISTENCY_STABLE_POLL_INTERVAL_MS": str(STABLE_POLL_MS), "CONSISTENCY_SAFETY_MARGIN_MS": "50",
       "LAYER_CACHE_BREAKER_MS": "300"}
QUERY = {"rank_by": ["id", "asc"], "top_k": 1000}
COUNTED = 1_000_000  # a fault rule's count: the store counts down one per matching request


def call(base: str, method: str, path: str, body: Any = None, key: str = KEY) -> tuple[int, dict[str, str], Any]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(base + path, data=data, method=method,
                                 headers={"authorization": f"Bearer {key}", "content-type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            status, headers, raw = resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as exc:
        status, headers, raw = exc.code, dict(exc.headers), exc.read()
    return status, {k.lower(): v for k, v in headers.items()}, json.loads(raw) if raw else None


def wait_for(check: Any, within_s: float) -> Any:
    deadline = time.monotonic() + within_s
    while True:
        value = check()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.05)


class Stack:
    def __init__(self, store: Proc, gateways: list[Proc]) -> None:
        self.store, self.gateways = store, gateways

    def write(self, ns: str, ids: list[int], gw: int | None = 0) -> None:
        base = self.store.url if gw is None else self.gateways[gw].url
        status, _, body = call(base, "POST", f"/v2/namespaces/{ns}", {"upsert_rows": [{"id": i, "v": i} for i in ids]})
        assert status == 200, body

    def query(self, ns: str, body: Any = QUERY, gw: int = 0) -> tuple[str | None, list[int]]:
        status, headers, out = call(self.gateways[gw].url, "POST", f"/v2/namespaces/{ns}/query", body)
        assert status == 200, out
        return headers.get("x-layer-cache"), [row["id"] for row in out["rows"]]

    def warm(self, ns: str, body: Any = QUERY, gw: int = 0) -> list[int]:
        """Query until the answer is a hit (the worker read the namespace's metadata and cached the answer)."""
        def hit() -> list[int] | None:
            outcome, ids = self.query(ns, body, gw)
            return ids if outcome == "hit" else None

        found = wait_for(hit, 20)
        assert found is not None, "the query never became a cache hit"
        return found  # type: ignore[no-any-return]

    def count_queries(self, ns: str, delay_ms: int = 0) -> None:
        rule = {"route": "query", "namespace": ns, "count": COUNTED, "delay_ms": delay_ms}
        assert call(self.store.url, "POST", "/_localstore/faults", rule)[0] == 200

    def queries_counted(self) -> int:
        rules = call(self.store.url, "GET", "/_localstore/faults")[2]["faults"]
        return sum(COUNTED - r["remaining"] for r in rules if r["route"] == "query")

    def health(self, gw: int = 0) -> list[dict[str, Any]]:
        return call(self.gateways[gw].ops_url, "GET", "/health")[2]["workers"]  # type: ignore[no-any-return]

    def bypassed(self, gw: int = 0) -> int:
        """Queries the gateway's workers sent without the cache (a metadata reading too old, e.g. a late poll)."""
        return sum(w["result_cache"]["bypassed"] for w in self.health(gw))


@pytest.fixture(scope="module", params=BACKENDS)
def stack(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """A store and two 2-worker gateways sharing one result-cache generation store."""
    root = tmp_path_factory.mktemp(f"results-{request.param}")
    with store_with_backend(request.param, root, KEY) as (store, backend_env):
        gateways: list[Proc] = []
        try:
            for _ in range(2):  # one data dir: the embedded backend's SQLite file is shared like Aerospike is
                gateways.append(start_gateway(store.url, KEY, root / "gateway", **ENV, **backend_env))
            yield Stack(store, gateways)
        finally:
            for gw in gateways:
                gw.stop()


def test_hit_and_miss(stack: Stack, ns: str) -> None:
    stack.write(ns, [1, 2])
    first = stack.query(ns)
    assert first == ("miss", [1, 2])
    assert stack.warm(ns) == [1, 2]
    # key order and whitespace do not matter; another body is another entry
    assert stack.query(ns, {"top_k": 1000, "rank_by": ["id", "asc"]})[1] == [1, 2]
    assert stack.query(ns, {"rank_by": ["id", "desc"], "top_k": 1000}) in (("miss", [2, 1]), ("hit", [2, 1]))
    # a namespace the setting does not name answers without the header: not the case here (on = every namespace)
    status, headers, _ = call(stack.gateways[0].url, "POST", f"/v2/namespaces/{ns}/query", {"top_k": "x"})
    assert status == 400 and headers["x-layer-cache"] == "miss"  # errors are relayed, never cached


@pytest.mark.parametrize("writer", [0, 1], ids=["same-gateway", "other-gateway"])
def test_write_through_any_gateway_invalidates(stack: Stack, ns: str, writer: int) -> None:
    stack.write(ns, [1])
    for gw in (0, 1):
        assert stack.warm(ns, gw=gw) == [1]
    for n in range(2, 6):
        stack.write(ns, [n], gw=writer)
        for gw in (0, 1):  # every worker of both gateways (fresh connections spread over the workers)
            for _ in range(4):
                assert stack.query(ns, gw=gw)[1] == list(range(1, n + 1))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("writer_setting", ["off", "other-namespaces"])
def test_write_through_a_gateway_without_the_result_cache_invalidates(tmp_path: Path, ns: str, backend: str,
                                                                      writer_setting: str) -> None:
    """A mixed fleet on one shared cache: the writer's LAYER_RESULT_CACHE does not name the namespace, the reader's
    does. Slow polls keep the reader's watcher from noticing the write; only the shared generation can."""
    slow = dict(ENV, CONSISTENCY_POLL_INTERVAL_MS="3000", CONSISTENCY_STABLE_POLL_INTERVAL_MS="6000")
    writer_env = {k: v for k, v in slow.items() if k != "LAYER_RESULT_CACHE"}
    if writer_setting == "other-namespaces":
        writer_env["LAYER_RESULT_CACHE"] = "some-other-namespace"
    with store_with_backend(backend, tmp_path, KEY) as (store, backend_env), \
            start_gateway(store.url, KEY, tmp_path / "gateway", workers=1, **slow, **backend_env) as reader, \
            start_gateway(store.url, KEY, tmp_path / "gateway", workers=1, **writer_env, **backend_env) as writer:
        stack = Stack(store, [reader, writer])
        stack.write(ns, [1], gw=1)
        assert stack.warm(ns) == [1]
        stack.write(ns, [2], gw=1)
        for _ in range(4):
            assert stack.query(ns)[1] == [1, 2]


def test_failed_write_still_invalidates(stack: Stack, ns: str) -> None:
    stack.write(ns, [1])
    assert stack.warm(ns) == [1]
    # applied upstream, answered 500: the gateway cannot know it landed, so it must not serve the old answer
    assert call(stack.store.url, "POST", "/_localstore/faults",
                {"route": "write", "namespace": ns, "status": 500, "apply": True, "count": 1})[0] == 200
    status, _, _ = call(stack.gateways[1].url, "POST", f"/v2/namespaces/{ns}", {"upsert_rows": [{"id": 2, "v": 2}]})
    assert status == 500
    for _ in range(6):
        assert stack.query(ns)[1] == [1, 2]


def test_foreign_write_is_seen_within_the_stable_poll_interval(stack: Stack, ns: str) -> None:
    stack.write(ns, [1])
    for gw in (0, 1):
        assert stack.warm(ns, gw=gw) == [1]
    stack.write(ns, [2], gw=None)  # straight to the store: only the watcher can notice
    written = time.monotonic()
    bound_s = (STABLE_POLL_MS + 2 * POLL_MS) / 1000
    for gw in (0, 1):
        assert wait_for(lambda gw=gw: stack.query(ns, gw=gw)[1] == [1, 2], 10 * bound_s + 5)
    # past the bound (plus a generous margin for a shared machine), no worker answers the old result any more
    time.sleep(max(0.0, written + bound_s + 1.0 - time.monotonic()))
    for gw in (0, 1):
        for _ in range(6):
            assert stack.query(ns, gw=gw)[1] == [1, 2]


def test_singleflight_one_upstream_call(stack: Stack, ns: str) -> None:
    stack.write(ns, [1, 2, 3])
    assert stack.warm(ns) == [1, 2, 3]
    for w in range(8):  # make every worker fresh (it has read the namespace's metadata)
        stack.warm(ns, {"rank_by": ["id", "asc"], "top_k": 100 + w})
    stack.count_queries(ns, delay_ms=1500)

    # A query that finds this worker's metadata reading too old (a late poll on a busy machine) bypasses the cache
    # on purpose; such a round does not measure sharing, so count the bypasses and try again with a new body.
    for attempt in range(5):
        before, counted_before = stack.bypassed(), stack.queries_counted()
        body = {"rank_by": ["id", "asc"], "top_k": 7 + attempt}
        with ThreadPoolExecutor(16) as pool:
            answers = list(pool.map(lambda _, body=body: stack.query(ns, body), range(16)))
        assert all(ids == [1, 2, 3] for _, ids in answers)
        calls = stack.queries_counted() - counted_before
        if stack.bypassed() == before:
            break
    else:
        pytest.fail("every round had queries that bypassed the cache")
    # one call per worker of the gateway at most (each worker has its own memory), however many callers
    assert 1 <= calls <= 2, calls
    assert sorted(h for h, _ in answers).count("miss") == calls


def test_memory_bound(tmp_path: Path) -> None:
    store = start_localstore(tmp_path / "store", LOCALSTORE_API_KEY=KEY)
    gw = None
    try:
        gw = start_gateway(store.url, KEY, tmp_path / "gw", workers=1,
                           **dict(ENV, LAYER_RESULT_CACHE="big,other", LAYER_RESULT_CACHE_MAX_BYTES="65536"))
        stack = Stack(store, [gw])
        status, _, body = call(gw.url, "POST", "/v2/namespaces/big",
                               {"upsert_rows": [{"id": i, "v": i, "s": "x" * 1000} for i in range(10)]})
        assert status == 200, body
        stack.write("off", [1])
        assert stack.warm("big") == list(range(10))
        bodies = [{"rank_by": ["id", "asc"], "top_k": 1 + n, "include_attributes": ["s"]} for n in range(60)]
        for body in bodies:
            stack.query("big", body)
        def counted() -> dict[str, Any] | None:
            stats: dict[str, Any] = stack.health()[0]["result_cache"]
            return stats if stats["misses"] + stats["bypassed"] >= 61 else None

        stats = wait_for(counted, 10)
        assert stats and 0 < stats["bytes"] <= 65536 and stats["entries"] < 60, stats
        # the newest stays (filled again if a late metadata poll made its first query bypass the cache: /health, a
        # snapshot published every second, cannot tell which query did)
        assert stack.warm("big", bodies[-1]) == list(range(10))
        assert stack.query("big", bodies[0])[0] == "miss"  # the oldest went
        status, headers, _ = call(gw.url, "POST", "/v2/namespaces/off/query", QUERY)
        assert status == 200 and "x-layer-cache" not in headers  # a namespace the setting does not name
    finally:
        if gw is not None:
            gw.stop()
        store.stop()


def test_derive_mode_hit_needs_the_callers_verdict(tmp_path: Path) -> None:
    """No store key on the gateway: each caller's bearer goes upstream. A cached answer goes only to a bearer
    upstream accepts; a wrong one gets upstream's own refusal, never the cached rows."""
    store = start_localstore(tmp_path / "store", LOCALSTORE_API_KEY=KEY)
    gw = None
    try:
        port, ops_port = free_ports(2)
        env = base_env(TURBOPUFFER_API_URL=store.url, LAYER_DATA_DIR=str(tmp_path / "gw"), **ENV)
        gw = Proc("gateway", gateway_cmd(port, ops_port, 1), env, f"http://127.0.0.1:{port}", "/ready")
        wait_for_workers(gw.url, 1)
        stack = Stack(store, [gw])
        stack.write("secret", [1, 2])
        assert stack.warm("secret") == [1, 2]
        status, _, body = call(gw.url, "POST", "/v2/namespaces/secret/query", QUERY, key="wrong-key")
        assert status == 403 and "rows" not in (body or {}), body
    finally:
        if gw is not None:
            gw.stop()
        store.stop()


class Seen(NamedTuple):
    before: frozenset[int]  # ids whose write was acknowledged before the query started
    strong: bool
    outcome: str | None
    ids: frozenset[int]
    watermark: int | None  # x-layer-stable-as-of when the watermark filter was applied


def test_randomized_no_hit_older_than_an_uncached_read(stack: Stack, ns: str) -> None:
    """Writers through both gateways, readers through both. Every answer, hit or miss, holds what an uncached query
    at the same consistency level must show of the writes acknowledged before the query started:
    * `consistency: strong`: all of them (read-your-writes: turbopuffer.md §6.6);
    * default (eventual + stable reads): all of them, unless the gateway applied the watermark filter; then exactly
      those stamped at or below the watermark it reports. The write fence makes a namespace `updating` on every
      write, so a stable read may leave out a write acknowledged after its watermark (docs/architecture.md) -- but
      never one below it, and never a row stamped above it.
    Then, with the writers stopped, the namespace leaves `updating` everywhere: a fence is never stuck."""
    acked: set[int] = set()
    lock = threading.Lock()
    next_id = iter(range(1, 10**6))
    stop = time.monotonic() + 6.0
    seen: list[Seen] = []
    failed: list[str] = []
    bodies = [{"rank_by": ["id", "asc"], "top_k": 1000 - k} for k in range(3)]
    bodies += [dict(b, consistency={"level": "strong"}) for b in bodies]
    stack.write(ns, [0])
    with lock:
        acked.add(0)

    def writer(seed: int) -> None:
        rnd = random.Random(seed)
        while time.monotonic() < stop:
            with lock:
                ids = [next(next_id) for _ in range(rnd.randint(1, 3))]
            stack.write(ns, ids, gw=rnd.randrange(2))
            with lock:
                acked.update(ids)
            time.sleep(rnd.uniform(0, 0.3))

    def reader(seed: int) -> None:
        rnd = random.Random(seed)
        while time.monotonic() < stop:
            with lock:
                before = frozenset(acked)
            body = rnd.choice(bodies)
            status, headers, out = call(stack.gateways[rnd.randrange(2)].url, "POST", f"/v2/namespaces/{ns}/query",
                                        body)
            if status != 200:
                failed.append(f"{status}: {out}")
                return
            applied = headers.get("x-layer-watermark-applied") == "true"
            seen.append(Seen(before, "consistency" in body, headers.get("x-layer-cache"),
                             frozenset(row["id"] for row in out["rows"]),
                             int(headers["x-layer-stable-as-of"]) if applied else None))

    seed = random.randrange(10**6)
    threads = [threading.Thread(target=writer, args=(seed + i,)) for i in range(2)]
    threads += [threading.Thread(target=reader, args=(seed + 10 + i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not failed, failed[:3]
    # Each id is written once: its stamp, read from the store itself, is the one every query filtered on.
    status, _, out = call(stack.store.url, "POST", f"/v2/namespaces/{ns}/query",
                          {"rank_by": ["id", "asc"], "top_k": 10_000, "include_attributes": ["_hevlayer_upserted_at"],
                           "consistency": {"level": "strong"}})
    assert status == 200, out
    stamps = {row["id"]: row["_hevlayer_upserted_at"] for row in out["rows"]}
    assert acked <= stamps.keys()
    errors = []
    for s in seen:
        owed = s.before if s.watermark is None else {i for i in s.before if stamps[i] <= s.watermark}
        above = set() if s.watermark is None else {i for i in s.ids if stamps[i] > s.watermark}
        if owed - s.ids or above:
            level = "strong" if s.strong else f"stable (watermark {s.watermark})"
            errors.append(f"{s.outcome} {level}: missing {sorted(owed - s.ids)[:10]}, above the watermark "
                          f"{sorted(above)[:10]}")
    assert not errors, f"seed {seed}: {len(errors)} of {len(seen)} answers wrong: {errors[:3]}"
    count = Counter((s.strong, s.outcome, s.watermark is not None) for s in seen)
    print(f"randomized result cache: seed {seed}, (strong, outcome, filtered) -> answers: {dict(count)}")
    for strong in (True, False):  # hits at both levels, and filtered answers: else the test proved little
        assert any(n for (st, outcome, _), n in count.items() if st == strong and outcome == "hit"), count
    assert any(n for (_, _, filtered), n in count.items() if filtered), count

    everything = sorted(acked)

    def settled(gw: int) -> bool:
        status, headers, out = call(stack.gateways[gw].url, "POST", f"/v2/namespaces/{ns}/query", bodies[0])
        return (status == 200 and "x-layer-watermark-applied" not in headers
                and [row["id"] for row in out["rows"]] == everything)

    bound_s = (STABLE_POLL_MS + 2 * POLL_MS) / 1000
    for gw in (0, 1):
        assert wait_for(lambda gw=gw: all(settled(gw) for _ in range(8)), 10 * bound_s + 5), "stuck updating"


def test_scoped_keys_are_checked_before_the_cache(stack: Stack, ns: str) -> None:
    """A minted key scoped to other namespaces (or to writes only) never gets a cached answer."""
    stack.write(ns, [1])
    assert stack.warm(ns) == [1]

    def mint(name: str, scopes: list[str], globs: list[str]) -> str:
        status, _, body = call(stack.gateways[0].url, "POST", "/v2/keys", {
            "name": name, "entitlements": {"vectorstore.default": {"scopes": scopes, "namespaces": globs}},
            "expiresAfter": "1d"})
        assert status in (200, 201), body
        return body["token"]  # type: ignore[no-any-return]

    other = mint(f"other-{ns}", ["read"], ["elsewhere-*"])
    writer = mint(f"writer-{ns}", ["write"], [ns])
    reader = mint(f"reader-{ns}", ["read"], [ns])
    for gw in (0, 1):
        for _ in range(4):
            for token in (other, writer):
                status, headers, body = call(stack.gateways[gw].url, "POST", f"/v2/namespaces/{ns}/query", QUERY,
                                             key=token)
                assert status == 403 and "x-layer-cache" not in headers and "rows" not in body, body
            status, _, body = call(stack.gateways[gw].url, "POST", f"/v2/namespaces/{ns}/query", QUERY, key=reader)
            assert status == 200 and [r["id"] for r in body["rows"]] == [1]
