"""Each worker's detailed health (upstream, cache, load), published as a small JSON file next to the metrics files,
so the ops listener (gateway/ops.py, in the serve process) can show every worker without asking any of them.

Workers rewrite their file at start-up and every metrics flush (1 s) and remove it on exit; a file whose process
is gone is skipped. The public port shows none of this (only status, version and the answering worker's pid).
"""

from __future__ import annotations

import asyncio
import inspect
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import msgspec

if TYPE_CHECKING:
    from gateway.state import WorkerState

VERSION = "0.1.0"
SNAPSHOT_GLOB = "health-*.json"
NO_CACHE = {"aerospike": {"connected": False, "generation": 0}, "cache_state": []}


def snapshot_path(directory: str, pid: int) -> Path:
    return Path(directory) / f"health-{pid}.json"


async def cache_health(state: WorkerState) -> dict[str, Any]:
    """The cache's part: `aerospike` and `cache_state` (cache.health() when the cache provides it)."""
    health = getattr(state.cache, "health", None)
    if health is None:
        return dict(NO_CACHE)
    result = health()
    return await result if inspect.isawaitable(result) else result


async def worker_health(state: WorkerState) -> dict[str, Any]:
    up = state.upstream
    body: dict[str, Any] = {"pid": state.pid, "status": "draining" if state.draining else "ok",
                            "updated_ms": int(time.time() * 1000)}
    body["upstream"] = {
        "host": urlsplit(up.base_url).netloc,
        "mode": "embedded" if state.config.embedded else "configured",
        "auth": "store_key" if up.store_key else "derive_from_request",
        "last_ok_ms": up.last_ok_ms,
        **({"last_error": up.last_error} if up.last_error else {}),
        **up.stats(),
    }
    body.update(await cache_health(state))
    if state.results is not None and state.results.settings.on:
        body["result_cache"] = state.results.health()
    body["inflight"] = state.inflight
    body["watched_namespaces"] = len(state.watcher.namespaces)
    body["tasks"] = len(asyncio.all_tasks())
    return body


async def publish(state: WorkerState) -> None:
    directory = state.config.metrics_dir
    if directory is None:
        return
    data = msgspec.json.encode(await worker_health(state))
    await asyncio.to_thread(_write_atomically, snapshot_path(directory, state.pid), data)


def _write_atomically(path: Path, data: bytes) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def unpublish(state: WorkerState) -> None:
    if state.config.metrics_dir is not None:
        snapshot_path(state.config.metrics_dir, state.pid).unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def read_snapshots(directory: str) -> list[dict[str, Any]]:
    """The live workers' snapshots, ordered by pid (files of processes that are gone are skipped)."""
    out = []
    for path in sorted(Path(directory).glob(SNAPSHOT_GLOB)):
        pid = path.stem.removeprefix("health-")
        if not pid.isascii() or not pid.isdigit() or not _alive(int(pid)):
            continue
        try:
            out.append(msgspec.json.decode(path.read_bytes()))
        except (OSError, msgspec.DecodeError):
            continue  # removed or replaced while reading
    return sorted(out, key=lambda s: s.get("pid", 0))
