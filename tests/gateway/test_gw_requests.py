"""The request path through real processes: writes, queries, metadata, passthrough routes, auth, routing."""

from __future__ import annotations

import base64
import gzip
import http.client
import json
import time

from gw_support import KEY, Stack, gz, wait_for

STAMP = "_hevlayer_upserted_at"


def _seed(stack: Stack, ns: str, n: int = 25) -> None:
    rows = [{"id": i, "vector": [float(i), 1.0], "t": "even" if i % 2 == 0 else "odd"} for i in range(1, n + 1)]
    r = stack("POST", f"/v2/namespaces/{ns}", {"upsert_rows": rows, "distance_metric": "euclidean_squared"})
    assert r.status == 200, r


def _all_rows(stack: Stack, ns: str) -> list[dict]:
    r = stack("POST", f"/v2/namespaces/{ns}/query",
              {"rank_by": ["id", "asc"], "top_k": 1000, "include_attributes": ["a", STAMP],
               "consistency": {"level": "strong"}})
    assert r.status == 200, r
    return r.json()["rows"]


def test_write_stamps_every_row_form_with_one_server_time(stack: Stack) -> None:
    ns = "stamps"
    before = int(time.time() * 1000)
    r = stack("POST", f"/v2/namespaces/{ns}", {
        "upsert_rows": [{"id": 1, "a": 1, STAMP: 5}, {"id": 2, "a": 2}],
        "upsert_columns": {"id": [3, 4], "a": [3, 4], STAMP: [7, 7]},
    })
    after = int(time.time() * 1000)
    assert r.status == 200, r
    rows = _all_rows(stack, ns)
    stamps = {row["id"]: row[STAMP] for row in rows}
    assert set(stamps) == {1, 2, 3, 4}
    assert len(set(stamps.values())) == 1, "one stamp per request"
    assert before <= stamps[1] <= after, "server-chosen, caller's 5/7 overwritten"

    time.sleep(0.01)
    r = stack("POST", f"/v2/namespaces/{ns}", {"patch_rows": [{"id": 1, "a": 10}],
                                              "patch_columns": {"id": [2], "a": [20]}})
    assert r.status == 200, r
    r = stack("POST", f"/v2/namespaces/{ns}", {"patch_by_filter": {"filters": ["id", "Eq", 3], "patch": {"a": 30}}})
    assert r.status == 200, r
    after = {row["id"]: row for row in _all_rows(stack, ns)}
    assert after[1][STAMP] > stamps[1] and after[2][STAMP] > stamps[2] and after[3][STAMP] > stamps[3]
    assert after[4][STAMP] == stamps[4]
    assert (after[1]["a"], after[2]["a"], after[3]["a"]) == (10, 20, 30)
    # Drop-in: "all attributes" never shows the gateway's stamp (it is only returned when named).
    ranked = {"rank_by": ["id", "asc"], "top_k": 10}
    for body in ({**ranked, "include_attributes": True}, {**ranked, "exclude_attributes": ["a"]},
                 {"queries": [{**ranked, "include_attributes": True}]}):
        r = stack("POST", f"/v2/namespaces/{ns}/query", body)
        assert r.status == 200 and STAMP not in r.body.decode(), r
    r = stack("POST", f"/v2/namespaces/{ns}/query", {"rank_by": ["id", "asc"], "include_attributes": True})
    assert r.json()["rows"][0] == {"id": 1, "a": 10}


