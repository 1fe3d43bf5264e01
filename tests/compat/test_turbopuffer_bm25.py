"""Ports of the official client's live BM25 tests (turbopuffer/turbopuffer-python tests/custom/test_bm25.py),
run with the official 3.1.0 client against the store and the gateway. Re-expressed in our own code."""

from __future__ import annotations

import pytest
import turbopuffer
from turbopuffer import Turbopuffer

from .conftest import unique_ns

ENGLISH_STEMMED = {
    "blabla": {
        "type": "string",
        "full_text_search": {
            "language": "english",
            "stemming": True,
            "case_sensitive": False,
            "remove_stopwords": True,
        },
    }
}


def ids(rows: list | None) -> list:
    assert rows is not None, "response has no rows"
    return [r.id for r in rows]


def test_bm25(tpuf: Turbopuffer) -> None:
    ns = tpuf.namespace(unique_ns("bm25"))
    ns.write(
        upsert_columns={
            "id": [1, 2, 3, 4],
            "vector": [[0.1, 0.1], [0.2, 0.2], [0.3, 0.3], [0.4, 0.4]],
            "blabla": [
                "the fox is quick and brown",
                "fox jumped over the lazy dog",
                "the dog is lazy and brown",
                "walrus is slow and inferior",
            ],
            "fact_id": ["a", "b", "c", "d"],
        },
        distance_metric="euclidean_squared",
        schema=ENGLISH_STEMMED,
    )
    # stemming: "jumping" matches "jumped"; only matching documents come back
    assert ids(ns.query(top_k=10, rank_by=("blabla", "BM25", "fox jumping")).rows) == [2, 1]

    ns.write(
        upsert_columns={
            "id": [7],
            "vector": [[0.7, 0.7]],
            "blabla": ["walruses can live up to 40 years"],
            "fact_id": ["g"],
        },
        schema=ENGLISH_STEMMED,
    )
    res = ns.query(
        top_k=2,
        rank_by=("Sum", [("blabla", "BM25", "walrus tusk"), ("blabla", "BM25", "jumping fox")]),
        filters=("fact_id", "NotEq", "z"),
    )
    assert ids(res.rows) == [2, 4]
    scores = [r["$dist"] for r in res.rows]
    assert scores == sorted(scores, reverse=True) and scores[-1] > 0

    ns.write(
        upsert_rows=[
            {"id": 8, "vector": [0.8, 0.8], "blabla": "row based upsert format is cool", "fact_id": "h"},
            {
                "id": 9,
                "vector": [0.9, 0.9],
                "blabla": "dict format of row based upsert also works, but isn't typed as well",
                "fact_id": "i",
            },
        ],
        schema=ENGLISH_STEMMED,
    )
    assert ids(ns.query(top_k=10, rank_by=("blabla", "BM25", "row based upsert")).rows) == [8, 9]


@pytest.mark.parametrize(
    "rank_by",
    [
        ("Product", 0.5, ("title", "BM25", "quick brown")),
        ("Product", ("title", "BM25", "quick brown"), 0.5),
        ("Sum", [("Product", 0.5, ("title", "BM25", "quick brown")), ("content", "BM25", "brown")]),
        ("Product", 0.5, ("Sum", [("Product", 0.5, ("title", "BM25", "quick brown")), ("content", "BM25", "brown")])),
    ],
    ids=["product-left", "product-right", "sum-of-product", "product-of-sum"],
)
def test_bm25_product_operator(tpuf: Turbopuffer, rank_by: tuple) -> None:
    ns = tpuf.namespace(unique_ns("bm25-product"))
    ns.write(
        upsert_rows=[
            {"id": 1, "vector": [0.1, 0.1], "title": "the quick brown fox", "content": "jumped over the lazy dog"},
            {"id": 2, "vector": [0.2, 0.2], "title": "the lazy dog", "content": "is brown"},
        ],
        distance_metric="euclidean_squared",
        schema={
            "title": {"type": "string", "full_text_search": True},
            "content": {"type": "string", "full_text_search": True},
        },
    )
    res = ns.query(rank_by=rank_by, top_k=10)
    assert len(res.rows or []) > 0
    # Weighting by 0.5 halves the plain score.
    if rank_by[0] == "Product" and len(rank_by) == 3 and rank_by[1] == 0.5 and rank_by[2][1] == "BM25":
        plain = ns.query(rank_by=("title", "BM25", "quick brown"), top_k=10)
        assert [r["$dist"] for r in res.rows] == pytest.approx([r["$dist"] / 2 for r in plain.rows], rel=1e-5)


def test_bm25_contains_all_tokens(tpuf: Turbopuffer) -> None:
    ns = tpuf.namespace(unique_ns("bm25-tokens"))
    ns.write(
        upsert_rows=[
            {"id": 1, "vector": [0.1, 0.1], "text": "Walruses are large marine mammals with long tusks and whiskers"}
        ],
        schema={"text": {"type": "string", "full_text_search": {"stemming": True}}},
        distance_metric="cosine_distance",
    )
    hit = ns.query(
        rank_by=("text", "BM25", "walrus whisker"), filters=("text", "ContainsAllTokens", "marine mammals"), top_k=10
    )
    assert len(hit.rows or []) == 1
    miss = ns.query(
        rank_by=("text", "BM25", "walrus whisker"),
        filters=("text", "ContainsAllTokens", "marine mammals short"),
        top_k=10,
    )
    assert miss.rows == []


def test_bm25_pre_tokenized_array(tpuf: Turbopuffer) -> None:
    ns = tpuf.namespace(unique_ns("bm25-pretok"))
    ns.write(
        upsert_rows=[
            {"id": 1, "content": ["jumped", "over", "the", "lazy", "dog"]},
            {"id": 2, "content": ["the", "lazy", "dog", "is", "brown"]},
        ],
        schema={"content": {"type": "[]string", "full_text_search": {"tokenizer": "pre_tokenized_array"}}},
    )
    assert ids(ns.query(rank_by=("content", "BM25", ["jumped"]), top_k=10).rows) == [1]
    assert len(ns.query(rank_by=("content", "BM25", ["dog"]), top_k=10).rows or []) == 2
    # A pre-tokenized field must be queried with an array of tokens; the official test's own match (Turbopuffer's
    # wording; the client's message shows the body dict, hence the escaped quotes).
    with pytest.raises(
        turbopuffer.APIError, match=r"""invalid input \\'jumped\\' for rank_by field "content", expecting \[\]string"""
    ):
        ns.query(rank_by=("content", "BM25", "jumped"), top_k=10)
