"""`layer-gateway serve --server granian`: Granian's own supervisor and workers (RSGI, uvloop, HTTP/1.1 only),
configured from the gateway's settings, with one change to its signal handling (see `Supervisor`)."""

from __future__ import annotations

import os
import signal
from typing import Any

from gateway.config import Config

TARGET = "gateway.servers.rsgi:app"
PORT_ENV = "LAYER_GRANIAN_PORT"  # the public port, for the workers' drain (gateway/servers/rsgi.py)


def run(config: Config, host: str, port: int, workers: int) -> int:
    from granian.constants import HTTPModes, Interfaces, Loops
    from granian.http import HTTP1Settings
    from granian.server.mp import MPServer

    class Supervisor(MPServer):  # type: ignore[misc]
        """Granian sends SIGTERM to its workers on SIGTERM and SIGINT alike (they drain, gateway/servers/drain.py)
        and kills them after `workers_kill_timeout`; a second signal changed nothing. Here a SIGINT first reaches
        the workers as SIGINT (Granian's own stop: no grace), and a second signal stops them at once (SIGQUIT: the
        drain's stop_now)."""

        def _send(self, sig: int) -> None:
            for worker in self.wrks:
                if worker.inner.pid:
                    os.kill(worker.inner.pid, sig)

        def signal_handler_interrupt(self, signum: int = signal.SIGTERM, *args: Any) -> None:
            if self.interrupt_signal:
                self._send(signal.SIGQUIT)
            elif signum == signal.SIGINT:
                self._send(signal.SIGINT)
            super().signal_handler_interrupt(signum, *args)

    os.environ[PORT_ENV] = str(port)  # the workers' drain finds their listening socket by it
    s = config.server
    kill_timeout = (config.drain_grace_ms + config.drain_timeout_ms) // 1000 + 5
    server = Supervisor(
        TARGET, address=host, port=port, interface=Interfaces.RSGI, workers=workers,
        # pinned: `auto` picks rloop when it is installed, which makes an asyncio-based upstream client 33% slower
        loop=Loops.uvloop,
        # HTTP/1.1 only: hyper's auto (h1/h2) detection runs without the header read timer, so a connection that
        # sends nothing would be held forever
        http=HTTPModes.http1,
        websockets=False, backlog=s.backlog,
        backpressure=s.max_connections,  # connections per worker; beyond it they wait in the listen backlog
        # hyper has one timer from connect (or the end of the previous response) to complete request headers: it is
        # both the header read timeout and the keep-alive idle timeout; hyper's header count limit is a fixed 100
        http1_settings=HTTP1Settings(header_read_timeout=s.header_timeout_ms, keep_alive=True,
                                     max_buffer_size=s.max_header_bytes),
        log_access=False, workers_kill_timeout=kill_timeout)
    server.serve()
    return 0
