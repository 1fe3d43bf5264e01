"""Background tasks are supervised and never die silently; blocking work stays off the event loop.

"Off the loop" is checked by counting ticks of a 10 ms ticker while the work runs (made slow on purpose): work
done on the loop stops the ticker, work done in a thread does not. No timing bound is involved.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
import urllib.request
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from support.procs import STORE_KEY, Proc, start_localstore

from gateway.config import load_config
from gateway.consistency import STABLE, Watcher
from gateway.tasks import Tasks
from gateway.upstream import Upstream

SLOW_S = 0.3  # how long the deliberately slow blocking work takes
MIN_TICKS = 5  # a 10 ms ticker manages ~30 meanwhile when the loop is free, 0-1 when it is blocked


async def ticks_during(work: Callable[[], Awaitable[Any]]) -> int:
    ticks = 0
    done = False

    async def ticker() -> None:
        nonlocal ticks
        while not done:
            await asyncio.sleep(0.01)
            ticks += 1

    task = asyncio.get_running_loop().create_task(ticker())
    await asyncio.sleep(0)  # let the ticker start
    try:
        await work()
    finally:
        done = True
        await task
    return ticks


def test_tasks_restart_a_failing_loop_and_stop_awaits_everything() -> None:
    async def main() -> None:
        tasks = Tasks()
        runs: list[int] = []
        finished = asyncio.Event()

        async def body() -> None:
            runs.append(len(runs))
            if len(runs) < 3:
                raise RuntimeError("boom")  # logged, then started again
            await finished.wait()

        tasks.loop("flaky", body, pause_s=0.01)
        spawned = tasks.spawn("one-shot", asyncio.sleep(3600))
        deadline = time.monotonic() + 10
        while len(runs) < 3:
            assert time.monotonic() < deadline, "the loop was not restarted"
            await asyncio.sleep(0.01)
        assert len(tasks) == 2
        await tasks.stop()
        assert len(tasks) == 0 and spawned.cancelled()

    asyncio.run(main())


def _write(store: Proc, ns: str) -> None:
    req = urllib.request.Request(f"{store.url}/v2/namespaces/{ns}", method="POST",
                                 data=json.dumps({"upsert_rows": [{"id": 1, "a": 1}]}).encode(),
                                 headers={"Authorization": f"Bearer {STORE_KEY}", "Content-Type": "application/json"})
    urllib.request.urlopen(req, timeout=10).close()


def _fault(store: Proc, rule: dict[str, Any] | None) -> Any:
    req = urllib.request.Request(f"{store.url}/_localstore/faults", method="POST" if rule else "GET",
                                 data=json.dumps(rule).encode() if rule else None,
                                 headers={"Authorization": f"Bearer {STORE_KEY}", "Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.loads(resp.read())


def test_watcher_keeps_polling_after_a_namespace_is_forgotten_during_a_poll(tmp_path: Path) -> None:
    """A namespace deleted (forgotten) while the watcher awaited another namespace's poll used to kill the watcher
    with a KeyError, silently: nothing was polled again."""
    store = start_localstore(tmp_path / "store", LOCALSTORE_API_KEY=STORE_KEY)
    try:
        for ns in ("held", "fresh"):
            _write(store, ns)
        config = load_config({"TURBOPUFFER_API_URL": store.url, "TURBOPUFFER_API_KEY": STORE_KEY})

        async def main() -> None:
            upstream = Upstream(config)
            watcher = Watcher(upstream, poll_ms=50, stable_poll_ms=50, margin_ms=0, idle_ms=60_000)
            _fault(store, {"route": "metadata", "namespace": "held", "delay_ms": 500, "count": 1})
            watcher.watch("held", None, due=True)
            watcher.watch("idle", None)
            watcher.namespaces["idle"].last_used -= 3600  # to be dropped as idle by the running poll loop
            watcher.start()
            try:
                deadline = time.monotonic() + 10
                while _fault(store, None)["faults"]:  # the poll of "held" is inside the store now
                    assert time.monotonic() < deadline
                    await asyncio.sleep(0.01)
                await watcher.forget("idle", 0, 0)  # e.g. the namespace was deleted meanwhile
                watcher.watch("fresh", None, due=True)
                while (w := watcher.state("fresh")) is None or w.status != STABLE:
                    assert time.monotonic() < deadline, "the watcher stopped polling"
                    await asyncio.sleep(0.02)
            finally:
                await watcher.stop()
                await upstream.close()

        asyncio.run(main())
    finally:
        store.stop()


def test_health_snapshots_are_written_off_the_event_loop(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every metrics flush writes this worker's health file for the ops listener (gateway/health.py)."""
    from gateway import health
    from gateway.state import WorkerState

    write = health._write_atomically

    def slow_write(path: Path, data: bytes) -> None:
        time.sleep(SLOW_S)
        write(path, data)

    monkeypatch.setattr(health, "_write_atomically", slow_write)
    config = load_config({"TURBOPUFFER_API_URL": "http://127.0.0.1:9", "TURBOPUFFER_API_KEY": "k",
                          "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)})
    assert config.metrics_dir == str(tmp_path)

    async def main() -> int:
        state = WorkerState(config, None)  # type: ignore[arg-type]
        try:
            return await ticks_during(lambda: health.publish(state))
        finally:
            await state.upstream.close()

    assert asyncio.run(main()) >= MIN_TICKS
    assert [w["pid"] for w in health.read_snapshots(str(tmp_path))] == [os.getpid()]


def test_key_store_shutdown_waits_off_the_event_loop() -> None:
    from gateway.keys.store import ThreadedStore

    class Store(ThreadedStore):
        def _close(self) -> None:
            pass

    async def main() -> int:
        store = Store(2, "test-keys")
        store._pool.submit(time.sleep, SLOW_S)  # a call still running when the worker shuts down
        return await ticks_during(store.close)

    assert asyncio.run(main()) >= MIN_TICKS


def test_warm_job_listing_decodes_off_the_event_loop(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from gateway.cache import WarmJob, local, open_cache

    decode = local._job_decode

    def slow_decode(body: bytes) -> WarmJob:
        time.sleep(SLOW_S)
        return decode(body)

    async def main() -> int:
        cache = open_cache({"LAYER_DATA_DIR": str(tmp_path), "AEROSPIKE_TIMEOUT_MS": "5000"})
        await cache.start()
        try:
            await cache.jobs.put(WarmJob(id="j", namespace="ns", status="completed", progress=1.0,
                                         documents_scanned=1, created_at="2026-01-01T00:00:00Z"))
            monkeypatch.setattr(local, "_job_decode", slow_decode)
            return await ticks_during(lambda: cache.jobs.list(None))
        finally:
            await cache.close()

    assert asyncio.run(main()) >= MIN_TICKS
