"""The official TypeScript client (@turbopuffer/turbopuffer, pinned in ts/package.json) against the gateway.

The test installs the client with npm into tests/compat/ts when node_modules is missing (CI starts fresh),
runs ts/script.mjs with node, and asserts on the JSON it prints.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from .conftest import Target, unique_ns

TS_DIR = Path(__file__).resolve().parent / "ts"
NPM_TIMEOUT_S = 180
NODE_TIMEOUT_S = 60


def _ensure_installed() -> None:
    if (TS_DIR / "node_modules" / "@turbopuffer" / "turbopuffer" / "package.json").exists():
        return
    npm = shutil.which("npm")
    if npm is None or shutil.which("node") is None:
        pytest.fail("node and npm are required for the TypeScript compatibility test")
    proc = subprocess.run(
        [npm, "install", "--no-audit", "--no-fund"],
        check=False,
        cwd=TS_DIR,
        capture_output=True,
        text=True,
        timeout=NPM_TIMEOUT_S,
    )
    assert proc.returncode == 0, f"npm install failed:\n{proc.stdout}\n{proc.stderr}"


def test_typescript_client_smoke(gateway_target: Target) -> None:
    _ensure_installed()
    pinned = json.loads((TS_DIR / "package.json").read_text())["dependencies"]["@turbopuffer/turbopuffer"]
    installed = json.loads((TS_DIR / "node_modules/@turbopuffer/turbopuffer/package.json").read_text())["version"]
    assert installed == pinned

    name = unique_ns("ts")
    env = {k: v for k, v in os.environ.items() if not k.startswith("TURBOPUFFER_")}
    env.update(TPUF_URL=gateway_target.url, TPUF_KEY=gateway_target.api_key, TPUF_NS=name)
    proc = subprocess.run(
        ["node", "script.mjs"], check=False, cwd=TS_DIR, env=env, capture_output=True, text=True, timeout=NODE_TIMEOUT_S
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert "error" not in out, f"{out}\n--- server logs ---\n{gateway_target.logs()}"

    assert out["write"] == {"status": "OK", "rows_affected": 2}
    rows = out["query"]["rows"]
    assert [r["id"] for r in rows] == [1, 2]
    assert rows[0]["$dist"] == pytest.approx(0.0, abs=1e-6)
    assert rows[0]["vector"] == [0.1, 0.2]
    assert rows[0]["title"] == "one"
    assert sorted(rows[0]) == ["$dist", "id", "title", "vector"]  # nothing gateway-internal leaks out
    assert out["query"]["has_billing"] and out["query"]["has_performance"]
    assert out["filtered"]["rows"] == [{"id": 2}]
    assert out["gzip_write"] == {"rows_affected": 30}
    assert out["metadata"]["approx_row_count"] == 32
    assert out["metadata"]["index"] == {"status": "up-to-date"}
    assert isinstance(out["metadata"]["created_at"], str)
    assert out["namespaces"] == [name]
    assert out["delete"] == {"status": "OK"}
    assert out["after_delete"]["status"] == 404
