"""Shared by the deploy/ tests: where the files are, the Dockerfile's final stage, and a real Prometheus server."""

from __future__ import annotations

import json
import shutil
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import yaml
from support.procs import Proc, free_port

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
PROMETHEUS_DIR = DEPLOY / "prometheus"
BUDGETS = DEPLOY.parent / "bench" / "budgets.toml"
NO_PROMETHEUS = ("Debian's `prometheus` package is not installed (no `prometheus`/`promtool` on PATH): "
                 "apt-get install prometheus (.ci/run does)")


def yaml_docs(path: Path) -> list[Any]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def alert_rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load((PROMETHEUS_DIR / "alerts.yml").read_text())
    return [rule for group in doc["groups"] for rule in group["rules"] if "alert" in rule]


def dashboard_exprs() -> list[tuple[str, str]]:
    """(panel title, PromQL) for every query of deploy/grafana/layer.json."""
    dash = json.loads((DEPLOY / "grafana" / "layer.json").read_text())
    return [(p["title"], t["expr"]) for p in dash["panels"] for t in p.get("targets", [])]


def dockerfile_final_stage() -> tuple[list[str], dict[str, str]]:
    """The final stage's ENTRYPOINT (exec form) and its ENV, as the image runs them."""
    lines, entrypoint, env = [], [], {}
    for raw in (DEPLOY / "Dockerfile").read_text().replace("\\\n", " ").splitlines():
        if raw.strip() and not raw.lstrip().startswith("#"):
            lines.append(raw.strip())
    last_from = max(i for i, line in enumerate(lines) if line.upper().startswith("FROM "))
    for line in lines[last_from:]:
        word, _, rest = line.partition(" ")
        if word.upper() == "ENTRYPOINT":
            entrypoint = json.loads(rest)
        elif word.upper() == "ENV":
            key, _, value = rest.partition("=")
            env[key.strip()] = value.strip()
    return entrypoint, env


def which_prometheus() -> tuple[str, str] | None:
    prom, promtool = shutil.which("prometheus"), shutil.which("promtool")
    return (prom, promtool) if prom and promtool else None


def start_prometheus(binary: str, tmp: Path, ops_target: str) -> Proc:
    """Prometheus with deploy/prometheus's own configuration, the scrape target pointed at `ops_target`, scraping
    and evaluating the alert rules every second, storage in `tmp`."""
    config = yaml.safe_load((PROMETHEUS_DIR / "prometheus.yml").read_text())
    config["global"].update(scrape_interval="1s", evaluation_interval="1s")
    config["rule_files"] = [str(PROMETHEUS_DIR / f) for f in config["rule_files"]]
    (job,) = config["scrape_configs"]
    job["static_configs"] = [{"targets": [ops_target]}]
    (tmp / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    cmd = [binary, f"--config.file={tmp / 'prometheus.yml'}", f"--storage.tsdb.path={tmp / 'data'}",
           f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"]
    return Proc("prometheus", cmd, None, f"http://127.0.0.1:{port}", "/-/ready")


def prom_api(base: str, path: str, **params: str) -> Any:
    url = f"{base}/api/v1/{path}" + (f"?{urllib.parse.urlencode(params)}" if params else "")
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            return json.loads(resp.read())
    except urllib.error.HTTPError as exc:  # 400 bad_data: the expression did not parse
        return json.loads(exc.read())


def call(base: str, method: str, path: str, body: Any = None, key: str | None = None) -> tuple[int, Any]:
    """(status, decoded JSON body or None) of one request."""
    headers = {"Content-Type": "application/json"} | ({"Authorization": f"Bearer {key}"} if key else {})
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(base + path, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            status, raw = resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        status, raw = exc.code, exc.read()
    try:
        return status, json.loads(raw)
    except ValueError:
        return status, None
