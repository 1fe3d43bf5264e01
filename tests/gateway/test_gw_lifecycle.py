"""Process lifecycle: the embedded default start, bad configuration, metrics across workers (drain: test_gw_drain.py)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from gw_support import Stack, call, wait_for, wait_until
from support.procs import Proc, base_env, free_port, free_ports, gateway_cmd, http_status, in_bursts, worker_pids


def test_embedded_default_starts_and_stops_its_store(tmp_path: Path) -> None:
    port, ops_port = free_ports(2)
    gw = Proc("gateway-embedded", gateway_cmd(port, ops_port, 2), base_env(LAYER_DATA_DIR=str(tmp_path / "data")),
              f"http://127.0.0.1:{port}", "/ready")
    try:
        out = gw.log()
        store_url = re.search(r"started the local store at (http://127\.0\.0\.1:\d+)", out).group(1)  # type: ignore[union-attr]
        key = (tmp_path / "data" / "admin_key").read_text().strip()
        assert f"admin key {key[:6]}… (from {tmp_path / 'data' / 'admin_key'})" in out
        assert key[6:16] not in out, "the admin key is never printed"
        assert call(gw.url, "POST", "/v2/namespaces/emb", {"upsert_rows": [{"id": 1, "a": 2}]}, key=key).status == 200
        r = call(gw.url, "POST", "/v2/namespaces/emb/query", {"rank_by": ["id", "asc"], "top_k": 1,
                                                               "include_attributes": True}, key=key)
        assert r.status == 200 and r.json()["rows"][0]["a"] == 2, r
        assert call(gw.url, "GET", "/v1/namespaces", key="wrong").status == 401
        ops = wait_until(lambda: call(f"http://127.0.0.1:{ops_port}", "GET", "/health", key=None),
                         lambda r: r.status == 200 and len(r.json()["workers"]) == 2)
        assert {w["upstream"]["mode"] for w in ops.json()["workers"]} == {"embedded"}
        assert http_status(store_url + "/_localstore/health") == 200
    finally:
        gw.stop()
    assert http_status(store_url + "/_localstore/health", timeout=0.5) == 0, "the child store was stopped"
    assert (tmp_path / "data" / "localstore").is_dir()


@pytest.mark.parametrize(("var", "value"), [("LAYER_UPSTREAM_TIMEOUT_MS", "soon"), ("LAYER_UPSTREAM_TRANSPORT", "curl"),
                                            ("TURBOPUFFER_API_URL", "ftp://x"), ("AEROSPIKE_TIMEOUT_MS", "0"),
                                            ("AEROSPIKE_HOSTS", "db:port"),
                                            ("LAYER_KEYS_AUTH_RATE_LIMIT_PER_MIN", "lots"), ("LAYER_SERVER", "nginx"),
                                            ("LAYER_MAX_HEADERS", "101"), ("LAYER_HEADER_TIMEOUT_MS", "0")])
def test_bad_configuration_stops_startup_naming_the_variable(var: str, value: str) -> None:
    env = base_env(**{"TURBOPUFFER_API_URL": "http://127.0.0.1:9", var: value})
    done = subprocess.run([sys.executable, "-m", "gateway", "serve", "--port", str(free_port()), "--ops-port", "0"], env=env,
                          capture_output=True, text=True, timeout=20, check=False)
    assert done.returncode == 2
    assert var in done.stderr


def test_metrics_are_correct_across_two_workers(stack: Stack) -> None:
    ns = "metered"
    assert stack("POST", f"/v2/namespaces/{ns}", {"upsert_rows": [{"id": 1}]}).status == 200
    n = 32  # in bursts, so both workers serve some
    replies = in_bursts(lambda: stack("POST", f"/v2/namespaces/{ns}/query", {"rank_by": ["id", "asc"], "top_k": 1}), n)
    assert [r.status for r in replies] == [200] * n
    assert len(worker_pids(stack.gw.url)) == 2, "both workers answer"
    pattern = re.compile(r'^layer_query_duration_seconds_count\{namespace="metered",pipeline_id="direct",'
                         r'status="ok"\} (\S+)$', re.MULTILINE)

    ops = stack.gw.ops_url
    assert ops is not None

    def scraped_count() -> float:
        r = call(ops, "GET", "/metrics", key=None)
        assert r.status == 200 and r.headers["content-type"].startswith("text/plain")
        found = pattern.search(r.body.decode())
        return float(found.group(1)) if found else 0.0

    # Workers batch observations in memory and flush them at least once a second (gateway/metrics.py).
    wait_for(lambda: scraped_count() == n, timeout=5)
    for _ in range(3):  # the ops listener merges every worker's files: the total stays put
        assert scraped_count() == n
    text = call(ops, "GET", "/metrics", key=None).body.decode()
    assert 'layer_upsert_batch_size_count{namespace="metered",pipeline_id="direct"} 1.0' in text
    assert "layer_query_overhead_seconds_bucket" in text and "layer_query_tpuf_seconds_bucket" in text
