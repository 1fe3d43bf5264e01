"""The published hevlayer==0.7.3 client against the gateway (layer.md §1.5, §1.6, §2.2, §3.3, §3.7, §3.9)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import pytest
from hevlayer import AsyncHevlayer, HevlayerError, LayerResponse
from hevlayer.models import NamespaceList, NamespaceMetadata, QueryResponse, TurbopufferQueryResponse

from .conftest import Target, unique_ns

T = TypeVar("T")
WAIT_S = 15.0

DOCS = [
    {"id": "a", "vector": [1.0, 0.0], "color": "red"},
    {"id": "b", "vector": [0.9, 0.1], "color": "blue"},
    {"id": "c", "vector": [0.5, 0.5], "color": "red"},
]


def run(fn: Callable[[AsyncHevlayer], Awaitable[T]], target: Target) -> T:
    async def main() -> T:
        async with AsyncHevlayer(api_key=target.api_key, base_url=target.url, timeout=20.0) as client:
            return await fn(client)

    return asyncio.run(main())


async def wait_for(make: Callable[[], Awaitable[T]], ok: Callable[[T], bool], what: str) -> T:
    deadline = time.monotonic() + WAIT_S
    while True:
        value = await make()
        if ok(value):
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached within {WAIT_S}s; last value: {value!r}")
        await asyncio.sleep(0.1)


async def seed(client: AsyncHevlayer, ns: str) -> int:
    started_ms = int(time.time() * 1000)
    res = await client.write_namespace(ns, {"upsert_rows": DOCS, "distance_metric": "cosine_distance"})
    assert res.status == "OK"
    assert res.rows_affected == 3
    return started_ms


def test_layer_query_headers_cursor_and_filters(gateway_target: Target) -> None:
    ns = unique_ns("hev-query")

    async def scenario(client: AsyncHevlayer) -> None:
        started_ms = await seed(client, ns)
        # The watcher registers the namespace on write; x-layer-stable-as-of follows once it has polled.
        first = await wait_for(
            lambda: client.query_namespace(ns, {"vector": [1.0, 0.0], "top_k": 2, "include_attributes": ["color"]}),
            lambda r: r.stable_as_of is not None,
            "x-layer-stable-as-of on a Layer query",
        )
        assert isinstance(first, QueryResponse)
        assert started_ms - 5_000 <= first.stable_as_of <= int(time.time() * 1000)
        assert [r["id"] for r in first.rows] == ["a", "b"]
        assert first.rows[0]["$dist"] == pytest.approx(0.0, abs=1e-6)
        assert first.rows[0]["$dist"] <= first.rows[1]["$dist"]
        assert [r["color"] for r in first.rows] == ["red", "blue"]
        assert all("vector" not in r for r in first.rows)
        assert first.next_cursor, "a full page must carry x-layer-next-cursor"

        second = await client.query_namespace(ns, {"vector": [1.0, 0.0], "top_k": 2, "cursor": first.next_cursor})
        assert [r["id"] for r in second.rows] == ["c"]
        assert second.next_cursor is None  # short page: no cursor

        red = await client.query_namespace(ns, {"vector": [1.0, 0.0], "top_k": 10, "filters": ["color", "Eq", "red"]})
        assert [r["id"] for r in red.rows] == ["a", "c"]

        near = await client.query_namespace(ns, {"nearest_to_id": ["b"], "top_k": 1})
        assert [r["id"] for r in near.rows] == ["b"]

        perf = await client.query_namespace(ns, {"vector": [0.5, 0.5], "top_k": 1}, with_perf=True)
        assert isinstance(perf, LayerResponse)
        assert perf.perf.latency_ms > 0
        assert [r["id"] for r in perf.data.rows] == ["c"]

    run(scenario, gateway_target)


def test_layer_query_errors(gateway_target: Target) -> None:
    ns = unique_ns("hev-errors")

    async def scenario(client: AsyncHevlayer) -> None:
        await seed(client, ns)
        with pytest.raises(HevlayerError) as err:
            await client.query_namespace(ns, {"nearest_to_id": ["zzz"], "top_k": 1})
        assert err.value.status_code == 404
        assert err.value.error == "not_found"
        with pytest.raises(HevlayerError) as err:
            await client.query_namespace(ns, {"vector": [1.0, 0.0], "nearest_to_id": ["a"], "top_k": 1})
        assert err.value.status_code == 422
        assert err.value.error == "validation_error"
        with pytest.raises(HevlayerError) as err:  # not a Layer field: Turbopuffer's own answer, relayed
            await client.query_namespace(ns, {"top_k": 1})
        assert err.value.status_code == 400
        assert err.value.error == "query must have rank_by, filters or aggregate_by"

    run(scenario, gateway_target)


def test_turbopuffer_query_passthrough(gateway_target: Target) -> None:
    ns = unique_ns("hev-tpuf")

    async def scenario(client: AsyncHevlayer) -> None:
        await seed(client, ns)
        res = await client.query_turbopuffer_namespace(
            ns, {"rank_by": ["id", "asc"], "top_k": 10, "include_attributes": ["color"]}
        )
        assert isinstance(res, TurbopufferQueryResponse)
        assert res.rows == [{"id": "a", "color": "red"}, {"id": "b", "color": "blue"}, {"id": "c", "color": "red"}]
        agg = await client.query_turbopuffer_namespace(ns, {"aggregate_by": {"n": ["Count"]}})
        assert agg.aggregations == {"n": 3}

    run(scenario, gateway_target)


def test_metadata_layer_block(gateway_target: Target) -> None:
    ns = unique_ns("hev-meta")

    async def scenario(client: AsyncHevlayer) -> None:
        started_ms = await seed(client, ns)
        md = await wait_for(
            lambda: client.get_namespace_metadata(ns),
            lambda m: m.layer is not None and m.layer.is_stable is True,
            "layer.is_stable",
        )
        assert isinstance(md, NamespaceMetadata)
        assert md.id == ns
        assert md.approx_row_count == 3
        assert "vector" in md.schema and "color" in md.schema
        assert md.layer.stable_as_of is not None
        assert started_ms - 5_000 <= md.layer.stable_as_of <= int(time.time() * 1000)
        assert md.layer.schema_version == 1

        with pytest.raises(HevlayerError) as err:
            await client.get_namespace_metadata(unique_ns("hev-missing"))
        assert err.value.status_code == 404
        assert err.value.error == "not_found"

    run(scenario, gateway_target)


def test_list_namespaces(gateway_target: Target) -> None:
    prefix = unique_ns("hev-list")
    names = [f"{prefix}-1", f"{prefix}-2"]

    async def scenario(client: AsyncHevlayer) -> None:
        for n in names:
            await seed(client, n)
        listing = await client.list_namespaces(prefix=prefix)
        assert isinstance(listing, NamespaceList)
        assert [e.name for e in listing.namespaces] == names
        for entry in listing.namespaces:
            assert entry.row_count == 3
            assert entry.cache_state is not None
            assert entry.shadow is False
            assert entry.labels == {}
            assert entry.schema_summary is not None and entry.schema_summary.vector_dim == 2
            assert entry.metadata_error is None
        page = await client.list_namespaces(prefix=prefix, page_size=1)
        assert [e.name for e in page.namespaces] == names[:1]
        assert page.next_cursor
        rest = await client.list_namespaces(prefix=prefix, page_size=1, cursor=page.next_cursor)
        assert [e.name for e in rest.namespaces] == names[1:]

    run(scenario, gateway_target)


def test_delete_namespace(gateway_target: Target) -> None:
    ns = unique_ns("hev-delete")

    async def scenario(client: AsyncHevlayer) -> None:
        await seed(client, ns)
        res = await client.delete_namespace(ns)
        assert res.status == "OK"
        with pytest.raises(HevlayerError) as err:
            await client.get_namespace_metadata(ns)
        assert err.value.status_code == 404
        listing = await client.list_namespaces(prefix=ns)
        assert listing.namespaces == []

    run(scenario, gateway_target)
