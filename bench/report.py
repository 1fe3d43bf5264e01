"""Budget checks and the short Markdown summary of a benchmark report."""

from __future__ import annotations

from typing import Any

from gateway.config import SERVERS


def _get(d: Any, *path: str) -> Any:
    for p in path:
        if not isinstance(d, dict) or p not in d:
            return None
        d = d[p]
    return d


def check_budgets(report: dict[str, Any], b: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per budget: name, limit, measured value (None when the scenario failed), ok."""
    rows: list[dict[str, Any]] = []

    def add(name: str, value: Any, limit: float, at_least: bool) -> None:
        ok = value is not None and (value >= limit if at_least else value <= limit)
        rows.append({"budget": name, "limit": f"{'>=' if at_least else '<='} {limit}", "value": value, "ok": ok})

    t, m, s = b["throughput"], b["mix"], b["soak"]
    ceiling = _get(report, "servers", "ceiling", "x_nginx_cpu")
    vs_nginx = "passthrough CPU/req nginx / gateway" + (f" (at most {ceiling} reachable here)" if ceiling else "")
    for transport, res in report.get("throughput", {}).items():
        add(f"{transport}: {vs_nginx}", _get(res, "query_passthrough", "x_nginx_cpu"),
            t["passthrough_cpu_vs_nginx_min"], True)
        add(f"{transport}: added p50 ms @ {t['fixed_rate_rps']} rps",
            _get(res, "added_latency_fixed_rate", "added_p50_ms"), t["added_p50_ms_max"], False)
        add(f"{transport}: fetch cache hit rps", _get(res, "fetch_cache_hit", "gateway", "rps"),
            t["fetch_hit_rps_min"], True)
        add(f"{transport}: 100-row write gateway CPU µs", _get(res, "write_100_rows", "gateway", "cpu_us_per_req"),
            t["write_100_rows_cpu_us_max"], False)
        w1 = _get(res, "write_1_rows", "gateway", "cpu_us_per_req")
        q = _get(res, "query_passthrough", "gateway", "cpu_us_per_req")
        add(f"{transport}: 1-row write CPU / passthrough query CPU", round(w1 / q, 3) if w1 and q else None,
            t["write_1_row_vs_query_cpu_max"], False)
    if "servers" in report:
        srv = report["servers"]
        for server in SERVERS:
            label = f"servers {server} ({srv.get('transport', '?')})"
            add(f"{label}: {vs_nginx}", _get(srv, f"gateway_{server}", "x_nginx_cpu"),
                t["passthrough_cpu_vs_nginx_min"], True)
            add(f"{label}: gateway CPU µs/req over its floor", _get(srv, f"gateway_{server}", "over_floor_cpu_us"),
                t["over_floor_cpu_us_max"], False)
    if "mix" in report:
        add("mix gateway p50 ms", _get(report, "mix", "gateway", "all", "p50_ms"), m["p50_ms_max"], False)
        add("mix gateway p99 ms", _get(report, "mix", "gateway", "all", "p99_ms"), m["p99_ms_max"], False)
        add("mix gateway error rate", _get(report, "mix", "gateway", "all", "error_rate"), m["error_rate_max"], False)
    if "soak" in report:
        add("soak RSS MB per worker (peak)", _get(report, "soak", "rss_peak_mb"), s["rss_mb_max"], False)
        add("soak RSS growth per worker", _get(report, "soak", "rss_growth"), s["rss_growth_max"], False)
    wm = report.get("watermarks") or {}
    if wm and "watermarks" in b:
        for name, r in wm.items():
            if isinstance(r, dict) and r.get("shared") is False and r.get("status") == "ok":  # the model holds
                for limit, at_least in ((b["watermarks"]["per_worker_calls_vs_model_min"], True),
                                        (b["watermarks"]["per_worker_calls_vs_model_max"], False)):
                    add(f"watermarks {name}: metadata calls / model", r["calls_vs_model"], limit, at_least)
            if isinstance(r, dict) and r.get("shared") and r.get("status") == "ok":
                add(f"watermarks {name}: rows served unindexed through the filter", r["violations"],
                    b["watermarks"]["violations_max"], False)
                if "board_down" in r:  # the model is for working shared records; down, the per-worker budget holds
                    add(f"watermarks {name}: metadata calls/s while the shared records are down",
                        r["board_down"]["metadata_calls_per_s"], r["board_down"]["budget_per_s"], False)
                else:
                    add(f"watermarks {name}: metadata calls / model", r["calls_vs_model"],
                        b["watermarks"]["shared_calls_vs_model_max"], False)
                if "failover" in r:
                    add(f"watermarks {name}: failover s (lease {r['failover']['lease_s']} s + one tick)",
                        r["failover"]["max_s"], r["failover"]["bound_s"], False)
    q = report.get("queue") or {}
    for backend in ("sqlite", "postgres"):
        if f"throughput_{backend}" in q:
            add(f"queue claim+complete items/s ({backend})", _get(q, f"throughput_{backend}", "items_per_s"),
                b["queue"]["claim_complete_items_per_s_min"], True)
    if "discovery" in q:
        add("queue discovery rows/s (100k docs)", _get(q, "discovery", "rows_per_s"), b["queue"]["discovery_rows_per_s_min"],
            True)
    if "localstore" in report:
        add("localstore 10k ANN median ms", _get(report, "localstore", "10000", "ann_top10", "median_ms"),
            b["localstore"]["ann_10k_median_ms_max"], False)
    return rows


def statuses(report: dict[str, Any]) -> list[tuple[str, str]]:
    """(scenario, status) for every scenario that has a status."""
    out: list[tuple[str, str]] = []

    def walk(prefix: str, d: Any) -> None:
        if isinstance(d, dict):
            if isinstance(d.get("status"), str):
                out.append((prefix, d["status"]))
            for k, v in d.items():
                if isinstance(v, dict):
                    walk(f"{prefix}.{k}" if prefix else k, v)
    walk("", {k: v for k, v in report.items() if k not in ("budgets", "meta")})
    return out


def _f(v: Any, nd: int = 1) -> str:
    return "-" if v is None else (f"{v:,.{nd}f}" if isinstance(v, (int, float)) else str(v))


def markdown(report: dict[str, Any]) -> str:
    header = ("| transport | scenario | gw req/s | nginx req/s | direct req/s | gw/nginx | gw p50 ms | gw p99 ms "
              "| gw CPU µs/req | status |")
    lines = [header, "|---|---|---|---|---|---|---|---|---|---|"]
    for transport, res in report.get("throughput", {}).items():
        for name, r in res.items():
            if name == "added_latency_fixed_rate" and r.get("status") == "ok":
                for label in ("paced", "burst"):
                    x = r[label]
                    lines.append(f"| {transport} | added latency @ {r['rate']} rps, {label} ({x['conns']} conn) "
                                 f"(nginx +{_f(x['nginx_added_p50_ms'], 3)}) | - | - | - | - | "
                                 f"+{_f(x['added_p50_ms'], 3)} | +{_f(x['added_p99_ms'], 3)} | "
                                 f"{_f(x['gateway'].get('cpu_us_per_req'))} | ok |")
                continue
            if name == "compression_rewritten_schema" and r.get("status") == "ok":
                for label in ("plain", "gzip"):
                    x = r[label]
                    lines.append(f"| {transport} | rewritten v1 schema, {label} ({r[f'{label}_bytes']} B; gzip adds "
                                 f"{_f(r['added_cpu_us_per_req'])} µs CPU/req) | {_f(x.get('rps'), 0)} | - | - | - | "
                                 f"{_f(x.get('p50_ms'), 3)} | {_f(x.get('p99_ms'), 3)} | "
                                 f"{_f(x.get('cpu_us_per_req'))} | ok |")
                continue
            g, n, d = r.get("gateway", {}), r.get("nginx", {}), r.get("direct", {})
            lines.append(f"| {transport} | {name} | {_f(g.get('rps'), 0)} | {_f(n.get('rps'), 0)} | "
                         f"{_f(d.get('rps'), 0)} | {_f(r.get('gateway_over_nginx_rps'), 3)} | "
                         f"{_f(g.get('p50_ms'), 3)} | {_f(g.get('p99_ms'), 3)} | {_f(g.get('cpu_us_per_req'))} | "
                         f"{r.get('status', '-')} |")
    floors = report.get("transport_floors") or {}
    for name, x in floors.items():
        if isinstance(x, dict):
            lines.append(f"| - | transport floor: {name} | {_f(x.get('rps'), 0)} | - | - | - | {_f(x.get('p50_ms'), 3)} "
                         f"| {_f(x.get('p99_ms'), 3)} | {_f(x.get('cpu_us_per_req'))} | {floors.get('status', '-')} |")
    sc = report.get("scaling", {})
    for k in ("workers_1", "workers_2"):
        if k in sc:
            lines.append(f"| {sc.get('transport', '')} | passthrough {k} (unpinned) | {_f(sc[k]['rps'], 0)} | - | - "
                         f"| - | {_f(sc[k]['p50_ms'], 3)} | {_f(sc[k]['p99_ms'], 3)} | "
                         f"{_f(sc[k].get('cpu_us_per_req'))} | ok |")
    srv = report.get("servers") or {}
    if srv.get("status") == "ok":
        ceiling = srv.get("ceiling") or {}
        lines += ["", (f"servers (query passthrough, {srv['transport']} transport, one pinned core, interleaved; "
                       f"default by CPU/req: {srv['default']}, configured {srv['configured_default']}; the most any "
                       f"gateway on these servers could reach here, their best floor over bench/minimal_client.py: "
                       f"{_f(ceiling.get('x_nginx_cpu'), 3)} x nginx ({ceiling.get('server', '-')}))"), "",
                  "| target | req/s | p50 ms | CPU µs/req | x nginx (CPU) | CPU µs/req over own floor | ctx switches/req |",
                  "|---|---|---|---|---|---|---|"]
        for k, x in srv.items():
            if isinstance(x, dict) and k != "ceiling":
                lines.append(f"| {k} | {_f(x.get('rps'), 0)} | {_f(x.get('p50_ms'), 3)} | {_f(x.get('cpu_us_per_req'))}"
                             f" | {_f(x.get('x_nginx_cpu'), 3)} | {_f(x.get('over_floor_cpu_us'))} "
                             f"| {_f(x.get('ctx_switches_per_req'), 2)} |")
    elif srv:
        lines.append(f"servers: {srv.get('status')}")
    mix = report.get("mix", {})
    if mix:
        lines += ["", "| mix target | offered req/s | req/s | p50 ms | p99 ms | error rate | status |",
                  "|---|---|---|---|---|---|---|"]
        for target in ("gateway", "direct"):
            a = _get(mix, target, "all") or {}
            lines.append(f"| {target} | {_f(_get(mix, target, 'offered_rps'))} | {_f(a.get('rps'))} | "
                         f"{_f(a.get('p50_ms'))} | {_f(a.get('p99_ms'))} | {_f(a.get('error_rate'), 4)} | "
                         f"{_get(mix, target, 'status') or '-'} |")
    soak = report.get("soak")
    if soak:
        lines.append(f"\nsoak ({soak.get('seconds')} s): {soak.get('status')}, peak RSS/worker "
                     f"{_f(soak.get('rss_peak_mb'))} MB, growth {_f(soak.get('rss_growth'), 4)}")
    cache = report.get("cache") or {}
    for backend in ("local", "aerospike"):
        r = cache.get(backend)
        if isinstance(r, dict):
            parts = [f"{name} {_f(x.get('rps'), 0)} req/s p50 {_f(x.get('p50_ms'), 3)} ms p99 {_f(x.get('p99_ms'), 3)} ms"
                     f" {_f(x.get('cpu_us_per_req'))} µs CPU/req" for name, x in r.items() if isinstance(x, dict)]
            lines.append(f"cache {backend}: {r.get('status')}; " + "; ".join(parts))
    results = report.get("results") or {}
    if results:
        lines.append(f"query-result cache, repeated-query mix ({results.get('note', '')}): {results.get('status')}; "
                     + "; ".join(f"cache {name}: {_f(r.get('rps'), 0)} req/s, hit rate {_f(r.get('hit_rate'), 3)}, "
                                 f"{_f(r.get('upstream_queries'), 0)} upstream queries, p50 {_f(r.get('p50_ms'), 2)} ms, "
                                 f"{_f(r.get('gateway_cpu_us_per_request'))} µs gateway CPU/req"
                                 for name, r in results.items() if name in ("off", "on") and isinstance(r, dict)))
    micro = _get(report, "compression", "micro") or {}
    if micro:
        lines.append(f"gzip level 1 (gateway/compression.py, in process): {micro.get('status')}; " + "; ".join(
            f"{k} {_f(v['gzip_cpu_us'])} µs CPU ({_f(v['gzip_mb_s'])} MB/s, ratio {_f(v['ratio'], 3)}), inflate "
            f"{_f(v['inflate_cpu_us'])} µs" for k, v in micro.items() if isinstance(v, dict)))
    for size, r in (report.get("localstore") or {}).items():
        if isinstance(r, dict):
            lines.append(f"localstore {size} docs: {r.get('status')}, ANN p50 {_f(_get(r, 'ann_top10', 'median_ms'), 3)}"
                         f" ms p99 {_f(_get(r, 'ann_top10', 'p99_ms'), 3)} ms; filtered p50 "
                         f"{_f(_get(r, 'filtered_ann_top10', 'median_ms'), 3)} ms; writes "
                         f"{_f(_get(r, 'write', 'rows_per_s'), 0)} rows/s")
    q = report.get("queue") or {}
    for name, r in q.items():
        if name == "embedding" and r.get("status") == "ok":
            lines.append(f"queue embedding ({r['docs']} docs): batched built-in "
                         f"{_f(r['batched_builtin']['items_per_s'])} items/s, per-item run_udf_worker "
                         f"{_f(r['per_item_run_udf_worker']['items_per_s'])} items/s "
                         f"(x{_f(r['batched_over_per_item'], 2)})")
        elif isinstance(r, dict):
            figure = r.get("items_per_s", r.get("rows_per_s"))
            lines.append(f"queue {name}: {r.get('status')}, {_f(figure)} per s")
    for name, r in (report.get("watermarks") or {}).items():
        if isinstance(r, dict) and r.get("status") == "ok":
            fo = r.get("failover")
            lines.append(f"watermarks {name} ({r['workers']} workers, skew ±{r['skew_ms']} ms): metadata calls "
                         f"{_f(r['metadata_calls_per_s'])}/s vs model {_f(r['model_calls_per_s'])}/s "
                         f"(x{_f(r['calls_vs_model'], 2)}); {r['violations']} unindexed rows through the filter in "
                         f"{r['filtered']:,} filtered of {r['decisions']:,} decisions; {r['exposed']:,} unfiltered "
                         f"while updating" + (f"; failover max {fo['max_s']} s (lease {fo['lease_s']} s)" if fo else ""))
        elif isinstance(r, dict):
            lines.append(f"watermarks {name}: {r.get('status')}")
    if report.get("budgets"):
        lines += ["", "| budget | limit | measured | ok |", "|---|---|---|---|"]
        for row in report["budgets"]:
            lines.append(f"| {row['budget']} | {row['limit']} | {_f(row['value'], 3)} | "
                         f"{'PASS' if row['ok'] else 'FAIL'} |")
    return "\n".join(lines)
