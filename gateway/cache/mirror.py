"""The write mirror: the fences a write through the gateway puts around its upstream call (coherence.py has why).

Before the upstream call, every explicitly named id begins (its cached copy stops being served) in the shared
cache. After it, each id finishes with the outcome: 2xx applied, 4xx (429 included) rejected, anything else
(5xx, timeout, transport failure, cancellation) unknown. Conditional and by-filter writes ask upstream for
`return_affected_ids`; by-filter writes name their ids only in the answer, so those are blanked after success, and
an unknown outcome resets the whole namespace. Copy/branch into a namespace and namespace deletes reset it too.

Everything here is soft: a fence the cache did not take is remembered by the backend's runner (this worker treats
those ids as misses) and replayed until it lands; a write is never failed or held longer than the cache timeout.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Iterator
from typing import Any

import msgspec

from gateway import metrics
from gateway.cache import coherence as co
from gateway.cache.base import CacheError, DocumentCache, pack_vector
from gateway.cache.coherence import Blank, Change, Delete, Effect, Patch, Token, Upsert

log = logging.getLogger("gateway.cache")
CONDITIONS = ("upsert_condition", "patch_condition", "delete_condition")
FILTERS = ("delete_by_filter", "patch_by_filter")
COPIES = ("copy_from_namespace", "branch_from_namespace")
NOT_ATTRIBUTES = frozenset({"id", "vector", "vectors"})


class AffectedIds(msgspec.Struct):
    upserted_ids: list[Any] = []
    patched_ids: list[Any] = []
    deleted_ids: list[Any] = []


_affected_decode = msgspec.json.Decoder(AffectedIds).decode


class WritePlan:
    """What one write does to the cache, decided from its body before the upstream call."""

    __slots__ = ("conditional", "copies", "effects", "fenced", "filtered", "write_id")

    def __init__(self, doc: dict[str, Any]) -> None:
        self.write_id = f"{random.getrandbits(64):016x}"  # unique enough, without a syscall per write
        self.effects = effects(doc)
        self.conditional = any(doc.get(k) is not None for k in CONDITIONS)
        self.filtered = any(doc.get(k) is not None for k in FILTERS)
        self.copies = any(doc.get(k) is not None for k in COPIES)
        self.fenced: dict[str, Token] | None = None  # what each begin left; None: the cache did not take them


def _rows(doc: dict[str, Any], rows_key: str, columns_key: str) -> Iterator[dict[str, Any]]:
    rows = doc.get(rows_key)
    if isinstance(rows, list):
        yield from (r for r in rows if isinstance(r, dict) and "id" in r)
    cols = doc.get(columns_key)
    if isinstance(cols, dict) and isinstance(cols.get("id"), list):
        names = [k for k, v in cols.items() if isinstance(v, list)]
        for i in range(len(cols["id"])):
            yield {k: cols[k][i] for k in names if i < len(cols[k])}


def effects(doc: dict[str, Any]) -> dict[str, Effect]:
    """Explicit id -> what the write does to it if applied. An id named twice is Blank (order is upstream's)."""
    out: dict[str, Effect] = {}

    def add(doc_id: Any, effect: Effect) -> None:
        key = str(doc_id)
        out[key] = Blank() if key in out else effect

    for row in _rows(doc, "upsert_rows", "upsert_columns"):
        attrs = {k: v for k, v in row.items() if k not in NOT_ATTRIBUTES and v is not None}
        add(row["id"], Upsert(attrs, pack_vector(row.get("vector"))))
    for row in _rows(doc, "patch_rows", "patch_columns"):
        add(row["id"], Patch({k: v for k, v in row.items() if k not in NOT_ATTRIBUTES}))
    deletes = doc.get("deletes")
    for doc_id in deletes if isinstance(deletes, list) else ():
        if isinstance(doc_id, (str, int)) and not isinstance(doc_id, bool):
            add(doc_id, Delete())
    return out


async def before_write(cache: DocumentCache, ns: str, doc: dict[str, Any]) -> WritePlan:
    """Begin every explicitly named id (runs before the body is encoded: it may add `return_affected_ids`)."""
    plan = WritePlan(doc)
    if plan.conditional or plan.filtered:
        doc["return_affected_ids"] = True
    if not plan.effects:
        return plan
    until = co.now_ms() + cache.settings.pending_ms
    begin = co.begin(plan.write_id, until)
    try:
        plan.fenced = await cache.update(ns, dict.fromkeys(plan.effects, begin), fence=True)
        metrics.inc(metrics.mirror_counter("begin", "ok"), len(plan.effects))
    except CacheError as exc:
        # Unfenced: other workers may serve the old version until the replay lands (docs/cache.md). The replay
        # keeps the ids unfillable for as long as this write could still land upstream.
        metrics.inc(metrics.mirror_counter("begin", "error"), len(plan.effects))
        log.warning("cache fence of %d id(s) in %s failed: %s", len(plan.effects), ns, exc)
        cache.runner.remember(ns, dict.fromkeys(plan.effects, until))
    return plan


def outcome_of(status: int | None) -> str:
    """2xx applied; 4xx (429 too) rejected before anything was applied; 5xx and no answer (None) unknown."""
    if status is not None and 200 <= status < 300:
        return co.APPLIED
    return co.REJECTED if status is not None and 400 <= status < 500 else co.UNKNOWN


async def after_write(cache: DocumentCache, ns: str, plan: WritePlan, status: int | None, body: bytes) -> None:
    """Finish every begun id with the write's outcome; blank by-filter ids; reset the namespace when needed."""
    outcome = outcome_of(status)
    if outcome == co.REJECTED and not plan.effects:
        return
    now = co.now_ms()
    unknown_until = now + cache.settings.unknown_ms if outcome == co.UNKNOWN else 0
    affected = _affected(body) if outcome == co.APPLIED and (plan.conditional or plan.filtered) else None
    changes: dict[str, Change] = {}
    if plan.fenced is not None:  # an unfenced write was remembered in before_write: its replay blanks the ids
        for doc_id, effect in plan.effects.items():
            changes[doc_id] = co.finish(plan.write_id, plan.fenced.get(doc_id), *_result(plan, doc_id, effect,
                                        outcome, affected), unknown_until, cache.settings.max_record_bytes, doc_id)
    reset: int | None = None
    if plan.copies and outcome != co.REJECTED:
        reset = unknown_until
    if plan.filtered:
        if outcome == co.UNKNOWN or (outcome == co.APPLIED and affected is None):
            reset = unknown_until
        elif affected is not None:
            for doc_id in (str(i) for i in (*affected.patched_ids, *affected.deleted_ids)):
                if doc_id not in plan.effects:  # explicit ids finish above (as Blank when the filter named them)
                    changes[doc_id] = co.settle(0)
    await apply(cache, ns, changes, reset, unknown_until)


def _result(plan: WritePlan, doc_id: str, effect: Effect, outcome: str,
            affected: AffectedIds | None) -> tuple[Effect, str]:
    """(effect, outcome) for one id: a conditional write applied only to the ids its answer names."""
    if outcome != co.APPLIED or not (plan.conditional or plan.filtered):
        return effect, outcome
    if affected is None:
        return Blank(), outcome
    named = {str(i) for i in (*affected.upserted_ids, *affected.patched_ids, *affected.deleted_ids)}
    if plan.filtered:  # a by-filter part may have touched an explicit id too: its result is not known here
        return (Blank(), outcome) if doc_id in named else (effect, outcome)
    return (effect, outcome) if doc_id in named else (effect, co.REJECTED)


def _affected(body: bytes) -> AffectedIds | None:
    try:
        return _affected_decode(body)
    except (msgspec.DecodeError, msgspec.ValidationError):
        log.warning("write response had no readable affected ids; treating the write's ids as changed")
        return None


async def reset_namespace(cache: DocumentCache, ns: str, status: int | None) -> bool:
    """After a namespace delete: a new epoch unless upstream rejected it (404 counts: nothing is there). True if
    the namespace was reset (or its reset is remembered for replay)."""
    outcome = outcome_of(status)
    if outcome == co.REJECTED and status != 404:
        return False
    unknown_until = co.now_ms() + cache.settings.unknown_ms if outcome == co.UNKNOWN else 0
    await apply(cache, ns, {}, unknown_until, unknown_until)
    return True


async def apply(cache: DocumentCache, ns: str, changes: dict[str, Change], reset: int | None,
                unknown_until: int) -> None:
    """Apply the fences (the reset first); what does not land is remembered and replayed."""
    try:
        if reset is not None:
            await cache.reset(ns, reset)
            metrics.inc(metrics.mirror_counter("reset", "ok"))
        if changes:
            await cache.update(ns, changes, fence=True)
            metrics.inc(metrics.mirror_counter("finish", "ok"), len(changes))
    except CacheError as exc:
        metrics.inc(metrics.mirror_counter("finish", "error"), max(len(changes), 1))
        log.warning("cache fences for %d id(s) in %s did not land (replayed later): %s", len(changes), ns, exc)
        cache.runner.remember(ns, dict.fromkeys(changes, unknown_until), reset)
