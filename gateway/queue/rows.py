"""Reading namespace rows for the queue: by id, by filter page, and a namespace's schema; plus item inputs.

These go to the upstream directly (never the document cache, never the stable-read filter): discovery must see
every row, and a claim and its completion must read inputs from the same source, or a stale cache entry would
make every completion look outdated.
"""

from __future__ import annotations

import hashlib
from typing import Any
from urllib.parse import quote

import msgspec

from gateway.http import json_encode, upstream_error, validation_error
from gateway.state import WorkerState

ID_BATCH = 1000


class Rows(msgspec.Struct):
    rows: list[dict[str, Any]] = []


_rows_decode = msgspec.json.Decoder(Rows).decode
_canonical = msgspec.json.Encoder(order="sorted").encode


def _path(ns: str, tail: str = "") -> str:
    return f"/v2/namespaces/{quote(ns, safe='')}{tail}"


async def query(state: WorkerState, ns: str, body: dict[str, Any], key: str | None) -> list[dict[str, Any]] | None:
    """The rows of one upstream query; None when the namespace does not exist. Other failures: 502."""
    resp = await state.upstream.request("POST", _path(ns, "/query"), key, json_encode(body), "queue read")
    if resp.status == 404:
        return None
    detail = resp.body[:300].decode(errors="replace")
    if 400 <= resp.status < 500 and resp.status != 429:  # the store refused what the spec asks (a filter, a name)
        raise validation_error(f"the store rejected the read of '{ns}' ({resp.status}): {detail}")
    if not resp.ok:
        raise upstream_error(f"Turbopuffer query on '{ns}' failed: upstream returned {resp.status}: {detail}")
    try:
        return _rows_decode(resp.body).rows
    except msgspec.DecodeError as exc:
        raise upstream_error(f"Turbopuffer query on '{ns}' returned an unexpected body: {exc}") from None


async def by_ids(state: WorkerState, ns: str, ids: list[Any], include: list[str] | bool,
                 key: str | None) -> dict[str, dict[str, Any]]:
    """Rows by typed id (batches of ID_BATCH), keyed by the id as a string; absent rows are absent."""
    found: dict[str, dict[str, Any]] = {}
    for start in range(0, len(ids), ID_BATCH):
        chunk = ids[start:start + ID_BATCH]
        body = {"rank_by": ["id", "asc"], "top_k": len(chunk), "filters": ["id", "In", chunk],
                "include_attributes": include}
        for row in await query(state, ns, body, key) or ():
            found[str(row.get("id"))] = row
    return found


async def schema(state: WorkerState, ns: str, key: str | None) -> dict[str, Any] | None:
    """The namespace's attribute schema (None: no such namespace)."""
    resp = await state.upstream.request("GET", _path(ns, "/metadata"), key, None, "queue metadata")
    if resp.status == 404:
        return None
    if not resp.ok:
        raise upstream_error(f"Turbopuffer metadata of '{ns}' failed: upstream returned {resp.status}")
    try:
        doc = msgspec.json.decode(resp.body)
    except msgspec.DecodeError:
        raise upstream_error(f"Turbopuffer metadata of '{ns}' was not JSON") from None
    found = doc.get("schema") if isinstance(doc, dict) else None
    return found if isinstance(found, dict) else {}


def has_vector(schema_doc: dict[str, Any]) -> bool:
    vec = schema_doc.get("vector")
    return isinstance(vec, dict) and bool(vec.get("ann"))


def attribute_names(inputs: list[str]) -> list[str]:
    """The stored attributes a spec's inputs need read (`id` needs no read)."""
    return [name for name in inputs if name != "id"]


def input_of(inputs: list[str], doc_id: Any, row: dict[str, Any]) -> dict[str, Any]:
    """What a worker gets: every input name, null where the row has no such attribute."""
    return {name: doc_id if name == "id" else row.get(name) for name in inputs}


def input_hash(value: dict[str, Any]) -> str:
    return hashlib.blake2b(_canonical(value), digest_size=16).hexdigest()