def test_reserved_attributes_are_rejected_by_name(stack: Stack) -> None:
    cases = [
        {"upsert_rows": [{"id": 1, "_hevlayer_shard": 3}]},
        {"upsert_columns": {"id": [1], "_hevlayer_x": [1]}},
        {"patch_rows": [{"id": 1, "_hevlayer_y": 1}]},
        {"patch_by_filter": {"filters": ["id", "Eq", 1], "patch": {"_hevlayer_z": 1}}},
        {"upsert_rows": [{"id": 1}], "schema": {"_hevlayer_upserted_at": "string"}},
    ]
    for body in cases:
        r = stack("POST", "/v2/namespaces/reserved", body)
        assert r.status == 422, r
        name = r.json()["attribute"]
        assert name.startswith("_hevlayer_") and name in r.json()["message"]
    assert stack("GET", "/v2/namespaces/reserved/metadata").status == 404, "nothing was written"
    assert stack("POST", "/v2/namespaces/reserved", {"upsert_rows": [{"id": 1, "a": 1}]}).status == 200
    r = stack("POST", "/v1/namespaces/reserved/schema", {"a": {"type": "int"}, STAMP: {"type": "int", "filterable": False}})
    assert r.status == 422 and r.json()["attribute"] == STAMP, r
    assert stack("POST", "/v1/namespaces/reserved/schema", {"a": {"type": "int", "filterable": True}}).status == 200


def test_query_keeps_upstream_body_order_and_numeric_ids(stack: Stack) -> None:
    ns = "shape"
    _seed(stack, ns, 6)
    r = stack("POST", f"/v2/namespaces/{ns}/query", {"rank_by": ["id", "desc"], "top_k": 3})
    assert r.status == 200, r
    body = r.json()
    assert [row["id"] for row in body["rows"]] == [6, 5, 4]
    assert "billing" in body and "performance" in body
    assert r.headers["traceparent"].startswith("00-")
    tp = "00-" + "ab" * 16 + "-" + "cd" * 8 + "-01"
    r = stack("POST", f"/v2/namespaces/{ns}/query", {"rank_by": ["id", "asc"], "top_k": 1}, headers={"traceparent": tp})
    assert r.headers["traceparent"] == tp
    r = stack("POST", f"/v2/namespaces/{ns}/query", {"aggregate_by": {"n": ["Count"]}, "filters": ["t", "Eq", "odd"]})
    assert r.status == 200 and r.json()["aggregations"] == {"n": 3}, r


def test_cursor_paging_over_ann_returns_every_row_once(stack: Stack) -> None:
    ns = "paging"
    _seed(stack, ns, 23)
    seen: list[int] = []
    body: dict = {"vector": [5.0, 1.0], "top_k": 5}
    for _ in range(10):
        r = stack("POST", f"/v2/namespaces/{ns}/query", body)
        assert r.status == 200, r
        seen.extend(row["id"] for row in r.json()["rows"])
        cursor = r.headers.get("x-layer-next-cursor")
        if cursor is None:
            break
        body = {"vector": [5.0, 1.0], "top_k": 5, "cursor": cursor}
    assert sorted(seen) == list(range(1, 24)) and len(seen) == 23
    assert seen[0] == 5


def test_nearest_to_id_uses_the_stored_vectors(stack: Stack) -> None:
    ns = "nearest"
    _seed(stack, ns, 10)
    r = stack("POST", f"/v2/namespaces/{ns}/query", {"nearest_to_id": [7], "top_k": 3})
    assert r.status == 200, r
    assert r.json()["rows"][0]["id"] == 7
    r = stack("POST", f"/v2/namespaces/{ns}/query", {"nearest_to_id": [2, 4], "top_k": 1})
    assert [row["id"] for row in r.json()["rows"]] == [3], "mean of the two vectors"
    r = stack("POST", f"/v2/namespaces/{ns}/query", {"nearest_to_id": [99, 7], "top_k": 1})
    assert r.status == 404 and "99" in r.json()["message"], r
    r = stack("POST", f"/v2/namespaces/{ns}/query", {"nearest_to_id": [7], "vector": [1.0, 1.0]})
    assert r.status == 422, r


