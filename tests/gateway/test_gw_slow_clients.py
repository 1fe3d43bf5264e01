"""Slow clients (issue 17), under the server the suite runs with (LAYER_SERVER): one client opens the per-worker
connection limit times the workers plus 1,000 slow connections (headers trickled, bodies trickled, idle keep-alive)
while a second client, on keep-alive connections it opened before, sends queries and /health throughout.

Figures are printed (`pytest -s`) for the closing note."""

from __future__ import annotations

import asyncio
import http.client
import json
import threading
import time
from collections import Counter
from pathlib import Path

from gw_support import call
from support.httpload import Load, request_bytes
from support.procs import Proc, start_gateway
from test_gw_drain import KEY, QUERY, upstream  # noqa: F401 - the slow upstream fixture

WORKERS = 2
LIMIT = 200  # LAYER_MAX_CONNECTIONS (per worker)
SLOW = WORKERS * LIMIT + 1000
HEADER_MS, BODY_MS, KEEPALIVE_MS = 1500, 1500, 2000
TRICKLE_S = 0.5
ATTACK_S = 8.0
RSS_BUDGET_MB = 100.0  # bench/budgets.toml [soak] rss_mb_max
HEADERS = {"authorization": f"Bearer {KEY}"}


class Slow:
    """One slow connection: what it sent, when it was connected and when (and how) the gateway ended it."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.connected = 0.0
        self.closed = 0.0
        self.answer = b""


async def _slow_one(conn: Slow, port: int, stop: threading.Event) -> None:
    # noted before connecting: on a busy client loop the connection is made long before this coroutine resumes, and
    # a lifetime measured from then could look shorter than the gateway's timeout
    conn.connected = time.monotonic()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        return
    auth = f"authorization: Bearer {KEY}\r\n".encode()
    if conn.kind == "header":
        writer.write(b"POST /v2/namespaces/x/query HTTP/1.1\r\nhost: x\r\n")
    elif conn.kind == "body":
        writer.write(b"POST /v2/namespaces/x/query HTTP/1.1\r\nhost: x\r\n" + auth
                     + b"content-type: application/json\r\ncontent-length: 4000\r\n\r\n{")
    else:
        writer.write(b"GET /health HTTP/1.1\r\nhost: x\r\n\r\n")
    read = asyncio.ensure_future(reader.read(65536))
    try:
        while not stop.is_set():
            done, _ = await asyncio.wait({read}, timeout=TRICKLE_S)
            if done:
                data = read.result()
                if not data:
                    break
                conn.answer += data
                read = asyncio.ensure_future(reader.read(65536))
                continue
            if conn.kind == "header":
                writer.write(b"x-trickle: 1\r\n")
            elif conn.kind == "body":
                writer.write(b" ")
    except ConnectionError:
        pass
    finally:
        conn.closed = time.monotonic() if not stop.is_set() else 0.0
        read.cancel()
        writer.close()


def _attack(port: int, conns: list[Slow], stop: threading.Event) -> threading.Thread:
    async def main() -> None:
        await asyncio.gather(*(_slow_one(c, port, stop) for c in conns))

    t = threading.Thread(target=lambda: asyncio.run(main()), daemon=True)
    t.start()
    return t


def _worker_rss_mb(gw: Proc) -> float:
    peak = 0.0
    for pid in gw.pids()[1:]:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    peak = max(peak, int(line.split()[1]) / 1024)
        except OSError:
            pass
    return peak


def test_slow_connections_cannot_starve_a_normal_client(upstream: Proc, tmp_path: Path) -> None:  # noqa: F811
    gw = start_gateway(upstream.url, KEY, tmp_path / "gw", workers=WORKERS, LAYER_MAX_CONNECTIONS=str(LIMIT),
                       LAYER_HEADER_TIMEOUT_MS=str(HEADER_MS), LAYER_BODY_TIMEOUT_MS=str(BODY_MS),
                       LAYER_KEEPALIVE_TIMEOUT_MS=str(KEEPALIVE_MS), LAYER_LOG_LEVEL="warning")
    addr = [("127.0.0.1", int(gw.url.rsplit(":", 1)[1]))]
    queries = Load(lambda: addr, request_bytes("POST", "/v2/namespaces/ok/query", QUERY, HEADERS), 2, pause=0.02)
    health = Load(lambda: addr, request_bytes("GET", "/health"), 2, pause=0.02)
    conns = [Slow(("header", "body", "idle")[i % 3]) for i in range(SLOW)]
    stop = threading.Event()
    try:
        queries.start()
        health.start()
        deadline = time.monotonic() + 10
        while len(queries.outcomes) < 4 or len(health.outcomes) < 4:  # their keep-alive connections are open
            assert time.monotonic() < deadline, "the normal client could not start"
            time.sleep(0.05)
        t_attack = time.monotonic()
        attacker = _attack(addr[0][1], conns, stop)
        rss = 0.0
        while time.monotonic() < t_attack + ATTACK_S:
            rss = max(rss, _worker_rss_mb(gw))
            time.sleep(0.25)
    finally:
        normal = queries.stop() + health.stop()
        stop.set()
        gw.stop()
    attacker.join(10)
    during = [o for o in normal if o.started >= t_attack]
    slowest = max((o.ended - o.started for o in during), default=0.0)
    ended = [c for c in conns if c.closed]
    by_kind = {k: [c for c in ended if c.kind == k] for k in ("header", "body", "idle")}
    lifetimes = {k: sorted(c.closed - c.connected for c in v) for k, v in by_kind.items()}
    got_408 = Counter(c.kind for c in ended if b"HTTP/1.1 408" in c.answer)
    print(f"\nslow clients: {SLOW} slow connections ({LIMIT}/worker x {WORKERS} + 1000); normal client answered "
          f"{len(during)} during the attack, {Counter(o.status for o in during)}, slowest {slowest * 1000:.0f} ms; "
          f"slow connections ended by the gateway: { {k: len(v) for k, v in by_kind.items()} }, 408s {dict(got_408)};"
          f" shortest lifetimes (s) { {k: round(v[0], 2) if v else None for k, v in lifetimes.items()} }; "
          f"peak worker RSS {rss:.1f} MB")
    assert during and all(o.kind == "ok" and o.status == 200 for o in during), Counter(o.kind for o in during)
    assert slowest < HEADER_MS / 1000, "a normal request waited as long as a slow connection's timeout"
    assert rss < RSS_BUDGET_MB
    # every kind of slow connection was ended by the gateway, none before its timeout (lifetimes count from before
    # the connect, so a busy client loop only lengthens them; the slack is the timers' granularity)
    assert all(by_kind.values()), {k: len(v) for k, v in by_kind.items()}
    assert lifetimes["header"][0] >= HEADER_MS / 1000 - 0.5
    assert lifetimes["body"][0] >= BODY_MS / 1000 - 0.5
    assert got_408["body"] > 0, "a body slower than the minimum rate is cut off with 408"
    assert len(ended) >= WORKERS * LIMIT, f"only {len(ended)} slow connections were closed"


def test_header_limits_answer_431(tmp_path: Path, upstream: Proc) -> None:  # noqa: F811
    gw = start_gateway(upstream.url, KEY, tmp_path / "gw", workers=1, LAYER_MAX_HEADER_BYTES="8192")
    try:
        big = call(gw.url, "GET", "/health", key=None, headers={"x-big": "a" * 9000})
        many = call(gw.url, "GET", "/health", key=None, headers={f"x-h{i}": "1" for i in range(101)})
        fine = call(gw.url, "GET", "/health", key=None, headers={"x-big": "a" * 4000})
    finally:
        gw.stop()
    assert big.status == 431 and many.status == 431 and fine.status == 200, (big, many, fine)
    assert json.loads(fine.body)["status"] == "ok"


def test_an_idle_keep_alive_connection_is_closed_after_its_timeout(tmp_path: Path, upstream: Proc) -> None:  # noqa: F811
    """An answered connection that stays quiet is closed by the gateway, not before its timeout (uvicorn:
    LAYER_KEEPALIVE_TIMEOUT_MS, checked by the worker's sweep; Granian: hyper's header read timeout)."""
    timeout_s = 1.5
    ms = str(int(timeout_s * 1000))
    gw = start_gateway(upstream.url, KEY, tmp_path / "gw", workers=1, LAYER_KEEPALIVE_TIMEOUT_MS=ms,
                       LAYER_HEADER_TIMEOUT_MS=ms)
    conn = http.client.HTTPConnection("127.0.0.1", int(gw.url.rsplit(":", 1)[1]), timeout=10 * timeout_s)
    try:
        for _ in range(2):  # the second request shows the connection was kept alive
            conn.request("GET", "/health")
            resp = conn.getresponse()
            assert resp.status == 200, resp.read()
            resp.read()
        answered = time.monotonic()
        assert conn.sock.recv(65536) == b""  # the gateway closes it (a socket timeout fails the test)
        idle = time.monotonic() - answered
    finally:
        conn.close()
        gw.stop()
    assert timeout_s - 0.3 <= idle < 10 * timeout_s, idle
