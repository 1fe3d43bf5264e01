"""One HTTP/1.1 connection to the upstream: write a request, parse its response with httptools.

The one place where the client's complexity gathers (STYLE §5.11). A connection is an asyncio Protocol that serves
one exchange at a time (no pipelining). The response is collected in memory, bounded by the header and body limits;
any failure fails the exchange with ExchangeError and aborts the connection, which is then never reused.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import httptools
from msgspec import Struct

SMALL_BODY = 64 * 1024  # a body up to this size leaves in the same write (one syscall) as the request head
WRITE_CHUNK = 256 * 1024  # larger bodies are written in chunks, waiting for the socket to drain in between
FRAMING = frozenset({b"content-length", b"transfer-encoding"})


class ExchangeError(Exception):
    """An exchange failed; the connection is dead. `response_started`: a response byte arrived (so the upstream
    saw the request); `timeout`: a deadline passed."""

    def __init__(self, message: str, *, timeout: bool = False, response_started: bool = False) -> None:
        super().__init__(message)
        self.timeout = timeout
        self.response_started = response_started


class _StopParsing(Exception):
    """Raised from a parser callback to stop httptools mid-buffer (HEAD answered, a limit passed)."""


class Limits(Struct, frozen=True):
    """What every connection of a pool shares: deadlines, size limits and the response headers to collect."""

    collect: frozenset[bytes]  # lower-case names of the response headers the caller wants back
    read_timeout_s: float
    total_timeout_s: float
    max_header_bytes: int
    max_body_bytes: int


RawResponse = tuple[int, list[tuple[bytes, bytes]], bytes]  # status, collected headers (lower-case names), body


class H1Connection(asyncio.Protocol):
    """Connection state (`usable`, `reusable`, `served`, `idle_until`) is read by the pool; `exchange` is the only
    coroutine. `on_lost` is called once when the socket closes, whoever closed it."""

    __slots__ = (
        "_body", "_body_size", "_complete", "_deadline", "_drainer", "_error", "_fed", "_framed", "_head_only",
        "_head_size", "_headers", "_headers_done", "_interim", "_keep_alive", "_last_read", "_limits", "_loop",
        "_on_lost", "_parser", "_paused", "_started", "_status", "_timer", "_until_close", "_waiter", "closed",
        "idle_until", "keep_alive_s", "pooled", "served", "transport",
    )

    def __init__(self, limits: Limits, on_lost: Callable[[H1Connection], None]) -> None:
        self._limits = limits
        self._on_lost = on_lost
        self._loop = asyncio.get_running_loop()
        self._parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.pooled = False  # sitting in its pool's idle list
        self.served = 0  # exchanges completed on this connection
        self.idle_until = 0.0
        self.keep_alive_s: float | None = None  # the upstream's `Keep-Alive: timeout=N`, when it sent one
        self._paused = False
        self._drainer: asyncio.Future[None] | None = None
        self._waiter: asyncio.Future[RawResponse] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._reset_message()
        self._complete = True  # no exchange yet: a byte now is unsolicited
        self._head_only = False
        self._started = False
        self._error: ExchangeError | None = None
        self._deadline = 0.0
        self._last_read = 0.0

    # ---- state the pool reads ----
    @property
    def usable(self) -> bool:
        """Open and idle-clean: safe to write a request to (nothing of it can have been sent if this is False)."""
        return not self.closed and self.transport is not None and not self.transport.is_closing()

    @property
    def reusable(self) -> bool:
        return self._complete and self._keep_alive and self._error is None and self.usable

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    # ---- one exchange ----
    async def exchange(self, head: bytes, body: bytes | None, head_only: bool, deadline: float) -> RawResponse:
        """Send one request and return its response. Raises ExchangeError (the connection is then aborted);
        on cancellation the connection is aborted too."""
        assert self.transport is not None and self._complete, "one exchange at a time, on an open connection"
        loop = self._loop
        self._reset_message()
        self._complete = self._started = False
        self._head_only = head_only
        self._error = None
        self._deadline = deadline
        waiter = self._waiter = loop.create_future()
        try:
            if body is None or len(body) <= SMALL_BODY:
                self.transport.write(head + body if body else head)
            else:
                await self._write_large(head, body)
            self._last_read = loop.time()
            self._arm_timer(min(deadline, self._last_read + self._limits.read_timeout_s))
            return await waiter
        except BaseException:  # failed, timed out or cancelled: the stream is in an unknown state
            self._error = self._error or ExchangeError("exchange abandoned")
            self.abort()
            raise
        finally:
            self._waiter = None

    async def _write_large(self, head: bytes, body: bytes) -> None:
        """Back-pressure: never more than a chunk past the transport's high-water mark is buffered."""
        assert self.transport is not None and self._waiter is not None
        self.transport.write(head)
        view = memoryview(body)
        for start in range(0, len(view), WRITE_CHUNK):
            if self.closed or self._waiter.done():  # the upstream answered (e.g. 413) or closed: stop sending
                self._error = self._error or ExchangeError("request body not fully sent")
                return
            self.transport.write(view[start:start + WRITE_CHUNK])
            if self._paused:
                await self._drain()

    async def _drain(self) -> None:
        self._drainer = drainer = self._loop.create_future()
        timer = self._loop.call_at(self._deadline, _expire, drainer, self._total_timeout())
        try:
            await drainer
        finally:
            timer.cancel()
            self._drainer = None

    def _arm_timer(self, due: float) -> None:
        """The exchange's deadlines are checked by one timer per connection, kept across exchanges (a timer per
        exchange costs more CPU than the rest of its bookkeeping): an earlier exchange's timer is due no later than
        this one needs, and when it fires `_on_timer` moves it to what the exchange in flight needs."""
        timer = self._timer
        if timer is None or timer.when() > due:
            if timer is not None:
                timer.cancel()
            self._timer = self._loop.call_at(due, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        if self._waiter is None:  # between exchanges: the next one arms it again
            return
        now = self._loop.time()
        idle_until = self._last_read + self._limits.read_timeout_s
        if now >= self._deadline:
            self._fail(self._total_timeout())
        elif now >= idle_until:
            self._fail(ExchangeError(f"timed out: no response data for {self._limits.read_timeout_s:g}s",
                                     timeout=True, response_started=self._started))
        else:
            self._timer = self._loop.call_at(min(self._deadline, idle_until), self._on_timer)

    def _total_timeout(self) -> ExchangeError:
        return ExchangeError(f"timed out after {self._limits.total_timeout_s:g}s", timeout=True,
                             response_started=self._started)

    def _fail(self, error: ExchangeError) -> None:
        self._error = self._error or error
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_exception(self._error)
        self._wake_drainer()
        self.abort()

    def _finish(self) -> None:
        self._complete = True
        self._wake_drainer()
        if self._waiter is not None and not self._waiter.done():
            body = self._body[0] if len(self._body) == 1 else b"".join(self._body)
            self._waiter.set_result((self._status, self._headers, body))

    def _wake_drainer(self) -> None:
        if self._drainer is not None and not self._drainer.done():
            self._drainer.set_result(None)

    def _reset_message(self) -> None:
        self._status = 0
        self._headers: list[tuple[bytes, bytes]] = []
        self._body: list[bytes] = []
        self._body_size = self._head_size = self._fed = 0
        self._headers_done = self._interim = self._framed = self._until_close = False
        self._keep_alive = False

    # ---- asyncio.Protocol ----
    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        if self._complete or self._waiter is None:  # bytes nobody asked for: the stream is out of step
            self._error = self._error or ExchangeError("unsolicited data from the upstream")
            self.abort()
            return
        self._started = True
        self._last_read = self._loop.time()
        if not self._headers_done:
            self._fed += len(data)
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(ExchangeError("the upstream switched protocols", response_started=True))
        except httptools.HttpParserError as exc:
            if not (self._complete and self._error is None):  # _StopParsing after a complete HEAD answer is fine
                self._fail(self._error or ExchangeError(f"invalid HTTP response from the upstream: {exc}",
                                                        response_started=True))
        else:
            if not self._headers_done and self._fed > self._limits.max_header_bytes:
                self._fail(self._header_limit())

    def eof_received(self) -> bool | None:
        self.closed = True
        return None  # let the transport close; connection_lost finishes the exchange

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._complete:
            if self._headers_done and self._until_close and self._error is None:
                self._finish()  # a body delimited by the end of the connection
            elif self._waiter is not None:
                what = "before answering" if not self._started else "before the response was complete"
                self._fail(ExchangeError(f"the upstream closed the connection {what}",
                                         response_started=self._started))
        self._wake_drainer()
        self._on_lost(self)

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False
        self._wake_drainer()

    # ---- httptools callbacks ----
    def on_message_begin(self) -> None:
        if self._complete:  # a second response to one request
            self._error = ExchangeError("unsolicited data from the upstream")
            raise _StopParsing

    def on_header(self, name: bytes, value: bytes) -> None:
        self._head_size += len(name) + len(value) + 4
        if self._head_size > self._limits.max_header_bytes:
            self._error = self._header_limit()
            raise _StopParsing
        name = name.lower()
        if name in self._limits.collect:
            self._headers.append((name, value))
        elif name in FRAMING:
            self._framed = True
        elif name == b"keep-alive":
            self.keep_alive_s = _keep_alive_timeout(value)

    def on_headers_complete(self) -> None:
        status = self._status = self._parser.get_status_code()
        if status < 200:  # 1xx: an interim response, the real one follows
            self._interim = True
            return
        self._headers_done = True
        self._until_close = not self._framed and status not in (204, 304) and not self._head_only
        if self._head_only:  # HEAD: no body whatever the headers say; httptools cannot be told, so stop here
            self._keep_alive = False
            self._finish()
            raise _StopParsing

    def on_body(self, body: bytes) -> None:
        self._body_size += len(body)
        if self._body_size > self._limits.max_body_bytes:
            self._error = ExchangeError(f"upstream response body exceeds {self._limits.max_body_bytes} bytes",
                                        response_started=True)
            raise _StopParsing
        self._body.append(body)

    def on_message_complete(self) -> None:
        if self._interim:
            self._reset_message()
            return
        self._keep_alive = self._parser.should_keep_alive()
        self._finish()

    def _header_limit(self) -> ExchangeError:
        return ExchangeError(f"upstream response headers exceed {self._limits.max_header_bytes} bytes",
                             response_started=True)


def _expire(fut: asyncio.Future[Any], error: Exception) -> None:
    if not fut.done():
        fut.set_exception(error)


def _keep_alive_timeout(value: bytes) -> float | None:
    for part in value.split(b","):
        key, _, number = part.strip().partition(b"=")
        if key.lower() == b"timeout" and number.strip().isdigit():
            return float(number.strip())
    return None