def test_metadata_layer_block_and_list(stack: Stack) -> None:
    ns = "meta"
    _seed(stack, ns, 3)
    r = stack("GET", f"/v2/namespaces/{ns}/metadata")
    assert r.status == 200, r
    body = r.json()
    assert body["approx_row_count"] == 3 and body["id"] == ns
    layer = body["layer"]
    assert layer["is_stable"] is True and isinstance(layer["stable_as_of"], int)
    assert layer["stable_as_of"] <= int(time.time() * 1000)
    assert layer["stable_as_of_time"].endswith("Z") and layer["shard_state"] == "unsharded"
    assert stack("GET", "/v2/namespaces/missing-ns/metadata").status == 404  # body: test_gw_relays.py
    r = stack("GET", "/v2/namespaces?prefix=meta&page_size=10")
    assert r.status == 200, r
    (entry,) = r.json()["namespaces"]
    assert entry["name"] == ns and entry["row_count"] == 3 and entry["is_stable"] is True
    assert entry["stable_as_of_ms"] <= int(time.time() * 1000) and entry["schema_summary"]["vector_dim"] == 2
    assert entry["schema_summary"]["fields"] == ["id", "t", "vector"]
    assert stack("GET", "/v2/namespaces?page_size=0").status == 422


def test_passthrough_routes_relay_upstream(stack: Stack) -> None:
    ns = "relay"
    _seed(stack, ns, 4)
    schema = stack("GET", f"/v1/namespaces/{ns}/schema").json()
    assert schema["t"]["type"] == "string" and STAMP not in schema, "the gateway's stamp stays hidden"
    assert STAMP not in stack("GET", f"/v2/namespaces/{ns}/metadata").json()["schema"]
    assert STAMP not in stack("GET", f"/v1/namespaces/{ns}/metadata").json()["schema"]
    assert stack("GET", f"/v1/namespaces/{ns}/metadata").json()["approx_row_count"] == 4
    assert stack("GET", f"/v1/namespaces/{ns}/hint_cache_warm").json()["status"] == "ACCEPTED"
    assert "plan_text" in stack("POST", f"/v2/namespaces/{ns}/explain_query", {"rank_by": ["id", "asc"]}).json()
    r = stack("POST", f"/v1/namespaces/{ns}/query", {"rank_by": ["id", "asc"], "top_k": 2})
    assert [row["id"] for row in r.json()["rows"]] == [1, 2], "v1 query rewritten to v2"
    r = stack("GET", "/v1/namespaces?prefix=relay")
    assert [n["id"] for n in r.json()["namespaces"]] == [ns]
    r = stack("GET", "/v1/namespaces/none-such/schema")
    assert r.status == 404 and r.json()["status"] == "error", "upstream error relayed verbatim"
    r = stack("POST", f"/v2/namespaces/{ns}", {"upsert_rows": {"id": 1}})
    assert r.status == 422 and r.json()["status"] == "error" and "upsert_rows" in r.json()["error"]
    r = stack("POST", f"/v2/namespaces/{ns}-copy?stainless_overload=copyFrom",
              {"copy_from_namespace": {"source_namespace": ns}})
    assert r.status == 200, r
    assert stack("GET", f"/v2/namespaces/{ns}-copy/metadata").json()["approx_row_count"] == 4
    r = stack("POST", f"/v1/namespaces/{ns}/_debug/recall", {"num": 1, "top_k": 2})
    assert r.status == 200 and "avg_recall" in r.json(), r
    r = stack("DELETE", f"/v2/namespaces/{ns}")
    assert r.status == 200 and r.json()["status"] == "OK", r
    assert stack("GET", f"/v1/namespaces/{ns}/schema").status == 404


def test_gzip_request_bodies_and_prefer_header(stack: Stack) -> None:
    ns = "gzipped"
    rows = [{"id": i, "vector": [float(i), 0.5], "s": "x" * 50} for i in range(1, 40)]
    r = stack("POST", f"/v2/namespaces/{ns}", raw=gz({"upsert_rows": rows, "distance_metric": "cosine_distance"}),
              headers={"Content-Encoding": "gzip", "prefer": "respond-async"})
    assert r.status == 200, r
    r = stack("POST", f"/v2/namespaces/{ns}/query", raw=gz({"rank_by": ["id", "asc"], "top_k": 100}),
              headers={"Content-Encoding": "gzip", "prefer": "respond-async"})
    assert r.status == 200 and len(r.json()["rows"]) == 39, r


