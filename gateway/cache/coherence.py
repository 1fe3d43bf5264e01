"""Why the cache never serves what upstream does not hold (docs/cache.md, "The invariant"): the record every backend
stores per document, the namespace-wide state, and every change to them as a pure function of what is stored now.

Both backends apply these functions with check-and-set (a SQLite transaction; Aerospike generation checks): they
read a record, call the function, and write its answer only if the record did not change meanwhile (else they read
and call again). So the rules below are the whole of the coherence logic, the same for both backends.

* A record is **served** only while `ok` and of the namespace's current `epoch`.
* A write first **begins**: it blanks the served flag (keeping the attributes as the base a patch merges into) and
  adds itself to `pending` with a deadline (upstream timeout + unknown horizon). Only then does it go upstream.
* It then **finishes**: it leaves `pending`; with a known outcome, and only if nothing else touched the record since
  it began (same version), no other write is pending and no unknown outcome can still land, the record takes the
  write's result (upsert: the new row; patch: base + patch; delete: nothing; rejected: the base again). With an
  unknown outcome (timeout, transport failure, 5xx) it sets `unknown_until` = now + the horizon.
* A fetch miss reads a **token** (version, epoch, time) before asking upstream; its **fill** lands only if the
  version is unchanged, no write is pending, no unknown outcome can land, and the token is younger than the fill
  window (eviction never removes a record younger than that window, so "absent" cannot be an ABA).
* A namespace-wide event (namespace delete, copy into it, a by-filter write with an unknown outcome) **resets** the
  namespace: a new epoch makes every record of the old one unservable at once, and in-flight fills and finishes
  write old-epoch records that are never served. Pending writes and unknown outcomes survive a reset.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import msgspec

from gateway.cache.base import CacheDoc, encode_attrs, record_size

_merge_decode = msgspec.msgpack.Decoder(dict[str, Any]).decode
_pending_encode = msgspec.msgpack.Encoder().encode
_pending_decode = msgspec.msgpack.Decoder(dict[str, int]).decode


def now_ms() -> int:
    return int(time.time() * 1000)


class Record(msgspec.Struct, gc=False):
    """One document's cache record (attributes msgpack, vector float32 bytes) and its fences."""

    attrs: bytes | None = None
    vec: bytes | None = None
    ok: bool = False  # attrs are what upstream holds: servable
    epoch: int = 0  # the namespace epoch it belongs to
    pending: dict[str, int] = {}  # writes in flight: write id -> ms until which it may still land upstream
    unknown_until: int = 0  # ms until which a write with an unknown outcome may still land upstream

    @property
    def busy_until(self) -> int:
        return max(self.unknown_until, *self.pending.values()) if self.pending else self.unknown_until


class Space(msgspec.Struct, gc=False):
    """Namespace-wide state: the epoch (bumped by resets) and a namespace-wide unknown outcome."""

    epoch: int = 0
    unknown_until: int = 0


class Token(msgspec.Struct, frozen=True, gc=False):
    """What a miss saw, read before the upstream read: fills are checked against it."""

    ver: int  # record version (SQLite) or generation (Aerospike); 0 = no record
    epoch: int
    at: int  # ms
    fill: bool  # a fill may land (else: adopt, when `adopt`, or nothing)
    adopt: bool = False  # a record of an old epoch: blank it into the current epoch so later misses can fill


class Lookup(msgspec.Struct, gc=False):
    """What a read found: served values by id, and for every other id read the token a fill must present."""

    hits: dict[str, Any]
    tokens: dict[str, Token]


# Write outcomes, as the write phase knows them after the upstream call.
APPLIED, REJECTED, UNKNOWN = "applied", "rejected", "unknown"


class Upsert(msgspec.Struct, frozen=True, gc=False):
    attrs: dict[str, Any]
    vec: bytes | None


class Patch(msgspec.Struct, frozen=True, gc=False):
    changes: dict[str, Any]  # None removes the attribute


class Delete(msgspec.Struct, frozen=True, gc=False):
    pass


class Blank(msgspec.Struct, frozen=True, gc=False):
    """The result is not known here (conditional write, several ops on one id): serve nothing until a fill."""


Effect = Upsert | Patch | Delete | Blank
# (stored record or None, its version, the namespace state, now) -> the record to store, or None for no change
Change = Callable[[Record | None, int, Space, int], Record | None]


def encode_pending(pending: dict[str, int]) -> bytes | None:
    return _pending_encode(pending) if pending else None


def decode_pending(blob: bytes | None) -> dict[str, int]:
    return _pending_decode(blob) if blob else {}


def live(rec: Record | None, space: Space, now: int) -> Record:
    """`rec` as of now: data of an old epoch is dropped, writes past their deadline are forgotten."""
    if rec is None:
        return Record(epoch=space.epoch)
    pending = {w: until for w, until in rec.pending.items() if until > now} if rec.pending else rec.pending
    if rec.epoch != space.epoch:
        return Record(epoch=space.epoch, pending=pending, unknown_until=rec.unknown_until)
    if pending is not rec.pending:
        return msgspec.structs.replace(rec, pending=pending)
    return rec


