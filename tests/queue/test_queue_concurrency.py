"""Concurrency and crashes, per backend: several claimers on every gateway worker (and on PostgreSQL two gateways
sharing the database) drain one UDF queue; a worker process killed mid-lease has its items re-claimed after the
lease and its late completion refused; a gateway killed with -9 loses nothing."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
from queue_support import BACKENDS, KEY, queue_stack
from queue_support import call as http

ROWS = 400
CLAIMERS = 6
BATCH = 10
VICTIM_LEASE_S = 2
VICTIM = """
import json, sys, time, urllib.request
req = urllib.request.Request(sys.argv[1] + "/v2/udfs/conc/claim", method="POST", headers={
    "authorization": "Bearer " + sys.argv[2], "content-type": "application/json"},
    data=json.dumps({"worker_id": "victim", "limit": 5, "lease_seconds": int(sys.argv[3])}).encode())
started = time.time()
print(json.dumps({"sent": started, "items": json.loads(urllib.request.urlopen(req).read())["items"]}), flush=True)
time.sleep(3600)
"""


def seed(url: str, ns: str, n: int, udf_id: str) -> None:
    rows = [{"id": f"r{i:04}", "n": i} for i in range(n)]
    assert http(url, "POST", f"/v2/namespaces/{ns}", {"upsert_rows": rows})[0] == 200
    spec = {"target_namespaces": [ns], "inputs": ["id"], "worker": {}, "schedule": {"lease_seconds": 60}}
    assert http(url, "POST", "/v2/udfs", {"id": udf_id, "spec": spec})[0] == 200
    status, body = http(url, "POST", f"/v2/udfs/{udf_id}/discover", {})
    assert (status, body["enqueued"]) == (200, n), body


def wait_status(url: str, udf_id: str, ok: Any, timeout: float = 60.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        body = http(url, "GET", f"/v2/udfs/{udf_id}/status")[1]
        if ok(body) or time.monotonic() > deadline:
            return body  # type: ignore[no-any-return]
        time.sleep(0.05)


@pytest.mark.timeout(300)
@pytest.mark.parametrize("backend", BACKENDS)
def test_claimers_on_every_worker_complete_each_item_once(backend: str, tmp_path: Path) -> None:
    gateways = 2 if backend == "postgres" else 1
    with queue_stack(tmp_path, backend, gateways=gateways) as stack:
        urls = [g.url for g in stack.gateways]
        seed(stack.url, "conc", ROWS, "conc")
        victim = subprocess.Popen([sys.executable, "-c", VICTIM, urls[-1], KEY, str(VICTIM_LEASE_S)],
                                  stdout=subprocess.PIPE, text=True)
        try:
            assert victim.stdout is not None
            held = json.loads(victim.stdout.readline())
        finally:
            victim.send_signal(signal.SIGKILL)
            victim.wait()
        victim_ids = [i["id"] for i in held["items"]]
        assert len(victim_ids) == 5

        claims: dict[str, list[tuple[str, float, float]]] = defaultdict(list)  # id -> [(worker, sent, answered)]
        completed: list[int] = []
        lock = threading.Lock()
        errors: list[str] = []

        def claimer(n: int) -> None:
            url, worker, idle_since = urls[n % len(urls)], f"w{n}", None
            while True:
                sent = time.time()
                status, body = http(url, "POST", "/v2/udfs/conc/claim", {"worker_id": worker, "limit": BATCH})
                answered = time.time()
                if status != 200:
                    errors.append(f"claim {status} {body}")
                    return
                got = body["items"]
                if not got:
                    idle_since = idle_since or answered
                    if answered - idle_since > VICTIM_LEASE_S + 3:  # the victim's lease has long expired
                        return
                    time.sleep(0.05)
                    continue
                idle_since = None
                with lock:
                    for item in got:
                        claims[item["id"]].append((worker, sent, answered))
                done = [{"namespace": "conc", "id": i["id"], "attributes": {"by": worker}} for i in got]
                status, body = http(url, "POST", "/v2/udfs/conc/items/complete", {"worker_id": worker, "items": done})
                if status != 200:
                    errors.append(f"complete {status} {body}")
                    return
                with lock:
                    completed.append(body["updated"])

        threads = [threading.Thread(target=claimer, args=(n,)) for n in range(CLAIMERS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=240)
        assert not errors, errors[:3]

        duplicates = [k for k, v in claims.items() if len(v) > 1]
        assert duplicates == [], f"items leased to two live workers: {duplicates[:5]}"
        assert sorted(claims) == sorted(f"r{i:04}" for i in range(ROWS)), "every item claimed once (victim's after)"
        for item_id in victim_ids:  # re-claimed only after the victim's lease ran out
            assert claims[item_id][0][2] >= held["sent"] + VICTIM_LEASE_S, (item_id, claims[item_id], held["sent"])
        assert sum(completed) == ROWS
        assert len({w for v in claims.values() for w, _, _ in v}) == CLAIMERS

        late = [{"namespace": "conc", "id": i, "attributes": {"by": "victim"}} for i in victim_ids]
        status, body = http(urls[0], "POST", "/v2/udfs/conc/items/complete", {"worker_id": "victim", "items": late})
        assert (status, body["updated"]) == (200, 0)
        final = wait_status(stack.url, "conc", lambda b: b["pending_count"] == 0)
        assert final["counts"] == {"pending": 0, "processing": 0, "failed": 0}
        rows = http(stack.url, "POST", "/v2/namespaces/conc/query",
                    {"rank_by": ["id", "asc"], "top_k": ROWS, "include_attributes": ["by"]})[1]["rows"]
        by = {r["id"]: r.get("by") for r in rows}
        assert all(by[k] == v[0][0] for k, v in claims.items()), "each row carries its one completer's result"
        print(f"\nqueue concurrency ({backend}): {ROWS} items, {sum(len(v) for v in claims.values())} claims by "
              f"{CLAIMERS} claimers over {len(urls)} gateway(s) x 2 workers, duplicates {len(duplicates)}, "
              f"victim items re-claimed {len(victim_ids)}, late completion updated {body['updated']}")


@pytest.mark.timeout(180)
@pytest.mark.parametrize("backend", BACKENDS)
def test_gateway_killed_with_sigkill_loses_nothing(backend: str, tmp_path: Path) -> None:
    with queue_stack(tmp_path, backend) as stack:
        seed(stack.url, "crash", 50, "crash")
        status, body = http(stack.url, "POST", "/v2/udfs/crash/claim", {"worker_id": "a", "limit": 20,
                                                                        "lease_seconds": 1})
        assert status == 200 and len(body["items"]) == 20
        stack.gw.stop(signal.SIGKILL)
        from support.procs import start_gateway

        again = start_gateway(stack.store.url, KEY, tmp_path / "gw", workers=2, **stack.env)
        stack.gateways.append(again)
        counts = http(again.url, "GET", "/v2/udfs/crash/status")[1]["counts"]
        assert sum(counts.values()) == 50 and counts["failed"] == 0, counts
        seen: set[str] = set()
        deadline = time.monotonic() + 60
        while len(seen) < 50 and time.monotonic() < deadline:
            got = http(again.url, "POST", "/v2/udfs/crash/claim", {"worker_id": "b", "limit": 50})[1]["items"]
            ids = [i["id"] for i in got]
            assert not seen & set(ids)
            seen |= set(ids)
            if ids:
                done = [{"namespace": "crash", "id": i} for i in ids]
                assert http(again.url, "POST", "/v2/udfs/crash/items/complete",
                            {"worker_id": "b", "items": done})[1]["updated"] == len(ids)
            else:
                time.sleep(0.1)
        assert len(seen) == 50
        assert http(again.url, "GET", "/v2/udfs/crash/status")[1]["counts"] == {"pending": 0, "processing": 0,
                                                                                "failed": 0}
