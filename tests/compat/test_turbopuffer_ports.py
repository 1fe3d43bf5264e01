"""Ports of the official client's live integration tests (turbopuffer/turbopuffer-python tests/custom/:
test_vectors.py, test_patch.py, test_order_by.py, test_schema.py; BM25 ports are in test_turbopuffer_bm25.py).

The assertions encode what the live service returns; here they run against the store and the gateway.
Re-expressed in our own code; the live-only billing figures are not ported (the store bills zeros).
"""

from __future__ import annotations

import uuid

import numpy as np
import pytest
import turbopuffer
from turbopuffer import Turbopuffer
from turbopuffer.lib.vector import b64decode_vector, b64encode_vector

from .conftest import unique_ns


def ids(rows: list | None) -> list:
    assert rows is not None, "response has no rows"
    return [r.id for r in rows]


def all_rows(ns) -> list:
    res = ns.query(top_k=100, rank_by=("id", "asc"), include_attributes=True)
    assert res.rows is not None
    return res.rows


def check_rows(rows: list | None, expected: list[dict]) -> None:
    """Same ids, same keys (absent attributes are omitted), vectors and $dist within 1e-6."""
    assert rows is not None
    assert len(rows) == len(expected), (ids(rows), [e["id"] for e in expected])
    for row, want in zip(rows, expected):
        assert row.id == want["id"]
        assert len(row) == 2 + len([k for k in want if k not in ("id", "vector")]), dict(row)
        if "vector" in want:
            assert isinstance(row.vector, list)
            assert np.allclose(row.vector, want["vector"], atol=1e-6)
        else:
            assert row.vector is None
        if "$dist" in want:
            assert abs(row["$dist"] - want["$dist"]) < 1e-6
        else:
            assert "$dist" not in row
        for k, v in want.items():
            if k not in ("id", "vector", "$dist"):
                assert row[k] == v


