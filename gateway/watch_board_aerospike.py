"""Shared watch records in Aerospike: one record per namespace for every worker of every gateway using the cluster
(`LAYER_WATCH_SHARED=aerospike`). Same interface and rules as gateway/watch_board.py (read that module's doc first):
a fence on any host voids a poll that started before it on any host, stamps stay above every watermark published
anywhere, and one worker in the fleet polls a namespace per interval.

Layout: set `_hevlayer_watch`, record key = Turbopuffer namespace, one bin `w` holding the record as JSON (status,
watermark, wmax, gen, observed_ms, poller, poll_until, prev_poller, meta, the writes in flight as
{ticket: [stamp, expires]}, fenced_since and fenced_min as in the SQLite board). Every change is a read, a pure
function of the record, and a check-and-set write on the Aerospike generation (create-only when absent); a lost
round reads again. No CDT operations, no expressions.

Bookkeeping times (poll slots, in-flight expiry, observation ages) use each host's clock: skew between hosts only
shifts when a lapsed poll slot is taken over or a dead writer's entry stops capping the watermark, never the stamp
and fence rules, which compare stamps and generations only.
"""

from __future__ import annotations

import json
import random
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

import aerospike
from aerospike import exception as aex

from gateway.cache.aerospike import cluster_config, connect
from gateway.config import CacheSettings
from gateway.watch_board import INFLIGHT_TTL_MS, Settle, WatchRecord, host_ms

SET = "_hevlayer_watch"
OK, NOT_FOUND, BATCH_FAILED = 0, 2, -16
CREATE = {"exists": aerospike.POLICY_EXISTS_CREATE}
REPLACE = {"exists": aerospike.POLICY_EXISTS_REPLACE, "gen": aerospike.POLICY_GEN_EQ}
MAX_ROUNDS = 64
T = TypeVar("T")


def _fresh() -> dict[str, Any]:
    return {"status": "unknown", "watermark": None, "wmax": 0, "gen": 0, "observed_ms": 0, "poller": None,
            "poll_until": 0, "prev_poller": None, "meta": None, "inflight": {}, "fenced_since": None,
            "fenced_min": None}


def _mark(r: dict[str, Any], started_ms: int, margin_ms: int, now: int) -> int:
    """A stable answer's watermark: poll start - margin, below every write in flight."""
    return min([max(started_ms - margin_ms, 0)] + [s - 1 for s, expires in r["inflight"].values() if expires > now])


def _publish(r: dict[str, Any], status: str, started_ms: int, margin_ms: int, meta: str | None,
             voided: bool = False) -> None:
    """`voided`: the answer of a claimed poll that a fence or hint came after (`publish`): status unchanged, the
    watermark only raised, also below every stamp fenced since the claim (gateway/consistency.py)."""
    now = host_ms()
    if voided:
        w = _mark(r, started_ms, margin_ms, now)
        w = w if r.get("fenced_min") is None else min(w, r["fenced_min"] - 1)
        r["watermark"] = w if r["watermark"] is None else max(r["watermark"], w)
    elif status == "stable":
        r["watermark"] = _mark(r, started_ms, margin_ms, now)
    r["inflight"] = {t: v for t, v in r["inflight"].items() if v[1] > now}
    r["status"] = r["status"] if voided else status
    r["observed_ms"], r["poll_until"] = now, 0
    r["wmax"] = max(r["wmax"], r["watermark"] or 0)
    r["meta"] = meta if meta is not None else r["meta"]