def blocked(rec: Record, space: Space, now: int) -> bool:
    """True while a write may still land upstream (pending or unknown), here or namespace-wide."""
    return bool(rec.pending) or rec.unknown_until > now or space.unknown_until > now


def servable(rec: Record | None, space: Space) -> bool:
    return rec is not None and rec.ok and rec.epoch == space.epoch


def token(rec: Record | None, ver: int, space: Space, now: int) -> Token:
    if rec is not None and rec.epoch != space.epoch:
        return Token(ver, space.epoch, now, False, adopt=True)
    return Token(ver, space.epoch, now, not blocked(live(rec, space, now), space, now))


def begin(write_id: str, until: int) -> Change:
    def change(rec: Record | None, ver: int, space: Space, now: int) -> Record:
        cur = live(rec, space, now)
        base = cur.ok and not cur.pending  # served until now: upstream's version, which a patch merges into
        return Record(cur.attrs if base else None, cur.vec if base else None, False, space.epoch,
                      {**cur.pending, write_id: until}, cur.unknown_until)

    return change


def finish(write_id: str | None, begun: Token | None, effect: Effect | None, outcome: str, unknown_until: int,
           max_bytes: int, doc_id: str) -> Change:
    """The write left `pending`. `begun` (what its begin left) None: the begin did not reach the cache, or this is
    a replay: no mirror, only the fences."""
    def change(rec: Record | None, ver: int, space: Space, now: int) -> Record:
        cur = live(rec, space, now)
        pending = {w: u for w, u in cur.pending.items() if w != write_id} if write_id in cur.pending else cur.pending
        until = max(cur.unknown_until, unknown_until) if outcome == UNKNOWN else cur.unknown_until
        blank = Record(epoch=space.epoch, pending=pending, unknown_until=until)
        if (begun is None or ver != begun.ver or space.epoch != begun.epoch or outcome == UNKNOWN or effect is None
                or blocked(blank, space, now)):
            return blank
        if outcome == REJECTED:  # upstream kept what it had when the write began: the base, if there was one
            return Record(cur.attrs, cur.vec, cur.attrs is not None, space.epoch)
        if isinstance(effect, Upsert):
            attrs, vec = encode_attrs(effect.attrs), effect.vec
        elif isinstance(effect, Patch) and cur.attrs is not None:
            merged = _merge_decode(cur.attrs)
            for name, value in effect.changes.items():
                if value is None:
                    merged.pop(name, None)
                else:
                    merged[name] = value
            attrs, vec = encode_attrs(merged), cur.vec
        else:  # delete, blank, or a patch without a base
            return blank
        if record_size(doc_id, attrs, vec) > max_bytes:
            return blank
        return Record(attrs, vec, True, space.epoch)

    return change


def settle(unknown_until: int) -> Change:
    """Blank the data, keep the fences (and add an unknown outcome until `unknown_until`): always safe."""
    def change(rec: Record | None, ver: int, space: Space, now: int) -> Record:
        cur = live(rec, space, now)
        return Record(epoch=space.epoch, pending=cur.pending, unknown_until=max(cur.unknown_until, unknown_until))

    return change


def fill(tok: Token, doc: CacheDoc, attrs: bytes, window_ms: int) -> Change:
    """A fetch backfill: lands only if nothing changed since the token and nothing can still land upstream."""
    def change(rec: Record | None, ver: int, space: Space, now: int) -> Record | None:
        if not tok.fill or ver != tok.ver or space.epoch != tok.epoch or now - tok.at > window_ms:
            return None
        if blocked(live(rec, space, now), space, now):
            return None
        return Record(attrs, doc.vector, True, space.epoch)

    return change


def fill_absent(page: Token, doc: CacheDoc, attrs: bytes, window_ms: int) -> Change:
    """A warm page, read after `page` (a namespace token): only ids without any record, i.e. untouched since."""
    def change(rec: Record | None, ver: int, space: Space, now: int) -> Record | None:
        if rec is not None or space.epoch != page.epoch or space.unknown_until > now or now - page.at > window_ms:
            return None
        return Record(attrs, doc.vector, True, space.epoch)

    return change


def fill_vector(tok: Token, vec: bytes) -> Change:
    """nearest_to_id: add the vector to a served record that did not change since the token."""
    def change(rec: Record | None, ver: int, space: Space, now: int) -> Record | None:
        if rec is None or ver != tok.ver or not servable(rec, space):
            return None
        return msgspec.structs.replace(rec, vec=vec)

    return change


def reset(space: Space, unknown_until: int) -> Space:
    return Space(space.epoch + 1, max(space.unknown_until, unknown_until))
