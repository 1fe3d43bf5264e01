"""An asyncio HTTP/1.1 keep-alive load client that records what happened to every request, for the drain and
slow-client tests: it reconnects when a response says `Connection: close` (optionally to another address, as a
client behind a balancer would), and tells a refused connection apart from a request that was sent and lost."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import httptools


@dataclass
class Outcome:
    started: float  # time.monotonic() when the request was written (or the connect began, for "refused")
    ended: float
    kind: str  # "ok" (a response), "refused" (the connect failed), "lost" (sent, connection failed before a response)
    status: int = 0
    close: bool = False  # the response said Connection: close
    fresh: bool = False  # first request on its connection
    target: str = ""


class _Response:
    def __init__(self) -> None:
        self.status = 0
        self.close = False
        self.done = False
        self._name = b""

    def on_header(self, name: bytes, value: bytes) -> None:
        if name.lower() == b"connection" and value.lower() == b"close":
            self.close = True

    def on_message_complete(self) -> None:
        self.done = True


async def _exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes) -> _Response:
    resp = _Response()
    parser = httptools.HttpResponseParser(resp)
    writer.write(request)
    while not resp.done:
        data = await reader.read(65536)
        if not data:
            raise ConnectionResetError("closed before a complete response")
        parser.feed_data(data)
    resp.status = parser.get_status_code()
    return resp


def request_bytes(method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "host: 127.0.0.1", f"content-length: {len(body)}"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    if body:
        lines.append("content-type: application/json")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


@dataclass
class Load:
    """`conns` keep-alive connections sending `request` in a loop until stop(); `targets()` says where a new
    connection goes ((host, port) pairs tried in order)."""

    targets: Callable[[], list[tuple[str, int]]]
    request: bytes
    conns: int
    pause: float = 0.0  # seconds between two requests on one connection
    per_conn: int = 0  # requests on one connection before the client closes it and opens another (0: no limit)
    outcomes: list[Outcome] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> Load:
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True)
        self._thread.start()
        return self

    def stop(self) -> list[Outcome]:
        self._stop.set()
        assert self._thread is not None
        self._thread.join(30)
        return self.outcomes

    async def _main(self) -> None:
        await asyncio.gather(*(self._one() for _ in range(self.conns)))

    def opened(self) -> bool:
        """Every connection has carried a request (its keep-alive connection is established)."""
        return len({id(o) for o in self.outcomes}) >= self.conns

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, str] | None:
        for host, port in self.targets():
            t = time.monotonic()
            try:
                reader, writer = await asyncio.open_connection(host, port)
                return reader, writer, f"{host}:{port}"
            except OSError:  # refused, or reset by a listening socket closing under the handshake: not accepted
                self.outcomes.append(Outcome(t, time.monotonic(), "refused", target=f"{host}:{port}"))
        return None

    async def _one(self) -> None:
        while not self._stop.is_set():
            conn = await self._connect()
            if conn is None:
                await asyncio.sleep(0.01)
                continue
            reader, writer, target = conn
            fresh = True
            sent = 0
            try:
                while not self._stop.is_set():
                    t = time.monotonic()
                    try:
                        resp = await _exchange(reader, writer, self.request)
                    except (ConnectionError, httptools.HttpParserError):
                        self.outcomes.append(Outcome(t, time.monotonic(), "lost", fresh=fresh, target=target))
                        break
                    self.outcomes.append(Outcome(t, time.monotonic(), "ok", resp.status, resp.close, fresh, target))
                    fresh = False
                    sent += 1
                    if resp.close or sent == self.per_conn:
                        break
                    if self.pause:
                        await asyncio.sleep(self.pause)
            finally:
                writer.close()


@dataclass
class IdleConns:
    """`conns` keep-alive connections that carry one request each and then stay silent, to see when the server
    closes them: `closed` holds time.monotonic() of each close, `answered` the status of each request."""

    target: tuple[str, int]
    request: bytes
    conns: int
    answered: list[int] = field(default_factory=list)
    closed: list[float] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)  # data after the response, or a failed first request
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> IdleConns:
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True)
        self._thread.start()
        return self

    def stop(self) -> IdleConns:
        self._stop.set()
        assert self._thread is not None
        self._thread.join(30)
        return self

    async def _main(self) -> None:
        await asyncio.gather(*(self._one() for _ in range(self.conns)))

    async def _one(self) -> None:
        reader, writer = await asyncio.open_connection(*self.target)
        try:
            try:
                resp = await _exchange(reader, writer, self.request)
            except (ConnectionError, httptools.HttpParserError) as exc:
                self.unexpected.append(f"first request failed: {exc!r}")
                return
            self.answered.append(resp.status)
            while not self._stop.is_set():
                try:
                    data = await asyncio.wait_for(reader.read(65536), 0.05)
                except TimeoutError:
                    continue
                except ConnectionError:
                    data = b""
                if data:
                    self.unexpected.append(f"data on an idle connection: {data[:80]!r}")
                self.closed.append(time.monotonic())
                return
        finally:
            writer.close()
