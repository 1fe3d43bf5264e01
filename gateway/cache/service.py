"""The per-worker cache service in `WorkerState.cache`: the backend, metrics wiring, namespace cache states.

Namespace cache state (cold | warming | warm) is derived from the shared job store, so every worker (and with
Aerospike every host) reports the same: `warming` while a live warm job runs, `warm` once one completed, and
`cold` otherwise or while the cache is unreachable. A background task refreshes that view every
STATE_REFRESH_S; it doubles as the connection probe that keeps /health's `connected` honest.
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import UTC, datetime
from typing import Any

from msgspec.structs import replace

from gateway import metrics
from gateway.cache import coherence as co
from gateway.cache import mirror
from gateway.cache.base import CacheDoc, CacheError, DocumentCache, WarmJob, encode_attrs, pack_vector, record_size
from gateway.cache.coherence import Token
from gateway.cache.partition import namespace_of
from gateway.tasks import Tasks

log = logging.getLogger("gateway.cache")
STATE_REFRESH_S = 2.0
# A running job whose worker has not reported for this long is shown as failed (its worker stopped).
ABANDONED_MS = 60_000
STATES = ("cold", "warming", "warm")
STORE_KIND = "turbopuffer"


def now_ms() -> int:
    return int(time.time() * 1000)


def rfc3339_ms(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def effective(job: WarmJob, now: int | None = None) -> WarmJob:
    """The job as clients see it: internal heartbeat stripped, abandoned running jobs shown as failed, the
    namespace by its upstream name (not its cache name, gateway/cache/partition.py)."""
    beat, name = job.updated_ms, namespace_of(job.namespace)
    if beat is None:
        return job if name == job.namespace else replace(job, namespace=name)
    if job.status == "running" and (now or now_ms()) - beat > ABANDONED_MS:
        return replace(job, namespace=name, status="failed", completed_at=rfc3339_ms(beat), updated_ms=None,
                       error="warm job abandoned: its worker stopped before finishing")
    return replace(job, namespace=name, updated_ms=None)


class NamespaceCacheState:
    __slots__ = ("state", "warm_inflight", "warmed_through")

    def __init__(self, state: str, warmed_through: int | None, warm_inflight: bool) -> None:
        self.state = state
        self.warmed_through = warmed_through
        self.warm_inflight = warm_inflight


class CacheService:
    def __init__(self, store: DocumentCache) -> None:
        self.store = store
        self.jobs = store.jobs
        self.tasks = Tasks()
        self._states: dict[str, NamespaceCacheState] = {}
        self._local_running: dict[str, int] = {}  # ns -> warm jobs this worker runs
        self.reactive_generation: dict[str, int] = {}  # ns -> cache generation it was reactively warmed for
        store.runner.observe = self._observe_op

    # -- lifecycle ---------------------------------------------------------------------------------------------

    async def start(self) -> None:
        """Let the backend prepare (schema, first connect), then start the state refresher."""
        prepare = getattr(self.store, "start", None)
        if prepare is not None:
            await prepare()
        self.tasks.loop("cache state refresh", self._refresh_loop)

    async def stop(self) -> None:
        await self.tasks.stop()
        runner = self.store.runner
        if runner.remembered:  # one last try for fences this worker still holds in memory
            await runner.replay_now()
            if runner.remembered:
                log.error("cache: %d fence(s) could not be written before shutdown; other workers may serve stale "
                          "copies of those documents", runner.remembered)
        await self.store.close()

    def spawn(self, coro: Any) -> asyncio.Task[Any]:
        return self.tasks.spawn(getattr(coro, "__name__", "cache task"), coro)

    # -- state -------------------------------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self.store.status().connected

    async def probe(self) -> bool:
        """True if the cache answers now (one cheap round trip unless it is already known to be connected)."""
        if self.connected:
            return True
        try:
            await self.jobs.get("_probe")
        except CacheError:
            return False
        return True

    def warm_started(self, ns: str) -> None:
        self._local_running[ns] = self._local_running.get(ns, 0) + 1
        self._set_state(ns, "warming", None, True)

    def warm_finished(self, ns: str, job: WarmJob) -> None:
        left = self._local_running.get(ns, 1) - 1
        if left > 0:
            self._local_running[ns] = left
        else:
            self._local_running.pop(ns, None)
        if job.status == "completed":
            prev = self._states.get(ns)
            through = job.stable_as_of if job.stable_as_of is not None else (prev.warmed_through if prev else None)
            self._set_state(ns, "warming" if left > 0 else "warm", through, left > 0)

    def forget(self, ns: str) -> None:
        self._states.pop(ns, None)

    async def namespace_deleted(self, ns: str, status: int | None) -> None:
        """After a namespace delete answered `status` (None: no answer): a new epoch hides every cached document
        at once; its jobs and the old records are removed in the background (soft: failures are logged)."""
        if await mirror.reset_namespace(self.store, ns, status):
            self.forget(ns)
            self.spawn(self._clean(ns))

    async def _clean(self, ns: str) -> None:
        try:
            await self.jobs.delete_namespace(ns)
            removed = await self.store.collect(ns)
            log.info("cache: %d record(s) of deleted namespace %s removed", removed, ns)
        except CacheError as exc:
            log.warning("cache clean-up of deleted namespace %s failed: %s", ns, exc)

    def namespace_state(self, ns: str) -> dict[str, Any]:
        st = self._states.get(ns)
        if st is None:
            return {"state": "cold", "warm_inflight": False}
        state = st.state if (self.connected or st.state == "warming") else "cold"
        out: dict[str, Any] = {"state": state}
        if st.warmed_through is not None:
            out["warmed_through_ms"] = st.warmed_through
        out["warm_inflight"] = st.warm_inflight
        return out

    def health(self) -> dict[str, Any]:
        status = self.store.status()
        conn: dict[str, Any] = {"connected": status.connected, "generation": status.generation,
                                "backend": status.backend}
        if status.last_error:
            conn["last_error"] = status.last_error
        states = []
        for ns in sorted(self._states):
            st = self.namespace_state(ns)
            entry: dict[str, Any] = {"namespace": ns, "state": st["state"]}
            if "warmed_through_ms" in st:
                entry["warmed_through"] = st["warmed_through_ms"]
            entry["warm_inflight"] = st["warm_inflight"]
            states.append(entry)
        return {"aerospike": conn, "cache_state": states}

    def _set_state(self, ns: str, state: str, through: int | None, inflight: bool) -> None:
        self._states[ns] = NamespaceCacheState(state, through, inflight)
        self._publish(ns, state)

    async def refresh(self) -> None:
        """Recompute every namespace's state from the shared job store (raises CacheError when unreachable)."""
        jobs = await self.jobs.list(None)
        now = now_ms()
        fresh: dict[str, NamespaceCacheState] = {}
        for job in jobs:
            job = effective(job, now)
            st = fresh.setdefault(job.namespace, NamespaceCacheState("cold", None, False))
            if job.status == "running":
                st.warm_inflight = True
            elif job.status == "completed":
                st.state = "warm"
                if job.stable_as_of is not None:
                    st.warmed_through = max(st.warmed_through or 0, job.stable_as_of)
        for ns, st in fresh.items():
            if st.warm_inflight or ns in self._local_running:
                st.state, st.warm_inflight = "warming", True
        for ns in self._local_running:
            fresh.setdefault(ns, NamespaceCacheState("warming", None, True))
        self._states = fresh
        for ns, st in fresh.items():
            self._publish(ns, st.state if self.connected or st.state == "warming" else "cold")

    async def _refresh_loop(self) -> None:
        while True:
            try:
                await self.refresh()
            except CacheError:
                for ns in self._states:
                    self._publish(ns, "cold")
            self._publish_connection()
            await asyncio.sleep(STATE_REFRESH_S)

    # -- metrics -----------------------------------------------------------------------------------------------

    def _publish(self, ns: str, state: str) -> None:
        label = metrics.ns_label(ns)
        for s in STATES:
            metrics.CACHE_STATE.labels(label, STORE_KIND, s).set(1 if s == state else 0)

    def _publish_connection(self) -> None:
        up = self.connected
        metrics.CACHE_CONNECTION.labels("open").set(1 if up else 0)
        metrics.CACHE_CONNECTION.labels("failed").set(0 if up else 1)

    def _observe_op(self, op: str, set_: str, status: str, seconds: float) -> None:
        metrics.observe(metrics.child(metrics.CACHE_OP_DURATION, op, metrics.ns_label(set_), status), seconds)


