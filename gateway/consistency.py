"""Watermarks: per-worker, shared-nothing, polled from upstream namespace metadata (layer.md §3.2).

A namespace is watched after its first write, metadata call or query through this worker. The background loop
polls watched namespaces (fast while updating, slowly while stable); the hot path only reads `decision()`.
In derive-from-request mode the poll uses the last valid caller key seen for that namespace (memory only).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

import msgspec

from gateway.tasks import Tasks
from gateway.upstream import Upstream

STABLE, UPDATING, UNKNOWN = "stable", "updating", "unknown"
log = logging.getLogger("gateway.consistency")


class IndexView(msgspec.Struct):
    status: str | None = None
    unindexed_bytes: int | None = None


class MetadataView(msgspec.Struct):
    index: IndexView | None = None


metadata_view_decoder = msgspec.json.Decoder(MetadataView)


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


class NamespaceWatch:
    __slots__ = ("due", "key", "last_polled", "last_used", "status", "watermark")

    def __init__(self) -> None:
        self.last_used = time.monotonic()
        self.status = UNKNOWN
        self.watermark: int | None = None
        self.last_polled = 0.0
        self.due = True
        self.key: str | None = None


class Watcher:
    def __init__(self, upstream: Upstream, poll_ms: int, stable_poll_ms: int, margin_ms: int,
                 idle_ms: int = 600_000) -> None:
        self.upstream = upstream
        self.idle_s = idle_ms / 1000
        self.poll_s = poll_ms / 1000
        self.stable_poll_s = stable_poll_ms / 1000
        self.margin_ms = margin_ms
        self.namespaces: dict[str, NamespaceWatch] = {}
        self._wake = asyncio.Event()
        self._tasks = Tasks()
        # Called with (namespace, metadata body) after every successful poll: the query-result cache bumps the
        # namespace's generation when the metadata changed (a write that may not have come through the gateway).
        self.on_upstream_metadata: Callable[[str, bytes], None] | None = None

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

    def observe(self, ns: str, status: str, started_ms: int, key: str | None) -> NamespaceWatch:
        """Record a metadata fetch made on a request path (same rules as a poll)."""
        self.watch(ns, key)
        w = self.namespaces[ns]
        self._apply(w, status, started_ms)
        w.due = False
        w.last_polled = time.monotonic()
        return w

    def forget(self, ns: str) -> None:
        self.namespaces.pop(ns, None)

    def state(self, ns: str) -> NamespaceWatch | None:
        return self.namespaces.get(ns)

    # ---- background loop ----
    def _apply(self, w: NamespaceWatch, status: str, started_ms: int) -> None:
        w.status = status
        if status == STABLE:
            w.watermark = max(started_ms - self.margin_ms, 0)
        # updating / unknown: the watermark is held, never advanced or cleared

    def _is_due(self, w: NamespaceWatch, now: float) -> bool:
        if w.due:
            return True
        interval = self.stable_poll_s if w.status == STABLE else self.poll_s
        return now - w.last_polled >= interval

    async def poll(self, ns: str, w: NamespaceWatch) -> None:
        key = self.upstream.store_key or w.key
        if key is None:
            return  # derive-from-request mode and no caller key seen yet
        started = now_ms()
        w.due = False
        w.last_polled = time.monotonic()
        try:
            resp = await self.upstream.request("GET", f"/v2/namespaces/{quote(ns, safe='')}/metadata", key,
                                               what="metadata poll")
        except Exception as exc:  # noqa: BLE001 - a failed poll changes nothing (§3.2)
            log.debug("watermark poll for %s failed: %s", ns, exc)
            return
        if resp.status == 404:
            self.forget(ns)
        elif resp.ok:
            self._apply(w, status_from_metadata(resp.body), started)
            if self.on_upstream_metadata is not None:
                self.on_upstream_metadata(ns, resp.body)
        elif resp.status in (401, 403) and self.upstream.store_key is None:
            w.key = None  # the remembered caller key stopped working; wait for the next caller

    async def run(self) -> None:
        while True:
            now = time.monotonic()
            for ns, w in list(self.namespaces.items()):
                if self.namespaces.get(ns) is not w:
                    continue  # forgotten (or replaced) while an earlier poll was awaited
                if now - w.last_used > self.idle_s:
                    del self.namespaces[ns]  # not used through this worker for a while: stop polling it
                elif self._is_due(w, now):
                    await self.poll(ns, w)
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=self.poll_s)
            except TimeoutError:
                pass

    def start(self) -> None:
        if not self._tasks:
            self._tasks.loop("watermark watcher", self.run)

    async def stop(self) -> None:
        await self._tasks.stop()
