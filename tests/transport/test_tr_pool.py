"""What only the httptools client has: its pool (FIFO waiters, idle expiry, the upstream's keep-alive hint, dead idle
connections never written to, cancellation), its header limit, its write back-pressure and its pool statistics."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from support.upstream_server import ScriptedUpstream, Seen, close_now, hang, raw, respond
from tr_support import Client, until, wait_for

from gateway.httpclient.connection import WRITE_CHUNK, H1Connection
from gateway.upstream import UpstreamTransportError


@pytest.fixture
def h1() -> Iterator[Any]:
    made: list[Client] = []

    def make(**settings: Any) -> Client:
        made.append(Client("httptools", **settings))
        return made[-1]

    yield make
    for client in made:
        client.close()


def pool(client: Client) -> dict[str, Any]:
    (only,) = client.pools()
    return only


def test_sequential_requests_reuse_one_connection(h1: Any, upstream: ScriptedUpstream) -> None:
    client = h1()
    for _ in range(5):
        client.send(upstream.url + "/q", idempotent=True)
    assert upstream.counters.accepted == 1
    p = pool(client)
    assert (p["opened"], p["requests"], p["reused"], p["idle"], p["active"]) == (1, 5, 4, 1, 0)


def test_waiters_are_served_in_arrival_order(h1: Any, upstream: ScriptedUpstream) -> None:
    gate = threading.Event()

    def plan(seen: Seen) -> Any:
        if seen.path == "/hold":
            gate.wait(10)
        return respond()

    upstream.plan = plan
    client = h1(pool_size=1)

    async def run() -> list[str]:
        hold = asyncio.ensure_future(client.asend(upstream.url + "/hold"))
        await until(lambda: upstream.counters.live == 1)
        waiters = []
        for i in range(6):
            waiters.append(asyncio.ensure_future(client.asend(upstream.url + f"/w{i}")))
            await asyncio.sleep(0)  # each one queues before the next is created
        assert pool(client)["waiting"] == 6
        gate.set()
        await asyncio.gather(hold, *waiters)
        return [s.path for s in upstream.requests]

    assert client.run(run()) == ["/hold"] + [f"/w{i}" for i in range(6)]
    assert upstream.counters.accepted == 1
    assert pool(client)["waited"] == 6


def test_a_waiter_that_times_out_leaves_the_queue_clean(h1: Any, upstream: ScriptedUpstream) -> None:
    client = h1(pool_size=1, timeout_ms=300)
    client.send(upstream.url + "/warm")
    origin_pool = client.transport._route(upstream.url + "/")[0]  # type: ignore[attr-defined]

    async def run() -> None:
        held = await origin_pool.acquire(origin_pool.loop.time() + 60)
        with pytest.raises(UpstreamTransportError, match="waiting for a free upstream connection"):
            await client.asend(upstream.url + "/late")
        assert pool(client)["waiting"] == 0
        origin_pool.release(held)

    client.run(run())
    assert (pool(client)["open"], pool(client)["idle"]) == (1, 1)
    assert client.send(upstream.url + "/after").status == 200
    assert upstream.counters.accepted == 1


def test_a_cancelled_request_frees_its_slot_and_closes_its_connection(h1: Any, upstream: ScriptedUpstream) -> None:
    upstream.plan = lambda s: hang() if s.path == "/hang" else respond()
    client = h1(pool_size=1, timeout_ms=30_000, read_timeout_ms=30_000)

    async def run() -> None:
        task = asyncio.ensure_future(client.asend(upstream.url + "/hang"))
        await until(lambda: len(upstream.requests) == 1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert (await client.asend(upstream.url + "/next")).status == 200

    client.run(run())
    wait_for(lambda: upstream.counters.live == 1)  # the hung connection is gone, the new one is pooled
    assert pool(client)["discarded"] == {"cancelled": 1}


def test_idle_connections_are_closed_after_the_idle_timeout(h1: Any, upstream: ScriptedUpstream) -> None:
    client = h1(idle_timeout_ms=200)

    async def run() -> None:
        await asyncio.gather(*(client.asend(upstream.url + f"/q{i}") for i in range(3)))
        assert pool(client)["idle"] == 3
        # the client, not the upstream, ends them: the server sees each idle connection closed by the client
        await until(lambda: upstream.counters.client_closes == 3)
        await asyncio.sleep(0)

    client.run(run())
    p = pool(client)
    assert (p["idle"], p["open"], p["discarded"]) == (0, 0, {"expired": 3})
    client.send(upstream.url + "/again")
    assert upstream.counters.accepted == 4


def test_the_upstreams_keep_alive_timeout_shortens_the_idle_time(h1: Any, upstream: ScriptedUpstream) -> None:
    upstream.plan = lambda s: respond(headers=[("Keep-Alive", "timeout=1, max=100")])
    client = h1(idle_timeout_ms=60_000)
    client.send(upstream.url + "/q")
    assert pool(client)["discarded"] == {"not_reusable": 1}  # timeout=1 minus the 1 s margin: not kept at all
    upstream.plan = lambda s: respond(headers=[("Keep-Alive", "timeout=2")])
    client.send(upstream.url + "/q")
    assert pool(client)["idle"] == 1
    client.run(until(lambda: upstream.counters.client_closes == 2))  # the first at once, the second at 1 s
    assert pool(client)["discarded"] == {"not_reusable": 1, "expired": 1}


def test_a_connection_the_upstream_closed_while_idle_is_never_written_to(h1: Any, upstream: ScriptedUpstream) -> None:
    """Not a retry: the client saw the close before it had a request to send, so the write goes out exactly once."""
    upstream.plan = lambda s: raw(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", then="close")  # no Connection:
    client = h1()
    client.send(upstream.url + "/first")

    client.run(until(lambda: pool(client)["idle"] == 0))
    assert client.send(upstream.url + "/write", body=b'{"upsert_rows": []}').status == 200
    assert len(upstream.paths("/write")) == 1
    p = pool(client)
    assert (p["retried"], p["opened"], p["discarded"].get("error")) == (0, 2, None)


def test_connection_close_and_unsolicited_bytes_are_not_reused(h1: Any, upstream: ScriptedUpstream) -> None:
    answers = {"/close": respond(close=True),
               "/extra": raw(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 200 OK\r\n\r\n", then="keep")}
    upstream.plan = lambda s: answers.get(s.path, respond())
    client = h1()
    assert client.send(upstream.url + "/close").status == 200
    assert client.send(upstream.url + "/extra").body == b"ok"
    assert pool(client)["idle"] == 0
    assert client.send(upstream.url + "/fine").status == 200
    assert upstream.counters.accepted == 3


def test_the_header_limit_is_the_setting(h1: Any, upstream: ScriptedUpstream) -> None:
    upstream.plan = lambda s: respond(headers=[("X-Pad", "p" * int(s.path[1:]))])
    client = h1(max_header_bytes=4096)
    assert client.send(upstream.url + "/3000").status == 200
    with pytest.raises(UpstreamTransportError, match="headers exceed 4096 bytes"):
        client.send(upstream.url + "/5000")


def test_a_large_body_is_written_with_back_pressure(h1: Any, upstream: ScriptedUpstream) -> None:
    """While the upstream does not read, the client buffers at most one chunk past the transport's high-water mark."""
    upstream.read_body = False
    upstream.plan = lambda s: hang()
    client = h1(timeout_ms=30_000, read_timeout_ms=30_000)
    url = upstream.url + "/w"
    acquired: list[H1Connection] = []

    async def run() -> int:
        origin_pool = client.transport._route(url)[0]  # type: ignore[attr-defined]
        acquire = origin_pool.acquire

        async def capture(deadline: float) -> H1Connection:  # the connection the request is written to
            acquired.append(await acquire(deadline))
            return acquired[-1]

        origin_pool.acquire = capture
        task = asyncio.ensure_future(client.asend(url, body=b"x" * (128 << 20)))
        conn = (await until(lambda: acquired))[0]
        await until(lambda: conn._paused)  # the socket buffers filled: the client waits for them to drain
        buffered = conn.transport.get_write_buffer_size()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return int(buffered)

    high = 64 * 1024  # uvloop's default write high-water mark
    assert client.run(run()) <= high + WRITE_CHUNK


def test_an_idempotent_retry_is_counted(h1: Any, upstream: ScriptedUpstream) -> None:
    upstream.plan = lambda s: close_now() if s.index_on_conn == 1 else respond()
    client = h1(pool_size=1)
    client.send(upstream.url + "/a")
    assert client.send(upstream.url + "/b", idempotent=True).status == 200
    p = pool(client)
    assert (p["retried"], p["discarded"], p["opened"]) == (1, {"stale": 1}, 2)
