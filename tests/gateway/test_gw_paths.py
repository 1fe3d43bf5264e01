"""The path that is authorized is the path that is sent: an echo upstream records the request line it receives for
every rejected and accepted form of a path sent to the real gateway process."""

from __future__ import annotations

import http.client
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from gw_support import KEY, wait_until
from support.procs import SERVER, Proc, start_gateway

from gateway.http import GatewayError
from gateway.router import path_segments

QUIET_WATCH = {"CONSISTENCY_POLL_INTERVAL_MS": "600000", "CONSISTENCY_STABLE_POLL_INTERVAL_MS": "600000"}
# A namespace a query or metadata call touched is polled once by the watermark watcher (GET its v2 metadata), at a
# moment of its own: those polls, encoded like the namespace was, are the only other requests the echo may see.
POLLS: set[str] = set()


def others(received: list[str], sent: str | None = None) -> list[str]:
    return [p for p in received if p != sent and p not in POLLS]


class Echo(ThreadingHTTPServer):
    """Answers `{}` to everything and records each request target exactly as it arrived."""

    daemon_threads = True

    def __init__(self) -> None:
        self.received: list[str] = []
        super().__init__(("127.0.0.1", 0), _EchoHandler)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _EchoHandler(BaseHTTPRequestHandler):
    server: Echo

    def _answer(self) -> None:
        self.rfile.read(int(self.headers.get("content-length") or 0))
        self.server.received.append(self.path)
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", "2")
        self.end_headers()
        self.wfile.write(b"{}")

    do_GET = do_POST = do_DELETE = do_PATCH = _answer

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def echo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Echo, Proc]]:
    server = Echo()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    gw: Proc | None = None
    try:
        gw = start_gateway(server.url, KEY, Path(tmp_path_factory.mktemp("echo")), workers=1, **QUIET_WATCH)
        yield server, gw
    finally:
        if gw is not None:
            gw.stop()
        server.shutdown()
        server.server_close()


def send(gw: Proc, method: str, target: str) -> tuple[int, dict[str, str]]:
    """The request line exactly as given (http.client does not normalise the target)."""
    host, port = gw.url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    body = json.dumps({"rank_by": ["id", "asc"]}).encode() if method == "POST" else None
    try:
        conn.putrequest(method, target, skip_accept_encoding=True)
        conn.putheader("Authorization", f"Bearer {KEY}")
        conn.putheader("Content-Type", "application/json")
        conn.putheader("Content-Length", str(len(body or b"")))
        conn.endheaders(body)
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read() or b"null")
    finally:
        conn.close()


@pytest.mark.parametrize(("method", "target"), [
    ("GET", "/v1/namespaces/prod/operations/.."),
    ("GET", "/v1/namespaces/prod/operations/."),
    ("GET", "/v1/namespaces/prod/operations/%2e%2e"),
    ("GET", "/v1/namespaces/prod/operations/..%2f.."),
    ("POST", "/v2/namespaces/../explain_query"),
    ("POST", "/v2/namespaces/%2e%2e/explain_query"),
    ("POST", "/v2/namespaces/%2E%2e/explain_query"),
    ("POST", "/v2/namespaces/.%2E/explain_query"),
    ("GET", "/v2/namespaces/a//metadata"),
    ("GET", "/v2/namespaces/a/metadata/"),
    ("GET", "//v2/namespaces/a/metadata"),
    ("GET", "/v2/namespaces/%ff/metadata"),
])
def test_dot_empty_and_undecodable_segments_are_400_and_never_sent(echo: tuple[Echo, Proc], method: str,
                                                                    target: str) -> None:
    server, gw = echo
    server.received.clear()
    status, body = send(gw, method, target)
    assert status == 400 and body["error"] == "invalid_path", body
    assert others(server.received) == []


@pytest.mark.parametrize(("method", "target", "sent"), [
    ("GET", "/v2/namespaces/my-ns.1/metadata", "/v2/namespaces/my-ns.1/metadata"),
    ("GET", "/v2/namespaces/a..b/metadata", "/v2/namespaces/a..b/metadata"),
    ("GET", "/v2/namespaces/a%20b/metadata", "/v2/namespaces/a%20b/metadata"),
    ("GET", "/v2/namespaces/a%2520b/metadata", "/v2/namespaces/a%2520b/metadata"),  # decoded once, encoded once
    ("POST", "/v1/namespaces/q%3Fx/query", "/v2/namespaces/q%3Fx/query"),  # `?` stays part of the name
    ("GET", "/v1/namespaces/prod/operations/tok%23f", "/v1/namespaces/prod/operations/tok%23f"),
    ("GET", "/v1/namespaces?prefix=a%2F..&page_size=2", "/v1/namespaces?prefix=a%2F..&page_size=2"),
])
def test_upstream_receives_exactly_the_routed_path(echo: tuple[Echo, Proc], method: str, target: str,
                                                   sent: str) -> None:
    server, gw = echo
    server.received.clear()
    if sent.count("/") > 3:
        POLLS.add(f"/v2/namespaces/{sent.split('/')[3]}/metadata")
    status, body = send(gw, method, target)
    assert status == 200, body
    assert sent in server.received
    assert others(server.received, sent) == []


def test_the_watermark_poll_sends_the_namespace_encoded(echo: tuple[Echo, Proc]) -> None:
    server, gw = echo
    POLLS.add("/v2/namespaces/w%3Fx/metadata")
    assert send(gw, "POST", "/v1/namespaces/w%3Fx/query")[0] == 200  # a queried namespace is watched: polled once
    polls = wait_until(lambda: [p for p in server.received if p.startswith("/v2/namespaces/w") and
                                p.endswith("/metadata")], bool)
    assert polls[0] == "/v2/namespaces/w%3Fx/metadata", polls


def test_an_encoded_slash_is_refused_where_the_server_keeps_the_raw_path(echo: tuple[Echo, Proc]) -> None:
    server, gw = echo
    server.received.clear()
    status, body = send(gw, "GET", "/v2/namespaces/x%2fmetadata")
    if SERVER == "uvicorn":  # the ASGI adapter passes raw_path to path_segments
        assert status == 400 and body["error"] == "invalid_path" and others(server.received) == [], body
    else:
        # Granian's RSGI scope has only the decoded path: the encoded slash is a separator there, so this routes (and
        # is authorized) as namespace `x`'s metadata, which is also exactly what upstream receives.
        POLLS.add("/v2/namespaces/x/metadata")
        assert status == 200 and "/v2/namespaces/x/metadata" in server.received, body


@pytest.mark.parametrize(("raw", "problem"), [
    ("/v2/namespaces/a%2fb/metadata", "encoded slash"), ("/v2/namespaces/a%2Fb/metadata", "encoded slash"),
    ("/v2/namespaces/%2e%2e/x", "dot"), ("/v2/namespaces/%2E/x", "dot"), ("/v2/namespaces/x/", "empty"),
    ("/v2/namespaces/%zz/x", "malformed"), ("/v2/namespaces/%e2%82/x", "UTF-8"), ("v2/namespaces", "start with"),
])
def test_raw_paths_reject_encoded_slashes(raw: str, problem: str) -> None:
    with pytest.raises(GatewayError, match=problem) as exc:
        path_segments(raw)
    assert exc.value.status == 400 and exc.value.kind == "invalid_path"


def test_raw_paths_decode_each_segment_once() -> None:
    assert path_segments("/v2/namespaces/a%2520b/documents/50%25off") == ["v2", "namespaces", "a%20b", "documents",
                                                                           "50%off"]
    assert path_segments("/") == []
