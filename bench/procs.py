"""Child processes for the benchmarks: start on 127.0.0.1, wait for readiness, pin to a core, always stop."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

READY_TIMEOUT_S = 30.0
TOOLS = {"nginx": "nginx", "wrk": "wrk", "h2load": "nghttp2-client"}
NCPU = os.cpu_count() or 1
# Gateway (and the nginx proxy under test) on one core; load generator and canned upstream on the other.
PROXY_CPU = "1" if NCPU > 1 else "0"
LOAD_CPU = "0"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def which_nginx() -> str | None:
    return shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx",) if os.path.exists(p)), None)


def ensure_tools() -> None:
    """Install nginx, wrk and h2load with apt-get when missing (fresh machine)."""
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


def http_status(url: str, headers: dict[str, str] | None = None, timeout: float = 2.0) -> int:
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as e:
        return int(e.code)
    except (urllib.error.URLError, OSError):
        return 0


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


class Proc:
    """A child process in its own session with output in a log file; stop() always reaps it."""

    def __init__(self, name: str, cmd: list[str], env: dict[str, str] | None = None, ready_url: str | None = None,
                 cwd: str | None = None) -> None:
        self.name = name
        self.url = ""
        self.log_path = Path(tempfile.mkstemp(prefix=f"bench-{name}-", suffix=".log")[1])
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed by stop()
        self.popen = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=self._log, stderr=subprocess.STDOUT,
                                      start_new_session=True)
        if ready_url:
            self._wait_ready(ready_url)

    def _wait_ready(self, url: str) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.popen.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.popen.returncode}: {self.log()[-2000:]}")
            if http_status(url, timeout=0.5) == 200:
                return
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"{self.name} not ready within {READY_TIMEOUT_S}s: {self.log()[-2000:]}")

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")[-8000:]

    def pids(self) -> list[int]:
        """The process and all its descendants (gateway workers)."""
        out, todo = [], [self.popen.pid]
        while todo:
            pid = todo.pop()
            out.append(pid)
            try:
                kids = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
            except OSError:
                kids = []
            todo.extend(int(k) for k in kids)
        return out

    def stop(self, timeout: float = 10.0) -> None:
        if self.popen.poll() is None:
            try:
                os.killpg(self.popen.pid, signal.SIGTERM)
                self.popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait(timeout=timeout)
            except ProcessLookupError:
                pass
        if not self._log.closed:
            self._log.close()


def base_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TURBOPUFFER_", "LAYER_", "AEROSPIKE_"))}
    env.update(extra)
    return env


def start_gateway(upstream_url: str, key: str, data_dir: str, workers: int, transport: str,
                  cpu: str | None = PROXY_CPU, **env: str) -> tuple[Proc, str]:
    port = free_port()
    cmd = [sys.executable, "-m", "gateway", "serve", "--host", "127.0.0.1", "--port", str(port),
           "--workers", str(workers)]
    full = base_env(TURBOPUFFER_API_URL=upstream_url, TURBOPUFFER_API_KEY=key, LAYER_DATA_DIR=data_dir,
                    LAYER_UPSTREAM_TRANSPORT=transport, LAYER_LOG_LEVEL="warning", **env)
    url = f"http://127.0.0.1:{port}"
    proc = Proc(f"gateway-{transport}", pinned(cmd, cpu) if cpu else cmd, full, url + "/ready")
    proc.url = url
    return proc, url


def start_bare_proxy(upstream_url: str, cpu: str = PROXY_CPU) -> tuple[Proc, str]:
    """bench/bare_proxy.py under Granian, one worker, pinned like the gateway."""
    port = free_port()
    cmd = [sys.executable, "-m", "granian", "--interface", "rsgi", "--loop", "uvloop", "--workers", "1",
           "--host", "127.0.0.1", "--port", str(port), "bench.bare_proxy:app"]
    url = f"http://127.0.0.1:{port}"
    root = str(Path(__file__).resolve().parent.parent)
    proc = Proc("bare-proxy", pinned(cmd, cpu), base_env(BARE_UPSTREAM=upstream_url), url + "/ready", cwd=root)
    return proc, url


def start_localstore(data_dir: str, key: str, cpu: str | None = None) -> tuple[Proc, str]:
    port = free_port()
    cmd = [sys.executable, "-m", "localstore", "serve", "--host", "127.0.0.1", "--port", str(port),
           "--data-dir", data_dir]
    url = f"http://127.0.0.1:{port}"
    proc = Proc("localstore", pinned(cmd, cpu) if cpu else cmd, base_env(LOCALSTORE_API_KEY=key),
                url + "/_localstore/health")
    return proc, url


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
