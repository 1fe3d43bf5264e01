"""Pipelines and Functions: queue throughput per backend, the discovery sweep, and built-in embedding.

* throughput: one gateway worker (pinned like the throughput part) in front of the canned nginx upstream; a UDF with a
  write trigger and `inputs: ["id"]` (claims read nothing); N rows written through the gateway enqueue N items; then
  CLAIMERS keep-alive clients claim 32 and complete 32 until the queue is drained: items/s = N / wall time. The
  canned upstream answers every patch without `patched_ids`, so each completion takes the "row gone" branch: the
  same DELETE as a counted completion, minus one rate-bucket upsert. SQLite, and PostgreSQL when a server answers.
* discovery: the local store with 100k documents (smoke: 2k), one explicit `discover`: rows/s enqueued.
* embedding: the built-in minilm worker (one batched encode per claim) against per-item encodes through the
  published client's `run_udf_worker` (`@udf(kind="embedding")`, in the published client's own interpreter:
  bench/queue_published_worker.py), on the same rows; model load excluded; needs the `embed` extra.
Run alone: python -m bench.queue_bench [--smoke]
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import socket
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from bench.nginx import start_canned
from bench.procs import PROXY_CPU, start_gateway, start_localstore
from bench.throughput import Runner

HERE = Path(__file__).resolve().parent
KEY = "bench-queue-key"
BATCH = 32
CLAIMERS = 8
NS = "bench-queue"


class Client:
    """One keep-alive connection."""

    def __init__(self, url: str) -> None:
        host, port = url.removeprefix("http://").split(":")
        self.conn = http.client.HTTPConnection(host, int(port), timeout=300)

    def call(self, method: str, path: str, body: Any = None) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        headers = {"authorization": f"Bearer {KEY}", "content-type": "application/json"}
        try:
            self.conn.request(method, path, data, headers)
            resp = self.conn.getresponse()
        except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
            self.conn.close()  # the gateway closed the idle keep-alive connection: once more on a new one
            self.conn.request(method, path, data, headers)
            resp = self.conn.getresponse()
        raw = resp.read()
        if resp.status != 200:
            raise RuntimeError(f"{method} {path}: HTTP {resp.status}: {raw[:300]!r}")
        return json.loads(raw)


def _wait_pending(c: Client, udf: str, n: int, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while c.call("GET", f"/v2/udfs/{udf}/status")["pending_count"] < n:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{udf}: {n} items were not enqueued within {timeout}s")
        time.sleep(0.1)


def drain(url: str, udf: str, total: int) -> float:
    """CLAIMERS clients claim BATCH and complete BATCH until `total` items went through; returns items/s."""
    done: list[int] = []
    errors: list[str] = []

    def claimer(n: int) -> None:
        c = Client(url)
        worker = f"bench-{n}"
        try:
            while sum(done) < total:
                items = c.call("POST", f"/v2/udfs/{udf}/claim", {"worker_id": worker, "limit": BATCH})["items"]
                if not items:
                    time.sleep(0.005)
                    continue
                c.call("POST", f"/v2/udfs/{udf}/items/complete", {"worker_id": worker, "items": [
                    {"namespace": i["namespace"], "id": i["id"], "attributes": {"x": 1}} for i in items]})
                done.append(len(items))
        except Exception as exc:  # noqa: BLE001 - reported as the scenario's error
            errors.append(str(exc))

    threads = [threading.Thread(target=claimer, args=(n,)) for n in range(CLAIMERS)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - t0
    if errors:
        raise RuntimeError(errors[0])
    return sum(done) / elapsed


def _pg_url() -> tuple[str, str] | None:
    try:
        with socket.create_connection(("127.0.0.1", 5432), timeout=2):
            pass
    except OSError:
        return None
    return f"layer_bench_{uuid.uuid4().hex[:10]}", "postgresql://postgres@127.0.0.1:5432/test"


async def _pg(base: str, sql: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(base)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def throughput(tmp: Path, backend: str, items: int) -> dict[str, Any]:
    env: dict[str, str] = {}
    schema = None
    if backend == "postgres":
        found = _pg_url()
        if found is None:
            raise RuntimeError("no PostgreSQL server answers on 127.0.0.1:5432")
        schema, base = found
        asyncio.run(_pg(base, f"CREATE SCHEMA {schema}"))
        env["DATABASE_URL"] = f"{base}?search_path={schema}"
    canned, canned_url = start_canned(tmp / f"canned-{backend}")
    try:
        gw, url = start_gateway(canned_url, KEY, str(tmp / f"gw-queue-{backend}"), 1, "pyreqwest", PROXY_CPU, **env)
        try:
            c = Client(url)
            c.call("POST", "/v2/udfs", {"id": "bench", "spec": {"target_namespaces": [NS], "inputs": ["id"],
                                                                 "worker": {}, "triggers": ["write"]}})
            time.sleep(1.5)  # the worker's write-trigger index refreshes every second
            for start in range(0, items, 1000):
                rows = [{"id": f"doc-{i}", "n": i} for i in range(start, min(items, start + 1000))]
                c.call("POST", f"/v2/namespaces/{NS}", {"upsert_rows": rows})
            _wait_pending(c, "bench", items)
            rate = drain(url, "bench", items)
            left = c.call("GET", "/v2/udfs/bench/status")["counts"]
            if sum(left.values()):
                raise RuntimeError(f"queue not drained: {left}")
            return {"items": items, "batch": BATCH, "claimers": CLAIMERS, "workers": 1, "items_per_s": round(rate, 1)}
        finally:
            gw.stop()
    finally:
        canned.stop()
        if schema is not None:
            asyncio.run(_pg(env["DATABASE_URL"].split("?")[0], f"DROP SCHEMA IF EXISTS {schema} CASCADE"))


def discovery(tmp: Path, docs: int) -> dict[str, Any]:
    store, store_url = start_localstore(str(tmp / "store-discovery"), KEY)
    try:
        s = Client(store_url)
        for start in range(0, docs, 5000):
            rows = [{"id": f"doc-{i:07}", "category": "a" if i % 2 else "b"} for i in range(start, min(docs, start
                                                                                                      + 5000))]
            s.call("POST", "/v2/namespaces/bench-discovery", {"upsert_rows": rows})
        gw, url = start_gateway(store_url, KEY, str(tmp / "gw-discovery"), 1, "pyreqwest", PROXY_CPU)
        try:
            c = Client(url)
            c.call("POST", "/v2/udfs", {"id": "sweep", "spec": {"target_namespaces": ["bench-discovery"],
                                                                 "inputs": ["id"], "worker": {}}})
            t0 = time.perf_counter()
            found = c.call("POST", "/v2/udfs/sweep/discover", {})
            elapsed = time.perf_counter() - t0
            if found["enqueued"] != docs:
                raise RuntimeError(f"enqueued {found['enqueued']} of {docs}")
            return {"docs": docs, "seconds": round(elapsed, 3), "rows_per_s": round(docs / elapsed, 1)}
        finally:
            gw.stop()
    finally:
        store.stop()


def _drain_batched(url: str, c: Client, model: Any, udf_id: str) -> float:
    from gateway.queue.builtin_worker import GatewayClient, run_batch

    client = GatewayClient(url, KEY)
    started = time.perf_counter()
    while run_batch(client, model, udf_id, "bench", None):
        pass
    return time.perf_counter() - started


def _drain_per_item(url: str, c: Client, model: Any, udf_id: str) -> float:
    """Seconds for the published client's `run_udf_worker` (its own interpreter) to drain `udf_id`."""
    from support.published_client import run_published  # bench.procs put tests/ on sys.path

    site = next(p for p in sys.path if p.endswith("site-packages"))
    out = run_published(HERE / "queue_published_worker.py", url, KEY, udf_id, str(HERE.parent), site, timeout=1800)
    if out["hevlayer"] != "0.7.3":
        raise RuntimeError(f"the per-item worker ran hevlayer {out['hevlayer']}, not the published 0.7.3")
    return float(out["seconds"])


