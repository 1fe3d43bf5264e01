"""Part 1 and 4: the same requests sent to the canned upstream directly, to nginx as a reverse proxy, and to the
gateway (pinned to one core), plus scaling by workers, body size and result size."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from functools import partial
from pathlib import Path
from typing import Any

from bench import compression_bench, load
from bench.load import Request
from bench.nginx import BIG_NS, WATERMARK_NS, set_updating
from bench.procs import BARE, NCPU, PROXY_CPU, Proc, http, start_bare, start_gateway

STORE_KEY = "bench-store-key"
AUTH = {"authorization": f"Bearer {STORE_KEY}"}
VEC = [0.1, 0.2, 0.3, 0.4]
PASS_BODY = json.dumps({"rank_by": ["vector", "ANN", VEC], "top_k": 10}).encode()
MINT_BODY = json.dumps({"name": "bench", "entitlements": {"vectorstore.default": {
    "scopes": ["read", "write"], "namespaces": ["bench-*"]}}}).encode()
GW_ENV = {"CONSISTENCY_POLL_INTERVAL_MS": "100", "CONSISTENCY_STABLE_POLL_INTERVAL_MS": "100"}


def write_body(rows: int, pad: int = 16) -> bytes:
    text = "x" * pad
    return json.dumps({"upsert_rows": [{"id": f"w-{i}", "vector": VEC, "text": text} for i in range(rows)],
                       "distance_metric": "cosine_distance"}).encode()


def query(ns: str, body: bytes = PASS_BODY, headers: dict[str, str] | None = None) -> Request:
    return Request("POST", f"/v2/namespaces/{ns}/query", body, headers or AUTH)


def _ok(status: int, what: str, body: bytes) -> None:
    if not 200 <= status < 300:
        raise RuntimeError(f"{what}: HTTP {status}: {body[:200]!r}")


def check(url: str, req: Request, want_header: tuple[str, str] | None = None, tries: int = 1) -> Request:
    """Send once through the target and fail loudly unless it answers 2xx (and carries `want_header`)."""
    for i in range(tries):
        status, headers, body = http(req.method, url + req.path, req.body, req.headers)
        _ok(status, f"{req.method} {req.path}", body)
        if want_header is None or headers.get(want_header[0]) == want_header[1]:
            return req
        if i + 1 < tries:
            time.sleep(0.05)
    raise RuntimeError(f"{req.method} {req.path}: response lacks {want_header[0]}: {want_header[1]}")  # type: ignore


def arm_watermark(gw_url: str, canned_root: Path, workers: int) -> Request:
    """Metadata says stable (the gateway takes a watermark), then updating: queries must get the filter injected."""
    req = query(WATERMARK_NS)
    set_updating(canned_root, False)
    for _ in range(4 * workers):
        check(gw_url, req)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:  # every worker has polled "stable" once it reports a watermark
        if all(http("POST", gw_url + req.path, req.body, req.headers)[1].get("x-layer-stable-as-of")
               for _ in range(4 * workers)):
            break
        time.sleep(0.1)
    set_updating(canned_root, True)
    for _ in range(8 * workers):
        check(gw_url, req, ("x-layer-watermark-applied", "true"), tries=60)
    return req


def mint_key(gw_url: str) -> Request:
    status, _, body = http("POST", gw_url + "/v2/keys", MINT_BODY, AUTH)
    _ok(status, "POST /v2/keys (mint)", body)
    token = json.loads(body)["token"]
    return query("bench-minted", headers={"authorization": f"Bearer {token}"})


def arm_fetch(gw_url: str) -> Request:
    req = Request("GET", "/v2/namespaces/bench-fetch/documents/doc-1", None, AUTH)
    check(gw_url, req)  # warm-up fetch: miss, backfills the cache
    check(gw_url, req, ("x-layer-cache", "hit"), tries=20)
    return req


class Runner:
    """Runs scenarios and keeps each one's result or its error."""

    def __init__(self, seconds: float, repeats: int) -> None:
        self.seconds = seconds
        self.repeats = repeats
        self.out: dict[str, Any] = {}

    def scenario(self, name: str, fn: Callable[[], dict[str, Any]]) -> None:
        try:
            self.out[name] = {"status": "ok", **fn()}
        except Exception as exc:  # noqa: BLE001 - a missing feature is reported, never faked
            self.out[name] = {"status": f"error: {type(exc).__name__}: {str(exc)[:300]}"}