def test_routing_and_auth_errors_are_json(stack: Stack) -> None:
    assert stack("GET", "/v9/nothing").json()["error"] == "not_found"
    r = stack("PUT", "/v2/namespaces/x/query", {})
    assert r.status == 405 and r.json()["error"] == "method_not_allowed"
    for headers, key in (({}, None), ({"Authorization": "Basic abc"}, None), ({"Authorization": "Bearer "}, None)):
        r = stack("POST", "/v2/namespaces/x/query", {"top_k": 1}, key=key, headers=headers)
        assert r.status == 401 and r.json()["error"] == "unauthorized", r
    r = stack("POST", "/v2/namespaces/x/query", {"top_k": 1}, key=KEY + "x")
    assert r.status == 401 and r.json() == {"error": "invalid_api_key", "message": "the API key is not valid"}
    assert stack("GET", "/health", key=None).status == 200


def test_base64_vectors_and_string_ids_pass_through(stack: Stack) -> None:
    ns = "b64"
    vec = base64.b64encode(bytes.fromhex("0000803f00000040")).decode()  # [1.0, 2.0] little-endian f32
    r = stack("POST", f"/v2/namespaces/{ns}", {"upsert_rows": [{"id": "a", "vector": vec}, {"id": "b", "vector": [3.0, 1.0]}],
                                              "distance_metric": "euclidean_squared"})
    assert r.status == 200, r
    r = stack("POST", f"/v2/namespaces/{ns}/query", {"nearest_to_id": ["a"], "top_k": 2})
    assert [row["id"] for row in r.json()["rows"]] == ["a", "b"], r
    wait_for(lambda: stack("POST", f"/v2/namespaces/{ns}/query", {"vector": [1.0, 2.0], "top_k": 1}).status == 200)
    assert json.loads(stack("GET", f"/v2/namespaces/{ns}/metadata").body)["approx_row_count"] == 2


def test_one_keep_alive_connection_carries_every_kind_of_response(stack: Stack) -> None:
    """Relayed, gateway-built, gzipped, error and HEAD responses in turn on one connection: each is framed exactly
    (a HEAD answer has no body, a body matches its content-length), or the next response on the connection would be
    read from the wrong bytes. The uvicorn adapter writes a response's head and body in one write; this is what
    that must keep."""
    ns = "keepalive-kinds"
    _seed(stack, ns, 60)
    host, port = stack.gw.url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=15)
    auth = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
    query = json.dumps({"rank_by": ["id", "asc"], "top_k": 60, "include_attributes": True}).encode()
    batch = json.dumps({"ids": list(range(1, 61))}).encode()  # a gateway-built answer, large enough to gzip
    steps = [
        ("POST", f"/v2/namespaces/{ns}/query", query, {}, 200),
        ("HEAD", f"/v2/namespaces/{ns}/metadata", None, {}, 405),
        ("GET", f"/v2/namespaces/{ns}/documents/1", None, {}, 200),
        ("POST", f"/v2/namespaces/{ns}/documents", batch, {"Accept-Encoding": "gzip"}, 200),
        ("GET", "/v2/no/such/route", None, {}, 404),
        ("HEAD", f"/v2/namespaces/{ns}/documents/1", None, {}, 405),
        ("POST", f"/v2/namespaces/{ns}/query", query, {}, 200),
    ]
    try:
        for method, path, body, extra, want in steps * 2:
            conn.request(method, path, body=body, headers={**auth, **extra})
            resp = conn.getresponse()
            data = resp.read()
            assert resp.status == want, (method, path, resp.status, data[:200])
            if method == "HEAD":
                assert data == b"", "a HEAD answer carries no body"
            else:
                assert len(data) == int(resp.getheader("content-length")), (method, path)
                if path.endswith("/documents"):
                    assert resp.getheader("content-encoding") == "gzip", "the batch answer is gzipped"
                    data = gzip.decompress(data)
                assert isinstance(json.loads(data), dict), (method, path)
            if path.endswith("/query"):
                assert [row["id"] for row in json.loads(data)["rows"]][:3] == [1, 2, 3], path
    finally:
        conn.close()
