"""Bad input is a 4xx JSON answer naming the problem (never a 500); upstream down or slow is a bounded 502."""

from __future__ import annotations

import gzip
import http.client
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from gw_support import KEY, Stack, call, wait_until
from support.procs import Proc, free_port, start_gateway

NS = "/v2/namespaces/bad"
# Only what Layer adds is the gateway's to reject (its reserved and Layer-only fields, cursors, tags, the body
# encoding it must undo to look inside); everything else is Turbopuffer's and relayed (test_gw_conformance.py).
HELD_MS = 30_000  # a fault that holds an answer far past every timeout and bound here
CASES = [
    # (method, path, raw body, extra headers, status, words the message must contain)
    ("POST", NS, b'{"upserts": []}', {}, 422, ["custom write bodies"]),
    ("POST", NS, b'{"upsert_rows": [{"id": 1, "_hevlayer_x": 1}]}', {}, 422, ["_hevlayer_x", "$.upsert_rows[0]"]),
    ("POST", "/v1/namespaces/bad/schema", b'{"_hevlayer_upserted_at": "int"}', {}, 422, ["reserved"]),
    ("POST", NS + "/query", b'{"vector": [1, "x"]}', {}, 422, ["$.vector"]),
    ("POST", NS + "/query", b'{"nearest_to_id": "a"}', {}, 422, ["$.nearest_to_id"]),
    ("POST", NS + "/query", b'{"vector": []}', {}, 422, ["`vector`"]),
    ("POST", NS + "/query", b'{"vector": [1.0], "cursor": "***"}', {}, 422, ["invalid cursor"]),
    ("POST", NS + "/query", b'{"vector": [1.0], "cursor": "eyJvIjotMX0"}', {}, 422, ["invalid cursor"]),
    ("POST", NS + "/query", b'{"rank_by": ["id", "asc"], "as_of": 5, "between": [1, 2]}', {}, 422,
     ["mutually exclusive"]),
    ("POST", NS + "/query", b'{"rank_by": ["id", "asc"], "between": [5, 2]}', {}, 422, ["between"]),
    ("POST", NS + "/query", b'{"rank_by": ["id", "asc"]}', {"x-hevlayer-tags": "ok,b@d"}, 422, ["b@d"]),
    ("POST", NS + "/query", b'{"rank_by": ["id", "asc"]}', {"x-hevlayer-tags": "t" * 129}, 422, ["invalid tag"]),
    ("POST", NS + "/query", b'{"rank_by": ["id", "asc"]}',
     {"x-hevlayer-tags": ",".join(f"t{i}" for i in range(40))}, 422, ["too many tags"]),
    ("POST", NS, b"\x1f\x8b garbage", {"Content-Encoding": "gzip"}, 400, ["gzip"]),
    ("POST", NS, gzip.compress(b'{"upsert_rows": []}')[:-6], {"Content-Encoding": "gzip"}, 400, ["gzip"]),
    ("POST", NS, b"{}", {"Content-Encoding": "br"}, 415, ["Content-Encoding"]),
    ("GET", "/v2/namespaces?page_size=abc", None, {}, 422, ["page_size"]),
]


@pytest.mark.parametrize(("method", "path", "raw", "headers", "status", "words"), CASES)
def test_bad_input_is_a_json_4xx(stack: Stack, method: str, path: str, raw: bytes | None,
                                 headers: dict[str, str], status: int, words: list[str]) -> None:
    r = stack(method, path, raw=raw, headers=headers)
    assert r.status == status, r
    body = r.json()
    assert set(body) >= {"error", "message"}
    for word in words:
        assert word in body["message"], body


