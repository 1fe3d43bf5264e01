"""Watermarks: per-worker, polled from upstream namespace metadata (layer.md §3.2), fenced by the gateway's writes.

A namespace is watched after its first write, metadata call or query through this worker. The background loop
polls watched namespaces (fast while updating, slowly while stable); the hot path only reads `decision()`.
Watch state is keyed by the namespace's cache name (gateway/cache/partition.py): the namespace name with a store key;
in derive-from-request mode `name@fingerprint`, since two organisations may each own a namespace of one name and
one's writes must neither fence the other's nor its polls judge it. The poll asks upstream for the bare name with the
last valid key seen for that name (memory only): a key of a caller upstream showed that very namespace.

Write fence (why the filter is exact whatever the write latency and the clocks): a write's stamp is taken by
`begin_write`, never at or below a watermark this watcher ever held (`wmax`), and while the write is in flight no
stable poll raises the watermark to its stamp. When the write may have landed, `end_write` fences: `updating`,
watermark capped at `stamp - 1`, generation + 1. A poll publishes only if the generation it read before its call is
still current, so a poll that started before a fence can never undo it. A row the upstream has not indexed can then
only pass the filter if it was stamped by another worker: gateway/watch_board.py shares the same record across
workers (and hosts) when configured.

Voided up-to-date answers still raise the watermark (writes faster than a poll's round trip would void every answer
and stall it): to min(poll start - margin, lowest stamp fenced since the poll read its generation - 1, lowest stamp
in flight - 1), status unchanged. The record ends as if the answer had been published just before the first of those
fences, which the rules above allow: a row at or below it was acknowledged before the poll's call (the answer covers
it); any later row's fence or in-flight entry is above it; a write that begins later is stamped above it (`wmax`).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import sqlite3
import sys
import time
from collections.abc import Callable
from typing import Any, NamedTuple
from urllib.parse import quote

import msgspec

from gateway import metrics
from gateway.cache.partition import namespace_of
from gateway.per_tick import Batch, PerTick
from gateway.sqlite_wal import Checkpoints
from gateway.tasks import Tasks
from gateway.upstream import Upstream
from gateway.watch_board import Settle, WatchBoard, WatchRecord, host_ms

STABLE, UPDATING, UNKNOWN = "stable", "updating", "unknown"
POLL_HOLD_S = 15.0  # a claimed poll slot lapses after this (the poller died): another worker polls
BUSY_CODES = (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)  # the SQLite board is busy: others are claiming
log = logging.getLogger("gateway.consistency")


class IndexView(msgspec.Struct):
    status: str | None = None
    unindexed_bytes: int | None = None


class MetadataView(msgspec.Struct):
    index: IndexView | None = None


metadata_view_decoder = msgspec.json.Decoder(MetadataView)


def digest(body: bytes) -> str:
    return hashlib.blake2b(body, digest_size=8).hexdigest()


def now_ms() -> int:
    return int(time.time() * 1000)


def _has_unindexed(obj: Any) -> bool:
    if isinstance(obj, dict):
        for k, v in obj.items():
            if k == "unindexed_bytes" and isinstance(v, int) and not isinstance(v, bool) and v != 0:
                return True
            if _has_unindexed(v):
                return True
    elif isinstance(obj, list):
        return any(_has_unindexed(v) for v in obj)
    return False


def status_from_metadata(body: bytes | dict[str, Any]) -> str:
    """Stable / updating / unknown from an upstream metadata body (§3.2 status parsing)."""
    if isinstance(body, dict):
        index = body.get("index")
        status = index.get("status") if isinstance(index, dict) else None
        parsed: Any = body
    else:
        try:
            view = metadata_view_decoder.decode(body)
        except msgspec.DecodeError:
            return UNKNOWN
        status = view.index.status if view.index else None
        parsed = None
    if status == "up-to-date":
        return STABLE
    if status == "updating":
        return UPDATING
    if parsed is None:
        try:
            parsed = msgspec.json.decode(body)
        except msgspec.DecodeError:
            return UNKNOWN
    return UPDATING if _has_unindexed(parsed) else UNKNOWN


EXHAUSTIVE_KEY = b'"exhaustive_search_count":'
TAIL_BYTES = 512  # `performance` comes last in an upstream query body


def shows_unindexed(body: bytes) -> bool:
    """A query response body whose `performance.exhaustive_search_count` is > 0 (a tail scan, no JSON decode)."""
    at = body.rfind(EXHAUSTIVE_KEY, max(len(body) - TAIL_BYTES, 0))
    if at < 0:
        return False
    rest = body[at + len(EXHAUSTIVE_KEY):at + len(EXHAUSTIVE_KEY) + 24].lstrip()
    n = len(rest) - len(rest.lstrip(b"0123456789"))
    return n > 0 and int(rest[:n]) > 0


def _metadata_path(ns: str) -> str:
    return f"/v2/namespaces/{quote(namespace_of(ns), safe='')}/metadata"


def _counters(ns: str) -> tuple[Any, ...]:
    return metrics.watch_children(namespace_of(ns))


class WriteTicket(NamedTuple):
    ns: str | None  # None: the namespace had no identity yet (derive mode: the write may create it), no fence
    stamp: int
    board_ticket: int | None  # the shared record's in-flight entry (None: this worker's record only)
    key: str | None


class NamespaceWatch:
    __slots__ = ("due", "fenced_min", "fenced_since", "gen", "inflight", "key", "last_polled", "last_used", "min_gen",
                 "observed_ms", "status", "watermark", "wmax")

    def __init__(self) -> None:
        self.last_used = time.monotonic()
        self.status = UNKNOWN
        self.watermark: int | None = None
        self.wmax = 0  # the highest watermark ever held: new stamps stay above it
        self.gen = 0  # + 1 on every fence or hint: voids polls that started before
        self.inflight: dict[int, int] = {}  # stamp -> writes in flight (they cap a stable watermark)
        # The lowest stamp fenced since generation `fenced_since` (reset when a poll starts): a voided up-to-date
        # answer of a call made after reading a generation >= fenced_since still raises the watermark below it
        self.fenced_since, self.fenced_min = sys.maxsize, sys.maxsize
        self.observed_ms = 0  # the shared record's last observation (mirror only)
        # Mirror only: records older than this generation are ignored (a local fence or hint not yet in the record)
        self.min_gen = 0
        self.last_polled = 0.0
        self.due = True
        self.key: str | None = None

    def set_watermark(self, w: int, raise_only: bool = False) -> None:
        if self.inflight:
            w = min(w, min(self.inflight) - 1)
        if raise_only and self.watermark is not None and w <= self.watermark:
            return
        self.watermark = w
        self.wmax = max(self.wmax, w)

    def fence(self, stamp: int) -> None:
        self.status = UPDATING
        if self.watermark is not None and self.watermark >= stamp:
            self.watermark = stamp - 1
        self.fenced_min = min(self.fenced_min, stamp)
        self.gen += 1

    def track_fences(self) -> None:
        self.fenced_since, self.fenced_min = self.gen, sys.maxsize


class Watcher:
    """Per-worker watch state; with a `board` (gateway/watch_board.py) the worker's state is a mirror of the shared
    records, refreshed every `mirror_ms`, and every change goes through the board first. A board error falls back
    to per-worker polling for that call: correctness never needs the board across one worker, only across many."""

    def __init__(self, upstream: Upstream, poll_ms: int, stable_poll_ms: int, margin_ms: int,
                 idle_ms: int = 600_000, board: WatchBoard | None = None, mirror_ms: int = 250,
                 concurrency: int = 16, fallback_budget: float = 20.0, fence: bool = True) -> None:
        self.upstream = upstream
        self.idle_s = idle_ms / 1000
        self.poll_s = poll_ms / 1000
        self.stable_poll_s = stable_poll_ms / 1000
        self.margin_ms = margin_ms
        self.namespaces: dict[str, NamespaceWatch] = {}
        self.board = board
        self._board_now = board.nowait() if isinstance(board, WatchBoard) else None  # changes tried on the loop
        self._board_tick: PerTick[tuple[str, tuple[Any, ...]]] = PerTick(self._board_commit)
        self.fence = fence  # off: writes are stamped with the clock and only make the next poll due (as before)
        self.mirror_s = mirror_ms / 1000
        self.worker_id = f"{os.getpid()}-{id(self):x}"
        self.clock_ms = now_ms  # injectable (the simulation skews it)
        # Called with the namespace when upstream shows a write that did not come through this watcher (see
        # `_upstream_write_seen`); e.g. a result cache keyed by a per-namespace write generation.
        self.upstream_write_hooks: list[Callable[[str], None]] = []
        self._polls = asyncio.Semaphore(concurrency)
        # While the board fails: polls on this worker's own account, lazily and at most `fallback_budget` a second
        self.fallback_budget = fallback_budget
        self._tokens, self._tokens_at = fallback_budget, time.monotonic()
        self._wake = asyncio.Event()
        self._tasks = Tasks()
        # the SQLite board's WAL: the loop thread's changes never checkpoint it (an Aerospike board has none)
        self._board_checkpoints = (Checkpoints(self._tasks, "watch board checkpoint", board.checkpoint)
                                   if isinstance(board, WatchBoard) else None)
        # Called with (namespace, digest of the metadata body) after every poll this worker learns of (its own, or
        # through the shared record another worker's): the query-result cache bumps the namespace's generation when
        # the metadata changed (a write that may not have come through the gateway).
        self.on_upstream_metadata: Callable[[str, bytes], None] | None = None
        self._started = False

    # ---- hot path (reads and cheap registrations) ----
    def decision(self, ns: str) -> tuple[int | None, bool]:
        """(watermark, inject): inject the watermark filter only while the namespace is updating."""
        w = self.namespaces.get(ns)
        if w is None:
            return None, False
        return w.watermark, w.status == UPDATING and w.watermark is not None

    def watch(self, ns: str, key: str | None, due: bool = False) -> None:
        """Register `ns` (first write/metadata/query); `due` asks for a poll now (after a write)."""
        w = self.namespaces.get(ns)
        if w is None:
            w = self.namespaces[ns] = NamespaceWatch()
            due = True
        w.last_used = time.monotonic()
        if key and self.upstream.store_key is None:
            w.key = key
        if due:
            w.due = True
            self._wake.set()

    async def generation(self, ns: str) -> int:
        """Read before a metadata fetch on a request path; passed back to `observe`. With a board, the record's
        (inline for the SQLite board: a WAL read never waits for writers; in a thread for a networked one)."""
        if self.board is not None:
            try:
                rec = (await self._board_read([ns])).get(ns)
                return rec.gen if rec is not None else 0
            except Exception as exc:  # noqa: BLE001 - the publish then falls back too
                log.debug("watch board: read for %s failed: %s", ns, exc)
        w = self.namespaces.get(ns)
        return w.gen if w is not None else 0

    async def observe(self, ns: str, status: str, started_ms: int, key: str | None,
                      gen: int | None = None) -> NamespaceWatch:
        """Record a metadata fetch made on a request path (same rules as a poll)."""
        self.watch(ns, key)
        w = self.namespaces[ns]
        w.due = False
        w.last_polled = time.monotonic()
        metrics.inc(_counters(ns)[1])
        gen = w.gen if gen is None else gen
        await self._publish(ns, w, status, started_ms, gen, gen)
        return w

    async def forget(self, ns: str, gen: int, local_gen: int) -> None:
        """Upstream has no namespace `ns` (a poll's 404); `gen`/`local_gen`: the record's and this worker's
        generations read before that call. Unless a fence or hint came since, the record says `unknown` and this
        worker stops watching `ns` (but not while a write of its own to it is in flight). The record itself stays,
        and with it its generation, highest watermark and writes in flight: a write creating the namespace (again)
        may be in flight through any worker, and a stable poll must keep the watermark below its stamp, new stamps
        must stay above every watermark held, and a generation must never come back for a poll still in flight."""
        applied = True
        if self.board is not None:
            try:
                applied = await asyncio.to_thread(self.board.forget, ns, gen)
            except Exception as exc:  # noqa: BLE001 - soft: this worker's own state decides
                log.warning("watch board: forget for %s failed: %s", ns, exc)
        w = self.namespaces.get(ns)
        if applied and w is not None and w.gen == local_gen and not w.inflight:
            del self.namespaces[ns]

    def state(self, ns: str) -> NamespaceWatch | None:
        return self.namespaces.get(ns)

    # ---- write fence ----
    async def begin_write(self, ns: str | None, key: str | None) -> WriteTicket:
        """The stamp for a write about to be sent: above every watermark held, and held as in flight until
        `end_write` (a stable poll meanwhile keeps the watermark below it). `ns` None: the namespace has no
        identity yet (derive mode, it does not exist for this caller): name the ticket before `end_write`."""
        w = self.namespaces.get(ns) if ns is not None else None
        if w is not None and key and self.upstream.store_key is None:
            w.key = key
        stamp, ticket = self.clock_ms(), None
        if not self.fence or ns is None:
            return WriteTicket(ns, stamp, None, key)
        if self.board is not None:
            try:
                stamp, ticket = await self._board_call(self.board.begin_write, ns, stamp)
            except Exception as exc:  # noqa: BLE001 - the worker's own record still fences this worker
                log.warning("watch board: begin_write for %s failed: %s", ns, exc)
        w = self.namespaces.get(ns)
        if w is None:  # watched from now, polled after the write: a poll before that (a query registered it) keeps
            # the watermark below this stamp, even when a fence voids its answer
            w = self.namespaces[ns] = NamespaceWatch()
            w.due, w.last_polled, w.key = False, time.monotonic(), key if self.upstream.store_key is None else None
        stamp = max(stamp, w.wmax + 1)
        w.inflight[stamp] = w.inflight.get(stamp, 0) + 1
        return WriteTicket(ns, stamp, ticket, key)

    async def end_write(self, t: WriteTicket, landed: bool) -> None:
        """After the write's outcome; `landed` (acknowledged, or no/unclear answer): fence at once."""
        if not self.fence or t.ns is None:
            return
        w = self.namespaces.get(t.ns)
        was_updating = w is not None and w.status == UPDATING
        if w is not None:
            left = w.inflight.pop(t.stamp, 0) - 1
            if left > 0:
                w.inflight[t.stamp] = left
            if landed:
                w.fence(t.stamp)
                w.due = True
                self._wake.set()
        if landed:
            metrics.inc(_counters(t.ns)[2])
        # The record is fenced also when the write has no entry in it (begin_write failed, or the ticket was named
        # only after the write): board_ticket None removes nothing.
        answer, record_gen, shared = None, None, self.board is not None
        if landed and not was_updating:
            if w is None:
                self.watch(t.ns, t.key)
                w = self.namespaces[t.ns]
            if shared:  # read before the call: only this write's own fence may come between it and the answer
                record_gen = await self._record_gen(t.ns)
            answer = await self._settle_poll(t.ns, w)
        if shared:
            # The fence and the settling answer reach the record in one change: no worker sees one without the other
            settle = None
            if answer is not None and record_gen is not None:
                settle = Settle(record_gen, answer[0], answer[1], self.margin_ms, answer[3])
            await self._board_change(t.ns, w if landed else None, self.board.end_write,  # type: ignore[union-attr]
                                     t.ns, t.board_ticket, t.stamp, landed, settle)
            if settle is not None and w is not None:
                await self.refresh_mirror([t.ns])  # this worker answers from the record at once
        elif answer is not None and w is not None:
            status, started, local_gen, meta = answer
            self._apply(t.ns, w, status, started, local_gen)
            if self.on_upstream_metadata is not None:
                self.on_upstream_metadata(t.ns, meta.encode())

    async def _record_gen(self, ns: str) -> int | None:
        assert self.board is not None
        try:
            rec = (await self._board_read([ns])).get(ns)
        except Exception as exc:  # noqa: BLE001 - no settling answer then; the regular poll follows
            log.warning("watch board: read for %s failed: %s", ns, exc)
            return None
        return rec.gen if rec is not None else 0

    async def _settle_poll(self, ns: str, w: NamespaceWatch) -> tuple[str, int, int, str] | None:
        """The namespace was not updating before this write: ask upstream once before the write is answered, so a
        store that indexes at once does not leave the next reads filtered until the next poll. It is the poll the
        fence asks for anyway, and it starts after the write was acknowledged, so its answer is current (it is
        published only if no fence but this write's own came since the call started). Returns (status, poll start,
        this worker's generation before the call, digest of the metadata) or None. The digest goes into the record
        too: with writes coming faster than the stable poll interval, settling polls are the only metadata reads,
        and the query-result cache serves hits only while some worker read the metadata recently."""
        key = self.upstream.store_key or w.key
        if key is None:
            return None
        local_gen = w.gen
        w.due = False
        w.last_polled = time.monotonic()
        started = self.clock_ms()
        metrics.inc(_counters(ns)[0])
        try:
            resp = await self.upstream.request("GET", _metadata_path(ns), key,
                                               what="metadata poll")
        except Exception as exc:  # noqa: BLE001 - the regular poll follows
            log.debug("watermark poll for %s after a write failed: %s", ns, exc)
            w.due = True
            return None
        return (status_from_metadata(resp.body), started, local_gen, digest(resp.body)) if resp.ok else None

    async def _board_change(self, ns: str, w: NamespaceWatch | None, fn: Callable[..., int], *args: Any) -> None:
        """A change made locally first (`w`), then in the shared record; until the record has it, the mirror
        keeps the local state (a refresh read before the change would undo it)."""
        if w is not None:
            w.min_gen = sys.maxsize
        try:
            gen = await self._board_call(fn, *args)
        except Exception as exc:  # noqa: BLE001 - this worker keeps its change; the record catches up later
            log.warning("watch board: %s for %s failed: %s", fn.__name__, ns, exc)
            gen = 0
        if w is not None and w.min_gen == sys.maxsize:
            w.min_gen = gen
            if gen:
                w.gen = gen  # with a board, this worker's generation is the record's

    async def _board_call(self, fn: Callable[..., Any], *args: Any) -> Any:
        """The board change `fn` made, and its result: on the loop thread, in one transaction with the other changes
        of this loop iteration (concurrent writes share a commit), without waiting for the file's write lock; in a
        thread, on its own, when the lock is taken or another change of the batch failed (nothing changed then)."""
        if self._board_now is not None:
            done, result = await self._board_tick.add((fn.__name__, args))
            if done:
                return result
        result = await asyncio.shield(asyncio.to_thread(fn, *args))
        if self._board_checkpoints is not None:
            self._board_checkpoints.committed()
        return result

    def _board_commit(self, batch: Batch[tuple[str, tuple[Any, ...]]]) -> None:
        assert self._board_now is not None and self._board_checkpoints is not None
        try:
            results = [(True, r) for r in self._board_now.changes([call for call, _ in batch])]
        except Exception as exc:  # noqa: BLE001 - busy, or one change failed: each is made again in a thread
            if getattr(exc, "sqlite_errorcode", None) not in BUSY_CODES:
                log.debug("watch board: a batch of %d change(s) failed: %s", len(batch), exc)
            results = [(False, None)] * len(batch)
        else:
            self._board_checkpoints.committed()
        for ((name, args), future), result in zip(batch, results):
            if not future.done():
                future.set_result(result)
            elif not result[0]:  # its caller was cancelled meanwhile: a thread still makes it, as it would have
                self._board_soon(name, getattr(self.board, name), *args)

    def hint_unindexed(self, ns: str) -> None:
        """A query response showed unindexed documents: `updating` now, without waiting for a poll."""
        w = self.namespaces.get(ns)
        if w is None or w.status == UPDATING:
            return
        w.status = UPDATING
        w.gen += 1
        w.due = True
        self._wake.set()
        metrics.inc(_counters(ns)[3])
        if self.board is not None:
            self._tasks.spawn("watch board hint", self._board_change(ns, w, self.board.hint_updating, ns))
        self._upstream_write_seen(ns)

    def _upstream_write_seen(self, ns: str) -> None:
        """The one place where upstream shows a write this watcher did not fence (a poll or a query response
        turned a stable namespace `updating`): writes made outside the gateway, or through another worker."""
        for hook in self.upstream_write_hooks:
            try:
                hook(ns)
            except Exception:  # a hook never breaks the watcher
                log.exception("upstream write hook failed for %s", ns)

    def _board_soon(self, what: str, fn: Callable[..., Any], *args: Any) -> None:
        async def call() -> None:
            try:
                await asyncio.to_thread(fn, *args)
            except Exception as exc:  # noqa: BLE001 - soft: the next poll or fence corrects the record
                log.warning("watch board: %s failed: %s", what, exc)

        self._tasks.spawn(f"watch board {what}", call())

    # ---- polls ----
    def _apply(self, ns: str, w: NamespaceWatch, status: str, started_ms: int, gen: int) -> None:
        if gen != w.gen:
            metrics.inc(metrics.WATCH_POLLS_VOIDED)  # a fence or hint came after this poll started
            # See the module doc. With a board (this is its fallback) generations mix the record's and this worker's
            # and the record's fences are not in fenced_min: the answer is only voided
            if status == STABLE and self.board is None and gen >= w.fenced_since:
                w.set_watermark(min(max(started_ms - self.margin_ms, 0), w.fenced_min - 1), raise_only=True)
            return
        if status == UPDATING and w.status == STABLE:
            self._upstream_write_seen(ns)
        w.status = status
        if status == STABLE:
            w.set_watermark(max(started_ms - self.margin_ms, 0))
        # updating / unknown: the watermark is held, never advanced or cleared

    async def _publish(self, ns: str, w: NamespaceWatch, status: str, started_ms: int, gen: int,
                       local_gen: int, meta: str | None = None, claimed: bool = False) -> None:
        """`gen`: the record's generation read before the call; `local_gen`: this worker's (they differ only while
        a local fence or hint has not reached the record yet). `claimed`: `gen` came from the poll slot's claim
        (the record tracks fences from there: a voided answer may still raise the watermark)."""
        if self.board is None:
            self._apply(ns, w, status, started_ms, local_gen)
            if meta is not None and self.on_upstream_metadata is not None:
                self.on_upstream_metadata(ns, meta.encode())
            return
        try:
            applied = await asyncio.to_thread(self.board.publish, ns, status, started_ms, self.margin_ms, gen, meta,
                                              claimed)
            records = await asyncio.to_thread(self.board.read, [ns])
        except Exception as exc:  # noqa: BLE001 - fall back to this worker's record
            log.warning("watch board: publish for %s failed: %s", ns, exc)
            self._apply(ns, w, status, started_ms, local_gen)
            return
        if not applied:
            metrics.inc(metrics.WATCH_POLLS_VOIDED)
        if ns in records:
            self._mirror(ns, w, records[ns])

    def _mirror(self, ns: str, w: NamespaceWatch, rec: WatchRecord) -> None:
        if rec.observed_ms != w.observed_ms and rec.meta is not None and self.on_upstream_metadata is not None:
            self.on_upstream_metadata(ns, rec.meta.encode())  # a worker (maybe another) read upstream metadata
        if rec.gen < w.min_gen or (rec.gen == w.gen and rec.observed_ms == w.observed_ms):
            if rec.observed_ms != w.observed_ms and rec.gen >= w.min_gen:
                w.observed_ms = rec.observed_ms
            return
        if rec.status == UPDATING and w.status == STABLE and rec.gen == w.gen:
            self._upstream_write_seen(ns)  # a poll (not a fence or hint) found the namespace updating
        w.status, w.gen, w.observed_ms = rec.status, rec.gen, rec.observed_ms
        w.wmax = max(w.wmax, rec.wmax)
        w.watermark = rec.watermark if not w.inflight or rec.watermark is None else \
            min(rec.watermark, min(w.inflight) - 1)

    def _interval(self, w: NamespaceWatch) -> float:
        return self.stable_poll_s if w.status == STABLE else self.poll_s

    def _is_due(self, w: NamespaceWatch, now: float) -> bool:
        return w.due or now - w.last_polled >= self._interval(w)

    def _schedule(self, w: NamespaceWatch) -> None:
        """A poll starts: the next one is due one interval after this one was due, not after the tick that found it
        (ticks come up to one tick late, plus the loop's latency: measured from the poll, every interval would grow
        by that). After a stall longer than an interval, or a poll asked for (`due`), the schedule starts over."""
        now = time.monotonic()
        was_due = w.last_polled + self._interval(w)
        w.last_polled = was_due if not w.due and now - was_due < self._interval(w) else now
        w.due = False

    async def poll(self, ns: str, w: NamespaceWatch) -> None:
        key = self.upstream.store_key or w.key
        if key is None:
            return  # derive-from-request mode and no caller key seen yet
        w.track_fences()
        gen, local_gen, from_claim = w.gen, w.gen, False
        previous_poll = w.last_polled
        self._schedule(w)
        if self.board is not None:
            if w.observed_ms == 0:  # new here: learn the record's status first (its interval decides the claim)
                await self.refresh_mirror([ns])
            interval_ms = int(self._interval(w) * 1000)
            if host_ms() - w.observed_ms < interval_ms:
                return  # the mirror shows a recent poll by some worker: no need to ask the record
            try:
                claimed = await asyncio.to_thread(self.board.claim_poll, ns, self.worker_id, interval_ms,
                                                  int(POLL_HOLD_S * 1000))
                from_claim = True
            except sqlite3.OperationalError as exc:
                if getattr(exc, "sqlite_errorcode", None) in BUSY_CODES:
                    return  # others are claiming: this worker tries next round
                claimed = self._fallback(ns, w, previous_poll, exc)
            except Exception as exc:  # noqa: BLE001 - the board failed: poll on this worker's own account
                claimed = self._fallback(ns, w, previous_poll, exc)
            if claimed is None:
                return  # another worker polls it (or polled it recently): the mirror brings its answer
            gen = claimed
        started = self.clock_ms()
        metrics.inc(_counters(ns)[0])
        try:
            async with self._polls:
                resp = await self.upstream.request("GET", _metadata_path(ns), key,
                                                   what="metadata poll")
        except Exception as exc:  # noqa: BLE001 - a failed poll changes nothing (§3.2)
            log.debug("watermark poll for %s failed: %s", ns, exc)
            if self.board is not None:
                self._board_soon("release", self.board.release, ns, self.worker_id)
            return
        if resp.status == 404:
            await self.forget(ns, gen, local_gen)
        elif resp.ok:
            await self._publish(ns, w, status_from_metadata(resp.body), started, gen, local_gen, digest(resp.body),
                                from_claim)
        elif resp.status in (401, 403) and self.upstream.store_key is None:
            w.key = None  # the remembered caller key stopped working; wait for the next caller

    def _fallback(self, ns: str, w: NamespaceWatch, previous_poll: float, exc: Exception) -> int | None:
        """The board failed: poll on this worker's own account if `ns` was used since its last poll and the
        per-worker budget has a token (correctness never needs the board: fences stay local meanwhile)."""
        log.debug("watch board: claim for %s failed: %s", ns, exc)
        now = time.monotonic()
        self._tokens = min(self.fallback_budget, self._tokens + (now - self._tokens_at) * self.fallback_budget)
        self._tokens_at = now
        if w.last_used < previous_poll or self._tokens < 1:
            return None
        self._tokens -= 1
        return w.gen

    async def _board_read(self, names: list[str]) -> dict[str, WatchRecord]:
        """Inline for the SQLite board when few (a WAL read never waits for writers; cheaper than a thread hop)."""
        assert self.board is not None
        if self.board.reads_inline and len(names) <= 8:
            return self.board.read(names)
        return await asyncio.to_thread(self.board.read, names)

    async def refresh_mirror(self, names: list[str] | None = None) -> None:
        """One batch read of the shared records of `names` (default: every namespace watched here)."""
        assert self.board is not None
        names = list(self.namespaces) if names is None else names
        try:
            records = await self._board_read(names)
        except Exception as exc:  # noqa: BLE001 - keep the mirror as it is
            log.debug("watch board: mirror refresh failed: %s", exc)
            return
        for ns, rec in records.items():
            w = self.namespaces.get(ns)
            if w is not None:
                self._mirror(ns, w, rec)

    async def _mirror_loop(self) -> None:
        while True:
            await self.refresh_mirror()
            await asyncio.sleep(self.mirror_s)

    async def run(self) -> None:
        while True:
            self._wake.clear()  # before the scan: a namespace watched while this tick polls wakes the next one
            now = time.monotonic()
            due = []
            for ns, w in list(self.namespaces.items()):
                if now - w.last_used > self.idle_s and not w.inflight:
                    del self.namespaces[ns]  # not used through this worker for a while: stop polling it
                elif self._is_due(w, now):
                    due.append(self._poll_current(ns, w))
            if due:  # concurrently, at most `concurrency` metadata calls in flight
                await asyncio.gather(*due)
            try:  # the next tick one tick after this one started (after its polls, their round trips would add up)
                await asyncio.wait_for(self._wake.wait(), timeout=max(now + self.poll_s - time.monotonic(), 0))
            except TimeoutError:
                pass

    async def _poll_current(self, ns: str, w: NamespaceWatch) -> None:
        if self.namespaces.get(ns) is w:  # not forgotten (or replaced) meanwhile
            await self.poll(ns, w)

    def sample_age(self) -> None:
        """Metrics sampler: how far behind the oldest watermark of an updating namespace is."""
        marks = [w.watermark for w in self.namespaces.values() if w.status == UPDATING and w.watermark is not None]
        metrics.WATERMARK_AGE.set(max(self.clock_ms() - min(marks), 0) / 1000 if marks else 0)
        if self.board is not None and self.board.slot_changes:
            metrics.inc(metrics.WATCH_LEASE_CHANGES, self.board.slot_changes)
            self.board.slot_changes = 0

    def start(self) -> None:
        if not self._started:
            self._started = True
            metrics.add_sampler(self.sample_age)
            self._tasks.loop("watermark watcher", self.run)
            if self.board is not None:
                self._tasks.loop("watch mirror", self._mirror_loop)

    async def stop(self) -> None:
        await self._tasks.stop()
        if self._board_checkpoints is not None:
            self._board_checkpoints.close()
