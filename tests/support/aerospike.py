"""Test-side helper for the Aerospike wire test server (tests/support/aerospike_server.py) run as a subprocess."""

from __future__ import annotations

import os
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Self

from .procs import LOG_DIR, free_port

SERVER_SCRIPT = Path(__file__).with_name("aerospike_server.py")
READY_TIMEOUT_S = 15.0

# Client config that worked best against this server (see tests/aerospike_server/).
CLIENT_CONFIG_DEFAULTS: dict = {
    "tend_interval": 250,
    "connect_timeout": 1000,
    "use_services_alternate": False,
    "policies": {"read": {"total_timeout": 1000}, "write": {"total_timeout": 1000}},
}


def _info(port: int, command: str, timeout: float = 2.0) -> str:
    body = (command + "\n").encode()
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(struct.pack(">Q", (2 << 56) | (1 << 48) | len(body)) + body)
        head = _recv(s, 8)
        size = struct.unpack(">Q", head)[0] & 0xFFFFFFFFFFFF
        reply = _recv(s, size).decode()
    value = reply.split("\t", 1)[1].rstrip("\n") if "\t" in reply else reply
    if value.startswith("ERROR"):
        raise RuntimeError(f"control command {command!r} failed: {value}")
    return value


def _recv(s: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("control connection closed")
        buf += chunk
    return buf


def _ops(ops: Iterable[str] | None) -> str:
    return "" if ops is None else ";ops=" + ",".join(ops)


class AerospikeServer:
    """One test server process. Hooks go through the control port (info protocol: hook-* commands)."""

    def __init__(
        self,
        namespaces: Iterable[str] = ("test", "hevlayer", "layer_keys"),
        max_record_size: int = 1024 * 1024,
        default_ttl: int = 0,
        cluster_name: str | None = None,
    ) -> None:
        self.host = "127.0.0.1"
        self.port = free_port()
        self.control_port = free_port()
        self.namespaces = tuple(namespaces)
        self._args = ["--max-record-size", str(max_record_size), "--default-ttl", str(default_ttl)]
        for ns in self.namespaces:
            self._args += ["--ns", ns]
        if cluster_name:
            self._args += ["--cluster-name", cluster_name]
        LOG_DIR.mkdir(exist_ok=True)
        self.log_path = Path(tempfile.mkstemp(prefix="aerospike-", suffix=".log", dir=LOG_DIR)[1])
        self.popen: subprocess.Popen | None = None
        self._start()

    @property
    def hosts_env(self) -> str:
        return f"{self.host}:{self.port}"

    def client_config(self, **overrides: object) -> dict:
        """A config dict for aerospike.client(): hosts plus CLIENT_CONFIG_DEFAULTS, overridden by keyword."""
        return {"hosts": [(self.host, self.port)], **CLIENT_CONFIG_DEFAULTS, **overrides}

    def _start(self) -> None:
        cmd = [
            sys.executable,
            str(SERVER_SCRIPT),
            "--port",
            str(self.port),
            "--control-port",
            str(self.control_port),
            *self._args,
        ]
        with open(self.log_path, "ab") as log:
            self.popen = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self._wait_ready()

    def _wait_ready(self) -> None:
        import aerospike  # type: ignore[import-untyped]

        deadline = time.monotonic() + READY_TIMEOUT_S
        last: Exception | None = None
        while time.monotonic() < deadline:
            assert self.popen is not None
            if self.popen.poll() is not None:
                raise RuntimeError(f"aerospike test server exited {self.popen.returncode}:\n{self.log()}")
            try:
                _info(self.control_port, "node", timeout=0.5)
                client = aerospike.client({"hosts": [(self.host, self.port)], "connect_timeout": 500})
                ok = client.is_connected()
                client.close()
                if ok:
                    return
            except Exception as e:  # noqa: BLE001 - keep polling until the deadline
                last = e
            time.sleep(0.05)
        self.kill()
        raise RuntimeError(f"aerospike test server not ready in {READY_TIMEOUT_S}s ({last}):\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-8000:]

    def control(self, command: str) -> str:
        """Send one raw info command to the server (e.g. 'statistics', 'hook-clear')."""
        return _info(self.control_port, command)

    # ----- hooks -----
    def delay(self, ms: int, ops: Iterable[str] | None = None) -> None:
        """Delay replies by ms. ops: subset of read, write, batch, scan, info (default: all but info)."""
        self.control(f"hook-delay:ms={int(ms)}{_ops(ops)}")

    def drop(self, count: int | None = None, ops: Iterable[str] | None = None) -> None:
        """Close the connection without answering the next `count` requests (None = until clear_hooks)."""
        self.control(f"hook-drop:count={-1 if count is None else int(count)}{_ops(ops)}")

    def fail(self, result_code: int, count: int | None = None, ops: Iterable[str] | None = None) -> None:
        """Answer the next `count` requests (None = until clear_hooks) with result_code."""
        self.control(f"hook-fail:code={int(result_code)};count={-1 if count is None else int(count)}{_ops(ops)}")

    def clear_hooks(self) -> None:
        self.control("hook-clear")

    # ----- lifecycle -----
    def _signal(self, sig: int) -> None:
        if self.popen is not None and self.popen.poll() is None:
            try:
                os.killpg(self.popen.pid, sig)
                self.popen.wait(timeout=10)
            except ProcessLookupError:
                pass
            except subprocess.TimeoutExpired:
                os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait(timeout=10)

    def stop(self) -> None:
        self._signal(signal.SIGTERM)

    def kill(self) -> None:
        self._signal(signal.SIGKILL)

    def restart(self) -> None:
        """Kill (if running) and start again on the same ports; data is lost."""
        self.kill()
        self._start()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_aerospike(**opts: object) -> AerospikeServer:
    """Start a server; opts: namespaces, max_record_size, default_ttl, cluster_name. Caller must .stop() it."""
    return AerospikeServer(**opts)  # type: ignore[arg-type]
