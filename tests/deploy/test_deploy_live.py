"""The image's exact command and environment (deploy/Dockerfile) run against the local store, scraped by Debian's
real Prometheus with deploy/prometheus's configuration: after a short mix of traffic every dashboard expression
returns data and every alert expression parses and evaluates, through Prometheus' HTTP API. This checks the metric
names, labels and the multiprocess merge across the 2 workers that the dashboard and the alerts assume.

The gateway runs with an explicit upstream, not the embedded default: the embedded store has no fault endpoint
(`serve` never enables it), and the mix needs a 429 from the store."""

from __future__ import annotations

import shutil
import signal
import sys
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest
from deploy_support import (
    BUDGETS,
    NO_PROMETHEUS,
    alert_rules,
    call,
    dashboard_exprs,
    dockerfile_final_stage,
    prom_api,
    start_prometheus,
    which_prometheus,
)
from support.procs import STORE_KEY, Proc, base_env, free_ports, start_localstore, wait_for_workers

NS = "deploy-mix"
# What a test must change in the image's environment: addresses (127.0.0.1, free ports: tests listen on nothing
# else) and paths (the image's /var/lib/layer and /tmp/layer-metrics are shared on a test machine).
CHANGED = {"LAYER_HOST", "PORT", "LAYER_OPS_HOST", "LAYER_OPS_PORT", "LAYER_DATA_DIR", "PROMETHEUS_MULTIPROC_DIR"}
GRAFANA_VARIABLES = {"$__rate_interval": "1m"}
SCRAPE_WAIT_S = 60.0  # the mix's data is scrapable ~6 s after it ends (5 s queue gauge sweep + 1 s flush + scrape)


def _image_command() -> list[str]:
    entrypoint, _ = dockerfile_final_stage()
    script = Path(sys.executable).parent / entrypoint[0]
    return [str(script) if script.exists() else str(shutil.which(entrypoint[0])), *entrypoint[1:]]


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Proc, Proc]]:
    """(gateway as the image runs it, its local store with fault injection)."""
    tmp = tmp_path_factory.mktemp("image")
    _, image_env = dockerfile_final_stage()
    port, ops_port = free_ports(2)
    changed = {"LAYER_HOST": "127.0.0.1", "PORT": str(port), "LAYER_OPS_HOST": "127.0.0.1",
               "LAYER_OPS_PORT": str(ops_port), "LAYER_DATA_DIR": str(tmp / "data"),
               "PROMETHEUS_MULTIPROC_DIR": str(tmp / "metrics")}
    assert set(changed) == CHANGED and CHANGED <= set(image_env)
    store = start_localstore(tmp / "store", LOCALSTORE_API_KEY=STORE_KEY)
    env = base_env(**({k: v for k, v in image_env.items() if k != "PATH"} | changed),
                   TURBOPUFFER_API_URL=store.url, TURBOPUFFER_API_KEY=STORE_KEY)
    try:
        gw = Proc("gateway-image", _image_command(), env, f"http://127.0.0.1:{port}", "/ready")
    except BaseException:
        store.stop()
        raise
    gw.ops_url = f"http://127.0.0.1:{ops_port}"
    try:
        wait_for_workers(gw.url, int(image_env["LAYER_WORKERS"]))
        yield gw, store
    finally:
        gw.stop(timeout=60)
        store.stop()


def _ok(status_body: tuple[int, object], *expected: int) -> object:
    status, body = status_body
    assert status in (expected or (200,)), (status, body)
    return body


def test_the_image_command_serves_health_queries_and_metrics(image: tuple[Proc, Proc]) -> None:
    gw, _ = image
    health = _ok(call(gw.url, "GET", "/health"))
    assert health["status"] == "ok"
    _ok(call(gw.url, "POST", "/v2/namespaces/deploy-image",
             {"upsert_rows": [{"id": i, "vector": [1.0, float(i)], "title": f"doc {i}"} for i in range(10)],
              "distance_metric": "cosine_distance"}, key=STORE_KEY))
    rows = _ok(call(gw.url, "POST", "/v2/namespaces/deploy-image/query",
                    {"rank_by": ["vector", "ANN", [1.0, 3.0]], "top_k": 3, "include_attributes": ["title"]},
                    key=STORE_KEY))["rows"]
    assert rows[0]["id"] == 3 and rows[0]["title"] == "doc 3"
    ops_health = _ok(call(str(gw.ops_url), "GET", "/health"))
    assert len(ops_health["workers"]) == 2


