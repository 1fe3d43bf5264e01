"""The conformance suite every upstream transport passes (parametrized over LAYER_UPSTREAM_TRANSPORT values), against
real HTTP/1.1 servers on 127.0.0.1: framing, deadlines, the one safe retry, size limits, back-pressure and TLS."""

from __future__ import annotations

import asyncio
import hashlib
import threading
from collections.abc import Callable

import pytest
from support.upstream_server import (
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
from tr_support import Client, unresponsive_listener, wait_for

from gateway.upstream import RELAYED_HEADERS

Make = Callable[..., Client]
FAST = {"timeout_ms": 2000, "read_timeout_ms": 600, "connect_timeout_ms": 500}


@pytest.mark.parametrize("framing", ["content-length", "chunked", "close-delimited"])
def test_bodies_arrive_whole_whatever_the_framing(make_client: Make, upstream: ScriptedUpstream, framing: str) -> None:
    body = bytes(range(256)) * 4000  # ~1 MB, arrives in many reads
    upstream.plan = lambda s: respond(body=body, chunked=framing == "chunked", framing=framing != "close-delimited",
                                      headers=[("Content-Type", "application/x-test")])
    client = make_client(**FAST)
    for _ in range(2):
        r = client.send(upstream.url + "/v2/namespaces/a/query")
        assert (r.status, r.content_type, r.body) == (200, "application/x-test", body)


def test_head_interim_204_and_304_have_no_body_and_leave_the_client_usable(make_client: Make,
                                                                           upstream: ScriptedUpstream) -> None:
    answers = {"/head": respond(body=b"not sent for HEAD"), "/interim": interim(100, 103, then=respond(body=b"final")),
               "/204": respond(status=204), "/304": respond(status=304), "/after": respond(body=b"after")}
    upstream.plan = lambda s: answers[s.path]
    client = make_client(**FAST)
    assert (client.send(upstream.url + "/head", method="HEAD", body=None).body) == b""
    r = client.send(upstream.url + "/interim")
    assert (r.status, r.body) == (200, b"final")
    assert [(r.status, r.body) for r in (client.send(upstream.url + p, method="GET", body=None) for p in
                                         ("/204", "/304", "/after"))] == [(204, b""), (304, b""), (200, b"after")]


def test_the_request_goes_out_as_given(make_client: Make, upstream: ScriptedUpstream) -> None:
    client = make_client(**FAST)
    body = b'{"rank_by": ["id", "asc"]}'
    client.send(upstream.url + "/v1/namespaces/a%20b/x?prefix=p&page_size=2", body=body,
                headers=[("authorization", "Bearer k1"), ("content-type", "application/json")])
    seen = upstream.requests[-1]
    assert (seen.method, seen.path, seen.body) == ("POST", "/v1/namespaces/a%20b/x?prefix=p&page_size=2", body)
    assert seen.headers["host"] == f"127.0.0.1:{upstream.port}"
    assert seen.headers["authorization"] == "Bearer k1"
    assert seen.headers["content-length"] == str(len(body))
    assert "transfer-encoding" not in seen.headers


@pytest.mark.parametrize("value", ["k\r\nx-injected: 1", "k\nx-injected: 1", "k\x00"])
def test_a_header_value_that_would_inject_a_line_is_never_sent(make_client: Make, upstream: ScriptedUpstream,
                                                               value: str) -> None:
    err, _ = make_client(**FAST).fail(upstream.url + "/q", headers=[("authorization", value)])
    assert not err.timeout, err
    assert upstream.requests == []


def test_an_http_error_is_a_response_with_the_relayed_headers_only(make_client: Make,
                                                                   upstream: ScriptedUpstream) -> None:
    relayed = [(name, f"v-{i}") for i, name in enumerate(RELAYED_HEADERS)]
    upstream.plan = lambda s: respond(429, b'{"error":"slow down"}', [(n.title(), v) for n, v in relayed] + [
        ("Set-Cookie", "x=1"), ("X-Other", "y"), ("Content-Type", "a/b")])
    r = make_client(**FAST).send(upstream.url + "/q")
    assert (r.status, r.body, r.content_type) == (429, b'{"error":"slow down"}', "a/b")
    assert sorted(r.headers) == sorted(relayed)


def test_a_connect_that_gets_no_answer_times_out_at_the_connect_timeout(make_client: Make) -> None:
    client = make_client(timeout_ms=20_000, read_timeout_ms=20_000, connect_timeout_ms=300)
    with unresponsive_listener() as url:
        err, took = client.fail(url + "/q")
    assert err.timeout and "timed out" in str(err), err
    assert took < 10, took  # the 20 s total would have fired much later


def test_a_refused_connect_is_an_error_not_a_timeout(make_client: Make) -> None:
    with unresponsive_listener() as url:
        pass  # the port is closed again: nothing listens
    err, _ = make_client(**FAST).fail(url + "/q")
    assert not err.timeout and "refused" in str(err).lower(), err


def test_silence_after_the_request_ends_at_the_read_timeout(make_client: Make, upstream: ScriptedUpstream) -> None:
    upstream.plan = lambda s: hang()
    err, took = make_client(timeout_ms=30_000, read_timeout_ms=300).fail(upstream.url + "/q")
    assert err.timeout, err
    assert took < 10, took
    assert upstream.counters.live == 0 or _closed_soon(upstream)


def test_a_kept_alive_connection_outlives_old_deadlines_and_keeps_its_own(make_client: Make,
                                                                          upstream: ScriptedUpstream) -> None:
    """The deadlines of earlier exchanges pass while the connection idles in the pool: it stays usable, and a later
    exchange on it still ends at its own read timeout."""
    upstream.plan = lambda s: hang() if s.path == "/hang" else respond(body=b"fine")
    client = make_client(pool_size=1, timeout_ms=30_000, read_timeout_ms=300)
    assert client.send(upstream.url + "/a").body == b"fine"
    client.run(asyncio.sleep(0.8))  # the loop runs past the first exchange's read deadline, nothing in flight
    assert client.send(upstream.url + "/b").body == b"fine"
    err, took = client.fail(upstream.url + "/hang")
    assert err.timeout, err
    assert took < 10, took
    assert [s.index_on_conn for s in upstream.requests] == [0, 1, 2], "all three on the one kept-alive connection"


@pytest.mark.parametrize("where", ["headers", "body"])
def test_a_slow_drip_ends_at_the_total_deadline(make_client: Make, upstream: ScriptedUpstream, where: str) -> None:
    upstream.plan = lambda s: drip(0.05, head=where == "headers")
    client = make_client(timeout_ms=800, read_timeout_ms=60_000)
    err, took = client.fail(upstream.url + "/q")
    assert err.timeout, err
    assert took < 8, took
    assert _closed_soon(upstream)


@pytest.mark.parametrize("how", ["fin", "reset"])
def test_a_reused_connection_that_dies_is_retried_once_for_a_query_and_never_for_a_write(
        make_client: Make, upstream: ScriptedUpstream, how: str) -> None:
    upstream.plan = lambda s: close_now(how == "reset") if s.index_on_conn > 0 and s.path != "/warm" else respond()
    client = make_client(pool_size=1, **FAST)
    client.send(upstream.url + "/warm")
    assert client.send(upstream.url + "/query", idempotent=True).status == 200
    assert len(upstream.paths("/query")) == 2  # sent, the connection died, sent once more on a new one
    client.send(upstream.url + "/warm")
    client.send(upstream.url + "/warm")  # the new connection is now a reused one again
    err, _ = client.fail(upstream.url + "/write", body=b'{"upsert_rows": []}')
    assert not err.timeout
    assert len(upstream.paths("/write")) == 1


def test_a_query_whose_retry_also_dies_fails_after_two_attempts(make_client: Make, upstream: ScriptedUpstream) -> None:
    upstream.plan = lambda s: respond() if s.path == "/warm" else close_now()
    client = make_client(pool_size=1, **FAST)
    client.send(upstream.url + "/warm")
    client.fail(upstream.url + "/query", idempotent=True)
    assert len(upstream.paths("/query")) == 2


def test_no_retry_once_the_response_started(make_client: Make, upstream: ScriptedUpstream) -> None:
    upstream.plan = lambda s: truncated() if s.path == "/query" else respond()
    client = make_client(pool_size=1, **FAST)
    client.send(upstream.url + "/warm")
    client.fail(upstream.url + "/query", idempotent=True)
    assert len(upstream.paths("/query")) == 1


BROKEN = {
    "garbage": raw(b"SMTP ready\r\n\r\n"),
    "bad status line": raw(b"HTTP/1.1 2x0 OK\r\nContent-Length: 0\r\n\r\n"),
    "truncated content-length": truncated(),
    "truncated chunked": truncated(chunked=True),
    "bad chunk size": raw(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nab\r\n0\r\n\r\n"),
    "early close": close_now(),
    "reset": close_now(reset=True),
    "switching protocols": raw(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\nConnection: Upgrade\r\n\r\n"),
    "huge headers": huge_headers(1 << 20),
}


@pytest.mark.parametrize("name", sorted(BROKEN))
def test_a_broken_answer_is_an_error_and_the_next_request_is_served(make_client: Make, upstream: ScriptedUpstream,
                                                                    name: str) -> None:
    upstream.plan = lambda s: BROKEN[name] if s.path == "/bad" else respond(body=b"fine")
    client = make_client(**FAST)
    err, took = client.fail(upstream.url + "/bad")
    assert not err.timeout, err
    assert took < 10
    assert client.send(upstream.url + "/good").body == b"fine"


@pytest.mark.parametrize("chunked", [False, True])
def test_a_response_body_over_the_limit_is_refused(make_client: Make, upstream: ScriptedUpstream,
                                                   chunked: bool) -> None:
    upstream.plan = lambda s: respond(body=b"x" * (5000 if s.path == "/big" else 4096), chunked=chunked)
    client = make_client(max_response_bytes=4096, **FAST)
    err, _ = client.fail(upstream.url + "/big")
    assert "exceeds 4096 bytes" in str(err) and not err.timeout, err
    assert len(client.send(upstream.url + "/fits").body) == 4096


def test_a_large_body_reaches_a_slow_reader_intact(make_client: Make) -> None:
    server = ScriptedUpstream(slow_read_s=0.002)
    try:
        body = hashlib.sha256(b"seed").digest() * (256 * 1024 // 32 * 8)  # 8 MiB
        r = make_client(timeout_ms=60_000).send(server.url + "/v2/namespaces/big", body=body)
        assert r.status == 200
        assert hashlib.sha256(server.requests[-1].body).digest() == hashlib.sha256(body).digest()
    finally:
        server.stop()


def test_an_upstream_that_stops_reading_the_body_times_out(make_client: Make, upstream: ScriptedUpstream) -> None:
    upstream.read_body = False
    upstream.plan = lambda s: hang()
    err, took = make_client(timeout_ms=800, read_timeout_ms=60_000).fail(upstream.url + "/w", body=b"x" * (64 << 20))
    assert err.timeout, err
    assert took < 8, took
    assert _closed_soon(upstream)


def test_the_pool_never_opens_more_than_its_size(make_client: Make, upstream: ScriptedUpstream) -> None:
    gate = threading.Event()

    def plan(seen: Seen) -> object:
        gate.wait(10)
        return respond()

    upstream.plan = plan  # type: ignore[assignment]
    client = make_client(pool_size=3, timeout_ms=20_000, read_timeout_ms=20_000)

    async def many() -> list[int]:
        tasks = [asyncio.ensure_future(client.asend(upstream.url + f"/q{i}", idempotent=True)) for i in range(12)]
        await asyncio.sleep(0)
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, wait_for, lambda: upstream.counters.live >= 3)
        gate.set()
        return [r.status for r in await asyncio.gather(*tasks)]

    assert client.run(many()) == [200] * 12
    assert upstream.counters.max_live == 3


def test_tls_is_verified_against_the_ca_file_and_sends_sni(make_client: Make, tls_upstream: ScriptedUpstream,
                                                           ca_file: str) -> None:
    client = make_client(ca_file=ca_file, **FAST)
    url = f"https://localhost:{tls_upstream.port}"
    assert [client.send(url + "/q").status for _ in range(3)] == [200] * 3
    assert tls_upstream.counters.sni[:1] == ["localhost"]
    assert tls_upstream.requests[-1].headers["host"] == f"localhost:{tls_upstream.port}"


def test_tls_with_an_unknown_ca_fails(make_client: Make, tls_upstream: ScriptedUpstream) -> None:
    err, _ = make_client(**FAST).fail(f"https://localhost:{tls_upstream.port}/q")
    assert not err.timeout and "certificate" in str(err).lower(), err
    assert tls_upstream.requests == []


def test_tls_with_a_certificate_for_another_name_fails(make_client: Make, tls_upstream: ScriptedUpstream,
                                                       ca_file: str) -> None:
    err, _ = make_client(ca_file=ca_file, **FAST).fail(tls_upstream.url + "/q")  # 127.0.0.1: not in the cert
    assert not err.timeout, err
    assert tls_upstream.requests == []


def _closed_soon(upstream: ScriptedUpstream) -> bool:
    """The client closed the connection it gave up on (the server sees it go)."""
    return bool(wait_for(lambda: upstream.counters.live == 0))
