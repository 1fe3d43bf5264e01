"""HTTP helpers for the cache coherence tests: one aiohttp session that opens a new connection per request (so
either gateway worker may answer any request), the gateway and the local store behind it (faults, journal)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp

STAMP = "_hevlayer_upserted_at"


class Reply:
    __slots__ = ("body", "cache", "status")

    def __init__(self, status: int, cache: str | None, body: Any) -> None:
        self.status, self.cache, self.body = status, cache, body

    def __repr__(self) -> str:
        return f"Reply({self.status}, cache={self.cache}, body={self.body!r})"


class Api:
    def __init__(self, session: aiohttp.ClientSession, gateway: str, store: str, key: str) -> None:
        self.session, self.gateway, self.store, self.key = session, gateway, store, key

    async def call(self, method: str, url: str, body: Any = None, timeout_s: float = 30.0) -> Reply:
        headers = {"authorization": f"Bearer {self.key}", "content-type": "application/json"}
        data = None if body is None else json.dumps(body)
        async with self.session.request(method, url, data=data, headers=headers,
                                        timeout=aiohttp.ClientTimeout(total=timeout_s)) as resp:
            raw = await resp.read()
            return Reply(resp.status, resp.headers.get("x-layer-cache"), json.loads(raw) if raw else None)

    # -- through the gateway ---------------------------------------------------------------------------------
    async def write(self, ns: str, body: dict[str, Any]) -> Reply:
        return await self.call("POST", f"{self.gateway}/v2/namespaces/{ns}", body)

    async def delete_namespace(self, ns: str) -> Reply:
        return await self.call("DELETE", f"{self.gateway}/v2/namespaces/{ns}")

    async def fetch(self, ns: str, doc_id: str) -> Reply:
        """One document; body = its attributes (None when 404)."""
        r = await self.call("GET", f"{self.gateway}/v2/namespaces/{ns}/documents/{doc_id}")
        return Reply(r.status, r.cache, r.body["attributes"] if r.status == 200 else None)

    async def fetch_many(self, ns: str, ids: list[str]) -> Reply:
        """A batch; body = {id: attributes} of the documents found."""
        r = await self.call("POST", f"{self.gateway}/v2/namespaces/{ns}/documents", {"ids": ids})
        found = {d["id"]: d["attributes"] for d in r.body["documents"]} if r.status == 200 else None
        return Reply(r.status, r.cache, found)

    # -- straight at the local store ---------------------------------------------------------------------------
    async def upstream_write(self, ns: str, body: dict[str, Any]) -> Reply:
        return await self.call("POST", f"{self.store}/v2/namespaces/{ns}", body)

    async def upstream_docs(self, ns: str) -> dict[str, dict[str, Any]]:
        """Every document upstream holds now (attributes without the vector); {} for a missing namespace."""
        r = await self.call("POST", f"{self.store}/v2/namespaces/{ns}/query",
                            {"rank_by": ["id", "asc"], "top_k": 1000, "include_attributes": True,
                             "exclude_attributes": ["vector"]})
        if r.status == 404:
            return {}
        assert r.status == 200, r
        return {str(row.pop("id")): row for row in r.body["rows"]}

    async def fault(self, **rule: Any) -> None:
        r = await self.call("POST", f"{self.store}/_localstore/faults", rule)
        assert r.status == 200, r

    async def clear_faults(self) -> None:
        await self.call("DELETE", f"{self.store}/_localstore/faults")

    async def journal_start(self, ns: str) -> None:
        r = await self.call("POST", f"{self.store}/_localstore/journal", {"namespace": ns})
        assert r.status == 200, r

    async def journal(self, ns: str) -> list[dict[str, Any]]:
        r = await self.call("GET", f"{self.store}/_localstore/journal?namespace={ns}")
        assert r.status == 200, r
        entries: list[dict[str, Any]] = r.body["entries"]
        return entries


@asynccontextmanager
async def api(gateway: str, store: str, key: str) -> AsyncIterator[Api]:
    # force_close: a fresh connection per request, so the kernel spreads requests over both gateway workers.
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True, limit=64)) as session:
        yield Api(session, gateway, store, key)


def without_stamp(attrs: dict[str, Any] | None) -> dict[str, Any] | None:
    return None if attrs is None else {k: v for k, v in attrs.items() if k != STAMP}
