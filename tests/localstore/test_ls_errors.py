"""Bad inputs and auth: every error is a JSON body with the documented status."""

from __future__ import annotations

from typing import Any

import pytest
from ls_support import Client
from support.procs import start_localstore


@pytest.fixture(scope="module")
def base(client: Client) -> str:
    client.write("err", {"upsert_rows": [{"id": 1, "n": 1}]})
    return "/v2/namespaces/err"


@pytest.mark.parametrize("body,status,needle", [
    ({"upsert_rows": {"id": 1}}, 422, "sequence"),
    ({"upsert_rows": [{"id": "x" * 65}]}, 400, "64 bytes"),
    ({"upsert_rows": [{"id": 2}], "bogus": 1}, 400, "bogus"),
    ({"upsert_rows": [{"id": -1}]}, 400, "id"),
    ({"upsert_rows": [{"id": 2, "n": "text"}]}, 400, "n"),
    ({"upsert_rows": [{"id": 2, "$x": 1}]}, 400, "attribute"),
    ({"upsert_rows": [{"n": 3}]}, 400, "id"),
    ({"upsert_columns": {"n": [1]}}, 400, "id"),
    ({"upsert_rows": [{"id": 5, "vector": [1.0, 2.0]}]}, 400, "distance_metric"),
    ({"upsert_rows": [{"id": 5, "vector": [1.0]}], "distance_metric": "dot"}, 422, "variant"),
])
def test_bad_writes(client: Client, base: str, body: Any, status: int, needle: str) -> None:
    code, err, _ = client.call("POST", base, body)
    assert code == status and err["status"] == "error" and needle in err["error"]
    assert client.ids("err", {"rank_by": ["id", "asc"], "top_k": 10}) == [1]  # nothing applied


@pytest.mark.parametrize("body,status", [
    ({"rank_by": ["id", "asc"], "consistency": "eventual"}, 422),
    ({"rank_by": ["id", "asc"], "consistency": {"level": "sometimes"}}, 422),
    ({"rank_by": ["id", "asc"], "top_k": "x"}, 422),
    ({"rank_by": ["id", "asc"], "top_k": -1}, 422),
    ({"rank_by": ["id", "asc"], "whatever": 1}, 400),
    ({"rank_by": ["id", "asc"], "exclude_attributes": ["id"]}, 400),
    ({"rank_by": ["id", "asc"], "aggregate_by": {"c": ["Count"]}}, 422),
])
def test_bad_queries(client: Client, base: str, body: Any, status: int) -> None:
    code, err, _ = client.call("POST", base + "/query", body)
    assert code == status and err["status"] == "error" and err["error"]


def test_malformed_json_routes_and_methods(client: Client, base: str) -> None:
    code, err, _ = client.call("POST", base, raw=b"{not json")
    assert code == 400 and "JSON" in err["error"]
    code, err, _ = client.call("POST", base, raw=b"\x1f\x8bnotgzip", headers={"Content-Encoding": "gzip"})
    assert code == 400
    assert client.call("GET", "/v2/nothing/here")[0] == 404
    assert client.call("GET", base)[0] == 405
    assert client.call("PUT", base + "/query", {})[0] == 405


def test_auth_any_key_and_fixed_key(client: Client, tmp_path: Any) -> None:
    assert client.call("POST", "/v2/namespaces/err/query", {"rank_by": ["id", "asc"]}, key=None)[0] == 401
    assert client.call("GET", "/v1/namespaces", headers={"Authorization": "Bearer "}, key=None)[0] == 401
    assert client.call("GET", "/v1/namespaces", key="anything")[0] == 200
    proc = start_localstore(tmp_path / "d", LOCALSTORE_API_KEY="sekret")
    try:
        fixed = Client(proc.url, key="sekret")
        assert fixed.call("GET", "/v1/namespaces")[0] == 200
        code, err, _ = fixed.call("GET", "/v1/namespaces", key="other")
        assert code == 403 and err["status"] == "error"
        assert fixed.call("GET", "/v1/namespaces", key=None)[0] == 401
        assert fixed.call("GET", "/_localstore/health", key=None)[0] == 200
    finally:
        proc.stop()