def compare(r: Runner, targets: Mapping[str, tuple[str, list[int] | None]], req: Request,
            repeats: int = 1) -> dict[str, Any]:
    """Interleaved runs of the same request against each target; medians and ratios within this run."""
    res = load.interleaved(targets, req, r.seconds, repeats)
    out: dict[str, Any] = {k: v.as_dict() for k, v in res.items()}
    for k, v in res.items():
        if v.errors > max(0, v.requests // 1000) or not v.requests:  # > 0.1% errors: the scenario is broken
            raise RuntimeError(f"{k}: {v.errors} of {v.requests} requests failed: {v.bad_statuses}")
    if "gateway" in res:
        for base in ("nginx", "direct", "bare"):
            if base in res and res[base].rps:
                out[f"gateway_over_{base}_rps"] = round(res["gateway"].rps / res[base].rps, 4)
        if "nginx" in res and res["nginx"].cpu_us_per_req and res["gateway"].cpu_us_per_req:
            out["x_nginx_cpu"] = round(res["nginx"].cpu_us_per_req / res["gateway"].cpu_us_per_req, 4)
    return out


def checked_compare(r: Runner, targets: Mapping[str, tuple[str, list[int] | None]], gw_url: str,
                    req: Request) -> dict[str, Any]:
    return compare(r, targets, check(gw_url, req))


# h2load --rps paces each connection separately and starts every connection's timer at the same instant, so N
# connections deliver bursts of N simultaneous requests: queueing inside one burst, not the proxy's own latency.
# The gated figure therefore paces the rate on one connection (a request every 1/rate s); the burst figure (10
# connections) is reported alongside.
PACED_CONNS = 1
BURST_CONNS = 10


def added_latency(r: Runner, direct: str, nginx: str, gw_url: str, gw_pids: list[int], rate: int,
                  repeats: int) -> dict[str, Any]:
    req = query("bench-pass")
    out: dict[str, Any] = {"rate": rate}
    targets = {"direct": (direct, None), "nginx": (nginx, None), "gateway": (gw_url, gw_pids)}
    for label, conns, times in (("paced", PACED_CONNS, repeats), ("burst", BURST_CONNS, 1)):  # burst: reported only
        res = load.interleaved(targets, req, r.seconds, times, conns=conns, rps=rate)
        if any(v.errors for v in res.values()):
            raise RuntimeError(f"errors at fixed rate ({label}): { {k: v.errors for k, v in res.items()} }")
        d = res["direct"]
        out[label] = {"conns": conns, **{k: v.as_dict() for k, v in res.items()},
                      "added_p50_ms": round(res["gateway"].p50_ms - d.p50_ms, 4),
                      "added_p99_ms": round(res["gateway"].p99_ms - d.p99_ms, 4),
                      "nginx_added_p50_ms": round(res["nginx"].p50_ms - d.p50_ms, 4)}
    out["added_p50_ms"], out["added_p99_ms"] = out["paced"]["added_p50_ms"], out["paced"]["added_p99_ms"]
    return out


def servers(r: Runner, canned: str, nginx: str, nginx_pids: list[int], data_dir: str, transport: str,
            repeats: int) -> dict[str, Any]:
    """The full gateway under each server and the floors, on the same pinned core and the same upstream transport,
    interleaved in one run: query passthrough req/s, CPU µs and context switches per request, and each gateway's CPU
    µs per request over its own server's floor (`over_floor_cpu_us`). `default` is the server whose gateway costs the
    least CPU per request (the README quotes it). `ceiling` is the best CPU against nginx's that any gateway on these
    servers could reach on this machine: each server's floor over bench/minimal_client.py, which does less than any
    production client can."""
    from gateway.config import SERVERS

    targets: dict[str, tuple[str, list[int] | None]] = {"nginx": (nginx, nginx_pids)}
    procs: list[Proc] = []
    try:
        for server in SERVERS:
            gw, url = start_gateway(canned, STORE_KEY, f"{data_dir}/{server}", 1, transport, PROXY_CPU, server, **GW_ENV)
            procs.append(gw)
            targets[f"gateway_{server}"] = (url, gw.pids())
        for kind in BARE:
            bare, url = start_bare(kind, canned, transport)
            procs.append(bare)
            targets[f"bare_{kind}"] = (url, bare.pids())
        for server in SERVERS:
            bare, url = start_bare(server, canned, "minimal")
            procs.append(bare)
            targets[f"bare_{server}_minimal"] = (url, bare.pids())
        req = query("bench-pass")
        for url, _ in targets.values():
            check(url, req)
        res = load.interleaved(targets, req, r.seconds, repeats)
    finally:
        for proc in procs:
            proc.stop()
    out: dict[str, Any] = {"transport": transport, **{k: v.as_dict() for k, v in res.items()}}
    if any(v.errors for v in res.values()):
        raise RuntimeError(f"errors: { {k: v.bad_statuses for k, v in res.items() if v.errors} }")
    nginx_cpu = res["nginx"].cpu_us_per_req
    for k, v in res.items():
        if nginx_cpu and v.cpu_us_per_req:
            out[k]["x_nginx_cpu"] = round(nginx_cpu / v.cpu_us_per_req, 3)
    for s in SERVERS:
        gw_cpu, floor_cpu = res[f"gateway_{s}"].cpu_us_per_req, res[f"bare_{s}"].cpu_us_per_req
        if gw_cpu and floor_cpu:
            out[f"gateway_{s}"]["over_floor_cpu_us"] = round(gw_cpu - floor_cpu, 1)
    ceiling = {s: out[f"bare_{s}_minimal"].get("x_nginx_cpu") or 0.0 for s in SERVERS}
    best = max(ceiling, key=lambda s: ceiling[s])
    out["ceiling"] = {"server": best, "x_nginx_cpu": ceiling[best]}
    cpu = {s: res[f"gateway_{s}"].cpu_us_per_req or float("inf") for s in SERVERS}
    out["default"] = min(cpu, key=lambda s: cpu[s])
    out["configured_default"] = SERVERS[0]
    return out


def gateway_suite(r: Runner, canned: str, canned_root: Path, nginx: str, nginx_pids: list[int], data_dir: str,
                  transport: str, rate: int, full: bool) -> tuple[dict[str, Any], Proc]:
    """All part-1 scenarios against one gateway (1 worker, pinned); returns results and the still-running gateway
    (for profiling; the caller stops it)."""
    r.out = {}
    gw, gw_url = start_gateway(canned, STORE_KEY, data_dir, 1, transport, PROXY_CPU, **GW_ENV)
    try:
        pids = gw.pids()
        targets = {"direct": (canned, None), "nginx": (nginx, nginx_pids), "gateway": (gw_url, pids)}
        lite = {"nginx": (nginx, nginx_pids), "gateway": (gw_url, pids)}
        pass_req = query("bench-pass")
        r.scenario("query_passthrough", lambda: compare(r, targets, check(gw_url, pass_req), r.repeats))
        r.scenario("added_latency_fixed_rate", lambda: added_latency(r, canned, nginx, gw_url, pids, rate, r.repeats))
        r.scenario("query_watermark", lambda: compare(
            r, targets, arm_watermark(gw_url, canned_root, 1)))
        for rows in (1, 100):
            w = Request("POST", f"/v2/namespaces/bench-write{rows}", write_body(rows), AUTH)
            r.scenario(f"write_{rows}_rows", partial(checked_compare, r, targets, gw_url, w))
        r.scenario("fetch_cache_hit", lambda: compare(r, {"gateway": (gw_url, pids)}, arm_fetch(gw_url)))
        r.scenario("minted_key_query", lambda: compare(r, {"gateway": (gw_url, pids)}, mint_key(gw_url)))
        if full:
            for size, label in ((1024, "1KB"), (100 * 1024, "100KB"), (1024 * 1024, "1MB")):
                w = Request("POST", "/v2/namespaces/bench-size", write_body(1, size), AUTH)
                r.scenario(f"write_body_{label}", partial(checked_compare, r, lite, gw_url, w))
            r.scenario("compression_rewritten_schema",
                       partial(compression_bench.end_to_end, r.seconds, r.repeats, gw_url, pids, AUTH))
            for ns, label in (("bench-pass", "top_k_10"), (BIG_NS, "top_k_1000")):
                q = query(ns, json.dumps({"rank_by": ["vector", "ANN", VEC], "top_k": 10 if ns != BIG_NS else 1000,
                                          "consistency": {"level": "strong"}}).encode())
                r.scenario(f"result_{label}", partial(checked_compare, r, lite, gw_url, q))
    except BaseException:
        gw.stop()
        raise
    return dict(r.out), gw


def workers_scaling(r: Runner, canned: str, data_dir: str, transport: str) -> dict[str, Any]:
    """Passthrough throughput with 1 and 2 workers, unpinned (the load generator and upstream share the cores)."""
    out: dict[str, Any] = {"note": f"gateway unpinned on {NCPU} cores shared with h2load and the canned upstream"}
    for workers in (1, 2):
        gw, url = start_gateway(canned, STORE_KEY, f"{data_dir}/w{workers}", workers, transport, None, **GW_ENV)
        try:
            req = query("bench-pass")
            check(url, req)
            out[f"workers_{workers}"] = load.run(url, req, r.seconds, conns=32, pids=gw.pids()).as_dict()
        finally:
            gw.stop()
    return out
