"""The README's "Call Layer: four ways" snippets run as printed against a gateway started like `just run`:
Python (the project's client), Go (the module in clients/go), TypeScript (the package in clients/ts) and curl."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.procs import Proc, start_embedded_gateway

ROOT = Path(__file__).resolve().parents[2]
KEY = "readme-admin-key"
TIMEOUT_S = 300  # a cold Go build of the client on a busy machine


def snippets() -> dict[str, str]:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Call Layer: four ways", 1)[1].split("\n## ", 1)[0]
    blocks = dict(re.findall(r"```(\w+)\n(.*?)```", section, re.DOTALL))
    assert set(blocks) == {"python", "go", "ts", "sh"}, sorted(blocks)
    return blocks


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proc]:
    gw = start_embedded_gateway(tmp_path_factory.mktemp("readme"), KEY)
    yield gw
    gw.stop()


def run(cmd: list[str], cwd: Path, gateway: Proc, **env: str) -> str:
    full = {**os.environ, "LAYER_GATEWAY_URL": gateway.url, "LAYER_GATEWAY_API_KEY": KEY, **env}
    proc = subprocess.run(cmd, cwd=cwd, env=full, capture_output=True, text=True, timeout=TIMEOUT_S, check=False)
    assert proc.returncode == 0, f"{cmd} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def need(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        pytest.fail(f"{tool} is required for the README snippets (.ci/run installs it)")
    return path


@pytest.fixture(scope="module")
def python_output(gateway: Proc, tmp_path_factory: pytest.TempPathFactory) -> str:
    """The Python snippet runs first: it writes the `products` namespace the other snippets query."""
    tmp = tmp_path_factory.mktemp("python-snippet")
    (tmp / "snippet.py").write_text(snippets()["python"])
    return run([sys.executable, "snippet.py"], tmp, gateway,
               PYTHONPATH=os.pathsep.join([str(ROOT / "clients" / "python"), str(ROOT)]))


def test_python_snippet_writes_and_queries(python_output: str) -> None:
    assert "'name': 'lamp'" in python_output and "'id': '1'" in python_output


def test_go_snippet(gateway: Proc, python_output: str, tmp_path: Path) -> None:
    (tmp_path / "main.go").write_text(snippets()["go"])
    (tmp_path / "go.mod").write_text(
        "module readme\n\ngo 1.22\n\nrequire github.com/hev/layer/clients/go v0.0.0\n\n"
        f"replace github.com/hev/layer/clients/go => {ROOT / 'clients' / 'go'}\n")
    out = run([need("go"), "run", "."], tmp_path, gateway, GOFLAGS="-mod=mod", GOPROXY="off")
    assert "name:lamp" in out


def test_typescript_snippet(gateway: Proc, python_output: str, tmp_path: Path) -> None:
    (tmp_path / "node_modules").mkdir()
    (tmp_path / "node_modules" / "hevlayer").symlink_to(ROOT / "clients" / "ts")  # what `npm install ./clients/ts` does
    (tmp_path / "snippet.mjs").write_text(snippets()["ts"])
    out = run([need("node"), "snippet.mjs"], tmp_path, gateway)
    assert "name: 'lamp'" in out


def test_curl_snippet(gateway: Proc, python_output: str, tmp_path: Path) -> None:
    out = run(["bash", "-euo", "pipefail", "-c", snippets()["sh"]], tmp_path, gateway)
    assert '"name":"lamp"' in out
