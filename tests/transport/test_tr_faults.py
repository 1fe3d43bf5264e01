"""A misbehaving upstream through the real gateway (one worker, each transport): every case is a 502
`upstream_error` within the deadline, the connection is discarded and nothing leaks (sockets, asyncio tasks,
dead pooled connections). Then the same with random misbehaviour over many concurrent requests.

The worker's tasks and pools come from its health snapshot on the ops listener, which it rewrites every metrics
flush (~1 s): a check only counts a snapshot taken after the test's last request returned."""

from __future__ import annotations

import http.client
import json
import os
import random
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from support.procs import Proc, start_gateway
from support.upstream_server import (
    Action,
    ScriptedUpstream,
    Seen,
    close_now,
    drip,
    hang,
    huge_headers,
    interim,
    raw,
    respond,
    truncated,
)
from tr_support import KINDS, wait_for

KEY = "faults-key"
TIMEOUT_S = 1.0
GW_ENV = {"LAYER_UPSTREAM_TIMEOUT_MS": str(int(TIMEOUT_S * 1000)), "LAYER_UPSTREAM_READ_TIMEOUT_MS": "500",
          "LAYER_UPSTREAM_MAX_RESPONSE_BYTES": str(1 << 20), "LAYER_LOG_LEVEL": "warning",
          "CONSISTENCY_POLL_INTERVAL_MS": "600000", "CONSISTENCY_STABLE_POLL_INTERVAL_MS": "600000"}
SLOW = ("slow-drip", "hang")
SETTLE_S = 20.0  # a snapshot is at most ~1 s old; a few flushes on a loaded machine, times ten
QUERY = json.dumps({"rank_by": ["id", "asc"], "top_k": 1}).encode()
ROWS = b'{"rows":[{"id":1}]}'
META = b'{"id":"x","approx_row_count":1,"index":{"status":"up-to-date"}}'

CASES: dict[str, Action] = {
    "garbage": raw(b"\x16\x03\x01 not http at all\r\n\r\n"),
    "truncated-body": truncated(),
    "truncated-chunked": truncated(chunked=True),
    "slow-drip": drip(0.05),
    "early-close": close_now(),
    "huge-headers": huge_headers(1 << 20),
    "hang": hang(),
    "body-over-limit": respond(body=b"x" * (2 << 20)),
}
GOOD: dict[str, Action] = {
    "ok": respond(body=ROWS),
    "chunked": respond(body=ROWS, chunked=True),
    "close-delimited": respond(body=ROWS, framing=False),
    "interim": interim(100, then=respond(body=ROWS)),
}


State = tuple[int, int, list[tuple[int, int, int]]]


