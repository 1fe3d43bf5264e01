"""Start and stop the real processes that tests talk to (local store, gateway) on 127.0.0.1."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Self, TypeVar

from gateway.config import SERVERS

T = TypeVar("T")

READY_TIMEOUT_S = 30.0
# Process logs of the latest test run and of benches (tests/conftest.py empties it when a test run starts).
LOG_DIR = Path(tempfile.gettempdir()) / "layer-test-logs"
STORE_KEY = "test-store-key"  # the store key the test gateways are configured with
# The HTTP server every test gateway runs (`LAYER_SERVER=granian python -m pytest tests` runs the suite under
# Granian; .ci/run does both). Unset: the gateway's default.
SERVER = os.environ.get("LAYER_SERVER", "").strip() or SERVERS[0]


def free_ports(n: int) -> list[int]:
    """n distinct free ports (held open together while picked, so they differ)."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for s in socks:
            s.close()


def free_port() -> int:
    return free_ports(1)[0]


def http_status(url: str, headers: dict[str, str] | None = None, timeout: float = 2.0) -> int:
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as e:
        return int(e.code)
    except (urllib.error.URLError, OSError):
        return 0


class Proc:
    """A child process in its own session with its output in a log file, started and waited for until `url +
    ready_path` answers 200; stop() (or leaving a `with` block) always reaps it. Used by the tests and by bench/."""

    def __init__(self, name: str, cmd: list[str], env: dict[str, str] | None, url: str, ready_path: str,
                 cwd: str | None = None) -> None:
        self.name = name
        self.url = url
        self.ops_url: str | None = None  # a gateway's ops listener (/metrics, detailed /health)
        LOG_DIR.mkdir(exist_ok=True)
        self.log_path = Path(tempfile.mkstemp(prefix=f"{name}-", suffix=".log", dir=LOG_DIR)[1])
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed by stop()
        self.popen = subprocess.Popen(
            cmd, env=env, cwd=cwd, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True
        )
        self._wait_ready(url + ready_path)

    def _wait_ready(self, ready_url: str) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.popen.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.popen.returncode}:\n{self.log()}")
            if http_status(ready_url, timeout=0.5) == 200:
                return
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"{self.name} not ready within {READY_TIMEOUT_S}s:\n{self.log()}")

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def log(self) -> str:
        if not self._log.closed:  # stop() closes it; a start-up failure reads the log after stopping
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

    def send_signal(self, sig: int) -> None:
        if self.popen.poll() is None:
            os.killpg(self.popen.pid, sig)

    def wait(self, timeout: float) -> int:
        return self.popen.wait(timeout=timeout)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> None:
        if self.popen.poll() is None:
            try:
                os.killpg(self.popen.pid, sig)
                self.popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait(timeout=timeout)
            except ProcessLookupError:
                pass
        self._log.close()


def base_env(**extra: str) -> dict[str, str]:
    """The test run's environment without any Turbopuffer/Layer/Aerospike setting, except the server under test;
    gateways stop without a drain grace (SIGTERM is how every test stops its gateway) unless `extra` sets one."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("TURBOPUFFER_", "LAYER_", "AEROSPIKE_")) and k != "DATABASE_URL"}
    env["LAYER_SERVER"] = SERVER
    env["LAYER_DRAIN_GRACE_MS"] = "0"
    env.update(extra)
    return env


def start_localstore(data_dir: str | Path, faults: bool = True, **env: str) -> Proc:
    """A local store, with fault injection on (/_localstore/faults, behind its key) unless faults=False."""
    port = free_port()
    cmd = [sys.executable, "-m", "localstore", "serve", "--host", "127.0.0.1", "--port", str(port),
           "--data-dir", str(data_dir), *(["--enable-faults"] if faults else [])]
    return Proc("localstore", cmd, base_env(**env), f"http://127.0.0.1:{port}", "/_localstore/health")


def gateway_cmd(port: int, ops_port: int, workers: int) -> list[str]:
    return [sys.executable, "-m", "gateway", "serve", "--host", "127.0.0.1", "--port", str(port),
            "--workers", str(workers), "--ops-port", str(ops_port)]


def start_gateway(upstream_url: str, upstream_key: str, data_dir: str | Path, workers: int = 2, **env: str) -> Proc:
    port, ops_port = free_ports(2)
    full_env = base_env(TURBOPUFFER_API_URL=upstream_url, TURBOPUFFER_API_KEY=upstream_key,
                        LAYER_DATA_DIR=str(data_dir), **env)
    proc = Proc("gateway", gateway_cmd(port, ops_port, workers), full_env, f"http://127.0.0.1:{port}", "/ready")
    proc.ops_url = f"http://127.0.0.1:{ops_port}"
    try:
        wait_for_workers(proc.url, workers)
    except BaseException:
        proc.stop()
        raise
    return proc


def start_embedded_gateway(data_dir: str | Path, admin_key: str, workers: int = 2, **env: str) -> Proc:
    """`just run`: the gateway with no upstream configured, so it starts its own local store (embedded mode)."""
    port, ops_port = free_ports(2)
    full_env = base_env(LAYER_DATA_DIR=str(data_dir), LAYER_GATEWAY_API_KEY=admin_key, **env)
    proc = Proc("gateway-embedded", gateway_cmd(port, ops_port, workers), full_env, f"http://127.0.0.1:{port}",
                "/ready")
    proc.ops_url = f"http://127.0.0.1:{ops_port}"
    try:
        wait_for_workers(proc.url, workers)
    except BaseException:
        proc.stop()
        raise
    return proc


def wait_for_workers(url: str, workers: int) -> None:
    """Until every worker has answered: /ready proves only that one of them started (a fresh checkout compiles its
    modules on first import, so the others can be seconds behind)."""
    seen: set[int] = set()
    deadline = time.monotonic() + READY_TIMEOUT_S
    while len(seen) < workers:
        try:
            seen.add(health_pid(url, timeout=2))  # a new connection each time
        except (OSError, ValueError, KeyError):
            pass
        if len(seen) < workers:
            if time.monotonic() > deadline:
                raise RuntimeError(f"only {len(seen)} of {workers} gateway workers answered within {READY_TIMEOUT_S}s")
            time.sleep(0.01)


def in_bursts(fn: Callable[[], T], n: int, width: int = 8) -> list[T]:
    """`n` calls of `fn` (each on a fresh connection), `width` at a time; the results in call order. Concurrent
    connections are what spreads requests over the gateway's workers: one worker, woken first, can take a long run of
    one-at-a-time connections."""
    with ThreadPoolExecutor(width) as pool:
        return list(pool.map(lambda _: fn(), range(n)))


def worker_pids(url: str, workers: int = 2, rounds: int = 25) -> set[int]:
    """The pids that answer bursts of /health calls, round after round until `workers` of them have answered."""
    seen: set[int] = set()
    for _ in range(rounds):
        seen.update(in_bursts(lambda: health_pid(url), 8))
        if len(seen) >= workers:
            break
    return seen


def health_pid(url: str, timeout: float = 15) -> int:
    """The pid of the gateway worker that answers /health on a fresh connection."""
    with urllib.request.urlopen(url + "/health", timeout=timeout) as resp:
        return int(json.loads(resp.read())["worker"]["pid"])
