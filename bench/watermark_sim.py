"""Watermark simulation (issue 18): many real watchers against the local store with index lag, judged offline.

Processes x workers real `Watcher`s (gateway/consistency.py), each with its own upstream client and an optional
clock offset (half the workers skewed by +/- `skew_ms`). Load: namespaces by Zipf(1.1); every worker "queries" (a
`decision()` call, recorded) 20 times a second; writes are real (stamped by `begin_write`, delayed by a store
fault to stand for write latency, fenced by `end_write`); polls are real. The store counts metadata calls
(`/_localstore/counters`) and journals when each write was applied (`/_localstore/journal`, CLOCK_MONOTONIC), so
every decision is judged against the store's truth: a row is unindexed from its apply time until apply + lag.

* violation: the filter was injected with watermark W while a row stamped <= W was applied but unindexed (0 is the
  promise);
* exposure: no filter while some row was unindexed (stale "stable"; bounded by fences, not a correctness failure);
* calls: metadata calls per second at the store vs the model (per worker: each worker polls its namespaces; shared:
  queried namespaces / stable interval + updating namespaces / updating interval, per host);
* polls: the watchers' own record of their metadata calls: settling polls a second, and the period between two
  calls for a namespace (by one worker; shared: by any worker of the host), by status;
* failover: the process polling most namespaces is SIGKILLed; the time until each of its namespaces is polled by
  another worker.

`python -m bench.watermark_sim [--smoke] [--only SCENARIO ...] [--seconds S] [--board sqlite|aerospike]`; `just bench`
runs it as the `watermarks` part (SQLite records).
"""

from __future__ import annotations

import argparse
import asyncio
import contextvars
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from bench.procs import Proc, base_env, free_port, http

KEY = "sim-key"
LAG_MS = 1500
WRITE_DELAY_MS = 400
STABLE_MS, UPDATING_MS, MARGIN_MS = 2000, 500, 500
NAMESPACES = 200
QUERY_HZ = 20
WRITES_PER_S = 5.0
WARMUP_S = 5.0


def zipf_weights(n: int, s: float = 1.1) -> list[float]:
    return [1 / (k ** s) for k in range(1, n + 1)]


# ---- worker process -------------------------------------------------------------------------------------------
async def worker_main(spec: dict[str, Any]) -> None:
    from gateway.config import load_config
    from gateway.consistency import STABLE, Watcher, now_ms
    from gateway.upstream import Upstream

    config = load_config({"TURBOPUFFER_API_URL": spec["store"], "TURBOPUFFER_API_KEY": KEY,
                          "LAYER_DATA_DIR": spec["dir"]})
    board = _open_board(spec["board"])
    rnd = random.Random(spec["seed"])
    names = [f"sim-{i:03d}" for i in range(NAMESPACES)]
    weights = zipf_weights(NAMESPACES)
    watchers: list[Watcher] = []
    polls: list[tuple[int, int, int, str, bool]] = []
    for i in range(spec["workers"]):
        w = Watcher(Upstream(config), UPDATING_MS, STABLE_MS, MARGIN_MS, 60_000, board, 250)
        offset = rnd.choice((-1, 1)) * spec["skew_ms"] if i % 2 == 0 else 0
        w.clock_ms = lambda off=offset: now_ms() + off  # type: ignore[misc]
        w.start()
        watchers.append(w)
        _trace(w, i, names, polls)
    decisions: list[tuple[int, int, int, int]] = []  # (monotonic ns, ns index, inject, watermark or -1)
    samples: list[tuple[int, int, int]] = []  # (second, watched stable, watched other) summed over workers
    writes: list[tuple[int, int, int, int]] = []  # (sent ns, acked ns, ns index, stamp)
    end = time.monotonic() + spec["seconds"]

    async def queries(w: Watcher) -> None:
        await asyncio.sleep(rnd.random() / QUERY_HZ)
        while time.monotonic() < end:
            j = rnd.choices(range(NAMESPACES), weights)[0]
            w.watch(names[j], None)
            mark, inject = w.decision(names[j])
            decisions.append((time.monotonic_ns(), j, int(inject), -1 if mark is None else mark))
            await asyncio.sleep(1 / QUERY_HZ)

    async def write_one(n: int) -> None:
        w = rnd.choice(watchers)
        j = rnd.choices(range(NAMESPACES), weights)[0]
        ticket = await w.begin_write(names[j], None)
        row = {"id": f"{spec['seed']}-{n}", "vector": [1.0, 2.0], "_hevlayer_upserted_at": ticket.stamp}
        body = json.dumps({"upsert_rows": [row], "distance_metric": "euclidean_squared"}).encode()
        sent = time.monotonic_ns()
        landed = True
        try:
            resp = await w.upstream.request("POST", f"/v2/namespaces/{names[j]}", KEY, body, "write")
            landed = not 400 <= resp.status < 500
        finally:
            await w.end_write(ticket, landed)
        writes.append((sent, time.monotonic_ns(), j, ticket.stamp))

    async def writer() -> None:
        n = 0
        pending: set[asyncio.Task[None]] = set()
        while time.monotonic() < end:
            await asyncio.sleep(rnd.expovariate(spec["writes_per_s"]))
            n += 1
            task = asyncio.create_task(write_one(n))
            pending.add(task)
            task.add_done_callback(pending.discard)
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)

    async def sampler() -> None:
        while time.monotonic() < end:
            await asyncio.sleep(1.0)
            sec = int(time.monotonic())
            st = sum(1 for w in watchers for x in w.namespaces.values() if x.status == STABLE)
            total = sum(len(w.namespaces) for w in watchers)
            samples.append((sec, st, total - st))

    async def board_down() -> None:
        await asyncio.sleep(spec["board_down_at"])
        for w in watchers:
            w.board = DownBoard()  # type: ignore[assignment]

    extra = [board_down()] if spec.get("board_down_at") else []
    await asyncio.gather(writer(), sampler(), *extra, *(queries(w) for w in watchers))
    for w in watchers:
        await w.stop()
    Path(spec["out"]).write_text(json.dumps({"decisions": decisions, "samples": samples,
                                             "writes": writes, "polls": polls}))


