"""Namespaces a request body names besides the path's (gateway.auth.BODY_NAMESPACES); each one needs read scope.

A Turbopuffer write (`POST /v2/namespaces/{ns}`, and its start-copy form `POST /v2/namespaces/{ns}/async`) may copy
or branch from a source namespace: `copy_from_namespace` / `branch_from_namespace`, each a string or an object
with `source_namespace` (turbopuffer.md §2, §4.1, §11.2). Only those fields are decoded (a narrow view, ~1 GB/s);
the body itself is still forwarded byte-for-byte.
"""

from __future__ import annotations

import json
from typing import Any

import msgspec
from msgspec import UNSET, Struct, UnsetType

from gateway.http import bad_request, validation_error


class SourceRef(Struct):
    source_namespace: str


class WriteSources(Struct):
    copy_from_namespace: str | SourceRef | UnsetType = UNSET
    branch_from_namespace: str | SourceRef | UnsetType = UNSET


write_sources_decoder = msgspec.json.Decoder(WriteSources)


def write_sources(body: bytes) -> list[str]:
    """The source namespaces a write body names. A body that is not a JSON object, or not JSON, names none
    (upstream rejects it in its own words); a source field of another shape is 422, since the gateway cannot
    check what it cannot read (serde would even take `["ns"]` for the object form)."""
    try:
        view = write_sources_decoder.decode(body)
    except msgspec.ValidationError as exc:
        if not body.lstrip().startswith(b"{"):
            return []
        raise validation_error(f"invalid write request: {exc}") from None
    except msgspec.DecodeError:
        return []
    sources = [s if isinstance(s, str) else s.source_namespace
               for s in (view.copy_from_namespace, view.branch_from_namespace) if not isinstance(s, UnsetType)]
    if sources:
        _reject_duplicate_keys(body)
    return sources


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        keys = [k for k, _ in pairs]
        dup = next(k for k in keys if keys.count(k) > 1)
        raise bad_request(f"duplicate key `{dup}` in the request body")
    return obj


def _reject_duplicate_keys(body: bytes) -> None:
    # The view keeps the last of duplicate keys; another parser may keep the first. A body that names a source
    # must mean the same thing to the gateway and to upstream, so duplicates are refused (RFC 8259 §4: SHOULD be
    # unique). Only copy/branch bodies get here, and they are small.
    try:
        json.loads(body, object_pairs_hook=_unique_keys)
    except (ValueError, RecursionError) as exc:
        raise bad_request(f"invalid JSON body: {exc}") from None
