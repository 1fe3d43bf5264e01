"""Response compression through the gateway: relayed gzip bodies are byte-for-byte the store's, bodies the gateway
must read are inflated (a Layer cursor still works), and the responses it builds are gzipped when asked (big ones
in a worker thread). The pure pieces (Accept-Encoding, bounded inflation) are checked in process."""

from __future__ import annotations

import asyncio
import gzip
import json
import zlib

import pytest
from gw_support import Stack, call

from gateway.compression import (
    GZIP_MIN_BYTES,
    THREAD_MIN_BYTES,
    TooLarge,
    accepts_gzip,
    compress_response,
    gunzip,
    identity_body,
)
from gateway.http import Response
from gateway.upstream import UpstreamResponse

GZ = {"Accept-Encoding": "gzip"}


def test_relayed_gzip_is_the_stores_own_bytes(stack: Stack) -> None:
    """A deterministic answer (the namespace list) with Accept-Encoding: gzip: the gateway relays upstream's gzip
    bytes untouched, not a re-compression."""
    for i in range(40):
        assert stack("POST", f"/v2/namespaces/gzlist-{i:02d}-{'n' * 60}", {"upsert_rows": [{"id": 1}]}).status == 200
    path = "/v1/namespaces?prefix=gzlist-&page_size=100"
    direct = call(stack.store.url, "GET", path, headers=GZ)
    through = stack("GET", path, headers=GZ)
    assert direct.headers.get("content-encoding") == through.headers.get("content-encoding") == "gzip"
    assert through.body == direct.body
    assert len(json.loads(gzip.decompress(through.body))["namespaces"]) == 40


def test_layer_cursor_reads_a_gzipped_page(stack: Stack) -> None:
    ns = "/v2/namespaces/gzcursor"
    rows = [{"id": i, "vector": [1.0, i / 100], "text": "t" * 200} for i in range(25)]
    assert stack("POST", ns, {"upsert_rows": rows, "distance_metric": "cosine_distance"}).status == 200
    seen: list[int] = []
    body = {"vector": [1.0, 0.0], "top_k": 10, "include_attributes": ["text"]}
    while True:
        r = stack("POST", ns + "/query", body, headers=GZ)
        assert r.status == 200 and r.headers.get("content-encoding") == "gzip", r
        seen += [row["id"] for row in json.loads(gzip.decompress(r.body))["rows"]]
        cursor = r.headers.get("x-layer-next-cursor")
        if cursor is None:
            break
        body = {**body, "cursor": cursor}
    assert sorted(seen) == list(range(25)) and len(seen) == 25


def test_built_responses_are_gzipped_when_asked(stack: Stack) -> None:
    """A Layer batch fetch of ~400 KiB: gzipped (in a worker thread: above THREAD_MIN_BYTES) with Vary, the same
    document as the plain answer; small gateway answers (metadata, errors) stay plain."""
    ns = "/v2/namespaces/gzbuilt"
    ids = [f"doc-{i:04d}" for i in range(1500)]
    for start in range(0, len(ids), 500):
        chunk = [{"id": d, "blob": "b" * 256} for d in ids[start:start + 500]]
        assert stack("POST", ns, {"upsert_rows": chunk}).status == 200
    plain = stack("POST", ns + "/documents", {"ids": ids})
    assert plain.status == 200 and "content-encoding" not in plain.headers
    assert len(plain.body) > THREAD_MIN_BYTES
    packed = stack("POST", ns + "/documents", {"ids": ids}, headers=GZ)
    assert packed.headers.get("content-encoding") == "gzip" and packed.headers.get("vary") == "accept-encoding"
    assert json.loads(gzip.decompress(packed.body)) == json.loads(plain.body)
    assert len(packed.body) < len(plain.body) / 10
    meta = stack("GET", ns + "/metadata", headers=GZ)
    assert meta.status == 200 and "content-encoding" not in meta.headers and len(meta.body) < GZIP_MIN_BYTES
    err = stack("POST", ns + "/query", {"vector": []}, headers=GZ)
    assert err.status == 422 and "content-encoding" not in err.headers


@pytest.mark.parametrize(("header", "ok"), [
    ("gzip", True), ("GZIP", True), ("deflate, gzip;q=0.5", True), ("x-gzip", True), ("*", True), ("br, *;q=0.1", True),
    (None, False), ("", False), ("identity", False), ("gzip;q=0", False), ("gzip;q=0.0, *", False),
    ("*;q=0", False), ("br", False), ("gzip;q=bogus", False),
])
def test_accept_encoding(header: str | None, ok: bool) -> None:
    assert accepts_gzip(header) is ok


def test_gunzip_is_bounded_and_complete() -> None:
    data = b'{"a": "' + b"x" * 5000 + b'"}'
    packed = gzip.compress(data)
    assert gunzip(packed, len(data)) == data
    assert gunzip(packed + gzip.compress(b"tail"), len(data) + 4) == data + b"tail"  # every member
    with pytest.raises(TooLarge):
        gunzip(packed, len(data) - 1)
    with pytest.raises(TooLarge):
        gunzip(packed + gzip.compress(b"tail"), len(data) + 3)
    for corrupt in (packed[:-8], packed + b"junk", b"\x1f\x8bnope"):
        with pytest.raises(zlib.error):
            gunzip(corrupt, 1 << 20)


def test_identity_body_reads_what_it_can() -> None:
    def resp(body: bytes, encoding: str | None) -> UpstreamResponse:
        return UpstreamResponse(200, body, "application/json", [("content-encoding", encoding)] if encoding else [])
    assert identity_body(resp(b"{}", None)) == b"{}"
    assert identity_body(resp(gzip.compress(b"{}"), "gzip")) == b"{}"
    assert identity_body(resp(gzip.compress(b"x" * 100), "gzip"), limit=99) is None
    assert identity_body(resp(b"garbage", "gzip")) is None
    assert identity_body(resp(b"{}", "br")) is None


def test_compress_response_leaves_relayed_and_small_bodies() -> None:
    big = b"[" + b'"row",' * 1000 + b"0]"
    assert asyncio.run(compress_response(Response(200, big, relayed=True), "gzip")).body == big
    assert asyncio.run(compress_response(Response(200, b"{}"), "gzip")).body == b"{}"
    assert asyncio.run(compress_response(Response(200, big), "identity")).body == big
    out = asyncio.run(compress_response(Response(200, big), "gzip"))
    assert gzip.decompress(out.body) == big and ("content-encoding", "gzip") in out.headers

