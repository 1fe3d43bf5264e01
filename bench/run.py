"""`just bench` / `just bench-smoke`: start everything on 127.0.0.1, measure, stop everything, write the report.

Full run: budgets from bench/budgets.toml; exit 1 when one is broken or a scenario errored. Smoke (--smoke): every
scenario briefly, no budgets; exit 1 only when a scenario does not work. Report: bench/results/<timestamp>.json and
a Markdown summary on stdout; the gateway profile goes to bench/results/profile-<timestamp>.txt.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
import tomllib
from functools import partial
from pathlib import Path
from typing import Any

from bench import (
    cache_bench,
    compression_bench,
    mix,
    queue_bench,
    result_cache_bench,
    throughput,
    transports,
    watermark_sim,
)
from bench.localstore_bench import run as localstore_run
from bench.nginx import start_canned, start_proxy
from bench.procs import NCPU, PROXY_CPU, ensure_tools, start_gateway, start_localstore
from bench.profile import profile
from bench.report import check_budgets, markdown, statuses

HERE = Path(__file__).resolve().parent
PARTS = ("servers", "throughput", "transports", "scaling", "profile", "cache", "results", "mix", "soak",
         "localstore", "compression", "queue", "watermarks")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true", help="every scenario briefly, no budgets (CI)")
    ap.add_argument("--transports", default="httptools,pyreqwest",
                    help="gateway upstream transports to measure, first is primary (default: both)")
    ap.add_argument("--skip", default="", help=f"comma list of parts to skip: {','.join(PARTS)}")
    ap.add_argument("--seconds", type=float, default=None, help="seconds per h2load run (default 3; 0 = a fixed 200 requests, the smoke)")
    ap.add_argument("--repeats", type=int, default=None, help="runs per headline figure (default 3; smoke 1)")
    ap.add_argument("--soak-seconds", type=int, default=None, help="soak length (default from budgets.toml)")
    ap.add_argument("--budgets", default=str(HERE / "budgets.toml"))
    ap.add_argument("--out", default=str(HERE / "results"))
    return ap.parse_args(argv)


def part_throughput(args: argparse.Namespace, b: dict[str, Any], report: dict[str, Any], tmp: Path,
                    stamp: str, skip: set[str]) -> None:
    transport_kinds = [t.strip() for t in args.transports.split(",") if t.strip()]
    seconds = args.seconds if args.seconds is not None else (0 if args.smoke else 3)
    repeats = args.repeats or (1 if args.smoke else 3)
    rate = b["throughput"]["fixed_rate_rps"]
    canned, canned_url = start_canned(tmp / "canned")
    try:
        nginx, nginx_url = start_proxy(tmp / "nginx", canned_url)
        try:
            if "servers" not in skip:
                runner = throughput.Runner(seconds, repeats)
                runner.scenario("servers", lambda: throughput.servers(runner, canned_url, nginx_url, nginx.pids(),
                                                                       str(tmp / "servers"), transport_kinds[0],
                                                                       max(repeats, 1 if args.smoke else 4)))
                report["servers"] = runner.out["servers"]
            report["throughput"] = {}
            for i, transport in enumerate(transport_kinds):
                runner = throughput.Runner(seconds, repeats)
                res, gw = throughput.gateway_suite(runner, canned_url, tmp / "canned", nginx_url, nginx.pids(),
                                                   str(tmp / f"gw-{transport}"), transport, rate, full=i == 0)
                try:
                    if i == 0 and "profile" not in skip:
                        out = Path(args.out) / f"profile-{stamp}{'-smoke' if args.smoke else ''}.txt"
                        secs = 1 if args.smoke else 5
                        runner.scenario("profile", partial(profile, gw, gw.url, throughput.query("bench-pass"),
                                                           out, secs))
                        res["profile"] = runner.out["profile"]
                finally:
                    gw.stop()
                report["throughput"][transport] = res
            if "transports" not in skip:
                runner = throughput.Runner(seconds, repeats)
                runner.scenario("transport_floors", partial(transports.transport_floors, runner, tmp, canned_url,
                                                            transport_kinds))
                report["transport_floors"] = runner.out["transport_floors"]
            if "scaling" not in skip:
                runner = throughput.Runner(seconds, 1)
                runner.scenario("scaling", lambda: throughput.workers_scaling(runner, canned_url, str(tmp / "scale"),
                                                                               transport_kinds[0]))
                report["scaling"] = {"transport": transport_kinds[0], **runner.out["scaling"]}
        finally:
            nginx.stop()
    finally:
        canned.stop()


def part_mix(args: argparse.Namespace, b: dict[str, Any], report: dict[str, Any], tmp: Path, skip: set[str]) -> None:
    m = b["mix"]
    docs, dims = (1000, 32) if args.smoke else (m["docs"], m["dims"])
    seconds = 3 if args.smoke else m["seconds"]
    soak_s = args.soak_seconds or (5 if args.smoke else b["soak"]["seconds"])
    transport = args.transports.split(",")[0].strip()
    key, ns = throughput.STORE_KEY, "bench-mix"
    store, store_url = start_localstore(str(tmp / "store"), key)
    try:
        runner = throughput.Runner(seconds, 1)
        runner.scenario("seed", lambda: {"docs": docs, "dims": dims,
                                         "rows_per_s": round(mix.seed(store_url, key, ns, docs, dims), 1)})
        report["mix"] = {"seed": runner.out["seed"]}
        gw, gw_url = start_gateway(store_url, key, str(tmp / "gw-mix"), 2, transport, None)
        try:
            for target, url, fetch in (("gateway", gw_url, "route"), ("direct", store_url, "query")):
                runner.scenario(target, partial(mix.locust, url, key, ns, docs, dims, seconds, m["offered_rps"],
                                                fetch))
                report["mix"][target] = runner.out[target]
            g, d = (_get_p(report["mix"], t) for t in ("gateway", "direct"))
            if g and d:
                report["mix"]["added_p50_ms"] = round(g[0] - d[0], 3)
                report["mix"]["added_p99_ms"] = round(g[1] - d[1], 3)
            if "soak" not in skip:
                runner.scenario("soak", lambda: mix.locust(gw_url, key, ns, docs, dims, soak_s, m["offered_rps"],
                                                           "route", sample=gw))
                report["soak"] = {"seconds": soak_s, "workers": 2, **runner.out["soak"]}
        finally:
            gw.stop()
    finally:
        store.stop()


def _get_p(mix_res: dict[str, Any], target: str) -> tuple[float, float] | None:
    a = mix_res.get(target, {}).get("all")
    return (a["p50_ms"], a["p99_ms"]) if a else None


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    budgets = tomllib.loads(Path(args.budgets).read_text())
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    Path(args.out).mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    report: dict[str, Any] = {"meta": {"started": stamp, "smoke": args.smoke, "cpus": NCPU, "gateway_cpu": PROXY_CPU,
                                       "python": platform.python_version(), "transports": args.transports,
                                       "loadavg_at_start": os.getloadavg(),
                                       "pinning": "gateway and nginx proxy on cpu 1; h2load and canned upstream on "
                                                  "cpu 0" if NCPU > 1 else "single cpu: no pinning"}}
    ensure_tools()
    with tempfile.TemporaryDirectory(prefix="bench-run-") as tmp_s:
        tmp = Path(tmp_s)
        if "throughput" not in skip:
            part_throughput(args, budgets, report, tmp, stamp, skip)
        if "cache" not in skip:
            seconds = args.seconds if args.seconds is not None else (0 if args.smoke else 3)
            report["cache"] = cache_bench.run(tmp, seconds, args.repeats or (1 if args.smoke else 3))
        if "results" not in skip:
            try:
                report["results"] = result_cache_bench.run(tmp, 1.0 if args.smoke else 5.0,
                                                           args.repeats or (1 if args.smoke else 3))
            except Exception as exc:  # noqa: BLE001 - reported as the scenario's status, like the others
                report["results"] = {"status": f"error: {type(exc).__name__}: {str(exc)[:300]}"}
        if "mix" not in skip:
            part_mix(args, budgets, report, tmp, skip)
        if "compression" not in skip:
            runner = throughput.Runner(0, 1)
            runner.scenario("micro", partial(compression_bench.micro, args.smoke))
            report["compression"] = runner.out
        if "localstore" not in skip:
            sizes, queries = ([1000], 20) if args.smoke else ([10_000, 100_000], 200)
            report["localstore"] = localstore_run(sizes, queries)
        if "queue" not in skip:
            report["queue"] = queue_bench.run(tmp, args.smoke)
        if "watermarks" not in skip:
            report["watermarks"] = watermark_sim.run(tmp / "watermarks", args.smoke)
    broken = [(name, st) for name, st in statuses(report) if st != "ok"]
    if not args.smoke:
        report["budgets"] = check_budgets(report, budgets)
    report["meta"]["seconds"] = round(time.monotonic() - t0, 1)
    path = Path(args.out) / f"{stamp}{'-smoke' if args.smoke else ''}.json"
    path.write_text(json.dumps(report, indent=2))
    print(markdown(report))
    failed = [r["budget"] for r in report.get("budgets", []) if not r["ok"]]
    print(f"\nreport: {os.path.relpath(path)} ({report['meta']['seconds']} s)")
    for name, st in broken:
        print(f"SCENARIO {name}: {st}")
    for name in failed:
        print(f"BUDGET BROKEN: {name}")
    return 1 if broken or failed else 0


if __name__ == "__main__":
    sys.exit(main())
