"""Runs under the published hevlayer 0.7.3 (tests/support/published_client.py): one scenario per call, printing
what the client returned as one JSON line for the pytest side to assert on.

    python hevlayer_scenarios.py SCENARIO BASE_URL API_KEY NAMESPACE
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import json
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

import hevlayer
from hevlayer import AsyncHevlayer, HevlayerError
from hevlayer.models import ApiKeyEntitlement, MintKeyRequest

WAIT_S = 15.0
DOCS = [
    {"id": "a", "vector": [1.0, 0.0], "color": "red"},
    {"id": "b", "vector": [0.9, 0.1], "color": "blue"},
    {"id": "c", "vector": [0.5, 0.5], "color": "red"},
]


async def wait_for(make: Callable[[], Awaitable[Any]], ok: Callable[[Any], bool], what: str) -> Any:
    deadline = time.monotonic() + WAIT_S
    while True:
        value = await make()
        if ok(value):
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached within {WAIT_S}s; last value: {value!r}")
        await asyncio.sleep(0.1)


async def error_of(call: Awaitable[Any]) -> dict[str, Any]:
    try:
        await call
    except HevlayerError as exc:
        return {"status": exc.status_code, "error": exc.error}
    return {"status": None}


async def seed(client: AsyncHevlayer, ns: str) -> dict[str, Any]:
    started_ms = int(time.time() * 1000)
    res = await client.write_namespace(ns, {"upsert_rows": DOCS, "distance_metric": "cosine_distance"})
    return {"started_ms": started_ms, "status": res.status, "rows_affected": res.rows_affected}


async def query(client: AsyncHevlayer, ns: str) -> dict[str, Any]:
    out: dict[str, Any] = {"seed": await seed(client, ns)}
    first = await wait_for(
        lambda: client.query_namespace(ns, {"vector": [1.0, 0.0], "top_k": 2, "include_attributes": ["color"]}),
        lambda r: r.stable_as_of is not None, "x-layer-stable-as-of on a Layer query")
    out["first"] = {"type": type(first).__name__, **first.model_dump(), "now_ms": int(time.time() * 1000)}
    second = await client.query_namespace(ns, {"vector": [1.0, 0.0], "top_k": 2, "cursor": first.next_cursor})
    out["second"] = second.model_dump()
    red = await client.query_namespace(ns, {"vector": [1.0, 0.0], "top_k": 10, "filters": ["color", "Eq", "red"]})
    out["red_ids"] = [r["id"] for r in red.rows]
    near = await client.query_namespace(ns, {"nearest_to_id": ["b"], "top_k": 1})
    out["near_ids"] = [r["id"] for r in near.rows]
    perf = await client.query_namespace(ns, {"vector": [0.5, 0.5], "top_k": 1}, with_perf=True)
    out["perf"] = {"type": type(perf).__name__, "latency_ms": perf.perf.latency_ms,
                   "ids": [r["id"] for r in perf.data.rows]}
    return out


async def errors(client: AsyncHevlayer, ns: str) -> dict[str, Any]:
    await seed(client, ns)
    return {
        "missing_id": await error_of(client.query_namespace(ns, {"nearest_to_id": ["zzz"], "top_k": 1})),
        "both": await error_of(client.query_namespace(ns, {"vector": [1.0, 0.0], "nearest_to_id": ["a"], "top_k": 1})),
        "neither": await error_of(client.query_namespace(ns, {"top_k": 1})),
    }


async def passthrough(client: AsyncHevlayer, ns: str) -> dict[str, Any]:
    await seed(client, ns)
    res = await client.query_turbopuffer_namespace(ns, {"rank_by": ["id", "asc"], "top_k": 10,
                                                        "include_attributes": ["color"]})
    agg = await client.query_turbopuffer_namespace(ns, {"aggregate_by": {"n": ["Count"]}})
    return {"type": type(res).__name__, "rows": res.rows, "aggregations": agg.aggregations,
            "agg_type": type(agg).__name__}


async def metadata(client: AsyncHevlayer, ns: str) -> dict[str, Any]:
    seeded = await seed(client, ns)
    md = await wait_for(lambda: client.get_namespace_metadata(ns),
                        lambda m: m.layer is not None and m.layer.is_stable is True, "layer.is_stable")
    return {"seed": seeded, "type": type(md).__name__, "id": md.id, "approx_row_count": md.approx_row_count,
            "schema_keys": sorted(md.schema), "layer": md.layer.model_dump(), "now_ms": int(time.time() * 1000),
            "missing": await error_of(client.get_namespace_metadata(ns + "-missing"))}


async def listing(client: AsyncHevlayer, prefix: str) -> dict[str, Any]:
    names = [f"{prefix}-1", f"{prefix}-2"]
    for n in names:
        await seed(client, n)
    full = await client.list_namespaces(prefix=prefix)
    page = await client.list_namespaces(prefix=prefix, page_size=1)
    rest = await client.list_namespaces(prefix=prefix, page_size=1, cursor=page.next_cursor)
    return {"names": names, "type": type(full).__name__, "entries": [e.model_dump() for e in full.namespaces],
            "page": [e.name for e in page.namespaces], "page_cursor": page.next_cursor,
            "rest": [e.name for e in rest.namespaces]}


async def delete(client: AsyncHevlayer, ns: str) -> dict[str, Any]:
    await seed(client, ns)
    res = await client.delete_namespace(ns)
    listing = await client.list_namespaces(prefix=ns)
    return {"status": res.status, "metadata_after": await error_of(client.get_namespace_metadata(ns)),
            "listed_after": [e.name for e in listing.namespaces]}


async def keys(admin: AsyncHevlayer, _: str) -> dict[str, Any]:
    minted = await admin.mint_key(MintKeyRequest(
        name="search-svc", owner="team-search", description="read products",
        entitlements={"vectorstore.default": ApiKeyEntitlement(scopes=["read"], namespaces=["products*"])},
        expiresAfter="12h"))
    got = await admin.get_key(minted.keyId)
    listed = await admin.list_keys()
    async with AsyncHevlayer(base_url=str(admin._client.base_url)) as anonymous:
        auth = await anonymous.authenticate_key({"token": minted.token})
        wrong_last = "y" if minted.token.endswith("x") else "x"  # a token that really differs from the minted one
        bad_auth = await error_of(anonymous.authenticate_key({"token": minted.token[:-1] + wrong_last}))
    revoked = await admin.revoke_key(minted.keyId)
    again = await admin.revoke_key(minted.keyId)
    active_ids = {k.keyId for k in (await admin.list_keys()).keys}
    all_ids = {k.keyId for k in (await admin.list_keys(includeRevoked=True)).keys}
    deleted = await admin.delete_key(minted.keyId)
    return {
        "types": [type(v).__name__ for v in (minted, got, listed, auth, revoked, deleted)],
        "minted": minted.model_dump(), "got": got.model_dump(), "listed_ids": [k.keyId for k in listed.keys],
        "auth": auth.model_dump(), "bad_auth": bad_auth, "revoked": revoked.model_dump(),
        "again_revoked_at": again.revokedAt, "active_has_it": minted.keyId in active_ids,
        "all_has_it": minted.keyId in all_ids, "deleted_status": deleted.status,
        "get_after_delete": await error_of(admin.get_key(minted.keyId)),
        "bad_mint": await error_of(admin.mint_key({"name": "x", "expiresAfter": "soon"})),
    }


SCENARIOS = {f.__name__: f for f in (query, errors, passthrough, metadata, listing, delete, keys)}


async def main(name: str, url: str, key: str, ns: str) -> None:
    async with AsyncHevlayer(api_key=key, base_url=url, timeout=20.0) as client:
        result = await SCENARIOS[name](client, ns)
    result["hevlayer"] = {"version": importlib.metadata.version("hevlayer"), "file": hevlayer.__file__}
    print(json.dumps(result, default=str))


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:5]))