def _mix(gw: Proc, store: Proc) -> None:
    """Queries, writes, fetches (hits and misses), metadata, a rejected key, 429s from the store, a pipeline and a
    function with work claimed, completed and failed."""
    url, k = gw.url, STORE_KEY
    # String ids: a fetch's path names its id as a string.
    rows = [{"id": str(i), "vector": [1.0, float(i)], "title": f"doc {i}"} for i in range(10)]
    _ok(call(url, "POST", f"/v2/namespaces/{NS}", {"upsert_rows": rows, "distance_metric": "cosine_distance"}, key=k))
    # Written past the gateway (stamped as the gateway would, so stable reads see it): a cache miss, then a fill.
    _ok(call(store.url, "POST", f"/v2/namespaces/{NS}", {"upsert_rows": [
        {"id": "100", "vector": [0.0, 1.0], "_hevlayer_upserted_at": 1}], "distance_metric": "cosine_distance"}, key=k))
    for i in range(6):
        _ok(call(url, "POST", f"/v2/namespaces/{NS}/query", {"rank_by": ["vector", "ANN", [1.0, i]], "top_k": 3},
                 key=k))
    _ok(call(url, "GET", f"/v2/namespaces/{NS}/documents/1", key=k))  # mirrored by the write: hit
    _ok(call(url, "GET", f"/v2/namespaces/{NS}/documents/100", key=k))  # miss
    _ok(call(url, "GET", f"/v2/namespaces/{NS}/documents/404", key=k), 404)
    _ok(call(url, "POST", f"/v2/namespaces/{NS}/documents", {"ids": ["2", "3", "100", "404"]}, key=k))
    _ok(call(url, "GET", f"/v2/namespaces/{NS}/metadata", key=k))
    _ok(call(url, "GET", "/v2/namespaces", key=k))
    _ok(call(url, "POST", f"/v2/namespaces/{NS}/query", {"rank_by": ["id", "asc"]}, key="not-a-key"), 401)
    # 429s from the store: a query's (retried once by the gateway, which then succeeds) and a write's (relayed).
    _ok(call(store.url, "POST", "/_localstore/faults", {"route": "query", "status": 429, "count": 1, "namespace": NS},
             key=k))
    _ok(call(url, "POST", f"/v2/namespaces/{NS}/query", {"rank_by": ["id", "asc"], "top_k": 1}, key=k))
    _ok(call(store.url, "POST", "/_localstore/faults", {"route": "write", "status": 429, "count": 1, "namespace": NS},
             key=k))
    _ok(call(url, "POST", f"/v2/namespaces/{NS}", {"upsert_rows": rows[:1]}, key=k), 429)
    # A pipeline: one document embedded and indexed, one failed by its worker.
    p = "/v2/pipelines/deploy-pipe"
    _ok(call(url, "POST", "/v2/pipelines", {"id": "deploy-pipe", "target_namespace": "deploy-pipe-ns"}, key=k))
    for doc in ("d1", "d2"):
        _ok(call(url, "PUT", f"{p}/documents/{doc}", {"chunks": [{"id": f"{doc}-c1", "text": "hello"}]}, key=k))
    claimed = _ok(call(url, "POST", f"{p}/claim", {"worker_id": "w", "limit": 2}, key=k))
    assert len(claimed["documents"]) == 2, claimed
    _ok(call(url, "PUT", f"{p}/documents/d1/vectors", {"vectors": [{"id": "d1-c1", "vector": [0.5, 0.5],
                                                                      "attributes": {}}]}, key=k))
    _ok(call(url, "POST", f"{p}/documents/stage", {"document_ids": ["d2"], "stage": "failed", "worker_id": "w",
                                                    "reason": "test"}, key=k))
    # A function: eleven rows discovered, two claimed, one completed and one failed for good, nine left pending.
    u = "/v2/udfs/deploy-udf"
    spec = {"target_namespaces": [NS], "inputs": ["title"], "worker": {"batch_size": 2}, "retry": {"max_attempts": 1}}
    _ok(call(url, "POST", "/v2/udfs", {"id": "deploy-udf", "spec": spec}, key=k))
    assert _ok(call(url, "POST", f"{u}/discover", {}, key=k))["enqueued"] == 11
    items = _ok(call(url, "POST", f"{u}/claim", {"worker_id": "w"}, key=k))["items"]
    assert len(items) == 2, items
    _ok(call(url, "POST", f"{u}/items/complete", {"worker_id": "w", "items": [
        {"namespace": NS, "id": items[0]["id"], "attributes": {"seen": True}}]}, key=k))
    _ok(call(url, "POST", f"{u}/items/fail", {"worker_id": "w", "items": [
        {"namespace": NS, "id": items[1]["id"], "kind": "permanent"}]}, key=k))


