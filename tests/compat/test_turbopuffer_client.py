"""The official turbopuffer==3.1.0 Python client against the store and the gateway.

Steps 1-9 of turbopuffer.md §18.5 plus the scenarios a drop-in proxy must keep working:
write, query, multi-query, metadata, namespace paging, schema, hint_cache_warm, delete_all/exists,
float32/base64 vectors, filters, write and query options.
Ports of the client's own live tests: test_turbopuffer_ports.py / _bm25.py; fidelity checks: _fidelity.py.
"""

from __future__ import annotations

import base64
import json
import struct
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
import turbopuffer
from turbopuffer import Turbopuffer
from turbopuffer.lib.vector import b64decode_vector

from .conftest import Target, f32, is_f32_shortest, raw, unique_ns


def ids(rows: list | None) -> list:
    assert rows is not None, "response has no rows"
    return [r.id for r in rows]


def test_write_and_query_checklist(tpuf: Turbopuffer) -> None:
    """§18.5 steps 1-3: write with a (client-base64-encoded) vector, ANN query, ordered+filtered query."""
    ns = tpuf.namespace(unique_ns("write"))
    res = ns.write(upsert_rows=[{"id": 1, "vector": [0.1, 0.2], "t": "x"}], distance_metric="cosine_distance")
    assert res.status == "OK"
    assert res.rows_affected == 1
    assert res.billing is not None

    q = ns.query(rank_by=("vector", "ANN", [0.1, 0.2]), top_k=10, include_attributes=True)
    assert ids(q.rows) == [1]
    row = q.rows[0]
    assert abs(row["$dist"]) < 1e-6
    assert row.vector == [0.1, 0.2]  # exact: float32 printed shortest (§3.3)
    assert row.t == "x"
    assert q.billing is not None and q.performance is not None

    q = ns.query(rank_by=("id", "asc"), top_k=10, filters=("t", "Eq", "x"))
    assert ids(q.rows) == [1]
    assert "$dist" not in q.rows[0]
    assert q.rows[0].vector is None  # default projection is id only
    assert "t" not in q.rows[0]

    q = ns.query(rank_by=("id", "asc"), top_k=10, filters=("t", "Eq", "nope"))
    assert q.rows == []


def test_multi_query_and_aggregations(tpuf: Turbopuffer) -> None:
    """§18.5 step 4 plus aggregate_by/group_by on a single query."""
    ns = tpuf.namespace(unique_ns("multi"))
    ns.write(
        upsert_rows=[
            {"id": 1, "vector": [0.1, 0.2], "t": "x"},
            {"id": 2, "vector": [0.9, 0.1], "t": "y"},
            {"id": 3, "vector": [0.8, 0.2], "t": "y"},
        ],
        distance_metric="cosine_distance",
    )
    res = ns.multi_query(
        queries=[
            {"rank_by": ("vector", "ANN", [0.1, 0.2]), "top_k": 1},
            {"aggregate_by": {"c": ("Count",)}},
            {"aggregate_by": {"c": ("Count",)}, "filters": ("t", "Eq", "x")},
            {"rank_by": ("id", "desc"), "top_k": 2, "include_attributes": ["t"]},
        ]
    )
    assert len(res.results) == 4
    assert ids(res.results[0].rows) == [1]
    assert res.results[1].aggregations == {"c": 3}
    assert res.results[2].aggregations == {"c": 1}
    assert [(r.id, r.t) for r in res.results[3].rows] == [(3, "y"), (2, "y")]

    # RRF fusion: id 1 ranks first in both legs -> 2/(10+1) + 1/(10+1) = 3/11.
    fused = ns.multi_query(
        queries=[{"rank_by": ("vector", "ANN", [0.1, 0.2]), "top_k": 3}, {"rank_by": ("id", "asc"), "top_k": 3}],
        rerank_by=("RRF", {"rank_constant": 10, "weights": [2, 1]}),
    )
    assert len(fused.results) == 1
    assert fused.results[0].rows[0].id == 1
    assert fused.results[0].rows[0]["$dist"] == pytest.approx(3 / 11, rel=1e-5)

    q = ns.query(aggregate_by={"n": ("Count",)}, group_by=["t"])
    assert q.aggregation_groups is not None
    assert [dict(g) for g in q.aggregation_groups] == [{"t": "x", "n": 1}, {"t": "y", "n": 2}]


