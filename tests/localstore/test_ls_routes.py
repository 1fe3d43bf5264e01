"""Route behaviour of the local store over real HTTP: writes, queries, metadata, listing, schema, misc."""

from __future__ import annotations

import base64
import json
import struct
from pathlib import Path

from ls_support import Client

FIXTURE = Path("/work/shared/fixtures/turbopuffer-live-bm25.json")


def test_write_query_roundtrip_f32_and_base64(client: Client) -> None:
    b64 = base64.b64encode(struct.pack("<2f", 0.1, 0.2)).decode()
    w = client.write("rt", {"upsert_rows": [{"id": 1, "vector": b64, "t": "x"}, {"id": 2, "vector": [0.7, 0.7]}],
                            "distance_metric": "cosine_distance", "return_affected_ids": True})
    assert w["status"] == "OK" and w["rows_affected"] == 2 and w["upserted_ids"] == [1, 2]
    assert "billable_logical_bytes_written" in w["billing"]
    res = client.query("rt", {"rank_by": ["vector", "ANN", [0.1, 0.2]], "top_k": 10, "include_attributes": True})
    rows = res["rows"]
    assert [r["id"] for r in rows] == [1, 2]
    assert rows[0]["vector"] == [0.1, 0.2] and rows[0]["t"] == "x" and abs(rows[0]["$dist"]) < 1e-6
    assert rows[1]["vector"] == [0.7, 0.7] and "t" not in rows[1]
    perf = res["performance"]
    assert set(perf) >= {"approx_namespace_size", "cache_hit_ratio", "cache_temperature", "exhaustive_search_count",
                         "query_execution_ms", "server_total_ms"} and perf["approx_namespace_size"] == 2
    enc = client.query("rt", {"rank_by": ["vector", "ANN", b64], "top_k": 1, "include_attributes": ["vector"],
                              "vector_encoding": "base64"})["rows"][0]
    assert enc["vector"] == b64 and set(enc) == {"id", "vector", "$dist"}
    only_id = client.query("rt", {"rank_by": ["id", "desc"], "top_k": 10})["rows"]
    assert only_id == [{"id": 2}, {"id": 1}]
    status, err, _ = client.call("POST", "/v2/namespaces/rt", {"upsert_rows": [{"id": 3, "vector": [1, 2]}],
                                                                "distance_metric": "euclidean_squared"})
    assert status == 400 and err["status"] == "error"
    status, err, _ = client.call("POST", "/v2/namespaces/rt", {"upsert_rows": [{"id": 3, "vector": [1, 2, 3]}]})
    assert status == 400 and "dimension" in err["error"]


def test_euclidean_and_knn(client: Client) -> None:
    client.write("eu", {"upsert_rows": [{"id": i, "v": i, "vector": [float(i), 0.0]} for i in range(5)],
                        "distance_metric": "euclidean_squared"})
    rows = client.query("eu", {"rank_by": ["vector", "ANN", [3.2, 0]], "top_k": 3})["rows"]
    assert [r["id"] for r in rows] == [3, 4, 2] and abs(rows[0]["$dist"] - 0.04) < 1e-6
    status, _, _ = client.call("POST", "/v2/namespaces/eu/query", {"rank_by": ["vector", "kNN", [0, 0]], "top_k": 2})
    assert status == 400
    assert client.ids("eu", {"rank_by": ["vector", "kNN", [0, 0]], "top_k": 2, "filters": ["v", "Gte", 2]}) == [2, 3]


def test_string_ids_patch_delete_and_conditions(client: Client) -> None:
    client.write("docs", {"upsert_rows": [{"id": "a", "n": 1, "tag": "x"}, {"id": "b", "n": 2}, {"id": "c", "n": 3}]})
    w = client.write("docs", {"patch_rows": [{"id": "a", "tag": None, "m": 5}, {"id": "zz", "m": 1}]})
    assert w["rows_patched"] == 1
    row = client.query("docs", {"filters": ["id", "Eq", "a"], "include_attributes": True})["rows"][0]
    assert row == {"id": "a", "n": 1, "m": 5}
    w = client.write("docs", {"upsert_rows": [{"id": "b", "n": 10}, {"id": "c", "n": 1}],
                              "upsert_condition": ["n", "Lt", {"$ref_new": "n"}]})
    assert w["rows_upserted"] == 1
    assert client.ids("docs", {"rank_by": ["n", "desc"], "top_k": 5}) == ["b", "c", "a"]
    w = client.write("docs", {"delete_by_filter": ["n", "Gte", 3], "return_affected_ids": True})
    assert w["rows_deleted"] == 2 and sorted(w["deleted_ids"]) == ["b", "c"]
    w = client.write("docs", {"patch_by_filter": {"filters": ["id", "Eq", "a"], "patch": {"n": 7}}})
    assert w["rows_patched"] == 1
    w = client.write("docs", {"deletes": ["a"], "delete_condition": ["n", "Eq", 8]})
    assert w["rows_affected"] == 0
    client.write("docs", {"deletes": ["a"]})
    assert client.query("docs", {"rank_by": ["id", "asc"], "top_k": 5})["rows"] == []
    status, err, _ = client.call("POST", "/v2/namespaces/docs", {"upsert_rows": [{"id": "q"}], "deletes": ["q"]})
    assert status == 400 and "duplicate" in err["error"]


