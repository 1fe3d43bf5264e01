"""In-process checks of the pure pieces: router, cursor, metadata status parsing, stamping, config."""

from __future__ import annotations

import asyncio

import pytest

from gateway import verdicts
from gateway.config import ConfigError, load_config
from gateway.consistency import STABLE, UNKNOWN, UPDATING, status_from_metadata
from gateway.cursor import decode_cursor, encode_cursor
from gateway.http import GatewayError
from gateway.router import build_router, path_segments
from gateway.routes.namespaces import STAMP, stamp_write
from gateway.routes.query import and_filters
from gateway.upstream import UpstreamResponse


def test_router_matches_templates_and_reports_404_405() -> None:
    router = build_router()
    route, params = router.match("POST", path_segments("/v2/namespaces/my-ns.1/query"))
    assert route.template == "/v2/namespaces/{ns}/query" and params == {"ns": "my-ns.1"}
    route, params = router.match("GET", path_segments("/v1/namespaces/a/operations/tok"))
    assert params == {"ns": "a", "op_id": "tok"}
    assert router.match("POST", ["v2", "keys", "authenticate"])[0].template == "/v2/keys/authenticate"
    with pytest.raises(GatewayError, match="no route for GET /v2/namespaces/a/nothing") as exc:
        router.match("GET", path_segments("/v2/namespaces/a/nothing"))
    assert exc.value.status == 404
    with pytest.raises(GatewayError, match="PUT is not allowed") as exc:
        router.match("PUT", path_segments("/v2/namespaces/a/metadata"))
    assert exc.value.status == 405 and exc.value.headers == [("allow", "GET")]


@pytest.mark.parametrize("offset", [0, 1, 9999])
def test_cursor_round_trip(offset: int) -> None:
    token = encode_cursor(offset)
    assert "=" not in token and decode_cursor(token) == offset


@pytest.mark.parametrize("token", ["", "!!", "eyJ4IjoxfQ", "eyJvIjoxMDAwMH0", "bnVsbA"])
def test_bad_cursors_are_422(token: str) -> None:
    with pytest.raises(GatewayError, match="invalid cursor") as exc:
        decode_cursor(token)
    assert exc.value.status == 422


@pytest.mark.parametrize(("body", "status"), [
    (b'{"index": {"status": "up-to-date"}}', STABLE),
    (b'{"index": {"status": "updating", "unindexed_bytes": 10}}', UPDATING),
    (b'{"stats": {"unindexed_bytes": 5}}', UPDATING),
    (b'{"stats": {"unindexed_bytes": 0}}', UNKNOWN),
    (b"not json", UNKNOWN),
    ({"index": {"status": "up-to-date"}}, STABLE),
])
def test_status_from_metadata(body: bytes | dict, status: str) -> None:
    assert status_from_metadata(body) == status


def test_stamp_write_overwrites_and_counts() -> None:
    doc = {"upsert_rows": [{"id": 1, STAMP: 3}], "patch_columns": {"id": [1, 2], "a": [1, 2]},
           "patch_by_filter": {"filters": ["a", "Eq", 1], "patch": {"b": 2}}, "deletes": [5]}
    assert stamp_write(doc, 42) == 3
    assert doc["upsert_rows"][0][STAMP] == 42 and doc["patch_columns"][STAMP] == [42, 42]
    assert doc["patch_by_filter"]["patch"][STAMP] == 42


def test_and_filters_nesting() -> None:
    assert and_filters(None, None) is None
    assert and_filters(["a", "Eq", 1], None) == ["a", "Eq", 1]
    assert and_filters(["a", "Eq", 1], ["b", "Eq", 2]) == ["And", [["a", "Eq", 1], ["b", "Eq", 2]]]


@pytest.mark.parametrize(("env", "word"), [
    ({"CONSISTENCY_POLL_INTERVAL_MS": "-1"}, "CONSISTENCY_POLL_INTERVAL_MS"),
    ({"LAYER_MAX_BODY_BYTES": "1e6"}, "LAYER_MAX_BODY_BYTES"),
    ({"TURBOPUFFER_REGION": "us east"}, "TURBOPUFFER_REGION"),
    ({"LAYER_LOG_LEVEL": "loud"}, "LAYER_LOG_LEVEL"),
])
def test_config_errors_name_the_variable(env: dict[str, str], word: str) -> None:
    with pytest.raises(ConfigError, match=word):
        load_config(env)


def test_config_resolution() -> None:
    assert load_config({}).upstream_url is None
    assert load_config({"TURBOPUFFER_REGION": "gcp-us-central1"}).upstream_url == "https://gcp-us-central1.turbopuffer.com"
    cfg = load_config({"TURBOPUFFER_API_URL": "http://h:1/p/", "TURBOPUFFER_API_KEY": " k "})
    assert (cfg.upstream_url, cfg.upstream_key) == ("http://h:1/p", "k")


class _Upstream:
    """Answers every access check: 200 with a created_at for bearers starting with "ok", 403 for the rest."""

    def __init__(self) -> None:
        self.calls = 0

    async def request(self, method: str, path: str, key: str, *args: object) -> UpstreamResponse:
        self.calls += 1
        if key.startswith("ok"):
            return UpstreamResponse(200, b'{"created_at":"2026-01-01T00:00:00Z"}', "application/json", [])
        return UpstreamResponse(403, b'{"status":"error","error":"no"}', "application/json", [])


def test_verdicts_stay_bounded_whatever_the_bearers() -> None:
    """Derive-from-request mode: a refused bearer leaves nothing behind, and accepted ones never exceed MAX_ENTRIES
    (the oldest go first), so bearers an attacker makes up cannot grow a worker's memory."""
    async def run() -> None:
        upstream = _Upstream()
        v = verdicts.Verdicts(upstream, ttl_s=60)  # type: ignore[arg-type]
        for i in range(2000):
            assert not isinstance(await v.check(f"bad-{i}", f"ns{i % 7}"), str)
        assert (v._accepted, v._pending, v._size) == ({}, {}, 0)
        fingerprint = await v.check("ok-first", "docs")
        assert fingerprint == verdicts.fingerprint(b'{"created_at":"2026-01-01T00:00:00Z"}') and len(fingerprint) == 16
        for i in range(verdicts.MAX_ENTRIES + 500):
            assert await v.check(f"ok-{i}", "docs" if i % 2 else "other") == fingerprint
        assert v._size == sum(len(m) for m in v._accepted.values()) <= verdicts.MAX_ENTRIES
        calls = upstream.calls
        assert await v.check(f"ok-{verdicts.MAX_ENTRIES + 499}", "docs") == fingerprint and upstream.calls == calls
        v.forget(f"ok-{verdicts.MAX_ENTRIES + 499}", "/v2/namespaces/docs/query", 403)
        assert v._size == sum(len(m) for m in v._accepted.values()) and not any(not m for m in v._accepted.values())
        v.forget_namespace("docs")
        assert v._size == sum(len(m) for m in v._accepted.values())
        assert all(set(m) == {"other"} for m in v._accepted.values())
        assert verdicts.fingerprint(b'{"approx_row_count": 1}') == verdicts.fingerprint(b"garbage") == ""
        await v.stop()

    asyncio.run(run())