async def backfill(svc: CacheService, ns: str, tokens: dict[str, Token], docs: list[CacheDoc]) -> None:
    """After a fetch miss: fill what upstream returned, each only against the token its miss read (best effort)."""
    changes = {}
    oversized = 0
    window = svc.store.settings.fill_window_ms
    for doc in docs:
        tok = tokens.get(doc.id)
        if tok is None or not (tok.fill or tok.adopt):
            continue
        if not tok.fill:  # a record of a deleted epoch: blank it into the current one, so the next miss can fill
            changes[doc.id] = co.settle(0)
            continue
        attrs = encode_attrs(doc.attrs)
        if record_size(doc.id, attrs, doc.vector) > svc.store.settings.max_record_bytes:
            oversized += 1
            continue
        changes[doc.id] = co.fill(tok, doc, attrs, window)
    set_label = metrics.ns_label(svc.store.set_name(ns))
    if oversized:
        metrics.CACHE_OVERSIZED.labels(set_label).inc(oversized)
    if not changes:
        return
    t0 = time.perf_counter()
    try:
        await svc.store.update(ns, changes)
        status = "ok"
    except CacheError as exc:
        status = "aerospike_error"
        log.info("cache backfill of %d doc(s) in %s failed: %s", len(changes), ns, exc)
    metrics.CACHE_BACKFILLS.labels(set_label, status).inc(len(changes))
    metrics.CACHE_BACKFILL_DURATION.labels(set_label, status).observe(time.perf_counter() - t0)