SETTLING: contextvars.ContextVar[bool] = contextvars.ContextVar("settling", default=False)


def _trace(w: Any, i: int, names: list[str], polls: list[tuple[int, int, int, str, bool]]) -> None:
    """Record every metadata call of watcher `i`: (monotonic ns, worker, ns index, its status then, settling)."""
    index = {n: j for j, n in enumerate(names)}
    request, settle_poll = w.upstream.request, w._settle_poll

    async def traced(method: str, path: str, key: Any, body: Any = None, what: str = "request", **kw: Any) -> Any:
        if what == "metadata poll":
            ns = path.split("/")[3]
            st = w.namespaces[ns].status if ns in w.namespaces else "-"
            polls.append((time.monotonic_ns(), i, index[ns], st, SETTLING.get()))
        return await request(method, path, key, body, what, **kw)

    async def settling(*args: Any) -> Any:
        token = SETTLING.set(True)
        try:
            return await settle_poll(*args)
        finally:
            SETTLING.reset(token)

    w.upstream.request, w._settle_poll = traced, settling


def _open_board(board: dict[str, str] | None) -> Any:
    """The shared watch records of a run: None (per worker), a SQLite file, or an Aerospike namespace."""
    if board is None:
        return None
    if board["kind"] == "sqlite":
        from gateway.watch_board import WatchBoard

        return WatchBoard(board["path"])
    from gateway.watch_board_aerospike import AerospikeWatchBoard

    return AerospikeWatchBoard(_aerospike_settings(board))


def _aerospike_settings(board: dict[str, str]) -> Any:
    from gateway.config import load_cache_settings

    return load_cache_settings({"AEROSPIKE_HOSTS": board["hosts"], "AEROSPIKE_NAMESPACE": board["namespace"]})


class Records:
    """The coordinator's view of the shared records: (ns, status, poller) of each namespace's record."""

    def __init__(self, board: dict[str, str]) -> None:
        self.board = board
        self.client: Any = None
        if board["kind"] == "aerospike":
            from gateway.cache.aerospike import cluster_config, connect

            self.client = connect(cluster_config(_aerospike_settings(board)))

    def rows(self) -> list[tuple[str, str, str | None]]:
        if self.client is None:
            import sqlite3

            conn = sqlite3.connect(self.board["path"], timeout=5)
            try:
                return conn.execute("select ns, status, poller from watch").fetchall()
            except sqlite3.OperationalError:
                return []  # not created yet by the workers
            finally:
                conn.close()
        from gateway.watch_board_aerospike import SET

        names = [f"sim-{i:03d}" for i in range(NAMESPACES)]
        res = self.client.batch_read([(self.board["namespace"], SET, ns) for ns in names], ["w"])
        out = []
        for ns, rec in zip(names, res.batch_records, strict=True):
            if rec.result == 0 and rec.record and "w" in (rec.record[2] or {}):
                r = json.loads(rec.record[2]["w"])
                out.append((ns, r["status"], r["poller"]))
        return out

    def close(self) -> None:
        if self.client is not None:
            self.client.close()