def test_huge_bodies_are_rejected_with_413(stack: Stack) -> None:
    # Announce a 2 MiB body but send none: the gateway answers from Content-Length without reading it.
    host, port = stack.gw.url.rsplit("/", 1)[1].split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    conn.putrequest("POST", NS)
    for name, value in (("Authorization", f"Bearer {KEY}"), ("Content-Type", "application/json"),
                        ("Content-Length", str(2 << 20))):
        conn.putheader(name, value)
    conn.endheaders()
    resp = conn.getresponse()
    assert resp.status == 413 and json.loads(resp.read())["error"] == "payload_too_large"
    conn.close()
    # Chunked (no Content-Length): rejected once the limit is passed.
    chunks = (b'{"upsert_rows": [{"id": 1, "s": "', *(b"x" * 65536 for _ in range(32)), b'"}]}')
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        conn.request("POST", NS, body=iter(chunks), encode_chunked=True,
                     headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"})
        resp = conn.getresponse()
        assert resp.status == 413 and json.loads(resp.read())["error"] == "payload_too_large"
    except (BrokenPipeError, ConnectionResetError) as exc:
        print("chunked: closed early", exc)  # the gateway may close before the client finished sending
    finally:
        conn.close()
    small = (b'{"upsert_rows": ', b'[{"id": 1, "s": "chunked"}]}')
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    conn.request("POST", "/v2/namespaces/chunked", body=iter(small), encode_chunked=True,
                 headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"})
    assert conn.getresponse().status == 200
    conn.close()
    bomb = gzip.compress(b'{"upsert_rows": [{"id": 1, "s": "' + b"x" * (4 << 20) + b'"}]}')
    r = stack("POST", NS, raw=bomb, headers={"Content-Encoding": "gzip"})
    assert r.status == 413, r


def test_slow_upstream_is_a_502_within_the_timeout(stack: Stack) -> None:
    stack.fault(route="query", delay_ms=HELD_MS, count=1)
    started = time.monotonic()
    r = stack("POST", NS + "/query", {"rank_by": ["id", "asc"], "top_k": 1})
    elapsed = time.monotonic() - started
    assert r.status == 502 and r.json()["error"] == "upstream_error", r
    assert "timed out" in r.json()["message"]
    # LAYER_UPSTREAM_TIMEOUT_MS=1500: not before it, and far sooner than the held answer (bound: 10x the timeout)
    assert 1.4 <= elapsed < 15, elapsed


@pytest.mark.parametrize("status", [403, 429, 503])
@pytest.mark.parametrize("path", ["fetch", "batch fetch", "nearest_to_id"])
def test_upstream_error_answers_on_cache_paths_are_relayed(stack: Stack, path: str, status: int) -> None:
    """Fetches and nearest_to_id relay upstream's status, body and retry-after; a 403 must not become a 502 (which
    the official clients retry)."""
    ns = f"relay-{path.replace(' ', '-')}-{status}"
    assert call(stack.store.url, "POST", f"/v2/namespaces/{ns}", {  # straight upstream: nothing cached
        "upsert_rows": [{"id": "x", "vector": [1.0, 0.0]}], "distance_metric": "cosine_distance"}).status == 200
    direct = _fault_once(stack, ns, status)
    r = _cache_path(stack, ns, path)
    assert (r.status, r.json()) == (direct.status, direct.json()) and r.status == status, r
    assert r.headers.get("retry-after") == direct.headers.get("retry-after")
    if status == 429:
        assert r.headers["retry-after"] == "0"
    assert _cache_path(stack, ns, path).status == 200  # the next call (no fault left) goes through


def _fault_once(stack: Stack, ns: str, status: int) -> Any:
    """Upstream's own answer to the fault, seen directly, then the same fault armed for the gateway."""
    stack.fault(route="query", status=status, count=1, namespace=ns)
    direct = call(stack.store.url, "POST", f"/v2/namespaces/{ns}/query", {"rank_by": ["id", "asc"]})
    stack.fault(route="query", status=status, count=1, namespace=ns)
    return direct


def _cache_path(stack: Stack, ns: str, path: str) -> Any:
    if path == "fetch":
        return stack("GET", f"/v2/namespaces/{ns}/documents/x")
    if path == "batch fetch":
        return stack("POST", f"/v2/namespaces/{ns}/documents", {"ids": ["x"]})
    return stack("POST", f"/v2/namespaces/{ns}/query", {"nearest_to_id": ["x"], "top_k": 1})


@pytest.fixture(scope="module")
def orphan(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proc]:
    """A gateway whose upstream port has nothing listening."""
    gw = start_gateway(f"http://127.0.0.1:{free_port()}", KEY, Path(tmp_path_factory.mktemp("orphan")),
                       LAYER_UPSTREAM_TIMEOUT_MS="1500")
    yield gw
    gw.stop()


@pytest.mark.parametrize(("method", "path", "body"), [
    ("POST", NS + "/query", {"rank_by": ["id", "asc"], "top_k": 1}),
    ("POST", NS + "/query", {"nearest_to_id": ["x"], "top_k": 1}),
    ("GET", NS + "/documents/x", None),
    ("POST", NS + "/documents", {"ids": ["x"]}),
    ("POST", NS, {"upsert_rows": [{"id": 1}]}),
    ("GET", NS + "/metadata", None),
    ("GET", "/v1/namespaces", None),
    ("GET", "/v2/namespaces", None),
    ("DELETE", NS, None),
])
def test_upstream_down_is_a_fast_502(orphan: Proc, method: str, path: str, body: object) -> None:
    started = time.monotonic()
    r = call(orphan.url, method, path, body)
    assert r.status == 502 and r.json()["error"] == "upstream_error", r
    assert time.monotonic() - started < 1.5  # refused at once, never the 1.5 s timeout (~10 ms expected)
    assert orphan.ops_url is not None
    health = wait_until(lambda: call(orphan.ops_url, "GET", "/health", key=None).json(),  # type: ignore[arg-type]
                        lambda h: any("last_error" in w["upstream"] for w in h["workers"]))
    assert len(health["workers"]) == 2, "the ops listener shows every worker; the failing one names its error"
