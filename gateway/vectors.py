"""Stored-vector resolution for `nearest_to_id` queries: the ONE function every caller goes through."""

from __future__ import annotations

import base64
import struct
from typing import Any
from urllib.parse import quote

import msgspec

from gateway.cache import service as cache_service
from gateway.cache.coherence import Token
from gateway.cache.partition import cache_namespace
from gateway.http import Ctx, GatewayError, json_encode, upstream_error, validation_error
from gateway.routes.passthrough import relayed_error
from gateway.state import WorkerState


class VectorRow(msgspec.Struct):
    id: int | str
    vector: list[float] | str | None = None


class VectorRows(msgspec.Struct):
    rows: list[VectorRow] = []


vector_rows_decoder = msgspec.json.Decoder(VectorRows)


def as_floats(vec: list[float] | str) -> list[float]:
    if isinstance(vec, str):
        raw = base64.b64decode(vec)
        return list(struct.unpack(f"<{len(raw) // 4}f", raw))
    return vec


async def cached_vectors(state: WorkerState, ns: str, ids: list[Any]) -> tuple[dict[Any, list[float]],
                                                                                 dict[str, Token]]:
    """Cache phase in front of the upstream fetch: vectors already cached and the tokens a vector backfill
    presents (nothing while state.cache is None)."""
    if state.cache is None:
        return {}, {}
    return await cache_service.cached_vectors(state.cache, ns, ids)


async def backfill_vectors(state: WorkerState, ns: str, tokens: dict[str, Token],
                           found: dict[Any, list[float]]) -> None:
    """Cache phase after an upstream fetch (best effort; nothing while state.cache is None)."""
    if state.cache is None:
        return
    await cache_service.backfill_vectors(state.cache, ns, tokens, found)


async def fetch_vectors(ctx: Ctx, state: WorkerState, ns: str, ids: list[Any]) -> dict[Any, list[float]]:
    body = json_encode({"rank_by": ["id", "asc"], "top_k": len(ids), "filters": ["id", "In", ids],
                        "include_attributes": ["vector"], "consistency": {"level": "strong"}})
    path = f"/v2/namespaces/{quote(ns, safe='')}/query"
    resp = await state.upstream.request("POST", path, ctx.upstream_key, body, "vector fetch", ctx,
                                        idempotent=True)
    if resp.status == 404:
        raise GatewayError("not_found", f"namespace '{ns}' not found", status=404)
    if not resp.ok:
        raise relayed_error(resp, "vector fetch")
    try:
        rows = vector_rows_decoder.decode(resp.body).rows
    except msgspec.DecodeError as exc:
        raise upstream_error(f"Turbopuffer vector fetch returned an unexpected body: {exc}") from None
    return {r.id: as_floats(r.vector) for r in rows if r.vector is not None}


async def resolve_vectors(ctx: Ctx, state: WorkerState, ns: str, ids: list[Any]) -> list[float]:
    """Mean of the stored vectors of `ids` (cache first, then upstream); 404 naming every id without one."""
    unique = list(dict.fromkeys(ids))
    cache_ns = await cache_namespace(state, ns, ctx.upstream_key, ctx) if state.cache is not None else None
    found, tokens = await cached_vectors(state, cache_ns, unique) if cache_ns is not None else ({}, {})
    missing = [i for i in unique if i not in found]
    if missing:
        fetched = await fetch_vectors(ctx, state, ns, missing)
        if cache_ns is not None:
            await backfill_vectors(state, cache_ns, tokens, fetched)
        found.update(fetched)
    absent = [i for i in unique if i not in found]
    if absent:
        raise GatewayError("not_found", f"no stored vector found for nearest_to_id {json_encode(absent).decode()} "
                           f"in namespace '{ns}'", status=404)
    vectors = [found[i] for i in unique]
    dims = {len(v) for v in vectors}
    if len(dims) != 1:
        raise validation_error(f"nearest_to_id vectors have different dimensions: {sorted(dims)}")
    n = len(vectors)
    return [sum(col) / n for col in zip(*vectors)]