class DownBoard:
    """The shared watch records unavailable (every call fails, as with a broken disk)."""

    slot_changes = 0

    def __getattr__(self, name: str) -> Any:
        def fail(*_: Any) -> Any:
            raise OSError("watch board down (simulated)")

        return fail


# ---- coordinator ------------------------------------------------------------------------------------------------
def _store(tmp: Path) -> Proc:
    port = free_port()
    cmd = [sys.executable, "-m", "localstore", "serve", "--host", "127.0.0.1", "--port", str(port),
           "--data-dir", str(tmp / "store"), "--enable-faults"]
    return Proc("sim-localstore", cmd, base_env(LOCALSTORE_API_KEY=KEY, LOCALSTORE_INDEX_LAG_MS=str(LAG_MS)),
                f"http://127.0.0.1:{port}", "/_localstore/health")


def _create_namespaces(store: str) -> None:
    """Every namespace exists (a query on a missing one is a 404, which the gateway never watches) and is indexed."""
    for i in range(NAMESPACES):
        row = {"id": "seed", "vector": [0.0, 0.0], "_hevlayer_upserted_at": 0}
        _admin(store, "POST", f"/v2/namespaces/sim-{i:03d}", {"upsert_rows": [row],
                                                               "distance_metric": "euclidean_squared"})
    time.sleep(LAG_MS / 1000 + 0.5)


def _admin(store: str, method: str, path: str, body: Any = None) -> Any:
    data = json.dumps(body).encode() if body is not None else None
    status, _, raw = http(method, store + path, data, {"authorization": f"Bearer {KEY}"})
    assert status == 200, (path, status, raw[:200])
    return json.loads(raw)


def run_one(tmp: Path, store: str, name: str, shared: bool, skew_ms: int, seconds: float, procs: int,
            workers: int, kill: bool = False, down: bool = False,
            aerospike_hosts: str | None = None) -> dict[str, Any]:
    """`aerospike_hosts`: the shared records in Aerospike (namespace `name`), else in a SQLite file."""
    d = tmp / name
    d.mkdir(parents=True)
    names = [f"sim-{i:03d}" for i in range(NAMESPACES)]
    _admin(store, "DELETE", "/_localstore/faults")
    for ns in names:
        _admin(store, "POST", "/_localstore/journal", {"namespace": ns})
    _admin(store, "POST", "/_localstore/faults", {"route": "write", "delay_ms": WRITE_DELAY_MS})
    board: dict[str, str] | None = None
    if shared:
        board = {"kind": "aerospike", "hosts": aerospike_hosts, "namespace": name} if aerospike_hosts else \
            {"kind": "sqlite", "path": str(d / "watch.sqlite3")}
    children = []
    for p in range(procs):
        spec = {"store": store, "dir": str(d), "board": board, "seed": p + 1, "workers": workers,
                "skew_ms": skew_ms, "seconds": seconds + WARMUP_S, "writes_per_s": WRITES_PER_S / procs,
                "out": str(d / f"out-{p}.json"), "board_down_at": WARMUP_S + seconds / 3 if down else 0}
        children.append(subprocess.Popen([sys.executable, "-m", "bench.watermark_sim", "worker", json.dumps(spec)],
                                         env=os.environ.copy()))
    try:
        return _measure(tmp, store, name, shared, skew_ms, seconds, procs, workers, kill, down, d, board, children)
    finally:
        for c in children:  # processes this simulation started (normally they have exited by now)
            if c.poll() is None:
                c.kill()
                c.wait()