class Faulty:
    """A gateway in front of a scripted upstream; the namespace says how the upstream answers (`ns-<case>`)."""

    def __init__(self, kind: str, upstream: ScriptedUpstream, gw: Proc) -> None:
        self.kind, self.upstream, self.gw = kind, upstream, gw
        assert gw.ops_url is not None
        host, port = gw.ops_url.rsplit("/", 1)[1].split(":")
        self._ops = http.client.HTTPConnection(host, int(port), timeout=10)  # one kept-alive connection
        wait_for(lambda: self._ops_get("/health")[0] == 200, SETTLE_S)  # 503 until the worker has published
        self.pid = self.health()["pid"]

    def call(self, method: str, path: str, body: bytes | None) -> tuple[int, dict[str, Any], float]:
        host, port = self.gw.url.rsplit("/", 1)[1].split(":")
        conn = http.client.HTTPConnection(host, int(port), timeout=30)
        started = time.monotonic()
        try:
            conn.request(method, path, body=body, headers={"Authorization": f"Bearer {KEY}",
                                                            "Content-Type": "application/json"})
            resp = conn.getresponse()
            data = resp.read()
        finally:
            conn.close()
        return resp.status, json.loads(data) if data else {}, time.monotonic() - started

    def query(self, ns: str) -> tuple[int, dict[str, Any], float]:
        return self.call("POST", f"/v2/namespaces/{ns}/query", QUERY)

    def _ops_get(self, path: str) -> tuple[int, bytes]:
        self._ops.request("GET", path)
        resp = self._ops.getresponse()
        return resp.status, resp.read()

    def health(self) -> dict[str, Any]:
        """The worker's latest health snapshot (the gateway has one worker)."""
        (worker,) = json.loads(self._ops_get("/health")[1])["workers"]
        return dict(worker)

    def metric(self, series: str) -> float | None:
        values = [float(line.rsplit(" ", 1)[1]) for line in self._ops_get("/metrics")[1].decode().splitlines()
                  if line.startswith(series + " ")]
        return sum(values) if values else None

    def sockets(self) -> int:
        """The worker's open sockets (other files, like the cache's SQLite connections, come and go on their own)."""
        fd_dir, count = f"/proc/{self.pid}/fd", 0
        for fd in os.listdir(fd_dir):
            try:
                count += os.readlink(f"{fd_dir}/{fd}").startswith("socket:")
            except FileNotFoundError:  # closed since the listing
                pass
        return count

    def state(self, since_ms: float) -> tuple[int, State] | None:
        """(snapshot time, (worker sockets other than upstream connections, asyncio tasks, pools' (open, idle,
        waiting))) when the worker is quiet: its snapshot is newer than `since_ms` and every pooled connection is
        an open, idle one (the upstream sees exactly as many open connections). None otherwise."""
        health = self.health()
        pools = [(p["open"], p["idle"], p["waiting"]) for p in health["upstream"].get("pools", [])]
        fds, live = self.sockets(), self.upstream.counters.live
        if health["updated_ms"] <= since_ms or not all(o == i == live and w == 0 for o, i, w in pools):
            return None
        return health["updated_ms"], (fds - live, health["tasks"], pools)

    def polled(self, *namespaces: str) -> None:
        """Wait until the upstream has seen the watcher's first metadata poll of each namespace (due at once after
        its first query): a poll in flight holds a pooled connection, so the next request would open a fresh one."""
        wait_for(lambda: all(self.upstream.paths(f"/v2/namespaces/{ns}/metadata") for ns in namespaces), SETTLE_S)

    def settle(self, baseline: State) -> None:
        """Nothing leaked: once a snapshot taken after every request so far shows a quiet worker, it has the same
        sockets and tasks as at the start."""
        since_ms = time.time() * 1000
        seen: list[Any] = []

        def back_to_baseline() -> bool:
            seen[:] = [self.state(since_ms)]
            return seen[0] is not None and seen[0][1][:2] == baseline[:2]

        try:
            wait_for(back_to_baseline, SETTLE_S)
        except AssertionError:
            raise AssertionError(f"not settled: {seen} (upstream sees {self.upstream.counters.live} open) vs "
                                 f"{baseline}: {self.health()}") from None


def plan(seen: Seen) -> Action:
    if seen.path.endswith("/metadata"):
        return respond(body=META)
    case = seen.path.split("/")[3].split("-", 1)[1]  # namespace `<tag>-<case>`
    if case == "dies-on-reuse":
        return close_now() if seen.index_on_conn > 0 else respond(body=ROWS)
    if case == "429":
        return respond(429, b'{"error":"slow down"}', [("Retry-After", "1")])
    return CASES.get(case) or GOOD[case]


@pytest.fixture(scope="module", params=KINDS)
def faulty(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Faulty]:
    upstream = ScriptedUpstream()
    upstream.plan = plan
    try:
        gw = start_gateway(upstream.url, KEY, Path(tmp_path_factory.mktemp("faults")), workers=1,
                           LAYER_UPSTREAM_TRANSPORT=request.param, **GW_ENV)
    except BaseException:
        upstream.stop()
        raise
    yield Faulty(request.param, upstream, gw)
    gw.stop()
    upstream.stop()


@pytest.fixture
def baseline(faulty: Faulty) -> State:
    """The worker's state once a good query went through and the watcher's first metadata poll is done: the same in
    two successive snapshots taken after the query, with the worker quiet."""
    assert faulty.query("base-ok")[0] == 200
    faulty.polled("base-ok")
    since_ms = time.time() * 1000
    quiet: list[tuple[int, State]] = []

    def stable() -> bool:
        state = faulty.state(since_ms)
        if state is None:
            quiet.clear()
        elif quiet and state[0] == quiet[-1][0]:  # the same snapshot: keep the latest socket count
            quiet[-1] = state
        else:
            quiet[:] = [*quiet[-1:], state]
        return len(quiet) == 2 and quiet[0][1] == quiet[1][1]

    wait_for(stable, SETTLE_S)
    return quiet[-1][1]


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_misbehaving_upstream_is_a_502_within_the_deadline_and_leaks_nothing(faulty: Faulty, baseline: Any,
                                                                               case: str) -> None:
    status, body, took = faulty.query(f"ns-{case}")
    assert status == 502 and body["error"] == "upstream_error", body
    assert took < 10 * TIMEOUT_S, took
    faulty.settle(baseline)
    status, body, _ = faulty.query("after-ok")
    assert status == 200 and body == json.loads(ROWS)
    if faulty.kind == "httptools":
        discarded = faulty.health()["upstream"]["pools"][0]["discarded"]  # settle saw a snapshot after the case
        assert discarded.get("timeout" if case in SLOW else "error", 0) >= 1, discarded


