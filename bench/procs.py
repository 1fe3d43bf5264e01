"""Child processes for the benchmarks: start on 127.0.0.1, wait for readiness, pin to a core, always stop."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

# The process helpers the tests use (tests/support/procs.py): one Proc for both; the tests tree also holds the
# Aerospike wire test server that bench/cache_bench.py starts.
TESTS = Path(__file__).resolve().parent.parent / "tests"
sys.path.insert(0, str(TESTS))
from support.procs import Proc, base_env, free_port, free_ports, gateway_cmd

TOOLS = {"nginx": "nginx", "h2load": "nghttp2-client"}
NCPU = os.cpu_count() or 1
# Gateway (and the nginx proxy under test) on one core; load generator and canned upstream on the other.
PROXY_CPU = "1" if NCPU > 1 else "0"
LOAD_CPU = "0"


def which_nginx() -> str | None:
    return shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx",) if os.path.exists(p)), None)


def ensure_tools() -> None:
    """Install nginx and h2load with apt-get when missing (fresh machine)."""
    missing = [pkg for tool, pkg in TOOLS.items() if not (which_nginx() if tool == "nginx" else shutil.which(tool))]
    if not missing:
        return
    if not shutil.which("apt-get"):
        raise RuntimeError(f"missing tools {missing} and no apt-get to install them")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env, timeout=300)
    subprocess.run(["apt-get", "install", "-y", "-qq", *missing], check=True, env=env, timeout=600)


def pinned(cmd: list[str], cpu: str) -> list[str]:
    return ["taskset", "-c", cpu, *cmd] if shutil.which("taskset") and NCPU > 1 else cmd


def http(method: str, url: str, body: bytes | None = None, headers: dict[str, str] | None = None,
         timeout: float = 30.0) -> tuple[int, dict[str, str], bytes]:
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    if body is not None:
        req.add_header("content-type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return int(resp.status), {k.lower(): v for k, v in resp.headers.items()}, resp.read()
    except urllib.error.HTTPError as e:
        return int(e.code), {k.lower(): v for k, v in e.headers.items()}, e.read()


def start_gateway(upstream_url: str, key: str, data_dir: str, workers: int, transport: str,
                  cpu: str | None = PROXY_CPU, server: str | None = None, **env: str) -> tuple[Proc, str]:
    port, ops_port = free_ports(2)  # never the default ops port: other gateways may run on this host
    cmd = gateway_cmd(port, ops_port, workers) + (["--server", server] if server else [])
    full = base_env(TURBOPUFFER_API_URL=upstream_url, TURBOPUFFER_API_KEY=key, LAYER_DATA_DIR=data_dir,
                    LAYER_UPSTREAM_TRANSPORT=transport, LAYER_LOG_LEVEL="warning", **env)
    proc = Proc(f"bench-gateway-{server or 'default'}-{transport}", pinned(cmd, cpu) if cpu else cmd, full,
                f"http://127.0.0.1:{port}", "/ready")
    proc.ops_url = f"http://127.0.0.1:{ops_port}"
    return proc, proc.url


# The floors (no gateway logic): Granian RSGI, uvicorn, a raw uvloop Protocol server, each over one of the gateway's
# own upstream transports (BARE_TRANSPORT, the caller's choice).
BARE = {
    "granian": ["-m", "granian", "--interface", "rsgi", "--loop", "uvloop", "--http", "1", "--workers", "1",
                "--host", "127.0.0.1", "--port", "{port}", "bench.bare_proxy:app"],
    "uvicorn": ["-m", "uvicorn", "--loop", "uvloop", "--http", "httptools", "--no-access-log", "--lifespan", "off",
                "--host", "127.0.0.1", "--port", "{port}", "bench.bare_asgi:app"],
    "raw": ["-m", "bench.bare_raw", "{port}"],
}


def start_bare(kind: str, upstream_url: str, transport: str, cpu: str = PROXY_CPU,
               ca_file: str | None = None) -> tuple[Proc, str]:
    """One floor from BARE over the given upstream transport, one process, pinned like the gateway."""
    port = free_port()
    cmd = [sys.executable, *(a.format(port=port) for a in BARE[kind])]
    env = base_env(BARE_UPSTREAM=upstream_url, BARE_TRANSPORT=transport, BARE_CA_FILE=ca_file or "")
    proc = Proc(f"bench-bare-{kind}-{transport}", pinned(cmd, cpu), env, f"http://127.0.0.1:{port}", "/ready",
                cwd=str(TESTS.parent))
    return proc, proc.url


def ctx_switches(pids: list[int]) -> int:
    """Voluntary + involuntary context switches of every thread of the given processes (/proc/<pid>/task/*/status)."""
    total = 0
    for pid in pids:
        for status in Path(f"/proc/{pid}/task").glob("*/status"):
            try:
                for line in status.read_text().splitlines():
                    if "ctxt_switches:" in line:
                        total += int(line.split()[1])
            except OSError:
                continue
    return total


def start_localstore(data_dir: str, key: str, cpu: str | None = None) -> tuple[Proc, str]:
    port = free_port()
    cmd = [sys.executable, "-m", "localstore", "serve", "--host", "127.0.0.1", "--port", str(port),
           "--data-dir", data_dir]
    proc = Proc("bench-localstore", pinned(cmd, cpu) if cpu else cmd, base_env(LOCALSTORE_API_KEY=key),
                f"http://127.0.0.1:{port}", "/_localstore/health")
    return proc, proc.url


def cpu_seconds(pids: list[int]) -> float:
    """utime+stime of the given processes (their own threads), from /proc/<pid>/stat."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total / tick


def rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def host_cpu_ticks() -> tuple[int, int]:
    """(total, steal) jiffies from the aggregate cpu line of /proc/stat."""
    vals = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    return sum(vals[:8]), vals[7] if len(vals) > 7 else 0
