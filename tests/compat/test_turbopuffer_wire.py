"""Wire fidelity (issue 15) against the store and through the gateway, each with plain HTTP (status and body as
Turbopuffer answers) and with the official 3.1.0 client: ForEachUnique grouping, customer-managed keys, gzip
responses, billed bytes, fractional timings, compute_attributes and asynchronous copies."""

from __future__ import annotations

import gzip
import json
import math
import time
import urllib.request
from typing import Any

import pytest
import turbopuffer
from turbopuffer import Turbopuffer

from .conftest import Target, f32, raw, unique_ns

CMEK = {"mode": "customer-managed", "key_name": "mykey"}


def http(target: Target, method: str, path: str, body: Any = None,
         headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    """One call returning the raw (possibly gzipped) body bytes."""
    data = None if body is None else json.dumps(body).encode()
    hdrs = {"Authorization": f"Bearer {target.api_key}", "Content-Type": "application/json", **(headers or {})}
    req = urllib.request.Request(target.url + path, data=data, method=method, headers=hdrs)
    try:
        with urllib.request.urlopen(req, timeout=20) as resp:
            return resp.status, {k.lower(): v for k, v in resp.headers.items()}, resp.read()
    except urllib.error.HTTPError as e:
        return e.code, {k.lower(): v for k, v in e.headers.items()}, e.read()


def store_url(target: Target) -> str:
    return target.procs[-1].url  # the store is the last process of both targets


def fault(target: Target, **rule: Any) -> None:
    req = urllib.request.Request(store_url(target) + "/_localstore/faults", data=json.dumps(rule).encode(),
                                 method="POST", headers={"Content-Type": "application/json",
                                                         "Authorization": f"Bearer {target.api_key}"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        assert resp.status == 200


# ---- 2. group_by ForEachUnique ------------------------------------------------------------------------------------
TAG_ROWS = [{"id": 1, "tags": ["a", "b", "a"], "g": "x", "n": 2}, {"id": 2, "tags": ["b", "c"], "g": "x", "n": 3},
            {"id": 3, "tags": [], "g": "y", "n": 5}, {"id": 4, "g": "y", "n": 7}, {"id": 5, "tags": ["a"], "n": 11}]


def test_group_by_for_each_unique(target: Target, tpuf: Turbopuffer) -> None:
    """One group per distinct element (an element repeated in a row counts once), an empty array in no group, a
    missing attribute in the null group (first, as null); combinable with plain attributes (minifugu's live-checked
    fixture)."""
    ns = unique_ns("feu")
    assert raw(target, "POST", f"/v2/namespaces/{ns}", {"upsert_rows": TAG_ROWS,
                                                        "schema": {"tags": "[]string"}})[0] == 200
    agg = {"count": ["Count"], "sum": ["Sum", "n"]}
    status, _, body = raw(target, "POST", f"/v2/namespaces/{ns}/query",
                          {"aggregate_by": agg, "group_by": [{"tag": ["ForEachUnique", "tags"]}]})
    assert status == 200, body
    assert body["aggregation_groups"] == [{"tag": None, "count": 1, "sum": 7}, {"tag": "a", "count": 2, "sum": 13},
                                          {"tag": "b", "count": 2, "sum": 5}, {"tag": "c", "count": 1, "sum": 3}]
    status, _, body = raw(target, "POST", f"/v2/namespaces/{ns}/query",
                          {"aggregate_by": agg, "group_by": [{"tag": ["ForEachUnique", "tags"]}, "g"], "top_k": 4})
    assert body["aggregation_groups"] == [{"tag": None, "g": "y", "count": 1, "sum": 7},
                                          {"tag": "a", "g": None, "count": 1, "sum": 11},
                                          {"tag": "a", "g": "x", "count": 1, "sum": 2},
                                          {"tag": "b", "g": "x", "count": 2, "sum": 5}]
    q = tpuf.namespace(ns).query(aggregate_by={"c": ("Count",)}, group_by=[{"tag": ("ForEachUnique", "tags")}],
                                 filters=("n", "Gt", 2))
    assert [dict(g) for g in q.aggregation_groups or []] == [{"tag": None, "c": 1}, {"tag": "a", "c": 1},
                                                             {"tag": "b", "c": 1}, {"tag": "c", "c": 1}]


# ---- 3. customer-managed encryption -------------------------------------------------------------------------------
def test_customer_managed_key_is_rejected_not_ignored(target: Target, tpuf: Turbopuffer) -> None:
    ns = unique_ns("cmek")
    write = {"upsert_rows": [{"id": 1, "vector": [0.1, 0.1]}], "distance_metric": "cosine_distance"}
    status, _, body = raw(target, "POST", f"/v2/namespaces/{ns}", {**write, "encryption": CMEK})
    assert (status, body) == (400, {"status": "error", "error": "Malformed Cloud KMS crypto key: mykey"})
    status, _, body = raw(target, "POST", f"/v2/namespaces/{ns}/async",
                          {"copy_from_namespace": {"source_namespace": ns, "dest_encryption": CMEK}})
    assert (status, body) == (400, {"status": "error", "error": "Malformed Cloud KMS crypto key: mykey"})
    assert raw(target, "GET", f"/v2/namespaces/{ns}/metadata")[0] == 404  # nothing was created
    handle = tpuf.namespace(ns)
    with pytest.raises(turbopuffer.BadRequestError) as err:  # the official test_no_cmek, both shapes
        handle.write(upsert_columns={"id": [1, 2], "vector": [[0.1, 0.1], [0.2, 0.2]]},
                     distance_metric="cosine_distance", encryption=CMEK)  # type: ignore[arg-type]
    assert "Malformed Cloud KMS crypto key: mykey" in err.value.message
    with pytest.raises(turbopuffer.BadRequestError, match="Malformed Cloud KMS crypto key: old"):
        handle.write(upsert_rows=[{"id": 1}], extra_body={"encryption": {"cmek": {"key_name": "old"}}})
    assert handle.exists() is False
    handle.write(upsert_rows=[{"id": 1}], encryption={"mode": "default"})
    assert handle.metadata().encryption.mode == "default"  # type: ignore[union-attr]


# ---- 4. compressed responses --------------------------------------------------------------------------------------
def _wide_namespace(target: Target) -> str:
    ns = unique_ns("gz")
    rows = [{"id": i, "vector": [i / 100, 0.5], "title": f"title number {i} " + "x" * 40} for i in range(1, 101)]
    schema = {f"attr_{k:02d}": "string" for k in range(40)}  # a schema answer well above 1 KiB
    assert raw(target, "POST", f"/v2/namespaces/{ns}", {"upsert_rows": rows, "schema": schema,
                                                        "distance_metric": "cosine_distance"})[0] == 200
    return ns


def _same_answer(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return {k: v for k, v in a.items() if k != "performance"} == {k: v for k, v in b.items() if k != "performance"}


def test_gzip_responses(target: Target) -> None:
    """Accept-Encoding: gzip gets a gzipped body (Content-Encoding: gzip) from 1 KiB on, and the same JSON as
    without; smaller bodies, `identity` and `gzip;q=0` stay plain. Relayed (query) and rewritten (the v1 schema,
    whose stamp attribute the gateway hides) answers alike."""
    ns = _wide_namespace(target)
    query = {"rank_by": ["id", "asc"], "top_k": 100, "include_attributes": True}
    for method, path, body in (("POST", f"/v2/namespaces/{ns}/query", query),
                               ("GET", f"/v1/namespaces/{ns}/schema", None)):
        status, headers, plain = http(target, method, path, body)
        assert status == 200 and "content-encoding" not in headers
        status, headers, packed = http(target, method, path, body, {"Accept-Encoding": "gzip, deflate"})
        assert status == 200 and headers.get("content-encoding") == "gzip", headers
        assert len(packed) < len(plain) / 2
        assert _same_answer(json.loads(gzip.decompress(packed)), json.loads(plain))
        for refused in ("identity", "gzip;q=0", "br"):
            assert "content-encoding" not in http(target, method, path, body, {"Accept-Encoding": refused})[1]
    schema = json.loads(http(target, "GET", f"/v1/namespaces/{ns}/schema")[2])
    assert "_hevlayer_upserted_at" not in schema and len(schema) == 43
    status, headers, _ = http(target, "POST", f"/v2/namespaces/{ns}/query", {"rank_by": ["id", "asc"], "top_k": 1},
                              {"Accept-Encoding": "gzip"})
    assert status == 200 and "content-encoding" not in headers  # below 1 KiB
    status, headers, packed = http(target, "POST", f"/v2/namespaces/{ns}/query", {"rank_by": ["id", "asc"], "top_k": "x" * 2000},
                                   {"Accept-Encoding": "gzip"})
    assert status == 422 and json.loads(gzip.decompress(packed))["status"] == "error"  # errors too, from 1 KiB


def test_official_client_with_compression(target: Target) -> None:
    """compression=True: gzipped requests and responses; rows, billing and timings decode as without."""
    ns = _wide_namespace(target)
    with Turbopuffer(api_key=target.api_key, base_url=target.url, compression=True, max_retries=0,
                     timeout=20.0) as client:
        res = client.namespace(ns).with_raw_response.query(rank_by=("id", "asc"), top_k=100,
                                                            include_attributes=True)
        assert res.headers.get("content-encoding") == "gzip"
        q = res.parse()
    assert [r.id for r in q.rows or []] == list(range(1, 101))
    assert q.rows[0].title == "title number 1 " + "x" * 40  # type: ignore[index]
    assert q.performance.client_compress_ms >= 0 and q.billing.billable_logical_bytes_returned > 0


# ---- 5. billing ---------------------------------------------------------------------------------------------------
VECTOR_ROWS = [
    {"id": 1, "vector": [0.1, 0.1]}, {"id": 2, "vector": [0.2, 0.2]},
    {"id": 3, "vector": [0.3, 0.3], "test": "cols", "key1": "three", "key2": "c"},
    {"id": 6, "vector": [0.3, 0.3], "test": "cols", "key1": "three", "key2": "c"},
    {"id": 7, "vector": [0.7, 0.7], "hello": "world"},
    {"id": 10, "vector": [1.0, 1.0], "test": "cols"}, {"id": 11, "vector": [1.1, 1.1], "test": "cols"},
]


def test_billable_bytes_returned(target: Target, tpuf: Turbopuffer) -> None:
    """The official test_vectors figure: 5 rows of id (8) + 2-dim vector (2 x 4) + $dist (4), one `"hello": "world"`
    (5) = 105 bytes, whatever the JSON length; the gateway does not alter it."""
    ns = tpuf.namespace(unique_ns("bill"))
    ns.write(upsert_rows=VECTOR_ROWS, distance_metric="euclidean_squared")
    q = ns.query(top_k=5, rank_by=("vector", "ANN", [0.8, 0.7]), include_attributes=["hello", "vector"])
    assert [r.id for r in q.rows or []] == [7, 10, 11, 3, 6]
    assert q.billing.billable_logical_bytes_queried == 256_000_000
    assert q.billing.billable_logical_bytes_returned == 105
    status, _, body = raw(target, "POST", f"/v2/namespaces/{ns.id}/query",
                          {"top_k": 5, "rank_by": ["vector", "ANN", [0.8, 0.7]], "include_attributes": ["hello"],
                           "vector_encoding": "base64"})
    assert status == 200 and body["billing"]["billable_logical_bytes_returned"] == 5 * (8 + 4) + 5
    status, _, body = raw(target, "POST", f"/v2/namespaces/{ns.id}/query",
                          {"top_k": 2, "rank_by": ["id", "asc"], "include_attributes": ["vector"],
                           "vector_encoding": "base64"})
    assert body["billing"]["billable_logical_bytes_returned"] == 2 * (8 + 2 * 4)  # logical, not base64 length
    status, _, body = raw(target, "POST", f"/v2/namespaces/{ns.id}/query",
                          {"aggregate_by": {"c": ["Count"]}, "group_by": ["test"]})
    assert body["aggregation_groups"] == [{"test": None, "c": 3}, {"test": "cols", "c": 4}]
    assert body["billing"]["billable_logical_bytes_returned"] == 8 + (4 + 8)


# ---- 6. wording (the BM25 case) -----------------------------------------------------------------------------------
def test_bm25_input_wording(target: Target) -> None:
    ns = unique_ns("words")
    schema = {"content": {"type": "[]string", "full_text_search": {"tokenizer": "pre_tokenized_array"}},
              "body": {"type": "string", "full_text_search": True}}
    rows = [{"id": 1, "content": ["jumped", "over"], "body": "rust search"}]
    assert raw(target, "POST", f"/v2/namespaces/{ns}", {"upsert_rows": rows, "schema": schema})[0] == 200
    for rank_by, message in (
        (["content", "BM25", "jumped"], 'invalid input \'jumped\' for rank_by field "content", expecting []string'),
        (["body", "BM25", ["rust", "hybrid"]],
         'invalid input \'[rust, hybrid]\' for rank_by field "body", expecting string'),
    ):
        assert raw(target, "POST", f"/v2/namespaces/{ns}/query", {"rank_by": rank_by, "top_k": 10})[::2] == (
            400, {"status": "error", "error": message})


# ---- 7. timings ---------------------------------------------------------------------------------------------------
def test_timings_are_fractional_milliseconds(tpuf: Turbopuffer) -> None:
    """The official test_perf_metrics assertions (> 0): a fast query reports fractional milliseconds, not 0; writes
    report whole milliseconds (the client's type), rounded up."""
    ns = tpuf.namespace(unique_ns("perf"))
    res = ns.write(upsert_rows=[{"id": 1, "vector": [0.1, 0.1]}, {"id": 2, "vector": [0.2, 0.2], "hello": "world"}],
                   distance_metric="cosine_distance")
    assert isinstance(res.performance.server_total_ms, int) and res.performance.server_total_ms > 0
    for _ in range(5):
        q = ns.query(rank_by=("vector", "ANN", [0.0, 0.3]), include_attributes=["hello"],
                     filters=("hello", "Eq", "world"), top_k=10)
        perf = q.performance
        assert isinstance(perf.server_total_ms, float) and isinstance(perf.query_execution_ms, float)
        assert 0 < perf.query_execution_ms <= perf.server_total_ms
        assert perf.server_total_ms == round(perf.server_total_ms, 3)


# ---- 8. compute_attributes ----------------------------------------------------------------------------------------
def test_compute_attributes(target: Target, tpuf: Turbopuffer) -> None:
    """VectorDist under the namespace metric (null without a vector); BM25 as live computes it per row (IDF ln 2,
    average length 1: minifugu's live figures), 0 for a row without a match; a filter scores 1/0."""
    ns = unique_ns("computed")
    rows = [{"id": 1, "t": "fugu", "vector": [1.0, 0.0]}, {"id": 2, "t": "fugu fugu", "vector": [0.0, 1.0]},
            {"id": 3, "t": "other"}, {"id": 4, "t": "fugu whale sea", "vector": [1.0, 1.0]}]
    assert raw(target, "POST", f"/v2/namespaces/{ns}", {
        "upsert_rows": rows, "distance_metric": "cosine_distance",
        "schema": {"t": {"type": "string", "full_text_search": True}, "vector": {"type": "[2]f32", "ann": True}},
    })[0] == 200
    computed = {"s": ["t", "BM25", "fugu"], "d": ["vector", "VectorDist", [1.0, 0.0]], "f": ["id", "Eq", 3]}
    status, _, body = raw(target, "POST", f"/v2/namespaces/{ns}/query",
                          {"rank_by": ["id", "asc"], "top_k": 10, "compute_attributes": computed})
    assert status == 200, body
    assert body["rows"] == [
        {"id": 1, "s": f32(math.log(2)), "d": 0.0, "f": 0.0},
        {"id": 2, "s": 0.7438652, "d": 1.0, "f": 0.0},
        {"id": 3, "s": 0.0, "d": None, "f": 1.0},
        {"id": 4, "s": 0.38123095, "d": f32(1 - 1 / math.sqrt(2)), "f": 0.0},
    ]
    assert body["billing"]["billable_logical_bytes_returned"] == 4 * 8 + 11 * 4
    q = tpuf.namespace(ns).query(rank_by=("t", "BM25", "fugu"), top_k=2, compute_attributes={"s": ("t", "BM25", "fugu")})
    assert [r.id for r in q.rows or []] == [2, 1]
    assert q.rows[0]["$dist"] != q.rows[0].s == 0.7438652  # type: ignore[index]
    status, _, body = raw(target, "POST", f"/v2/namespaces/{ns}/query",
                          {"rank_by": ["id", "asc"], "compute_attributes": {"h": ["Highlight", "t"]}})
    assert status == 400 and "Highlight" in body["error"]


# ---- 8. asynchronous copy -----------------------------------------------------------------------------------------
def _finished(handle: Any, token: str) -> Any:
    deadline = time.monotonic() + 30
    while True:
        op = handle.poll_copy_from(token)
        if op.status == "finished":
            return op
        assert time.monotonic() < deadline, "copy operation did not finish"
        time.sleep(0.05)


def test_async_copy(target: Target, tpuf: Turbopuffer) -> None:
    src = tpuf.namespace(unique_ns("src"))
    src.write(upsert_columns={"id": [1, 2, 3, 4], "vector": [[0.1, 0.1], [0.2, 0.2], [0.3, 0.3], [0.4, 0.4]],
                              "fact_id": ["a", "b", "c", "d"]}, distance_metric="euclidean_squared")
    dest = tpuf.namespace(unique_ns("dest"))
    fault(target, route="copy", delay_ms=2000, count=1, namespace=dest.id)
    token = dest.start_copy_from(source_namespace=src.id).token
    running = dest.poll_copy_from(token)
    assert running.status == "running" and running.start_time.tzinfo is not None
    op = _finished(dest, token)
    assert op.finish_time >= op.start_time
    assert op.result.success.status == "OK" and op.result.success.rows_affected == 4  # type: ignore[union-attr]
    q = dest.query(rank_by=("vector", "ANN", [0.1, 0.1]), top_k=10, include_attributes=True)
    assert [(r.id, r.fact_id) for r in q.rows or []] == [(1, "a"), (2, "b"), (3, "c"), (4, "d")]
    assert "_hevlayer_upserted_at" not in q.rows[0]  # type: ignore[index]
    # A copy that fails reports the error as the operation's result, in Turbopuffer's error shape.
    failed = tpuf.namespace(unique_ns("dest"))
    op = _finished(failed, failed.start_copy_from(source_namespace=unique_ns("absent")).token)
    assert op.result.error.status_code == 404 and op.result.error.detail.status == "error"  # type: ignore[union-attr]
    status, _, body = raw(target, "GET", f"/v1/namespaces/{failed.id}/operations/{token}")
    assert (status, body["status"]) == (404, "error")  # a token is only valid for its destination
    with pytest.raises(turbopuffer.NotFoundError):
        failed.metadata()
