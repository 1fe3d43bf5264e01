"""A scripted HTTP/1.1 upstream on 127.0.0.1 (optionally TLS) for the transport tests: each request's answer is an
Action chosen by `plan`, from a well-formed response to garbage, a truncated body, a slow drip or a hang.

It runs on threads in the test process, so a gateway process or an in-process transport can both talk to it, and it
counts what it saw: requests (with bodies), connections accepted and open now, idle connections the client closed,
and the SNI names of TLS handshakes.
"""

from __future__ import annotations

import select
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

POLL_S = 0.05


@dataclass
class Seen:
    """One request as the server read it."""

    method: str
    path: str
    headers: dict[str, str]
    conn_id: int
    index_on_conn: int  # 0 for the first request on its connection
    body: bytes = b""


class Conn:
    """The server side of one connection, handed to actions."""

    def __init__(self, sock: socket.socket, stop: threading.Event) -> None:
        self.sock = sock
        self.stop = stop

    def send(self, data: bytes) -> bool:
        try:
            self.sock.sendall(data)
            return True
        except OSError:
            return False

    def wait_closed(self, limit_s: float = 60.0) -> None:
        """Until the client closes (or the server stops): what a hung upstream looks like."""
        deadline = time.monotonic() + limit_s
        while not self.stop.is_set() and time.monotonic() < deadline:
            if select.select([self.sock], [], [], POLL_S)[0]:
                try:
                    if not self.sock.recv(65536):
                        return
                except OSError:
                    return


Action = Callable[[Conn, Seen], bool]  # writes its answer; True keeps the connection open for the next request


def respond(status: int = 200, body: bytes = b'{"ok":true}', headers: Iterable[tuple[str, str]] = (),
            chunked: bool = False, close: bool = False, framing: bool = True) -> Action:
    """A well-formed answer (Content-Length, chunked, or with `framing=False` delimited by closing)."""

    def act(conn: Conn, seen: Seen) -> bool:
        lines = [f"HTTP/1.1 {status} X", *(f"{k}: {v}" for k, v in headers)]
        payload = body if seen.method != "HEAD" else b""
        if chunked:
            lines.append("Transfer-Encoding: chunked")
            half = len(payload) // 2
            parts = [p for p in (payload[:half], payload[half:]) if p]
            payload = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in parts) + b"0\r\n\r\n"
        elif framing and status not in (204, 304) and status >= 200:
            lines.append(f"Content-Length: {len(body)}")
        if close or not framing:
            lines.append("Connection: close")
        ok = conn.send(("\r\n".join(lines) + "\r\n\r\n").encode() + payload)
        return ok and not close and framing

    return act


def raw(data: bytes, then: str = "close") -> Action:
    """Send bytes as they are; then close, keep the connection, or hang until the client gives up."""

    def act(conn: Conn, seen: Seen) -> bool:
        conn.send(data)
        if then == "hang":
            conn.wait_closed()
        return then == "keep"

    return act


def interim(*codes: int, then: Action) -> Action:
    def act(conn: Conn, seen: Seen) -> bool:
        for code in codes:
            conn.send(f"HTTP/1.1 {code} Interim\r\nX-Interim: {code}\r\n\r\n".encode())
        return then(conn, seen)

    return act