def test_vectors_rows_deletes_columns_queries(tpuf: Turbopuffer) -> None:
    """test_upsert_rows + test_delete_vectors + test_upsert_columns + test_query_vectors + test_delete_all,
    which share one namespace in the original, in order."""
    ns = tpuf.namespace(unique_ns("client-test"))
    # upsert rows (int vector -> JSON array; float vector -> base64 on the wire)
    ns.write(
        upsert_rows=[{"id": 2, "vector": [2, 2]}, {"id": 7, "vector": [0.7, 0.7], "hello": "world"}],
        distance_metric="euclidean_squared",
    )
    ns.write(upsert_rows=[{"id": i, "vector": [i / 10, i / 10], "test": "rows"} for i in range(10, 100)])
    rows = all_rows(ns)
    assert len(rows) == 92
    assert dict(rows[0]) == {"id": 2, "vector": [2.0, 2.0]}
    assert dict(rows[1]) == {"id": 7, "vector": [0.7, 0.7], "hello": "world"}
    for i in range(10, 100):
        assert dict(rows[i - 8]) == {"id": i, "vector": [i / 10, i / 10], "test": "rows"}
    recall = ns.recall()
    assert 0.0 <= recall.avg_recall <= 1.0

    # deletes, one and several at a time
    for gone, count, idx, nxt in ((2, 91, 0, 7), (10, 90, 1, 11), (11, 89, 1, 12), (12, 88, 1, 13)):
        ns.write(deletes=[gone])
        rows = all_rows(ns)
        assert len(rows) == count
        assert rows[idx].id == nxt
    assert dict(all_rows(ns)[1]) == {"id": 13, "vector": [1.3, 1.3], "test": "rows"}
    ns.write(deletes=[13])
    ns.write(deletes=[14, 15, 16])
    rows = all_rows(ns)
    assert len(rows) == 84
    assert dict(rows[0]) == {"id": 7, "vector": [0.7, 0.7], "hello": "world"}
    for i in range(17, 100):
        assert dict(rows[i - 16]) == {"id": i, "vector": [i / 10, i / 10], "test": "rows"}

    # upsert columns (twice, then more), then rows again
    cols = {
        "id": [0, 1, 2, 3],
        "vector": [[0.0, 0.0], [0.1, 0.1], [0.2, 0.2], [0.3, 0.3]],
        "key1": ["zero", "one", "two", "three"],
        "key2": [" ", "a", "b", "c"],
        "test": ["cols"] * 4,
    }
    ns.write(upsert_columns=cols)
    ns.write(upsert_columns=cols)
    ns.write(
        upsert_columns={
            "id": [4, 5, 6],
            "vector": [[0.1, 0.1], [0.2, 0.2], [0.3, 0.3]],
            "key1": ["one", "two", "three"],
            "key2": ["a", "b", "c"],
            "test": ["cols"] * 3,
        }
    )
    ns.write(upsert_rows=[{"id": i, "vector": [i / 10, i / 10], "test": "cols"} for i in range(10, 100)])
    rows = all_rows(ns)
    assert len(rows) == 98
    cols_count = 0
    for row in rows:
        if getattr(row, "test", None) == "cols":
            cols_count += 1
            assert isinstance(row.id, int)
            if row.id >= 10:
                assert dict(row) == {"id": row.id, "vector": [row.id / 10, row.id / 10], "test": "cols"}
        else:
            assert dict(row) == {"id": 7, "vector": [0.7, 0.7], "hello": "world"}
    assert cols_count == 97

    # queries
    near = [
        {"id": 7, "vector": [0.7, 0.7], "hello": "world", "$dist": 0.01},
        {"id": 10, "vector": [1.0, 1.0], "$dist": 0.13},
        {"id": 11, "vector": [1.1, 1.1], "$dist": 0.25},
        {"id": 3, "vector": [0.3, 0.3], "$dist": 0.41},
        {"id": 6, "vector": [0.3, 0.3], "$dist": 0.41},
    ]
    res = ns.query(top_k=5, rank_by=("vector", "ANN", [0.8, 0.7]), include_attributes=["hello", "vector"])
    check_rows(res.rows, near)
    assert res.billing is not None
    res = ns.query(top_k=5, rank_by=("vector", "ANN", [0.8, 0.7]), include_attributes=True)
    extra = [
        {},
        {"test": "cols"},
        {"test": "cols"},
        {"test": "cols", "key1": "three", "key2": "c"},
        {"test": "cols", "key1": "three", "key2": "c"},
    ]
    check_rows(
        res.rows, [{k: v for k, v in {**w, **e}.items() if k != "hello" or w["id"] == 7} for w, e in zip(near, extra)]
    )
    res = ns.query(top_k=5, rank_by=("vector", "ANN", [1.5, 1.6]))
    check_rows(
        res.rows,
        [
            {"id": 15, "$dist": 0.01},
            {"id": 16, "$dist": 0.01},
            {"id": 14, "$dist": 0.05},
            {"id": 17, "$dist": 0.05},
            {"id": 18, "$dist": 0.13},
        ],
    )
    res = ns.query(rank_by=("id", "asc"), top_k=3, include_attributes=["hello"], filters=("id", "In", (10, 11, 12)))
    check_rows(res.rows, [{"id": 10}, {"id": 11}, {"id": 12}])
    res = ns.query(rank_by=("id", "asc"), top_k=3, consistency={"level": "eventual"})
    assert len(res.rows or []) == 3

    # delete_all
    assert ns.exists() is True
    ns.delete_all()
    with pytest.raises(turbopuffer.NotFoundError):
        ns.schema()


