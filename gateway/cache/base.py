"""The document cache: one protocol, its value types, its settings and the codecs both backends share.

A cached document is one record keyed (namespace, id) holding the attribute map (msgpack, never the vector, never
`id`), optionally the dense vector as little-endian float32 bytes, and its fences (gateway/cache/coherence.py: the
rules that keep it from serving what upstream does not hold). Every backend call either answers or raises
`CacheError` quickly (bounded by the cache timeout); callers treat a `CacheError` as "cache unavailable" and go on.
"""

from __future__ import annotations

import base64
import hashlib
from array import array
from collections.abc import Mapping, Sequence
from functools import partial
from typing import TYPE_CHECKING, Any, Protocol

import msgspec

if TYPE_CHECKING:
    from gateway.cache._runner import Runner
    from gateway.cache.coherence import Change, Lookup, Token
    from gateway.config import CacheSettings

SET_NAME_MAX = 63  # Aerospike set-name limit in bytes
JOBS_SET = "_hevlayer_jobs"
ROW_NOT_ATTRIBUTES = frozenset({"id", "vector", "vectors"})

_msgpack_encode = msgspec.msgpack.Encoder().encode
_attrs_decode = msgspec.msgpack.Decoder(dict[str, Any]).decode
_floats = partial(msgspec.convert, type=list[float])


class CacheError(Exception):
    """The cache could not answer in time (down, slow, breaker open, full). Always soft for callers."""

    def __init__(self, message: str, kind: str = "error") -> None:
        super().__init__(message)
        self.kind = kind  # error | timeout | breaker_open | unavailable


class CacheDoc(msgspec.Struct, gc=False):
    """One document as upstream returned it: attributes and, optionally, the dense vector as f32 bytes."""

    id: str
    attrs: dict[str, Any]
    vector: bytes | None = None


class CacheStatus(msgspec.Struct, frozen=True, gc=False):
    backend: str
    connected: bool
    generation: int  # increments on each (re)connect; first connect = 1
    last_error: str | None = None


class WarmJob(msgspec.Struct, omit_defaults=True):
    """Wire shape of a warm job (layer.md §2.4); absent keys are omitted."""

    id: str
    namespace: str
    status: str  # running | completed | failed
    progress: float  # no defaults: clients require these two keys even at 0
    documents_scanned: int
    created_at: str
    stable_as_of: int | None = None
    completed_at: str | None = None
    error: str | None = None
    updated_ms: int | None = None  # internal heartbeat of the worker running it; stripped before responding


def set_name(prefix: str, ns: str) -> str:
    """prefix + namespace, or a stable hashed form when that would exceed Aerospike's 63-byte set limit."""
    name = prefix + ns
    if len(name.encode()) <= SET_NAME_MAX:
        return name
    digest = hashlib.sha256(ns.encode()).hexdigest()[:16]
    keep = SET_NAME_MAX - len(prefix.encode()) - 17
    head = ns.encode()[: max(keep, 0)].decode(errors="ignore")
    return f"{prefix}{head}~{digest}"


def encode_attrs(attrs: Mapping[str, Any]) -> bytes:
    return _msgpack_encode(attrs)


def decode_attrs(blob: bytes, include: Sequence[str] | None) -> dict[str, Any]:
    attrs = _attrs_decode(blob)
    return attrs if include is None else project(attrs, include)


def project(attrs: Mapping[str, Any], include: Sequence[str] | None) -> dict[str, Any]:
    if include is None:
        return dict(attrs)
    return {k: attrs[k] for k in include if k in attrs}


def pack_vector(value: Any) -> bytes | None:
    """A wire vector (number list or base64 of LE float32) -> f32 bytes; anything else (multi-vector...) -> None."""
    if isinstance(value, str):
        try:
            raw = base64.b64decode(value, validate=True)
        except ValueError:
            return None
        return raw if raw and len(raw) % 4 == 0 else None
    if isinstance(value, list) and value:
        try:  # numbers only (bools refused): ~15x faster than checking each element in Python
            return array("f", _floats(value)).tobytes()
        except msgspec.ValidationError:
            return None
    return None


def doc_from_row(row: Mapping[str, Any]) -> CacheDoc:
    """An upstream query row (`include_attributes: true`) as a cache document: id and `$`-keys dropped."""
    attrs = {k: v for k, v in row.items() if k not in ROW_NOT_ATTRIBUTES and not k.startswith("$")}
    return CacheDoc(str(row["id"]), attrs, pack_vector(row.get("vector")))


def unpack_vector(blob: bytes) -> list[float]:
    vec = array("f")
    vec.frombytes(blob)
    return vec.tolist()


def record_size(doc_id: str, attrs_blob: bytes | None, vec: bytes | None) -> int:
    """Estimated stored size (Aerospike-like: fixed overhead + key + bins)."""
    return 64 + len(doc_id.encode()) + (len(attrs_blob) if attrs_blob else 0) + (len(vec) if vec else 0)


class JobStore(Protocol):
    """Warm-job records every worker (and with Aerospike every host) can read."""

    async def put(self, job: WarmJob) -> None: ...
    async def get(self, job_id: str) -> WarmJob | None: ...
    async def list(self, ns: str | None) -> list[WarmJob]: ...  # None: every namespace
    async def delete_namespace(self, ns: str) -> None: ...


class DocumentCache(Protocol):
    """Raises CacheError on any failure; never blocks the event loop longer than the cache timeout."""

    backend: str
    settings: CacheSettings
    runner: Runner

    @property
    def jobs(self) -> JobStore: ...
    def set_name(self, ns: str) -> str: ...
    def status(self) -> CacheStatus: ...
    async def start(self) -> None: ...
    async def lookup(self, ns: str, ids: Sequence[str], include: Sequence[str] | None = None) -> Lookup:
        """Served attributes of `ids` (projected to `include`), tokens for the rest (none for suspect ids)."""
        ...
    async def lookup_vectors(self, ns: str, ids: Sequence[str]) -> Lookup:
        """Served vectors (float lists); tokens for served records without a vector (a vector fill may land)."""
        ...
    async def space(self, ns: str) -> Token:
        """A namespace token (ver 0): what a warm page read after it may fill."""
        ...
    async def update(self, ns: str, changes: Mapping[str, Change], fence: bool = False) -> dict[str, Token]:
        """Apply each id's change to its current record atomically (check-and-set); for each id written, what it
        left (version and epoch). `fence`: a write fence or a reset, tried even while the breaker is open."""
        ...
    async def reset(self, ns: str, unknown_until: int) -> None:
        """A new namespace epoch (and a namespace-wide unknown outcome until `unknown_until`, if later)."""
        ...
    async def result_generation(self, ns: str) -> int:
        """The namespace's write generation for the query-result cache (gateway/cache/results.py)."""
        ...
    async def bump_results(self, ns: str) -> None:
        """Advance that generation (a fence: tried even while the breaker is open)."""
        ...
    async def collect(self, ns: str) -> int:
        """Remove records of old epochs that hold no fence (space only); how many went."""
        ...
    async def close(self) -> None: ...
