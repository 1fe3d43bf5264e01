"""The filter grammar case by case, including null rules, over one small namespace."""

from __future__ import annotations

from typing import Any

import pytest
from ls_support import Client

ROWS = [
    {"id": 1, "n": 1, "s": "apple", "tags": ["red", "green"], "nums": [1, 5], "b": True},
    {"id": 2, "n": 5, "s": "Banana", "tags": ["yellow"], "nums": [2]},
    {"id": 3, "n": 10, "s": "cherry", "b": False},
    {"id": 4, "s": "apricot", "tags": ["red"]},
]
CASES: list[tuple[Any, list[int]]] = [
    (["n", "Eq", 5], [2]),
    (["n", "Eq", None], [4]),
    (["n", "NotEq", 5], [1, 3, 4]),
    (["n", "NotEq", None], [1, 2, 3]),
    (["n", "In", [1, 10]], [1, 3]),
    (["n", "NotIn", [1, 10]], [2, 4]),
    (["tags", "In", ["red"]], [1, 4]),
    (["tags", "In", "yellow"], [2]),
    (["n", "Lt", 5], [1, 4]),
    (["n", "Lte", 5], [1, 2, 4]),
    (["n", "Gt", 5], [3]),
    (["n", "Gte", 5], [2, 3]),
    (["n", "Lt", None], []),
    (["n", "Lte", None], [4]),
    (["n", "Gte", None], [1, 2, 3, 4]),
    (["n", "Gt", None], [1, 2, 3]),
    (["s", "Gt", "b"], [3]),
    (["tags", "Contains", "red"], [1, 4]),
    (["tags", "NotContains", "red"], [2, 3]),
    (["tags", "ContainsAny", ["green", "yellow"]], [1, 2]),
    (["tags", "NotContainsAny", ["green", "yellow"]], [3, 4]),
    (["nums", "AnyLt", 2], [1]),
    (["nums", "AnyLte", 2], [1, 2]),
    (["nums", "AnyGt", 4], [1]),
    (["nums", "AnyGte", 2], [1, 2]),
    (["s", "Glob", "ap*"], [1, 4]),
    (["s", "NotGlob", "ap*"], [2, 3]),
    (["s", "Glob", "b*"], []),
    (["s", "IGlob", "b*"], [2]),
    (["s", "NotIGlob", "B?nana"], [1, 3, 4]),
    (["tags", "Glob", "gr*"], [1]),
    (["s", "Regex", "^a.*t$"], [4]),
    (["b", "Eq", True], [1]),
    (["id", "In", [2, 4]], [2, 4]),
    (["id", "Gt", 2], [3, 4]),
    (["And", [["n", "Gte", 1], ["tags", "Contains", "red"]]], [1]),
    (["Or", [["n", "Eq", 10], ["s", "Eq", "apricot"]]], [3, 4]),
    (["Not", ["n", "Eq", None]], [1, 2, 3]),
    (["Not", ["Or", [["n", "Eq", 1], ["n", "Eq", 5]]]], [3, 4]),
]


@pytest.fixture(scope="module")
def ns(client: Client) -> str:
    client.write("flt", {"upsert_rows": ROWS, "schema": {"s": {"type": "string", "regex": True, "filterable": True}}})
    return "flt"


@pytest.mark.parametrize("flt,expected", CASES, ids=[repr(c[0]) for c in CASES])
def test_filter(client: Client, ns: str, flt: Any, expected: list[int]) -> None:
    assert client.ids(ns, {"filters": flt, "rank_by": ["id", "asc"], "top_k": 100}) == expected


@pytest.mark.parametrize("flt,status", [
    (["nope", "Eq", 1], 400),
    (["n", "Equals", 1], 400),
    (["n", "Eq", "text"], 400),
    (["tags", "Lt", "x"], 400),
    (["n", "In", [1, None]], 422),
    ("n = 1", 422),
])
def test_bad_filters(client: Client, ns: str, flt: Any, status: int) -> None:
    code, err, _ = client.call("POST", f"/v2/namespaces/{ns}/query", {"filters": flt, "rank_by": ["id", "asc"]})
    assert code == status and err["status"] == "error" and err["error"]


def test_token_filters(client: Client) -> None:
    client.write("tok", {"upsert_rows": [{"id": 1, "t": "The quick brown fox"}, {"id": 2, "t": "brown dog quick"}],
                         "schema": {"t": {"type": "string", "full_text_search": True}}})
    q = {"rank_by": ["id", "asc"], "top_k": 10}
    assert client.ids("tok", {**q, "filters": ["t", "ContainsAllTokens", "quick brown"]}) == [1, 2]
    assert client.ids("tok", {**q, "filters": ["t", "ContainsTokenSequence", "quick brown"]}) == [1]
    assert client.ids("tok", {**q, "filters": ["t", "ContainsAnyToken", "fox cat"]}) == [1]
