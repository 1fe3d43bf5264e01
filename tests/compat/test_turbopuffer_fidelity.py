"""Fidelity checks with the official 3.1.0 Python clients (sync and async) against the store and the gateway:
gzip request bodies, live BM25 scores, exact nearest neighbours against a numpy brute force, and namespace
names using every allowed character class."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import numpy as np
import pytest
import turbopuffer
from turbopuffer import AsyncTurbopuffer, Turbopuffer

from .conftest import Target, is_f32_shortest, unique_ns

LIVE_BM25 = Path("/work/shared/fixtures/turbopuffer-live-bm25.json")


def ids(rows: list | None) -> list:
    assert rows is not None, "response has no rows"
    return [r.id for r in rows]


def test_gzip_request_bodies(target: Target) -> None:
    """compression=True gzips bodies > 1 KiB (Content-Encoding: gzip); both targets must accept them."""
    with Turbopuffer(
        api_key=target.api_key, base_url=target.url, compression=True, max_retries=0, timeout=20.0
    ) as client:
        ns = client.namespace(unique_ns("gzip"))
        rows = [{"id": i, "vector": [i / 10, 0.5], "pad": "x" * 64} for i in range(1, 41)]
        assert ns.write(upsert_rows=rows, distance_metric="euclidean_squared").rows_affected == 40
        q = ns.query(rank_by=("id", "asc"), top_k=100, filters=("id", "In", list(range(1, 200))))
        assert ids(q.rows) == list(range(1, 41))


def test_bm25_matches_live_scores(tpuf: Turbopuffer) -> None:
    """Scores and order of the live BM25 fixture (tolerance 1e-3 relative)."""
    fixture = json.loads(LIVE_BM25.read_text())["bm25"]
    ns = tpuf.namespace(unique_ns("bm25live"))
    ns.write(upsert_rows=fixture["write"]["upsert_rows"], schema=fixture["write"]["schema"])
    for case in fixture["cases"]:
        q = ns.query(rank_by=case["rank_by"], top_k=10)
        want = case["rows"]
        assert ids(q.rows) == [r["id"] for r in want], case["rank_by"]
        for got_row, want_row in zip(q.rows, want):
            assert got_row["$dist"] == pytest.approx(want_row["$dist"], rel=1e-3), case["rank_by"]


@pytest.mark.parametrize("metric", ["cosine_distance", "euclidean_squared"])
def test_ann_matches_brute_force(tpuf: Turbopuffer, metric: str) -> None:
    """1,500 random 32-dim vectors written as columns; top-10 ids and $dist equal a float32 brute force."""
    rng = np.random.default_rng(7)
    n, dim = 1500, 32
    data = rng.standard_normal((n, dim)).astype(np.float32)
    ns = tpuf.namespace(unique_ns("ann"))
    ns.write(upsert_columns={"id": list(range(n)), "vector": data.tolist()}, distance_metric=metric)
    for qv in rng.standard_normal((3, dim)).astype(np.float32):
        if metric == "cosine_distance":
            unit = data / np.linalg.norm(data, axis=1, keepdims=True)
            dist = 1.0 - unit @ (qv / np.linalg.norm(qv))
        else:
            dist = ((data - qv) ** 2).sum(axis=1)
        want = np.argsort(dist, kind="stable")[:10]
        res = ns.query(rank_by=("vector", "ANN", qv.tolist()), top_k=10)
        assert ids(res.rows) == want.tolist()
        got = [r["$dist"] for r in res.rows]
        assert got == pytest.approx(dist[want].tolist(), rel=1e-4, abs=1e-5)
        assert all(is_f32_shortest(d) for d in got)


def test_async_client(target: Target) -> None:
    """AsyncTurbopuffer: write, query, multi-query, metadata, delete."""

    async def scenario() -> None:
        async with AsyncTurbopuffer(api_key=target.api_key, base_url=target.url, max_retries=0, timeout=20.0) as c:
            ns = c.namespace(unique_ns("async"))
            res = await ns.write(
                upsert_rows=[{"id": 1, "vector": [0.5, 0.5], "k": "a"}, {"id": 2, "vector": [0.1, 0.9], "k": "b"}],
                distance_metric="cosine_distance",
            )
            assert res.rows_affected == 2
            q = await ns.query(rank_by=("vector", "ANN", [0.1, 0.9]), top_k=2, include_attributes=["k"])
            assert [(r.id, r.k) for r in q.rows] == [(2, "b"), (1, "a")]
            mq = await ns.multi_query(
                queries=[{"rank_by": ("id", "desc"), "top_k": 1}, {"aggregate_by": {"n": ("Count",)}}]
            )
            assert ids(mq.results[0].rows) == [2]
            assert mq.results[1].aggregations == {"n": 2}
            assert (await ns.metadata()).approx_row_count == 2
            assert (await ns.delete_all()).status == "OK"
            assert await ns.exists() is False

    asyncio.run(scenario())


def test_namespace_name_charset(tpuf: Turbopuffer) -> None:
    """Names may use [A-Za-z0-9-_.]; the client percent-encodes each name as one path segment."""
    name = unique_ns("Chars") + ".v1_A-z"
    ns = tpuf.namespace(name)
    ns.write(upsert_rows=[{"id": "doc-1", "v": 1}])
    assert ids(ns.query(rank_by=("id", "asc"), top_k=10).rows) == ["doc-1"]
    assert name in [n.id for n in tpuf.namespaces(prefix=name)]
    assert ns.metadata().approx_row_count == 1
    assert ns.delete_all().status == "OK"
    with pytest.raises(turbopuffer.NotFoundError):
        ns.schema()
