"""Turbopuffer's own errors pass through the gateway untouched: every malformed request of the conformance list is
sent to the store directly and through the gateway, and the two answers must have the same status and body, in
Turbopuffer's error shape (`{"status": "error", "error": ...}`). Nothing a rejected request carried is applied."""

from __future__ import annotations

import json
from typing import Any

import pytest
from gw_support import KEY, Reply, Stack, call

NS = "/v2/namespaces/conf"
Q = NS + "/query"
CMEK = {"mode": "customer-managed", "key_name": "mykey"}


def js(obj: Any) -> bytes:
    return json.dumps(obj).encode()


# (label, method, path, raw body, expected status)
CONFORMANCE = [
    ("write: malformed JSON", "POST", NS, b"{not json", 400),
    ("write: empty body", "POST", NS, b"", 400),
    ("write: not an object", "POST", NS, b"[1, 2]", 422),
    ("write: upsert_rows is a map", "POST", NS, js({"upsert_rows": {"id": 1}}), 422),
    ("write: a row is not a map", "POST", NS, js({"upsert_rows": [5]}), 422),
    ("write: columns without ids", "POST", NS, js({"upsert_columns": {"a": [1]}}), 400),
    ("write: column lengths differ", "POST", NS, js({"upsert_columns": {"id": [1, 2], "n": [1]}}), 400),
    ("write: 65-byte id", "POST", NS, js({"upsert_rows": [{"id": "x" * 65}]}), 400),
    ("write: unknown field", "POST", NS, js({"upsert_rows": [{"id": 2}], "bogus": 1}), 400),
    ("write: wrong attribute type", "POST", NS, js({"upsert_rows": [{"id": 2, "n": "text"}]}), 400),
    ("write: $-prefixed attribute", "POST", NS, js({"upsert_rows": [{"id": 2, "$x": 1}]}), 400),
    ("write: row without id", "POST", NS, js({"upsert_rows": [{"n": 3}]}), 400),
    ("write: unknown metric", "POST", NS, js({"upsert_rows": [{"id": 5}], "distance_metric": "dot"}), 422),
    ("write: duplicate ids", "POST", NS, js({"upsert_rows": [{"id": 1}, {"id": 1}]}), 400),
    ("write: dense vector patch", "POST", NS, js({"patch_rows": [{"id": 1, "vector": [0.0, 1.0]}]}), 400),
    ("write: customer-managed key", "POST", NS, js({"upsert_rows": [{"id": 9}], "encryption": CMEK}), 400),
    ("write: legacy cmek key", "POST", NS, js({"upsert_rows": [{"id": 9}], "encryption": {"cmek": {"key_name": "k"}}}),
     400),
    ("write: unknown encryption mode", "POST", NS, js({"encryption": {"mode": "rot13"}}), 422),
    ("write: filter on unknown attribute", "POST", NS, js({"delete_by_filter": ["nope", "Eq", 1]}), 400),
    ("write: patch_by_filter without patch", "POST", NS, js({"patch_by_filter": {"filters": ["n", "Eq", 1]}}), 422),
    ("write: read-only namespace", "POST", "/v2/namespaces/conf-ro", js({"upsert_rows": [{"id": 2}]}), 400),
    ("write: create_namespace false", "POST", "/v2/namespaces/conf-missing",
     js({"upsert_rows": [{"id": 1}], "create_namespace": False}), 404),
    ("write: copy from a missing namespace", "POST", "/v2/namespaces/conf-copy",
     js({"copy_from_namespace": "conf-missing"}), 404),
    ("query: malformed JSON", "POST", Q, b'{"top_k": 1,', 400),
    ("query: empty body", "POST", Q, b"", 400),
    ("query: not an object", "POST", Q, b"[]", 422),
    ("query: nothing to do", "POST", Q, js({"top_k": 1}), 400),
    ("query: top_k is a string", "POST", Q, js({"rank_by": ["id", "asc"], "top_k": "ten"}), 422),
    ("query: negative top_k", "POST", Q, js({"rank_by": ["id", "asc"], "top_k": -1}), 422),
    ("query: top_k 0", "POST", Q, js({"rank_by": ["id", "asc"], "top_k": 0}), 400),
    ("query: top_k 10001", "POST", Q, js({"rank_by": ["id", "asc"], "top_k": 10001}), 400),
    ("query: offset + limit", "POST", Q, js({"rank_by": ["id", "asc"], "top_k": 9000, "offset": 2000}), 400),
    ("query: consistency string", "POST", Q, js({"rank_by": ["id", "asc"], "consistency": "eventual"}), 422),
    ("query: consistency level", "POST", Q, js({"rank_by": ["id", "asc"], "consistency": {"level": "x"}}), 422),
    ("query: unknown field", "POST", Q, js({"rank_by": ["id", "asc"], "whatever": 1}), 400),
    ("query: exclude id", "POST", Q, js({"rank_by": ["id", "asc"], "exclude_attributes": ["id"]}), 400),
    ("query: include_attributes string", "POST", Q, js({"rank_by": ["id", "asc"], "include_attributes": "yes"}),
     422),
    ("query: include all, exclude a string", "POST", Q,
     js({"rank_by": ["id", "asc"], "include_attributes": True, "exclude_attributes": "n"}), 422),
    ("query: rank_by with aggregate_by", "POST", Q, js({"rank_by": ["id", "asc"], "aggregate_by": {"c": ["Count"]}}),
     422),
    ("query: kNN without filters", "POST", Q, js({"rank_by": ["vector", "kNN", [0.1, 0.2]]}), 400),
    ("query: filter on unknown attribute", "POST", Q, js({"rank_by": ["id", "asc"], "filters": ["nope", "Eq", 1]}),
     400),
    ("query: BM25 string on a pre-tokenized field", "POST", Q, js({"rank_by": ["content", "BM25", "jumped"]}), 400),
    ("query: BM25 tokens on a word field", "POST", Q, js({"rank_by": ["t", "BM25", ["a", "b"]]}), 400),
    ("query: vector dimensions", "POST", Q, js({"rank_by": ["vector", "ANN", [0.1, 0.2, 0.3]]}), 400),
    ("query: metric mismatch", "POST", Q,
     js({"rank_by": ["vector", "ANN", [0.1, 0.2]], "distance_metric": "euclidean_squared"}), 400),
    ("query: vector_encoding", "POST", Q, js({"rank_by": ["id", "asc"], "vector_encoding": "hex"}), 422),
    ("query: group by id", "POST", Q, js({"aggregate_by": {"c": ["Count"]}, "group_by": ["id"]}), 400),
    ("query: ForEachUnique on a scalar", "POST", Q,
     js({"aggregate_by": {"c": ["Count"]}, "group_by": [{"g": ["ForEachUnique", "n"]}]}), 400),
    ("query: malformed group_by entry", "POST", Q,
     js({"aggregate_by": {"c": ["Count"]}, "group_by": [{"g": ["Each", "tags"]}]}), 422),
    ("query: group_by twice", "POST", Q, js({"aggregate_by": {"c": ["Count"]}, "group_by": ["n", "n"]}), 400),
    ("query: computed name taken", "POST", Q, js({"rank_by": ["id", "asc"], "compute_attributes": {"n": ["Attribute",
                                                                                                        "n"]}}), 400),
    ("query: computed Embed", "POST", Q, js({"rank_by": ["id", "asc"], "compute_attributes": {"e": ["Embed", "x"]}}),
     400),
    ("query: computed not a map", "POST", Q, js({"rank_by": ["id", "asc"], "compute_attributes": [1]}), 422),
    ("multi: no subqueries", "POST", Q, js({"queries": []}), 400),
    ("multi: 17 subqueries", "POST", Q, js({"queries": [{"rank_by": ["id", "asc"]}] * 17}), 400),
    ("multi: queries is a number", "POST", Q, js({"queries": 5}), 422),
    ("multi: bad subquery", "POST", Q, js({"queries": [{"rank_by": ["id", "asc"], "top_k": "x"}]}), 422),
    ("multi: RRF weights", "POST", Q, js({"queries": [{"rank_by": ["id", "asc"]}, {"rank_by": ["n", "asc"]}],
                                          "rerank_by": ["RRF", {"weights": [1]}], "limit": 2}), 400),
    ("query: missing namespace", "POST", "/v2/namespaces/conf-missing/query", js({"rank_by": ["id", "asc"]}), 404),
    ("explain: bad query", "POST", NS + "/explain_query", js({"rank_by": ["id", "asc"], "top_k": 0}), 400),
    ("recall: missing namespace", "POST", "/v1/namespaces/conf-missing/_debug/recall", js({}), 404),
    ("schema: missing namespace", "GET", "/v1/namespaces/conf-missing/schema", None, 404),
    ("schema: malformed JSON", "POST", "/v1/namespaces/conf/schema", b"{not json", 400),
    ("schema: type change", "POST", "/v1/namespaces/conf/schema", js({"t": {"type": "int"}}), 400),
    ("metadata v1: missing namespace", "GET", "/v1/namespaces/conf-missing/metadata", None, 404),
    ("metadata: read_only not a bool", "PATCH", "/v1/namespaces/conf/metadata", js({"read_only": "yes"}), 422),
    ("list: page_size 0", "GET", "/v1/namespaces?page_size=0", None, 400),
    ("list: bad cursor", "GET", "/v1/namespaces?cursor=%21%21%21", None, 400),
    ("delete: missing namespace", "DELETE", "/v2/namespaces/conf-missing", None, 404),
    ("warm: missing namespace", "GET", "/v1/namespaces/conf-missing/hint_cache_warm", None, 404),
    ("async: empty request", "POST", NS + "/async", js({}), 422),
    ("async: source is a number", "POST", NS + "/async", js({"copy_from_namespace": 5}), 422),
    ("async: customer-managed destination", "POST", NS + "/async",
     js({"copy_from_namespace": {"source_namespace": "conf", "dest_encryption": CMEK}}), 400),
    ("operations: unknown token", "GET", "/v1/namespaces/conf/operations/op_unknown", None, 404),
]