def test_metadata(tpuf: Turbopuffer, target: Target) -> None:
    """§18.5 step 5: row count, index status, real datetimes; the v1 route is served too."""
    name = unique_ns("meta")
    ns = tpuf.namespace(name)
    before = datetime.now(UTC) - timedelta(minutes=5)
    ns.write(
        upsert_rows=[{"id": 1, "vector": [0.1, 0.2], "t": "x"}, {"id": 2, "vector": [0.3, 0.4]}],
        distance_metric="cosine_distance",
    )
    md = ns.metadata()
    assert md.approx_row_count == 2
    assert md.index.status == "up-to-date"
    assert isinstance(md.created_at, datetime) and isinstance(md.updated_at, datetime)
    assert before <= md.created_at <= md.updated_at <= datetime.now(UTC) + timedelta(minutes=5)
    assert md.schema_["t"].type == "string"  # the client names the field schema_ (alias "schema")
    assert md.approx_logical_bytes >= 0

    status, _, body = raw(target, "GET", f"/v1/namespaces/{name}/metadata")
    assert status == 200, body
    assert body["approx_row_count"] == 2

    with pytest.raises(turbopuffer.NotFoundError):
        tpuf.namespace(unique_ns("meta-missing")).metadata()


def test_namespaces_paging(tpuf: Turbopuffer) -> None:
    """§18.5 step 6: prefix filter, page_size=1 pagination through next_cursor, sorted ids."""
    prefix = unique_ns("list")
    names = [f"{prefix}-{c}" for c in ("c", "a", "b")]
    for n in names:
        tpuf.namespace(n).write(upsert_rows=[{"id": 1, "v": 1}])
    assert [n.id for n in tpuf.namespaces(prefix=prefix, page_size=1)] == sorted(names)

    page = tpuf.namespaces(prefix=prefix, page_size=2)
    assert [n.id for n in page.namespaces] == sorted(names)[:2]
    assert page.next_cursor
    assert [n.id for n in tpuf.namespaces(prefix=prefix + "-zzz")] == []


def test_schema_get_and_update(tpuf: Turbopuffer) -> None:
    """§18.5 step 7: inferred types, then turning on full-text search makes BM25 work."""
    ns = tpuf.namespace(unique_ns("schema"))
    ns.write(
        upsert_rows=[
            {"id": 1, "vector": [0.1, 0.2], "t": "hello world", "n": 3, "tags": ["a"]},
            {"id": 2, "vector": [0.2, 0.1], "t": "goodbye"},
        ],
        distance_metric="cosine_distance",
    )
    s = ns.schema()
    assert s["t"].type == "string"
    assert s["n"].type == "int"
    assert s["tags"].type == "[]string"
    assert s["vector"].type == "[2]f32"
    assert "id" in s

    updated = ns.update_schema(schema={"t": {"type": "string", "full_text_search": True}})
    assert updated["t"].type == "string"
    assert updated["t"].full_text_search
    assert ns.schema()["t"].full_text_search
    q = ns.query(rank_by=("t", "BM25", "hello"), top_k=10)
    assert ids(q.rows) == [1]
    assert q.rows[0]["$dist"] > 0


def test_hint_cache_warm(tpuf: Turbopuffer) -> None:
    """§18.5 step 8."""
    ns = tpuf.namespace(unique_ns("warm"))
    ns.write(upsert_rows=[{"id": 1, "v": 1}])
    res = ns.hint_cache_warm()
    assert res.status == "ACCEPTED"
    assert isinstance(res.message, str)


def test_delete_all_and_exists(tpuf: Turbopuffer) -> None:
    """§18.5 step 9: exists() flips, everything 404s after delete_all, the name is reusable."""
    ns = tpuf.namespace(unique_ns("delete"))
    assert ns.exists() is False
    ns.write(upsert_rows=[{"id": 1, "vector": [0.1, 0.2]}], distance_metric="cosine_distance")
    assert ns.exists() is True
    assert ns.delete_all().status == "OK"
    assert ns.exists() is False
    with pytest.raises(turbopuffer.NotFoundError):
        ns.query(rank_by=("vector", "ANN", [0.1, 0.2]), top_k=10)
    with pytest.raises(turbopuffer.NotFoundError):
        ns.query(rank_by=("id", "asc"), top_k=10)
    with pytest.raises(turbopuffer.NotFoundError):
        ns.schema()
    ns.write(upsert_rows=[{"id": 5, "vector": [0.5, 0.5]}], distance_metric="euclidean_squared")
    assert ids(ns.query(rank_by=("id", "asc"), top_k=10).rows) == [5]


VEC = [1 / 3, 0.1, 1e-7, 123.456, -2.5, 0.7]