def test_upsert_columns_order_by_and_limits(client: Client) -> None:
    client.write("cols", {"upsert_columns": {"id": [1, 2, 3, 4], "p": [3, None, 1, 3], "s": ["a", "b", "c", "d"]}})
    assert client.ids("cols", {"rank_by": ["p", "asc"], "top_k": 10}) == [2, 3, 1, 4]
    assert client.ids("cols", {"rank_by": ["p", "desc"], "top_k": 10}) == [1, 4, 3, 2]
    assert client.ids("cols", {"rank_by": [["p", "desc"], ["s", "desc"]], "top_k": 10}) == [4, 1, 3, 2]
    assert client.ids("cols", {"rank_by": ["id", "asc"], "limit": 2, "offset": 1}) == [2, 3]
    per = {"rank_by": ["id", "asc"], "limit": {"total": 10, "per": {"attributes": ["p"], "limit": 1}},
           "include_attributes": ["p"]}
    assert client.ids("cols", per) == [1, 2, 3]
    for top_k in (0, 10001):
        status, _, _ = client.call("POST", "/v2/namespaces/cols/query", {"rank_by": ["id", "asc"], "top_k": top_k})
        assert status == 400


def test_aggregations_and_multi_query(client: Client) -> None:
    client.write("agg", {"upsert_rows": [{"id": i, "g": "ab"[i % 2], "x": i, "vector": [1.0, float(i)]}
                                         for i in range(1, 6)], "distance_metric": "cosine_distance"})
    aggs = client.query("agg", {"aggregate_by": {"c": ["Count"], "s": ["Sum", "x"]}})["aggregations"]
    assert aggs == {"c": 5, "s": 15}
    groups = client.query("agg", {"aggregate_by": {"c": ["Count"]}, "group_by": ["g"]})["aggregation_groups"]
    assert groups == [{"g": "a", "c": 2}, {"g": "b", "c": 3}]
    multi = client.query("agg", {"queries": [{"rank_by": ["vector", "ANN", [1, 5]], "top_k": 2},
                                             {"aggregate_by": {"c": ["Count"]}, "filters": ["g", "Eq", "a"]}]})
    assert [r["id"] for r in multi["results"][0]["rows"]] == [5, 4] and multi["results"][1]["aggregations"] == {"c": 2}
    subs = [{"rank_by": ["x", "desc"], "top_k": 3}, {"rank_by": ["x", "asc"], "top_k": 2}]
    fused = client.query("agg", {"queries": subs,
                                 "rerank_by": ["RRF", {"rank_constant": 10, "weights": [2, 1]}], "limit": 2})
    rows = fused["results"][0]["rows"]
    assert rows[0]["id"] == 5 and rows[0]["$dist"] == 0.18181819 and [r["id"] for r in rows] == [5, 4]
    status, _, _ = client.call("POST", "/v2/namespaces/agg/query", {"queries": [{"rank_by": ["id", "asc"]}] * 17})
    assert status == 400


def test_bm25_matches_live_fixture(client: Client) -> None:
    fx = json.loads(FIXTURE.read_text())["bm25"]
    client.write("bm25", fx["write"])
    for case in fx["cases"]:
        got = client.query("bm25", {"rank_by": case["rank_by"], "top_k": 10})["rows"]
        assert got == case["rows"], case["rank_by"]
    prod = client.query("bm25", {"rank_by": ["Product", 2, ["tags", "BM25", "cache"]], "top_k": 10})["rows"]
    prod2 = client.query("bm25", {"rank_by": ["Product", ["tags", "BM25", "cache"], 2], "top_k": 10})["rows"]
    assert prod == prod2 == [{"id": 1, "$dist": 1.3367052}]