def _rows(url: str) -> Any:
    body = {"rank_by": ["id", "asc"], "top_k": 100, "include_attributes": True}
    return call(url, "POST", Q, body).json()["rows"]


@pytest.fixture(scope="module")
def seeded(stack: Stack) -> Stack:
    direct = stack.store.url
    body = {"upsert_rows": [{"id": 1, "vector": [0.1, 0.2], "n": 1, "t": "a quick fox", "tags": ["x", "y"],
                             "content": ["jumped", "over"]},
                            {"id": 2, "vector": [0.2, 0.1], "n": 2, "t": "a lazy dog", "tags": ["y"],
                             "content": ["the", "dog"]}],
            "distance_metric": "cosine_distance",
            "schema": {"t": {"type": "string", "full_text_search": True},
                       "content": {"type": "[]string", "full_text_search": {"tokenizer": "pre_tokenized_array"}}}}
    assert call(direct, "POST", NS, body).status == 200
    assert call(direct, "POST", "/v2/namespaces/conf-ro", {"upsert_rows": [{"id": 1}]}).status == 200
    assert call(direct, "PATCH", "/v1/namespaces/conf-ro/metadata", {"read_only": True}).status == 200
    return stack


def _error(r: Reply) -> Any:
    assert r.headers.get("content-type") == "application/json", r
    return r.json()


