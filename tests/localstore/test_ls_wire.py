"""Store-only edges of issue 15: group_by grammar, compute_attributes, billed bytes by type, async copy operations
(restart, foreign token, injected failure, the memory bound)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest
from ls_support import Client
from support.procs import Proc, start_localstore

from localstore.operations import MAX_OPERATIONS, Operations

AGG = {"c": ["Count"]}


@pytest.fixture(scope="module")
def grouped(client: Client) -> str:
    client.write("grp", {"upsert_rows": [{"id": 1, "g": "a", "tags": ["x"], "nums": [1, 1, 2], "v": [1.0, 0.0]},
                                         {"id": 2, "tags": ["y"], "nums": [2]},
                                         {"id": 3, "g": "b", "nums": []}],
                         "schema": {"v": {"type": "[2]f32", "ann": True}}, "distance_metric": "cosine_distance"})
    return "grp"


@pytest.mark.parametrize(("group_by", "status", "words"), [
    ([{"a": ["ForEachUnique", "tags"]}, {"b": ["ForEachUnique", "nums"]}], 400, "at most once"),
    ([{"c": ["ForEachUnique", "tags"]}], 400, "aggregate_by label"),
    (["v"], 400, "vector"),
    (["nope"], 400, "unknown attribute"),
    ([{"a": ["ForEachUnique", "tags"], "b": ["ForEachUnique", "tags"]}], 422, "group_by[0]"),
    ([5], 422, "group_by[0]"),
    ("g", 422, "group_by: invalid type"),
])
def test_group_by_errors(client: Client, grouped: str, group_by: Any, status: int, words: str) -> None:
    code, err, _ = client.call("POST", f"/v2/namespaces/{grouped}/query", {"aggregate_by": AGG, "group_by": group_by})
    assert code == status and words in err["error"], err


def test_group_by_null_keys_and_numbers(client: Client, grouped: str) -> None:
    q = {"aggregate_by": AGG, "group_by": ["g"]}
    assert client.query(grouped, q)["aggregation_groups"] == [{"g": None, "c": 1}, {"g": "a", "c": 1},
                                                              {"g": "b", "c": 1}]
    q = {"aggregate_by": AGG, "group_by": [{"n": ["ForEachUnique", "nums"]}], "top_k": 1}
    assert client.query(grouped, q)["aggregation_groups"] == [{"n": 1, "c": 1}]  # row 3's [] is in no group


@pytest.mark.parametrize(("computed", "words"), [
    ({"d": ["v", "VectorDist", [1.0]]}, "dimensions"),
    ({"d": ["g", "VectorDist", [1.0, 0.0]]}, "not a dense vector"),
    ({"r": {"$ref_new": "g"}}, "$ref_new"),
    ({"o": ["g", "asc"]}, "not a value expression"),
    ({"$d": ["Attribute", "id"]}, "conflicts"),
    ({"b": ["g", "BM25", "x"]}, "full_text_search"),
])
def test_compute_attributes_errors(client: Client, grouped: str, computed: dict[str, Any], words: str) -> None:
    code, err, _ = client.call("POST", f"/v2/namespaces/{grouped}/query",
                               {"rank_by": ["id", "asc"], "compute_attributes": computed})
    assert code == 400 and words in err["error"], err
    code, err, _ = client.call("POST", f"/v2/namespaces/{grouped}/query",
                               {"aggregate_by": AGG, "compute_attributes": {"x": ["Attribute", "id"]}})
    assert code == 400 and "aggregate_by" in err["error"]


def test_compute_attributes_in_multi_query(client: Client, grouped: str) -> None:
    body = {"queries": [{"rank_by": ["v", "ANN", [1.0, 0.0]], "top_k": 1,
                         "compute_attributes": {"d": ["v", "ANN", [0.0, 1.0]]}},
                        {"rank_by": ["id", "desc"], "top_k": 1, "compute_attributes": {"one": ["id", "Eq", 3]}}]}
    results = client.query(grouped, body)["results"]
    assert results[0]["rows"] == [{"id": 1, "$dist": 0.0, "d": 1.0}]
    assert results[1]["rows"] == [{"id": 3, "one": 1.0}]


def test_billed_bytes_by_type(client: Client) -> None:
    uid = "0b9d1b5e-7a8e-4f0e-9b1a-3c2d1e0f9a8b"
    client.write("bill-u", {"upsert_rows": [{"id": uid, "s": "héllo", "b": True, "when": "2024-01-02T03:04:05Z",
                                             "ints": [1, 2, 3], "half": [0.5, 0.25, 1.0]}],
                            "schema": {"id": "uuid", "when": "datetime", "half": "[3]f16"},
                            "distance_metric": "cosine_distance"})
    out = client.query("bill-u", {"rank_by": ["id", "asc"], "include_attributes": True})
    assert out["billing"]["billable_logical_bytes_returned"] == 16 + 6 + 1 + 8 + 3 * 8 + 3 * 2
    client.write("bill-s", {"upsert_rows": [{"id": "doc-1"}, {"id": "d2"}]})
    out = client.query("bill-s", {"rank_by": ["id", "asc"]})
    assert out["billing"]["billable_logical_bytes_returned"] == 5 + 2


def test_query_timings(client: Client, grouped: str) -> None:
    perf = client.query(grouped, {"rank_by": ["id", "asc"]})["performance"]
    assert isinstance(perf["server_total_ms"], float) and 0 < perf["query_execution_ms"] <= perf["server_total_ms"]


def _poll(client: Client, ns: str, token: str) -> Any:
    deadline = time.monotonic() + 30
    while True:
        op = client.ok("GET", f"/v1/namespaces/{ns}/operations/{token}")
        if op["status"] == "finished" or time.monotonic() > deadline:
            return op
        time.sleep(0.05)


def test_async_copy_operations(fresh: tuple[Proc, Path]) -> None:
    proc, data = fresh
    client = Client(proc.url)
    client.write("src", {"upsert_rows": [{"id": 1, "n": 1}]})
    client.ok("POST", "/_localstore/faults", {"route": "copy", "status": 500, "count": 1})
    token = client.ok("POST", "/v2/namespaces/dst/async", {"copy_from_namespace": "src"})["token"]
    op = _poll(client, "dst", token)
    assert op["result"] == {"error": {"status_code": 500, "detail": {"status": "error", "error": "injected fault"}}}
    token = client.ok("POST", "/v2/namespaces/dst/async", {"copy_from_namespace": {"source_namespace": "src"}})["token"]
    assert _poll(client, "dst", token)["result"]["success"]["rows_affected"] == 1
    assert client.ids("dst", {"rank_by": ["id", "asc"]}) == [1]
    code, err, _ = client.call("GET", f"/v1/namespaces/src/operations/{token}")
    assert code == 404 and token in err["error"]
    code, err, _ = client.call("POST", "/v2/namespaces/dst/async", {"copy_from_namespace": "src", "x": 1})
    assert code == 400 and "x" in err["error"]
    proc.stop()
    again = start_localstore(data)  # operations live in memory: a restart forgets them, never the copied rows
    try:
        restarted = Client(again.url)
        assert restarted.call("GET", f"/v1/namespaces/dst/operations/{token}")[0] == 404
        assert restarted.ids("dst", {"rank_by": ["id", "asc"]}) == [1]
    finally:
        again.stop()


def test_operations_forget_the_oldest_beyond_the_bound() -> None:
    async def main() -> tuple[Operations, list[str]]:
        ops = Operations()
        tokens = [ops.start("ns", {}, lambda ns, body: {"status": "OK"}, 0.0, None) for _ in range(MAX_OPERATIONS + 2)]
        await asyncio.sleep(0)
        return ops, tokens
    ops, tokens = asyncio.run(main())
    assert len(ops.ops) == MAX_OPERATIONS
    assert tokens[0] not in ops.ops and tokens[1] not in ops.ops
    assert ops.get("ns", tokens[-1])["status"] == "finished"
