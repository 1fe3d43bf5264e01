"""Backend-level helpers for the cache tests: what the gateway's write and fetch phases do, in a few calls."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

from gateway.cache import DocumentCache
from gateway.cache import coherence as co
from gateway.cache.base import CacheDoc, encode_attrs, pack_vector
from gateway.cache.coherence import Effect, Token


def doc(doc_id: str, vector: list[float] | None = None, **attrs: Any) -> CacheDoc:
    return CacheDoc(doc_id, dict(attrs), pack_vector(vector) if vector is not None else None)


async def begin(c: DocumentCache, ns: str, ids: Sequence[str]) -> tuple[str, dict[str, Token]]:
    write_id = uuid.uuid4().hex[:16]
    until = co.now_ms() + c.settings.pending_ms
    return write_id, await c.update(ns, dict.fromkeys(ids, co.begin(write_id, until)), fence=True)


async def finish(c: DocumentCache, ns: str, begun: tuple[str, dict[str, Token]], effects: dict[str, Effect],
                 outcome: str = co.APPLIED) -> None:
    write_id, tokens = begun
    until = co.now_ms() + c.settings.unknown_ms if outcome == co.UNKNOWN else 0
    await c.update(ns, {i: co.finish(write_id, tokens.get(i), e, outcome, until, c.settings.max_record_bytes, i)
                        for i, e in effects.items()}, fence=True)


async def write(c: DocumentCache, ns: str, effects: dict[str, Effect], outcome: str = co.APPLIED) -> None:
    """One write through the gateway that upstream answered with `outcome`."""
    await finish(c, ns, await begin(c, ns, list(effects)), effects, outcome)


async def upsert(c: DocumentCache, ns: str, docs: Sequence[CacheDoc]) -> None:
    await write(c, ns, {d.id: co.Upsert(d.attrs, d.vector) for d in docs})


async def delete(c: DocumentCache, ns: str, ids: Sequence[str]) -> None:
    await write(c, ns, {i: co.Delete() for i in ids})


async def get(c: DocumentCache, ns: str, doc_id: str, include: Sequence[str] | None = None) -> dict[str, Any] | None:
    found = await c.lookup(ns, [doc_id], include)
    hit: dict[str, Any] | None = found.hits.get(doc_id)
    return hit


async def get_many(c: DocumentCache, ns: str, ids: Sequence[str],
                   include: Sequence[str] | None = None) -> dict[str, dict[str, Any]]:
    return (await c.lookup(ns, ids, include)).hits


async def vector(c: DocumentCache, ns: str, doc_id: str) -> list[float] | None:
    found = await c.lookup_vectors(ns, [doc_id])
    vec: list[float] | None = found.hits.get(doc_id)
    return vec


async def miss(c: DocumentCache, ns: str, doc_id: str) -> Token:
    """The token a fetch miss reads (asserts it is a miss)."""
    found = await c.lookup(ns, [doc_id])
    assert doc_id not in found.hits, found
    return found.tokens[doc_id]


async def fill(c: DocumentCache, ns: str, tok: Token, d: CacheDoc) -> bool:
    """A fetch backfill of `d` against `tok`; True if it landed."""
    change = co.fill(tok, d, encode_attrs(d.attrs), c.settings.fill_window_ms)
    return d.id in await c.update(ns, {d.id: change})