def _measure(tmp: Path, store: str, name: str, shared: bool, skew_ms: int, seconds: float, procs: int,
             workers: int, kill: bool, down: bool, d: Path, board: dict[str, str] | None,
             children: list[subprocess.Popen[bytes]]) -> dict[str, Any]:
    names = [f"sim-{i:03d}" for i in range(NAMESPACES)]
    t_start = time.monotonic()
    time.sleep(WARMUP_S)
    _admin(store, "DELETE", "/_localstore/counters")
    t0 = time.monotonic()
    board_samples: list[tuple[int, int]] = []  # (records, updating) in the shared board, twice a second
    stop_sampling = threading.Event()
    if board is not None:
        threading.Thread(target=_sample_board, args=(board, board_samples, stop_sampling), daemon=True).start()
    failover: dict[str, Any] | None = None
    if kill and board is not None:
        time.sleep(seconds / 3)
        failover = _kill_top_poller(board, children, t0 + seconds)
    down_calls: dict[str, Any] | None = None
    if down:
        time.sleep(max(t_start + WARMUP_S + seconds / 3 + 1 - time.monotonic(), 0))  # a second to settle
        _admin(store, "DELETE", "/_localstore/counters")
        t_down = time.monotonic()
        time.sleep(max(t0 + seconds - time.monotonic(), 0))
        calls = sum(_admin(store, "GET", "/_localstore/counters")["counters"].get("metadata", {}).values())
        rate = calls / (time.monotonic() - t_down)
        down_calls = {"metadata_calls_per_s": round(rate, 1), "budget_per_s": 20 * procs * workers,
                      "within_budget": rate <= 20 * procs * workers}
    time.sleep(max(t0 + seconds - time.monotonic(), 0))
    counters = _admin(store, "GET", "/_localstore/counters")["counters"]
    elapsed = time.monotonic() - t0
    stop_sampling.set()
    for c in children:
        try:
            c.wait(timeout=seconds + 60)
        except subprocess.TimeoutExpired:
            c.kill()
            c.wait()
    outs = [json.loads(p.read_text()) for p in sorted(d.glob("out-*.json"))]
    calls = sum(counters.get("metadata", {}).values())
    res = _judge(store, names, outs, t0, t0 + elapsed, t_start)
    res.update(name=name, shared=shared, board=board["kind"] if board else None, skew_ms=skew_ms,
               workers=procs * workers, processes=procs, seconds=round(elapsed, 1),
               metadata_calls_per_s=round(calls / elapsed, 1))
    res["model_calls_per_s"] = round(_shared_model(board_samples) if shared else _model(outs, t0, t0 + elapsed), 1)
    res["polls"] = _polls(outs, t0, t0 + elapsed, shared)
    res["calls_vs_model"] = round(res["metadata_calls_per_s"] / max(res["model_calls_per_s"], 1e-9), 2)
    if failover is not None:
        res["failover"] = failover
    if down_calls is not None:
        res["board_down"] = down_calls
    res["status"] = "ok"
    return res