def _check_rss(gw: Proc) -> None:
    """The figures docs/deploy.md sizes pods with: each worker within the bench's steady RSS budget."""
    rss = {pid: _rss_mb(pid) for pid in gw.pids()}
    serve, workers = rss.pop(gw.popen.pid), sorted(rss.values())
    print(f"RSS after the mix: serve process {serve:.0f} MB, workers {', '.join(f'{w:.0f}' for w in workers)} MB")
    budget = tomllib.loads(BUDGETS.read_text())["soak"]["rss_mb_max"]
    assert len(workers) == 2 and all(w <= budget for w in workers), (workers, budget)


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _expand(expr: str) -> str:
    for name, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(name, value)
    return expr


@pytest.mark.skipif(which_prometheus() is None, reason=NO_PROMETHEUS)
def test_prometheus_evaluates_every_dashboard_and_alert_expression(image: tuple[Proc, Proc],
                                                                   tmp_path: Path) -> None:
    gw, store = image
    tools = which_prometheus()
    assert tools is not None
    prom = start_prometheus(tools[0], tmp_path, str(gw.ops_url).removeprefix("http://"))
    try:
        _mix(gw, store)
        exprs = [(title, _expand(e)) for title, e in dashboard_exprs()]
        assert "$" not in "".join(e for _, e in exprs), "a Grafana variable the test does not expand"
        deadline = time.monotonic() + SCRAPE_WAIT_S
        while True:
            empty = [(title, e) for title, e in exprs
                     if not prom_api(prom.url, "query", query=e).get("data", {}).get("result")]
            if not empty or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert not empty, f"dashboard expressions without data after the mix: {empty}"
        _check_rss(gw)
        for title, e in exprs:
            answer = prom_api(prom.url, "query", query=e)
            assert answer["status"] == "success", (title, e, answer)
        # Alert expressions: each parses and evaluates (most return nothing on a healthy gateway), and the rule
        # manager loaded and evaluated every rule without error.
        for rule in alert_rules():
            answer = prom_api(prom.url, "query", query=rule["expr"])
            assert answer["status"] == "success", (rule["alert"], answer)

        def evaluated() -> list[dict]:
            groups = prom_api(prom.url, "rules")["data"]["groups"]
            return [r for g in groups for r in g["rules"] if r.get("lastEvaluation", "").startswith("20")]

        deadline = time.monotonic() + SCRAPE_WAIT_S
        while len(evaluated()) < len(alert_rules()) and time.monotonic() < deadline:
            time.sleep(0.5)
        rules = evaluated()
        assert sorted(r["name"] for r in rules) == sorted(r["alert"] for r in alert_rules())
        assert all(r["health"] == "ok" for r in rules), [(r["name"], r.get("lastError")) for r in rules]
        target = prom_api(prom.url, "targets")["data"]["activeTargets"]
        assert [(t["labels"]["job"], t["health"]) for t in target] == [("layer-gateway", "up")]
    finally:
        prom.stop()


def test_sigterm_drains_with_the_image_settings(image: tuple[Proc, Proc]) -> None:
    """Last in this module: stops the gateway. /ready turns 503 at once, requests are still served during
    LAYER_DRAIN_GRACE_MS, and the process exits well within the grace + timeout Kubernetes and compose allow."""
    gw, _ = image
    _, image_env = dockerfile_final_stage()
    grace_s = int(image_env["LAYER_DRAIN_GRACE_MS"]) / 1000
    started = time.monotonic()
    gw.send_signal(signal.SIGTERM)
    while call(gw.url, "GET", "/ready")[0] != 503:
        assert time.monotonic() - started < grace_s, "/ready never answered 503 during the grace"
        time.sleep(0.05)
    assert _ok(call(gw.url, "GET", "/health"))["status"] == "ok"
    limit = grace_s + int(image_env["LAYER_DRAIN_TIMEOUT_MS"]) / 1000 + 5
    assert gw.wait(timeout=limit) == 0
    assert time.monotonic() - started >= grace_s * 0.9  # it served through the grace, then closed