def test_a_query_on_a_dead_reused_connection_is_retried_and_a_write_is_not(faulty: Faulty, baseline: Any) -> None:
    assert faulty.query("q-dies-on-reuse")[0] == 200  # the pooled connection dies under it; retried once
    assert len(faulty.upstream.paths("/v2/namespaces/q-dies-on-reuse/query")) == 2
    faulty.query("re-ok")  # every pooled connection has now served a request: the write goes to a reused one
    faulty.polled("q-dies-on-reuse", "re-ok")
    faulty.settle(baseline)  # those polls' connections are idle again
    status, body, _ = faulty.call("POST", "/v2/namespaces/w-dies-on-reuse", b'{"upsert_rows": [{"id": 1}]}')
    assert status == 502 and body["error"] == "upstream_error", body
    assert len(faulty.upstream.paths("/v2/namespaces/w-dies-on-reuse")) == 1
    faulty.settle(baseline)
    if faulty.kind == "httptools":  # the pool's counts reach /metrics at the next flush (labels sorted by name)
        label = f'upstream="127.0.0.1:{faulty.upstream.port}"'
        wait_for(lambda: (faulty.metric(f"layer_upstream_retries_total{{{label}}}") or 0) >= 1
                 and (faulty.metric(f'layer_upstream_connections_discarded_total{{reason="stale",{label}}}') or 0) >= 1
                 and (faulty.metric(f"layer_upstream_connections_opened_total{{{label}}}") or 0) >= 2
                 and faulty.metric(f'layer_upstream_connections{{state="idle",{label}}}') is not None, SETTLE_S)


def test_random_misbehaviour_over_many_requests_leaves_a_clean_gateway(faulty: Faulty, baseline: Any) -> None:
    seed = int(os.environ.get("LAYER_TEST_SEED", random.randrange(1 << 30)))
    print(f"seed {seed} (LAYER_TEST_SEED to repeat)")
    rng = random.Random(seed)
    fast = [*GOOD] * 3 + ["dies-on-reuse"] * 3 + ["429"] + [c for c in CASES if c not in SLOW]
    plan_ = [(i, rng.choice(SLOW) if rng.random() < 0.08 else rng.choice(fast)) for i in range(160)]
    faulty.upstream.requests.clear()

    def one(item: tuple[int, str]) -> tuple[int, str, int, str, float]:
        i, case = item
        if case == "dies-on-reuse" and i % 2:  # a write: never re-sent
            status, body, took = faulty.call("POST", f"/v2/namespaces/w{i}-dies-on-reuse", b'{"upsert_rows": []}')
        else:
            status, body, took = faulty.query(f"r{i}-{case}")
        return i, case, status, f"{body.get('error', '')}: {body.get('message', '')}" if status >= 500 else "", took

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(one, plan_))
    for i, case, status, error, took in results:
        assert took < 10 * TIMEOUT_S, (case, took)
        if case == "dies-on-reuse" and not i % 2:
            assert status == 200, (case, status, error)
        if case in GOOD:
            assert status == 200, (case, status, error)
        elif case == "429":
            assert status == 429, (case, status)
        elif case == "dies-on-reuse":  # a query is retried on a fresh connection; a write may fail
            assert status == 200 or (status == 502 and error.startswith("upstream_error")), (case, status, error)
        else:
            assert status == 502 and error.startswith("upstream_error"), (case, status, error)
    for i, case in plan_:
        if case == "dies-on-reuse" and i % 2:
            assert len(faulty.upstream.paths(f"/v2/namespaces/w{i}-dies-on-reuse")) == 1, i
    faulty.settle(baseline)
    assert all(faulty.query(f"end{i}-ok")[0] == 200 for i in range(20))
    faulty.settle(baseline)