def truncated(declared: int = 1000, sent: int = 10, chunked: bool = False) -> Action:
    """Announce a body, send part of it, close."""
    if chunked:
        return raw(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n10\r\n0123456789abcdef\r\n5\r\nab")
    return raw(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (declared, b"x" * sent))


def drip(interval_s: float = 0.05, head: bool = False) -> Action:
    """A byte every `interval_s`: in the headers (`head`) or in an endless body; until the client gives up."""

    def act(conn: Conn, seen: Seen) -> bool:
        if not head:
            conn.send(b"HTTP/1.1 200 OK\r\nContent-Length: 100000000\r\n\r\n")
        prefix = b"HTTP/1.1 200 OK\r\nX-Slow: " if head else b""
        data = iter(prefix + b"y" * 10_000_000)
        while not conn.stop.is_set():
            if not conn.send(bytes([next(data)])):
                return False
            if select.select([conn.sock], [], [], interval_s)[0]:
                try:
                    if not conn.sock.recv(65536):
                        return False  # the client closed
                except OSError:
                    return False
        return False

    return act


def hang() -> Action:
    def act(conn: Conn, seen: Seen) -> bool:
        conn.wait_closed()
        return False

    return act


def close_now(reset: bool = False) -> Action:
    """Close without a byte of answer (with `reset`: an RST instead of a FIN)."""

    def act(conn: Conn, seen: Seen) -> bool:
        if reset:
            conn.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        return False

    return act


def huge_headers(size: int = 1 << 20) -> Action:
    filler = "".join(f"X-Filler-{i}: {'z' * 1000}\r\n" for i in range(size // 1000 + 1))
    return raw(f"HTTP/1.1 200 OK\r\n{filler}Content-Length: 2\r\n\r\nok".encode(), then="close")


def ok(seen: Seen) -> Action:
    return respond()


@dataclass
class Counters:
    accepted: int = 0
    live: int = 0
    max_live: int = 0
    client_closes: int = 0  # idle connections the client closed
    sni: list[str] = field(default_factory=list)


class ScriptedUpstream:
    def __init__(self, tls: ssl.SSLContext | None = None, slow_read_s: float = 0.0) -> None:
        self.plan: Callable[[Seen], Action] = ok
        self.requests: list[Seen] = []
        self.counters = Counters()
        self.slow_read_s = slow_read_s  # pause between body reads (4 KiB each): a slow reader
        self.read_body = True  # False: never read request bodies (an upstream that stopped reading)
        self._tls = tls
        if tls is not None:
            tls.sni_callback = lambda _sock, name, _ctx: self.counters.sni.append(name)  # type: ignore[assignment]
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._listener = socket.create_server(("127.0.0.1", 0), backlog=128)
        self.port = self._listener.getsockname()[1]
        self.url = f"{'https' if tls else 'http'}://127.0.0.1:{self.port}"
        self._threads: list[threading.Thread] = []
        self._accept_thread = threading.Thread(target=self._accept, daemon=True)
        self._accept_thread.start()

    def paths(self, path: str) -> list[Seen]:
        return [s for s in self.requests if s.path == path]

    def stop(self) -> None:
        self._stop.set()
        self._accept_thread.join(5)  # before the close: select() on a closed (or reused) descriptor fails
        self._listener.close()
        for t in list(self._threads):
            t.join(5)

    def _accept(self) -> None:
        conn_id = 0
        while not self._stop.is_set():
            if not select.select([self._listener], [], [], POLL_S)[0]:
                continue
            try:
                sock, _ = self._listener.accept()
            except OSError:
                return
            conn_id += 1
            t = threading.Thread(target=self._serve, args=(sock, conn_id), daemon=True)
            self._threads = [x for x in self._threads if x.is_alive()] + [t]
            t.start()

    def _serve(self, sock: socket.socket, conn_id: int) -> None:
        with self._lock:
            c = self.counters
            c.accepted += 1
            c.live += 1
            c.max_live = max(c.max_live, c.live)
        try:
            if self._tls is not None:
                sock.settimeout(10)
                sock = self._tls.wrap_socket(sock, server_side=True)
            sock.settimeout(None)
            conn = Conn(sock, self._stop)
            index = 0
            while not self._stop.is_set():
                got = self._read_head(sock, conn_id, index)
                if got is None:
                    return
                seen, early = got
                action = self.plan(seen)
                if self.read_body:
                    seen.body = self._read_exact(sock, early, int(seen.headers.get("content-length", "0")))
                with self._lock:
                    self.requests.append(seen)
                if not action(conn, seen):
                    return
                index += 1
        except (OSError, ssl.SSLError, ValueError):
            return
        finally:
            try:
                sock.close()
            except OSError:
                pass
            with self._lock:
                self.counters.live -= 1

    def _read_head(self, sock: socket.socket, conn_id: int, index: int) -> tuple[Seen, bytes] | None:
        buf = b""
        while b"\r\n\r\n" not in buf:
            if self._stop.is_set():
                return None
            if not select.select([sock], [], [], POLL_S)[0] and not (isinstance(sock, ssl.SSLSocket) and
                                                                   sock.pending()):
                continue
            chunk = sock.recv(65536)
            if not chunk:
                if not buf:
                    with self._lock:
                        self.counters.client_closes += 1
                return None
            buf += chunk
        head, _, early = buf.partition(b"\r\n\r\n")  # early: the start of the body
        lines = head.decode("latin-1").split("\r\n")
        method, path, _ = lines[0].split(" ", 2)
        headers = {}
        for line in lines[1:]:
            k, _, v = line.partition(":")
            headers[k.strip().lower()] = v.strip()
        return Seen(method, path, headers, conn_id, index), early

    def _read_exact(self, sock: socket.socket, early: bytes, n: int) -> bytes:
        parts, got = [early], len(early)
        while got < n:
            if self.slow_read_s:
                time.sleep(self.slow_read_s)
            chunk = sock.recv(min(4096 if self.slow_read_s else 1 << 20, n - got))
            if not chunk:
                break
            parts.append(chunk)
            got += len(chunk)
        return b"".join(parts)