def test_shape_errors_are_422_with_live_wording(tpuf: Turbopuffer) -> None:
    """From test_upsert_rows / test_query_vectors: serde-style 422 messages of the live service."""
    ns = tpuf.namespace(unique_ns("shape-errors"))
    ns.write(upsert_rows=[{"id": 1, "vector": [1.0, 1.0]}], distance_metric="euclidean_squared")
    for single in ({"id": 2, "vector": [2, 2]}, {"id": 7, "vector": [0.7, 0.7], "hello": "world", "test": "rows"}):
        with pytest.raises(turbopuffer.UnprocessableEntityError) as err:
            ns.write(upsert_rows=single)  # type: ignore[arg-type]
        assert "invalid type: map, expected a sequence" in err.value.message
    with pytest.raises(turbopuffer.UnprocessableEntityError) as err:
        ns.query(rank_by=("id", "asc"), top_k=3, consistency="eventual")  # type: ignore[arg-type]
    assert 'invalid type: string "eventual", expected struct Consistency' in err.value.message
    with pytest.raises(turbopuffer.UnprocessableEntityError) as err:
        ns.query(rank_by=("id", "asc"), top_k=3, consistency={"level": "nonexistentvalue"})  # type: ignore[typeddict-item]
    assert "unknown variant `nonexistentvalue`, expected `strong` or `eventual`" in err.value.message
    assert ids(ns.query(rank_by=("id", "asc"), top_k=10).rows) == [1]  # nothing was written


def test_string_ids(tpuf: Turbopuffer) -> None:
    ns = tpuf.namespace(unique_ns("string-ids"))
    vec_ids = sorted(str(uuid.uuid1()) for _ in range(8))
    key1, key2 = ["zero", "one", "two", "three"], [" ", "a", "b", "c"]
    ns.write(
        upsert_columns={
            "id": vec_ids[:4],
            "vector": [[0.0, 0.0], [0.1, 0.1], [0.2, 0.2], [0.3, 0.3]],
            "key1": key1,
            "key2": key2,
            "test": ["cols"] * 4,
        },
        distance_metric="euclidean_squared",
    )
    ns.write(
        upsert_rows=[
            {"id": vid, "vector": [(i + 4) / 10, (i + 4) / 10], "test": "rows", "hello": "world"}
            for i, vid in enumerate(vec_ids[4:])
        ],
        distance_metric="euclidean_squared",
    )
    rows = all_rows(ns)
    assert len(rows) == 8
    for i, row in enumerate(rows):
        if row.test == "cols":
            assert dict(row) == {
                "id": vec_ids[i],
                "vector": [i / 10, i / 10],
                "key1": key1[i],
                "key2": key2[i],
                "test": "cols",
            }
        else:
            assert dict(row) == {"id": vec_ids[i], "vector": [i / 10, i / 10], "hello": "world", "test": "rows"}

    def nearest(expected_idx: list[int], dists: list[float]) -> None:
        res = ns.query(top_k=5, rank_by=("vector", "ANN", [0.0, 0.0]), filters=("id", "In", vec_ids))
        assert ids(res.rows) == [vec_ids[i] for i in expected_idx]
        for row, d in zip(res.rows, dists):
            assert len(dict(row)) == 3 and row["vector"] is None
            assert abs(row["$dist"] - d) < 1e-6

    nearest([0, 1, 2, 3, 4], [0.0, 0.02, 0.08, 0.18, 0.32])
    ns.write(deletes=[vec_ids[2]])
    nearest([0, 1, 3, 4, 5], [0.0, 0.02, 0.18, 0.32, 0.5])
    ns.delete_all()


def test_attribute_types(tpuf: Turbopuffer) -> None:
    ns = tpuf.namespace(unique_ns("types"))
    ns.write(
        upsert_rows=[
            {"id": 7, "vector": [0.7, 0.7], "count": 1, "users": ["jan", "simon"]},
            {"id": 9, "vector": [0.7, 0.7], "count": 2, "users": ["bojan", "morgan", "simon"]},
        ],
        distance_metric="euclidean_squared",
    )
    cases = [
        (("And", [("count", "Gt", 1), ("users", "In", ["simon"])]), 1),
        (("Or", [("count", "Eq", 1), ("users", "In", "bojan")]), 2),  # scalar In against []string
        (("And", [("count", "Eq", 1), ("users", "In", "bojan")]), 0),
        (("And", [("count", "Eq", 1), ("Or", [("users", "In", "bojan"), ("count", "Gt", 0)])]), 1),
    ]
    for flt, n in cases:
        res = ns.query(top_k=5, rank_by=("vector", "ANN", [0.0, 0.0]), filters=flt)
        assert len(res.rows or []) == n, flt