def test_metadata_listing_schema_delete(client: Client) -> None:
    for n in ("ls-a", "ls-b", "ls-c"):
        client.write(n, {"upsert_rows": [{"id": 1, "t": "x"}]})
    v2 = client.ok("GET", "/v2/namespaces/ls-a/metadata")
    assert v2["approx_row_count"] == 1 and v2["index"] == {"status": "up-to-date"}
    assert v2["encryption"] == {"mode": "default"} and v2["created_at"].endswith("Z")
    assert client.ok("GET", "/v1/namespaces/ls-a/metadata")["encryption"] == {"sse": True}
    seen, cursor = [], None
    for _ in range(5):
        page = client.ok("GET", "/v1/namespaces?prefix=ls-&page_size=2" + (f"&cursor={cursor}" if cursor else ""))
        seen += [n["id"] for n in page["namespaces"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == ["ls-a", "ls-b", "ls-c"]
    assert client.call("GET", "/v1/namespaces?cursor=%%%bad")[0] == 400
    schema = client.ok("POST", "/v1/namespaces/ls-a/schema", {"t": {"type": "string", "full_text_search": True}})
    assert schema["t"]["full_text_search"]["k1"] == 1.2 and schema["id"]["type"] == "uint"
    ro = client.ok("PATCH", "/v1/namespaces/ls-b/metadata", {"read_only": True})
    assert ro["read_only"] is True
    assert client.call("POST", "/v2/namespaces/ls-b", {"upsert_rows": [{"id": 2}]})[0] == 400
    status, warm, _ = client.call("GET", "/v1/namespaces/ls-a/hint_cache_warm")
    assert status == 202 and warm == {"status": "ACCEPTED", "message": "cache warm hint accepted"}
    assert "plan_text" in client.ok("POST", "/v2/namespaces/ls-a/explain_query", {"rank_by": ["id", "asc"]})
    assert client.ok("POST", "/v1/namespaces/ls-a/_debug/recall", {"num": 1, "top_k": 5})["avg_recall"] == 1.0
    assert client.ok("DELETE", "/v2/namespaces/ls-c") == {"status": "OK"}
    assert client.call("DELETE", "/v2/namespaces/ls-c")[0] == 404
    assert client.call("GET", "/v1/namespaces/ls-c/schema")[0] == 404
    assert client.call("POST", "/v2/namespaces/ls-c/query", {"rank_by": ["id", "asc"]})[0] == 404


def test_copy_branch_gzip_create(client: Client) -> None:
    client.write("src", {"upsert_rows": [{"id": i, "a": i} for i in range(3)]})
    w = client.write("dst", {"copy_from_namespace": "src"})
    assert w["rows_affected"] == 3 and "rows_upserted" not in w
    assert client.ids("dst", {"rank_by": ["id", "asc"]}) == [0, 1, 2]
    client.write("br", {"branch_from_namespace": {"source_namespace": "src"}})
    assert client.call("POST", "/v2/namespaces/br", {"branch_from_namespace": "src"})[0] == 400
    status, data, _ = client.call("POST", "/v2/namespaces/gz", {"upsert_rows": [{"id": 9, "t": "z" * 2000}]}, gz=True)
    assert status == 200 and data["rows_upserted"] == 1
    client.write("empty", {"create_namespace": True, "schema": {"id": "string"}})
    assert client.ok("GET", "/v1/namespaces/empty/schema")["id"]["type"] == "string"
    assert client.call("POST", "/v2/namespaces/nope", {"create_namespace": False, "upsert_rows": [{"id": 1}]})[0] == 404


def test_patch_columns_and_patch_condition(client: Client) -> None:
    b64 = base64.b64encode(struct.pack("<2f", 0.5, 0.25)).decode()
    client.write("pc", {"upsert_columns": {"id": [1, 2], "vector": [b64, [1.0, 0.0]], "v": [1, 5]},
                        "distance_metric": "cosine_distance"})
    w = client.write("pc", {"patch_columns": {"id": [1, 2], "v": [3, 3]},
                            "patch_condition": ["v", "Lt", {"$ref_new": "v"}]})
    assert w["rows_patched"] == 1
    rows = client.query("pc", {"rank_by": ["id", "asc"], "include_attributes": True})["rows"]
    assert rows == [{"id": 1, "vector": [0.5, 0.25], "v": 3}, {"id": 2, "vector": [1.0, 0.0], "v": 5}]