def _kill_top_poller(board: dict[str, str], children: list[subprocess.Popen[bytes]], until: float) -> dict[str, Any]:
    records = Records(board)
    by_pid: dict[int, list[str]] = {}
    for ns, _, poller in records.rows():
        if poller is not None:
            by_pid.setdefault(int(poller.split("-")[0]), []).append(ns)
    pids = {c.pid: c for c in children}
    top = max((p for p in by_pid if p in pids), key=lambda p: len(by_pid[p]))
    mine = set(by_pid[top])
    os.kill(top, signal.SIGKILL)  # a process this simulation started
    pids[top].wait()
    killed = time.monotonic()
    taken: dict[str, float] = {}
    while time.monotonic() < until and len(taken) < len(mine):
        for ns, _, poller in records.rows():
            if ns in mine and ns not in taken and poller is not None and int(poller.split("-")[0]) != top:
                taken[ns] = time.monotonic() - killed
        time.sleep(0.05)
    records.close()
    from gateway.consistency import POLL_HOLD_S

    waits = sorted(taken.values())
    # A poller killed mid-poll holds its slot for the lease; the next claim comes within one loop tick after it.
    bound = POLL_HOLD_S + UPDATING_MS / 1000
    return {"namespaces": len(mine), "taken_over": len(taken), "max_s": round(waits[-1], 2) if waits else None,
            "p50_s": round(waits[len(waits) // 2], 2) if waits else None, "lease_s": POLL_HOLD_S, "bound_s": bound,
            "within_bound": bool(waits) and len(taken) == len(mine) and waits[-1] <= bound}


def _sample_board(board: dict[str, str], out: list[tuple[int, int]], stop: threading.Event) -> None:
    records = Records(board)
    try:
        while not stop.wait(0.5):
            rows = records.rows()
            if rows:
                out.append((len(rows), sum(status == "updating" for _, status, _ in rows)))
    finally:
        records.close()


def _model(outs: list[dict[str, Any]], t0: float, t1: float) -> float:
    """Per-worker polling (design 1, G·W·N_q/T_s): every worker polls each namespace it watches once per interval,
    T_s while stable, T_u otherwise; the sum, from each second's sample of the watchers' namespaces, averaged.

    Once per interval holds because the watcher keeps each namespace on a fixed-rate schedule (`Watcher._schedule`:
    due one interval after the previous poll was due, ticks one tick after the previous tick started). Before, the
    interval ran from the late tick that found the namespace due and the next tick from the end of the tick's polls,
    so the period was T plus the round trip plus the rest of a tick (2.2 s for T_s = 2 s: 0.85-0.9 of the model).
    Not in the model: settling polls after writes (`polls.settling_per_s`, a few a second), the poll when a worker
    starts watching a namespace, and a schedule restarted after the loop stalled longer than an interval."""
    lo, hi = int(t0) + 1, int(t1) - 1
    per_sec: dict[int, float] = {}
    for o in outs:
        for sec, st, other in o["samples"]:
            if lo <= sec <= hi:
                per_sec[sec] = per_sec.get(sec, 0.0) + st / (STABLE_MS / 1000) + other / (UPDATING_MS / 1000)
    return sum(per_sec.values()) / max(len(per_sec), 1)


def _shared_model(board_samples: list[tuple[int, int]]) -> float:
    """Shared records (design 5): each namespace the host watches once per interval, by whichever worker claims it:
    queried namespaces / T_s + updating namespaces / T_u, from the board's records sampled twice a second.

    A claim needs the last observation to be an interval old, and the observation is stamped when the poll is
    published, so the period is the interval plus the round trip plus the wait for the next watching worker's
    check (short when many workers watch the namespace): the polls come slightly below the model, the settling
    polls (`polls.settling_per_s`) slightly above it."""
    stable_s, updating_s = STABLE_MS / 1000, UPDATING_MS / 1000
    rates = [q / stable_s + u * (1 / updating_s - 1 / stable_s) for q, u in board_samples]
    return sum(rates) / max(len(rates), 1)


def _polls(outs: list[dict[str, Any]], t0: float, t1: float, shared: bool) -> dict[str, Any]:
    """Metadata calls as the watchers made them: settling polls a second, and the period between two calls for the
    same namespace by the same worker (shared: by any worker), by the namespace's status at the later call."""
    last: dict[tuple[int, ...], int] = {}
    gaps: dict[str, list[float]] = {}
    settling = 0
    for t, p, i, j, st, settle in sorted((t, p, *rest) for p, o in enumerate(outs) for t, *rest in o["polls"]):
        key = (j,) if shared else (p, i, j)
        if t0 * 1e9 <= t <= t1 * 1e9:
            settling += settle
            if key in last:
                gaps.setdefault(st, []).append((t - last[key]) / 1e9)
        last[key] = t
    out: dict[str, Any] = {"settling_per_s": round(settling / (t1 - t0), 1)}
    for st, g in sorted(gaps.items()):
        g.sort()
        out[f"period_s_{st}"] = {"mean": round(sum(g) / len(g), 3), "p50": round(g[len(g) // 2], 3),
                                 "p90": round(g[len(g) * 9 // 10], 3)}
    return out


def _judge(store: str, names: list[str], outs: list[dict[str, Any]], t0: float, t1: float,
           t_start: float) -> dict[str, Any]:
    lag_ns = LAG_MS * 1_000_000
    rows: dict[int, list[tuple[int, int]]] = {}  # ns index -> [(applied ns, stamp)]
    for j, ns in enumerate(names):
        for e in _admin(store, "GET", f"/_localstore/journal?namespace={ns}")["entries"]:
            for attrs in (e.get("docs") or {}).values():
                if attrs is not None and "_hevlayer_upserted_at" in attrs:
                    rows.setdefault(j, []).append((e["at_ns"], attrs["_hevlayer_upserted_at"]))
    written = {(j, stamp): (p, sent, ack) for p, o in enumerate(outs) for sent, ack, j, stamp in o["writes"]}
    lo, hi = int(t0 * 1e9), int(t1 * 1e9)
    n = injected = violations = exposed = 0
    examples: list[dict[str, Any]] = []
    for p, o in enumerate(outs):
        for t, j, inject, mark in o["decisions"]:
            if not lo <= t <= hi:
                continue
            n += 1
            unindexed = [(at, stamp) for at, stamp in rows.get(j, ()) if at <= t < at + lag_ns]
            if inject:
                injected += 1
                passed = [(at, stamp) for at, stamp in unindexed if stamp <= mark]
                violations += bool(passed)
                if passed and len(examples) < 5:  # what a violation was, to explain it
                    at, stamp = passed[0]
                    wp, sent, ack = written.get((j, stamp), (None, None, None))
                    examples.append({"at_s": round(t / 1e9 - t0, 3), "process": p, "ns": j, "watermark": mark,
                                     "stamp": stamp, "applied_s": round(at / 1e9 - t0, 3),
                                     "writer_process": wp,  # None: a process that was killed
                                     "sent_s": sent and round(sent / 1e9 - t0, 3),
                                     "acked_s": ack and round(ack / 1e9 - t0, 3)})
            elif unindexed:
                exposed += 1
    acks = [(ack - sent) / 1e6 for o in outs for sent, ack, _, _ in o["writes"]]
    return {"decisions": n, "filtered": injected, "violations": violations, "violation_examples": examples,
            "exposed": exposed, "writes": len(acks), "write_ack_ms_p50": round(sorted(acks)[len(acks) // 2], 1) if acks else None}


def run(tmp: Path, smoke: bool, only: list[str] | None = None, seconds: float | None = None,
        board: str = "sqlite") -> dict[str, Any]:
    """`board`: where the shared runs keep the watch records, `sqlite` (one host) or `aerospike` (the project's
    Aerospike wire test server, tests/support/aerospike_server.py)."""
    seconds = seconds or (8.0 if smoke else 30.0)
    procs, workers = 4, 13
    out: dict[str, Any] = {"workers": procs * workers, "lag_ms": LAG_MS, "write_delay_ms": WRITE_DELAY_MS,
                           "stable_ms": STABLE_MS, "updating_ms": UPDATING_MS, "namespaces": NAMESPACES,
                           "board": board}
    runs = [("shared_skew_2s", True, 2000, True)] if smoke else [
        ("per_worker_skew_0", False, 0, False), ("shared_skew_0", True, 0, False),
        ("shared_skew_300ms", True, 300, False), ("shared_skew_2s", True, 2000, True),
        ("per_worker_skew_2s", False, 2000, False), ("shared_board_down", True, 0, False)]
    if only:
        runs = [r for r in runs if r[0] in only]
    store = _store(tmp)
    server = None
    try:
        _create_namespaces(store.url)
        if board == "aerospike":
            from support.aerospike import start_aerospike  # the wire test server; bench.procs put tests/ on sys.path

            server = start_aerospike(namespaces=[r[0] for r in runs])  # one namespace per run: fresh records
        for name, shared, skew, kill in runs:
            try:
                out[name] = run_one(tmp, store.url, name, shared, skew, seconds, procs, workers, kill,
                                    down=name.endswith("board_down"),
                                    aerospike_hosts=server.hosts_env if server is not None else None)
            except Exception as exc:  # noqa: BLE001 - reported as the scenario's status
                out[name] = {"status": f"error: {exc!r}"}
    finally:
        store.stop()
        if server is not None:
            server.stop()
    return out


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["worker"]:
        asyncio.run(worker_main(json.loads(argv[1])))
        return
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--only", nargs="*")
    ap.add_argument("--seconds", type=float)
    ap.add_argument("--board", choices=("sqlite", "aerospike"), default="sqlite")
    args = ap.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))  # unwind: stop the store and the worker processes
    with tempfile.TemporaryDirectory(prefix="watermark-sim-") as tmp:
        print(json.dumps(run(Path(tmp), args.smoke, args.only, args.seconds, args.board), indent=2))


if __name__ == "__main__":
    main()
