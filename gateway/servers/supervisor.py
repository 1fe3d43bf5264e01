"""The process supervisor for servers that do not bring their own (uvicorn): N forked workers sharing one
listening socket, signals forwarded, the exit collected.

Signals to the supervisor: SIGTERM -> SIGTERM to every worker (drain); SIGINT -> SIGINT (drain without grace); a
second SIGTERM or SIGINT -> SIGQUIT (stop now). A worker that outlives `kill_after_s` after the first signal is
killed. A worker that dies on its own stops the others and the supervisor exits 1.

The supervisor closes its copy of the listening socket as soon as the workers are forked: a listening socket keeps
queueing connections until every process holding it has closed it, so the supervisor must not be one of them.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Callable
from typing import Any

log = logging.getLogger("gateway.supervisor")
POLL_S = 0.05


class Supervisor:
    def __init__(self, sock: socket.socket, workers: int, target: Callable[[socket.socket], int],
                 kill_after_s: float) -> None:
        self.sock = sock
        self.count = workers
        self.target = target
        self.kill_after_s = kill_after_s
        self.pids: set[int] = set()
        self.signals = 0
        self.deadline: float | None = None
        self.failed = False

    def run(self) -> int:
        for _ in range(self.count):
            self.pids.add(self._fork())
        self.sock.close()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._on_signal)
        while self.pids:
            self._reap()
            if self.deadline is not None and time.monotonic() > self.deadline:
                log.warning("workers still running after %.0f s: killed", self.kill_after_s)
                self._send(signal.SIGKILL)
                self.deadline = None
            time.sleep(POLL_S)
        return 1 if self.failed else 0

    def _fork(self) -> int:
        pid = os.fork()
        if pid:
            return pid
        code = 1
        try:
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT):
                signal.signal(sig, signal.SIG_DFL)
            code = self.target(self.sock)
        except BaseException:
            log.exception("worker failed")
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)

    def _reap(self) -> None:
        while self.pids:
            pid, status = os.waitpid(-1, os.WNOHANG)
            if not pid:
                return
            self.pids.discard(pid)
            if self.signals == 0:
                log.error("worker %d exited unexpectedly (status %d): stopping", pid, status)
                self.failed = True
                self._on_signal(signal.SIGQUIT, None)

    def _on_signal(self, signum: int, frame: Any) -> None:
        self.signals += 1
        if self.signals == 1:
            self.deadline = time.monotonic() + self.kill_after_s
            self._send(signal.SIGQUIT if signum == signal.SIGQUIT else signum)
        else:
            self._send(signal.SIGQUIT)

    def _send(self, sig: int) -> None:
        for pid in self.pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