def test_vectors_float32_round_trip(tpuf: Turbopuffer) -> None:
    """Vectors come back as float32 printed shortest; base64 encoding is little-endian f32 bytes."""
    ns = tpuf.namespace(unique_ns("f32"))
    # floats -> the client sends base64; ints -> the client sends a JSON array.
    ns.write(
        upsert_rows=[{"id": 1, "vector": VEC}, {"id": 2, "vector": [1, 2, 3, 4, 5, 6]}],
        distance_metric="euclidean_squared",
    )
    ns.write(upsert_columns={"id": [3], "vector": [[float(i) / 7 for i in range(6)]]})
    q = ns.query(rank_by=("id", "asc"), top_k=10, include_attributes=["vector"])
    assert [r.vector for r in q.rows] == [
        [f32(x) for x in VEC],
        [1.0, 2.0, 3.0, 4.0, 5.0, 6.0],
        [f32(i / 7) for i in range(6)],
    ]

    q = ns.query(rank_by=("id", "asc"), top_k=1, include_attributes=["vector"], vector_encoding="base64")
    assert isinstance(q.rows[0].vector, str)
    assert base64.b64decode(q.rows[0].vector) == struct.pack("<6f", *VEC)
    assert b64decode_vector(q.rows[0].vector) == [float(np.float32(x)) for x in VEC]

    q = ns.query(rank_by=("vector", "ANN", [0.0] * 6), top_k=3)
    assert ids(q.rows) == [3, 2, 1]
    dists = [r["$dist"] for r in q.rows]
    assert dists == sorted(dists)
    expected2 = sum(float(x) ** 2 for x in range(1, 7))  # 91, exact in float32
    assert dists[1] == expected2
    assert all(is_f32_shortest(d) for d in dists), f"$dist not printed as shortest float32: {dists}"


def test_filters(tpuf: Turbopuffer) -> None:
    """The filter grammar of §6.3, including null rules and array operators."""
    ns = tpuf.namespace(unique_ns("filters"))
    ns.write(
        upsert_rows=[
            {"id": 1, "name": "alpha", "n": 1, "tags": ["a", "b"]},
            {"id": 2, "name": "beta", "n": 5, "tags": ["b", "c"]},
            {"id": 3, "name": "Gamma", "n": 10, "tags": ["c"]},
            {"id": 4, "name": "delta"},
        ]
    )
    cases: list[tuple[object, list[int]]] = [
        (("n", "Eq", 5), [2]),
        (("n", "Eq", None), [4]),
        (("n", "NotEq", None), [1, 2, 3]),
        (("n", "In", [1, 10]), [1, 3]),
        (("name", "NotIn", ["alpha", "beta"]), [3, 4]),
        (("n", "Gt", 1), [2, 3]),
        (("n", "Gte", 5), [2, 3]),
        (("n", "Lte", 5), [1, 2, 4]),  # null sorts below everything
        (("n", "Lt", None), []),
        (("And", [("n", "Gt", 1), ("n", "Lt", 10)]), [2]),
        (("Or", [("name", "Eq", "alpha"), ("n", "Gt", 5)]), [1, 3]),
        (("Not", ("n", "Eq", 5)), [1, 3, 4]),
        (("tags", "Contains", "b"), [1, 2]),
        (("tags", "NotContains", "b"), [3, 4]),
        (("tags", "ContainsAny", ["a", "c"]), [1, 2, 3]),
        (("tags", "NotContainsAny", ["a", "c"]), [4]),
        (("tags", "AnyGt", "b"), [2, 3]),
        (("tags", "In", ["a"]), [1]),
        (("name", "Glob", "al*"), [1]),
        (("name", "NotGlob", "al*"), [2, 3, 4]),
        (("name", "Glob", "gam*"), []),
        (("name", "IGlob", "gam*"), [3]),
        (("name", "NotIGlob", "*TA"), [1, 3]),
        (("id", "In", [2, 3]), [2, 3]),
        (("id", "Gt", 2), [3, 4]),
    ]
    failures = []
    for flt, expected in cases:
        got = ids(ns.query(rank_by=("id", "asc"), top_k=10, filters=flt).rows)
        if got != expected:
            failures.append(f"{json.dumps(flt)}: expected {expected}, got {got}")
    assert not failures, "\n".join(failures)