def embedding(tmp: Path, docs: int) -> dict[str, Any]:
    """Batched built-in worker vs per-item `run_udf_worker`, items/s of the draining loop (model load excluded)."""
    from gateway.queue.embed import MiniLM

    model = MiniLM()
    store, store_url = start_localstore(str(tmp / "store-embed"), KEY)
    try:
        gw, url = start_gateway(store_url, KEY, str(tmp / "gw-embed"), 1, "pyreqwest", None)
        try:
            c = Client(url)
            rows = [{"id": f"p{i:05}", "title": f"product number {i}: a sturdy outdoor item, model {i * 7}"}
                    for i in range(docs)]
            out: dict[str, Any] = {"docs": docs}
            for mode in ("batched_builtin", "per_item_run_udf_worker"):
                ns = f"embed-{mode}"
                c.call("POST", f"/v2/namespaces/{ns}", {"upsert_rows": rows})
                c.call("POST", "/v2/udfs", {"id": mode.replace("_", "-"), "spec": {
                    "target_namespaces": [ns], "inputs": ["title"], "worker": {"batch_size": BATCH}}})
                udf_id = mode.replace("_", "-")
                c.call("POST", f"/v2/udfs/{udf_id}/discover", {})
                elapsed = (_drain_batched if mode == "batched_builtin" else _drain_per_item)(url, c, model, udf_id)
                left = c.call("GET", f"/v2/udfs/{udf_id}/status")["counts"]
                if sum(left.values()):
                    raise RuntimeError(f"{mode}: queue not drained: {left}")
                out[mode] = {"seconds": round(elapsed, 3), "items_per_s": round(docs / elapsed, 1)}
            out["batched_over_per_item"] = round(out["batched_builtin"]["items_per_s"]
                                                 / out["per_item_run_udf_worker"]["items_per_s"], 2)
            return out
        finally:
            gw.stop()
    finally:
        store.stop()


def run(tmp: Path, smoke: bool) -> dict[str, Any]:
    runner = Runner(0, 1)
    items = 2_000 if smoke else 32_000
    for backend in ("sqlite", "postgres"):
        runner.scenario(f"throughput_{backend}", lambda b=backend: throughput(tmp, b, items))  # type: ignore[misc]
    runner.scenario("discovery", lambda: discovery(tmp, 2_000 if smoke else 100_000))
    runner.scenario("embedding", lambda: embedding(tmp, 64 if smoke else 512))
    return runner.out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-queue-") as tmp:
        print(json.dumps(run(Path(tmp), args.smoke), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