def test_not_found_error(tpuf: Turbopuffer) -> None:
    with pytest.raises(turbopuffer.NotFoundError):
        tpuf.namespace(unique_ns("not-found")).query(top_k=5, rank_by=("vector", "ANN", [0.0, 0.0]))


def test_list_in_empty_namespace(tpuf: Turbopuffer) -> None:
    ns = tpuf.namespace(unique_ns("emptied"))
    ns.write(
        upsert_rows=[{"id": 2, "vector": [2, 2]}, {"id": 7, "vector": [1, 1]}], distance_metric="euclidean_squared"
    )
    ns.write(deletes=[2, 7])
    res = ns.query(top_k=100, rank_by=("id", "asc"))
    assert res.rows == []


def test_delete_by_filter(tpuf: Turbopuffer) -> None:
    ns = tpuf.namespace(unique_ns("delete-by-filter"))
    ns.write(
        upsert_rows=[{"id": i, "vector": [0.7, 0.7], "a": a} for i, a in ((5, 0), (6, 1), (7, 2), (8, 1), (9, 3))],
        distance_metric="euclidean_squared",
    )
    assert ns.write(delete_by_filter=("a", "Eq", 42)).rows_affected == 0
    assert ids(ns.query(top_k=100, rank_by=("id", "asc")).rows) == [5, 6, 7, 8, 9]
    assert ns.write(delete_by_filter=("a", "Eq", 1)).rows_affected == 2
    assert ids(ns.query(top_k=100, rank_by=("id", "asc")).rows) == [5, 7, 9]
    assert ns.write(delete_by_filter=("a", "Gt", 0)).rows_affected == 2
    assert ids(ns.query(top_k=100, rank_by=("id", "asc")).rows) == [5]
    ns.delete_all()


def test_upsert_base64_vectors(tpuf: Turbopuffer) -> None:
    ns = tpuf.namespace(unique_ns("base64"))
    ns.write(
        upsert_rows=[
            {"id": 2, "vector": b64encode_vector([2, 2])},
            {"id": 3, "vector": b64encode_vector([0.7, 0.7]), "hello": "world"},
        ],
        distance_metric="euclidean_squared",
    )
    ns.write(
        upsert_columns={
            "id": [4, 5],
            "vector": [b64encode_vector([0.1, 0.1]), b64encode_vector([0.2, 0.2])],
            "key1": ["zero", "one"],
            "key2": [" ", "a"],
        }
    )
    ns.write(
        upsert_rows=[{"id": i, "vector": b64encode_vector([i / 10, i / 10]), "test": "rows"} for i in range(10, 100)]
    )
    rows = all_rows(ns)
    assert len(rows) == 94
    assert dict(rows[0]) == {"id": 2, "vector": [2.0, 2.0]}
    assert dict(rows[1]) == {"id": 3, "vector": [0.7, 0.7], "hello": "world"}
    assert dict(rows[2]) == {"id": 4, "vector": [0.1, 0.1], "key1": "zero", "key2": " "}
    assert dict(rows[3]) == {"id": 5, "vector": [0.2, 0.2], "key1": "one", "key2": "a"}
    for i in range(10, 100):
        assert dict(rows[i - 6]) == {"id": i, "vector": [i / 10, i / 10], "test": "rows"}
    ns.delete_all()