def test_write_features(tpuf: Turbopuffer) -> None:
    """return_affected_ids, patch_by_filter, upsert_condition, copy_from_namespace, and 400s for bad writes."""
    name = unique_ns("writes")
    ns = tpuf.namespace(name)
    res = ns.write(
        upsert_rows=[{"id": i, "vector": [float(i), 1.0], "a": i % 2} for i in range(1, 5)],
        distance_metric="euclidean_squared",
        return_affected_ids=True,
    )
    assert res.rows_affected == 4
    assert sorted(res.upserted_ids or []) == [1, 2, 3, 4]

    assert ns.write(patch_by_filter={"filters": ("a", "Eq", 1), "patch": {"b": "odd"}}).rows_affected == 2
    q = ns.query(rank_by=("id", "asc"), top_k=10, include_attributes=["b"])
    assert [(r.id, getattr(r, "b", None)) for r in q.rows] == [(1, "odd"), (2, None), (3, "odd"), (4, None)]

    # Only documents whose current value passes the condition are replaced (id 1 has a=1, id 2 has a=0).
    res = ns.write(
        upsert_rows=[{"id": 1, "vector": [1.0, 1.0], "a": 7}, {"id": 2, "vector": [2.0, 1.0], "a": 7}],
        upsert_condition=("a", "Eq", 1),
    )
    assert res.rows_affected == 1
    q = ns.query(rank_by=("id", "asc"), top_k=10, include_attributes=["a"])
    assert [(r.id, r.a) for r in q.rows] == [(1, 7), (2, 0), (3, 1), (4, 0)]

    with pytest.raises(turbopuffer.BadRequestError):  # same id twice in one write
        ns.write(upsert_rows=[{"id": 9, "vector": [1.0, 1.0]}, {"id": 9, "vector": [2.0, 2.0]}])
    with pytest.raises(turbopuffer.BadRequestError):  # wrong dimension
        ns.write(upsert_rows=[{"id": 9, "vector": [1.0, 1.0, 1.0]}])
    with pytest.raises(turbopuffer.BadRequestError):  # distance metric is fixed at creation
        ns.write(upsert_rows=[{"id": 9, "vector": [1.0, 1.0]}], distance_metric="cosine_distance")
    assert ns.metadata().approx_row_count == 4  # failed writes changed nothing

    dst = tpuf.namespace(unique_ns("copy"))
    dst.write(copy_from_namespace=name)
    assert ids(dst.query(rank_by=("id", "asc"), top_k=10).rows) == [1, 2, 3, 4]


def test_query_options(tpuf: Turbopuffer) -> None:
    """limit (int and per-attribute), offset, exclude_attributes, explain_query, limit validation."""
    ns = tpuf.namespace(unique_ns("qopts"))
    ns.write(
        upsert_rows=[{"id": i, "vector": [float(i), 1.0], "t": "even" if i % 2 == 0 else "odd"} for i in range(1, 6)],
        distance_metric="euclidean_squared",
    )
    assert ids(ns.query(rank_by=("id", "asc"), limit=2).rows) == [1, 2]
    assert ids(ns.query(rank_by=("id", "asc"), top_k=2, offset=1).rows) == [2, 3]
    q = ns.query(rank_by=("id", "asc"), top_k=1, exclude_attributes=["vector"])
    assert dict(q.rows[0]) == {"id": 1, "vector": None, "t": "odd"}
    q = ns.query(
        rank_by=("id", "asc"), limit={"total": 10, "per": {"attributes": ["t"], "limit": 1}}, include_attributes=["t"]
    )
    assert [(r.id, r.t) for r in q.rows] == [(1, "odd"), (2, "even")]
    assert isinstance(ns.explain_query(rank_by=("vector", "ANN", [1.0, 1.0]), top_k=1).plan_text, str)
    for bad in (0, 10_001):
        with pytest.raises(turbopuffer.BadRequestError):
            ns.query(rank_by=("id", "asc"), top_k=bad)


def test_gateway_proxies_to_its_store_and_checks_keys(target: Target) -> None:
    if target.name != "gateway":
        pytest.skip("gateway-only scenario")
    name = unique_ns("proxy")
    store = target.procs[1]
    with Turbopuffer(api_key=target.api_key, base_url=target.url, max_retries=0) as gw:
        gw.namespace(name).write(upsert_rows=[{"id": 1, "v": 1}])
    with Turbopuffer(api_key=target.api_key, base_url=store.url, max_retries=0) as direct:
        assert ids(direct.namespace(name).query(rank_by=("id", "asc"), top_k=10).rows) == [1]
    with (
        Turbopuffer(api_key="not-the-key", base_url=target.url, max_retries=0) as bad,
        pytest.raises((turbopuffer.AuthenticationError, turbopuffer.PermissionDeniedError)),
    ):
        bad.namespace(name).query(rank_by=("id", "asc"), top_k=1)