@pytest.mark.parametrize(("label", "method", "path", "raw", "status"), CONFORMANCE, ids=[c[0] for c in CONFORMANCE])
def test_upstream_errors_are_relayed_verbatim(seeded: Stack, label: str, method: str, path: str, raw: bytes | None,
                                             status: int) -> None:
    before = _rows(seeded.store.url)
    direct = call(seeded.store.url, method, path, raw=raw, key=KEY)
    through = seeded(method, path, raw=raw)
    assert direct.status == status, (label, direct)
    body = _error(direct)
    assert set(body) == {"status", "error"} and body["status"] == "error" and body["error"], body
    assert (through.status, _error(through)) == (direct.status, body), label
    assert _rows(seeded.store.url) == before, "a rejected request changed the data"


def test_turbopuffer_wording_survives_the_gateway(seeded: Stack) -> None:
    """Messages clients match on (contract §4.1 / §6.1 / §13 and the official clients' tests), through the gateway."""
    wanted = {
        js({"upsert_rows": [{"id": 9}], "encryption": CMEK}): (NS, "Malformed Cloud KMS crypto key: mykey"),
        js({"rank_by": ["content", "BM25", "jumped"]}):
            (Q, 'invalid input \'jumped\' for rank_by field "content", expecting []string'),
        js({"rank_by": ["id", "asc"], "consistency": "eventual"}):
            (Q, 'invalid type: string "eventual", expected struct Consistency'),
        js({"rank_by": ["id", "asc"], "consistency": {"level": "x"}}):
            (Q, "unknown variant `x`, expected `strong` or `eventual`"),
        js({"upsert_rows": {"id": 1}}): (NS, "invalid type: map, expected a sequence"),
        js({"rank_by": ["vector", "kNN", [0.1, 0.2]]}): (Q, "kNN requires filters"),
    }
    for raw, (path, message) in wanted.items():
        body = seeded("POST", path, raw=raw).json()
        assert message in body["error"], body
    ro = seeded("POST", "/v2/namespaces/conf-ro", {"upsert_rows": [{"id": 2}]}).json()
    assert ro["error"] == "💔 Writes not permitted. This namespace is read-only."