@pytest.mark.parametrize("encoding", [None, "float", "base64"])
def test_vector_encoding_format(tpuf: Turbopuffer, encoding: str | None) -> None:
    ns = tpuf.namespace(unique_ns("encoding"))
    ns.write(upsert_rows=[{"id": 1, "vector": b64encode_vector([0.1, 0.2, 0.3])}], distance_metric="euclidean_squared")
    kwargs = {} if encoding is None else {"vector_encoding": encoding}
    res = ns.query(top_k=1, rank_by=("vector", "ANN", [0.0, 0.0, 0.0]), include_attributes=True, **kwargs)
    assert ids(res.rows) == [1]
    vec = res.rows[0].vector
    assert isinstance(vec, str) == (encoding == "base64")
    floats = b64decode_vector(vec) if isinstance(vec, str) else vec
    assert [np.float32(x) for x in floats] == [np.float32(x) for x in (0.1, 0.2, 0.3)]


def test_exists(tpuf: Turbopuffer) -> None:
    ns = tpuf.namespace(unique_ns("exists"))
    assert ns.exists() is False
    ns.write(upsert_rows=[{"id": 1, "vector": [0.1, 0.2, 0.3]}], distance_metric="euclidean_squared")
    assert ns.exists() is True


def test_patches(tpuf: Turbopuffer) -> None:
    ns = tpuf.namespace(unique_ns("patches"))
    ns.write(
        upsert_rows=[{"id": 1, "vector": [1, 1]}, {"id": 2, "vector": [2, 2]}], distance_metric="euclidean_squared"
    )
    ns.write(patch_rows=[{"id": 1, "a": 1}, {"id": 2, "b": 2}])
    ns.write(patch_rows=[{"id": 1, "b": 1}, {"id": 2, "a": 2}])
    res = ns.query(rank_by=("id", "asc"), include_attributes=["a", "b"], top_k=10)
    assert [(r.id, r.a, r.b) for r in res.rows or []] == [(1, 1, 1), (2, 2, 2)]
    ns.write(patch_columns={"id": [1, 2], "a": [11, 22], "c": [1, 2]})
    res = ns.query(rank_by=("id", "asc"), include_attributes=["a", "b", "c"], top_k=10)
    assert [(r.id, r.a, r.b, r.c) for r in res.rows or []] == [(1, 11, 1, 1), (2, 22, 2, 2)]
    # a patch keeps the vector
    res = ns.query(rank_by=("id", "asc"), include_attributes=["vector"], top_k=10)
    assert [r.vector for r in res.rows or []] == [[1.0, 1.0], [2.0, 2.0]]


def test_order_by_attribute(tpuf: Turbopuffer) -> None:
    ns = tpuf.namespace(unique_ns("order-by"))
    ns.write(
        upsert_columns={
            "id": [1, 2, 3, 4],
            "vector": [[0.1, 0.1], [0.2, 0.2], [0.3, 0.3], [0.4, 0.4]],
            "fact_id": ["a", "b", "c", "d"],
        },
        distance_metric="euclidean_squared",
    )
    assert ids(ns.query(rank_by=("fact_id", "asc"), top_k=10).rows) == [1, 2, 3, 4]
    assert ids(ns.query(rank_by=("fact_id", "desc"), top_k=10).rows) == [4, 3, 2, 1]


def test_schema_filterable_toggle(tpuf: Turbopuffer) -> None:
    ns = tpuf.namespace(unique_ns("schema-port"))
    ns.write(
        upsert_rows=[{"id": 2, "vector": [2, 2]}, {"id": 7, "vector": [0.7, 0.7], "hello": "world", "test": "rows"}],
        distance_metric="euclidean_squared",
    )
    schema = ns.schema()
    for attr in ("hello", "test"):
        assert schema[attr].type == "string"
        assert schema[attr].filterable
        assert schema[attr].full_text_search is None
    updated = ns.update_schema(schema={"hello": {"type": "string", "filterable": False}})
    assert not updated["hello"].filterable
    with pytest.raises(turbopuffer.TurbopufferError):
        ns.query(rank_by=("vector", "ANN", [2, 2]), top_k=10, filters=("hello", "Eq", "foobar"))