async def cached_vectors(svc: CacheService, ns: str, ids: list[Any]) -> tuple[dict[Any, list[float]], dict[str, Token]]:
    """nearest_to_id, cache phase: vectors the cache holds (cache errors count as misses), and the tokens of
    served records without a vector."""
    set_label = metrics.ns_label(svc.store.set_name(ns))
    try:
        found = await svc.store.lookup_vectors(ns, [str(i) for i in ids])
    except CacheError:
        metrics.CACHE_LOOKUPS.labels(set_label, metrics.ns_label(ns), "error").inc(len(ids))
        return {}, {}
    vectors = {i: found.hits[str(i)] for i in ids if str(i) in found.hits}
    if vectors:
        metrics.CACHE_LOOKUPS.labels(set_label, metrics.ns_label(ns), "hit").inc(len(vectors))
    if len(ids) - len(vectors):
        metrics.CACHE_LOOKUPS.labels(set_label, metrics.ns_label(ns), "miss").inc(len(ids) - len(vectors))
    return vectors, found.tokens


async def backfill_vectors(svc: CacheService, ns: str, tokens: dict[str, Token],
                           found: dict[Any, list[float]]) -> None:
    """nearest_to_id, after the upstream fetch: add the vectors to served records that did not change since their
    token (a vector never creates a record: its attributes are not known here)."""
    changes = {}
    for doc_id, vec in found.items():
        tok, packed = tokens.get(str(doc_id)), pack_vector(vec)
        if tok is not None and packed is not None:
            changes[str(doc_id)] = co.fill_vector(tok, packed)
    if not changes:
        return
    set_label = metrics.ns_label(svc.store.set_name(ns))
    try:
        await svc.store.update(ns, changes)
        status = "ok"
    except CacheError as exc:
        status = "aerospike_error"
        log.info("vector backfill in %s failed: %s", ns, exc)
    metrics.CACHE_BACKFILLS.labels(set_label, status).inc(len(changes))
