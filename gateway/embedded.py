"""The embedded default upstream: with no TURBOPUFFER_API_URL / TURBOPUFFER_REGION the serve process starts the
local store as a child on a free 127.0.0.1 port, with its data under LAYER_DATA_DIR, and stops it on exit."""

from __future__ import annotations

import ctypes
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from gateway.config import Config

READY_TIMEOUT_S = 30.0
KEY_FILE = "admin_key"


class EmbeddedStoreError(RuntimeError):
    pass


def admin_key(config: Config) -> tuple[str, str]:
    """(key, where it came from): LAYER_GATEWAY_API_KEY, else generated once and kept in the data dir."""
    if config.gateway_api_key:
        return config.gateway_api_key, "LAYER_GATEWAY_API_KEY"
    path = Path(config.data_dir) / KEY_FILE
    if path.exists():
        key = path.read_text().strip()
        if key:
            return key, str(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    key = "lyr_" + secrets.token_urlsafe(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(key + "\n")
    return key, str(path)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _die_with_parent() -> None:
    # Linux: the child gets SIGTERM if the gateway dies without stopping it (PR_SET_PDEATHSIG = 1).
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)
    except OSError:
        pass


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/_localstore/health", timeout=0.5) as resp:
            return resp.status == 200
    except (urllib.error.URLError, OSError):
        return False


class EmbeddedStore:
    def __init__(self, config: Config, key: str) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.data_dir = Path(config.data_dir) / "localstore"
        self.data_dir.mkdir(parents=True, exist_ok=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("TURBOPUFFER_", "PROMETHEUS_"))}
        env["LOCALSTORE_API_KEY"] = key
        cmd = [sys.executable, "-m", "localstore", "serve", "--host", "127.0.0.1", "--port", str(self.port),
               "--data-dir", str(self.data_dir)]
        self.proc = subprocess.Popen(cmd, env=env, start_new_session=True,
                                     preexec_fn=_die_with_parent)  # noqa: PLW1509 - called before threads exist
        self._wait_ready()

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise EmbeddedStoreError(f"the local store exited with status {self.proc.returncode} on start")
            if _healthy(self.url):
                return
            time.sleep(0.05)
        self.stop()
        raise EmbeddedStoreError(f"the local store did not become healthy within {READY_TIMEOUT_S:g}s")

    def stop(self, timeout: float = 10.0) -> None:
        if self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout)