class AerospikeWatchBoard:
    """Blocking calls, like WatchBoard; all of them (`read` too: a network round trip) run off the event loop."""

    reads_inline = False

    def __init__(self, settings: CacheSettings) -> None:
        self._s = settings
        t = settings.timeout_ms
        self._policy = {"total_timeout": t, "socket_timeout": t, "max_retries": 1}
        self._wpolicy = {"total_timeout": t, "socket_timeout": t, "max_retries": 0}
        self._client: Any = None
        self._lock = threading.Lock()
        self.slot_changes = 0

    def _conn(self) -> Any:
        """Created lazily in the first calling thread (after the worker forked); a failed connect is retried."""
        if self._client is None:
            with self._lock:
                if self._client is None:
                    self._client = connect(cluster_config(self._s))
        return self._client

    def _key(self, ns: str) -> tuple[str, str, str]:
        return (self._s.as_namespace, SET, ns)

    def _get(self, ns: str) -> tuple[dict[str, Any] | None, int]:
        try:
            _, meta, bins = self._conn().get(self._key(ns), policy=self._policy)
        except aex.RecordNotFound:
            return None, 0
        return json.loads(bins["w"]), int(meta["gen"])

    def _change(self, ns: str, fn: Callable[[dict[str, Any]], T]) -> T:
        """Apply `fn` (it mutates the record and returns the answer) with check-and-set; a missing record starts
        fresh, as the SQLite board's `_ensure` does."""
        for _ in range(MAX_ROUNDS):
            rec, gen = self._get(ns)
            fresh = rec is None
            rec = _fresh() if fresh else rec
            out = fn(rec)
            try:
                self._conn().put(self._key(ns), {"w": json.dumps(rec, separators=(",", ":"))},
                                 meta={"gen": gen}, policy={**self._wpolicy, **(CREATE if fresh else REPLACE)})
            except (aex.RecordGenerationError, aex.RecordExistsError, aex.RecordNotFound):
                time.sleep(random.random() * 0.002)  # lost the round to another writer: read again
                continue
            return out
        raise RuntimeError(f"watch record {ns}: check-and-set kept losing")

    def read(self, names: Iterable[str]) -> dict[str, WatchRecord]:
        names = list(names)
        out: dict[str, WatchRecord] = {}
        for i in range(0, len(names), 500):
            chunk = names[i:i + 500]
            res = self._conn().batch_read([self._key(ns) for ns in chunk], ["w"], policy=self._policy)
            # Batch calls report failures in their results, not by raising: an unanswered record is an error
            # (the watcher keeps its mirror), never "no record".
            if res.result not in (OK, BATCH_FAILED) or len(res.batch_records) != len(chunk):
                raise RuntimeError(f"watch records: batch read failed ({res.result})")
            for ns, rec in zip(chunk, res.batch_records, strict=True):
                if rec.result == NOT_FOUND:
                    continue
                if rec.result != OK or not rec.record or "w" not in (rec.record[2] or {}):
                    raise RuntimeError(f"watch records: batch read of {ns} failed ({rec.result})")
                r = json.loads(rec.record[2]["w"])
                out[ns] = WatchRecord(r["status"], r["watermark"], r["wmax"], r["gen"], r["observed_ms"], r["meta"])
        return out

    def begin_write(self, ns: str, now_ms: int) -> tuple[int, int]:
        ticket = random.getrandbits(62)

        def fn(r: dict[str, Any]) -> int:
            stamp = max(now_ms, r["wmax"] + 1)
            r["inflight"][str(ticket)] = [stamp, host_ms() + INFLIGHT_TTL_MS]
            return stamp

        return self._change(ns, fn), ticket

    def end_write(self, ns: str, ticket: int | None, stamp: int, landed: bool, settle: Settle | None = None) -> int:
        def fn(r: dict[str, Any]) -> int:
            if landed:  # the fence, the in-flight entry's removal and the settling answer are one change here
                r["status"], r["gen"] = "updating", r["gen"] + 1
                if r["watermark"] is not None and r["watermark"] >= stamp:
                    r["watermark"] = stamp - 1
                r["fenced_min"] = stamp if r.get("fenced_min") is None else min(r["fenced_min"], stamp)
            r["inflight"].pop(str(ticket), None)
            if settle is not None and r["gen"] == settle.gen + landed:
                _publish(r, settle.status, settle.started_ms, settle.margin_ms, settle.meta)
            return int(r["gen"])

        return self._change(ns, fn)

    def hint_updating(self, ns: str) -> int:
        def fn(r: dict[str, Any]) -> int:
            if r["status"] == "stable":
                r["status"], r["gen"] = "updating", r["gen"] + 1
            return int(r["gen"])

        return self._change(ns, fn)

    def claim_poll(self, ns: str, worker: str, interval_ms: int, hold_ms: int) -> int | None:
        now = host_ms()
        taken: list[bool] = []

        def fn(r: dict[str, Any]) -> int | None:
            taken.clear()
            if not ((r["poll_until"] <= now or r["poller"] == worker) and now - r["observed_ms"] >= interval_ms):
                return None
            taken.append(r["poller"] != worker)
            r["prev_poller"], r["poller"], r["poll_until"] = r["poller"], worker, now + hold_ms
            r["fenced_since"], r["fenced_min"] = r["gen"], None
            return int(r["gen"])

        gen = self._change(ns, fn)
        if gen is not None and taken and taken[0]:
            self.slot_changes += 1
        return gen

    def publish(self, ns: str, status: str, started_ms: int, margin_ms: int, gen: int, meta: str | None = None,
                claimed: bool = False) -> bool:
        def fn(r: dict[str, Any]) -> bool:
            r["poll_until"] = 0
            if r["gen"] != gen:  # a fence or hint came since the poll read `gen`: voided
                since = r.get("fenced_since")
                if claimed and status == "stable" and since is not None and since <= gen:
                    _publish(r, status, started_ms, margin_ms, meta, voided=True)
                return False
            _publish(r, status, started_ms, margin_ms, meta)
            return True

        return self._change(ns, fn)

    def release(self, ns: str, worker: str) -> None:
        def fn(r: dict[str, Any]) -> None:
            if r["poller"] == worker:
                r["poll_until"] = 0

        self._change(ns, fn)

    def forget(self, ns: str, gen: int) -> bool:
        def fn(r: dict[str, Any]) -> bool:
            r["poll_until"] = 0
            if r["gen"] != gen:
                return False  # a fence or hint came since the poll read `gen`: voided
            r["status"] = "unknown"  # the record stays: generation, wmax and writes in flight outlive the namespace
            return True

        return self._change(ns, fn)

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
