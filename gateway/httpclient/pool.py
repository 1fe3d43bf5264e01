"""The connections to one upstream origin (scheme, host, port): bounded, reused newest-first, expired when idle.

At most `size` connections are open or being opened. A caller that finds none free waits in FIFO order: a released
connection, or the slot of a discarded one, goes to the longest waiter, never to a newcomer. Idle connections are
closed `idle_timeout` after their last use (sooner when the upstream announced a shorter `Keep-Alive: timeout`), so
the gateway, not the upstream, ends an idle connection. Every name is resolved at connect time (no DNS cache).
"""

from __future__ import annotations

import asyncio
import ssl
from collections import deque
from typing import Any

from gateway.httpclient.connection import ExchangeError, H1Connection, Limits

KEEP_ALIVE_MARGIN_S = 1.0  # close this long before the upstream's announced keep-alive timeout


class PoolStats:
    """Plain counters (exported to Prometheus at each metrics flush, shown on /health)."""

    __slots__ = ("discarded", "opened", "requests", "retried", "reused", "waited")

    def __init__(self) -> None:
        self.opened = self.requests = self.reused = self.retried = self.waited = 0
        self.discarded: dict[str, int] = {}


class OriginPool:
    def __init__(self, host: str, port: int, tls: ssl.SSLContext | None, limits: Limits, size: int,
                 connect_timeout_s: float, idle_timeout_s: float) -> None:
        self.host, self.port = host, port
        name = f"[{host}]" if ":" in host else host  # an IPv6 literal
        self.label = f"{name}:{port}"
        self.host_header = name if port == (443 if tls else 80) else self.label
        self.loop = asyncio.get_running_loop()
        self.stats = PoolStats()
        self._tls = tls
        self._limits = limits
        self._size = size
        self._connect_timeout_s = connect_timeout_s
        self._idle_timeout_s = idle_timeout_s
        self._idle: deque[H1Connection] = deque()  # oldest first; reuse takes the newest
        self._open = 0  # slots taken: connections open, being opened, or promised to a waiter
        self._waiters: deque[asyncio.Future[H1Connection | None]] = deque()
        self._sweeper: asyncio.TimerHandle | None = None
        self._closed = False

    # ---- taking and giving back ----
    async def acquire(self, deadline: float) -> H1Connection:
        """A connection to write one request to: an idle one, a new one, or one handed over after waiting."""
        idle = self._idle
        if idle:
            now = self.loop.time()
            while idle:
                conn = idle.pop()
                conn.pooled = False
                if conn.usable and conn.idle_until > now:
                    self.stats.reused += 1
                    return conn
                self._discard(conn, "expired" if conn.usable else "closed")
        if self._open < self._size and not self._waiters:
            self._open += 1
            return await self._connect_on_slot(deadline)
        handed = await self._wait(deadline)
        if handed is None:  # a slot, not a connection: open one on it
            return await self._connect_on_slot(deadline)
        self.stats.reused += 1
        return handed

    def release(self, conn: H1Connection) -> None:
        """After an exchange: keep the connection for the next caller, or close it when it cannot be reused."""
        self.stats.requests += 1
        conn.served += 1
        self._keep(conn)

    def discard(self, conn: H1Connection, reason: str) -> None:
        """After a failed or abandoned exchange."""
        self.stats.requests += 1
        self._discard(conn, reason)

    async def replace(self, conn: H1Connection, deadline: float, reason: str) -> H1Connection:
        """Discard `conn` and open a fresh connection on its slot (the retry of an idempotent request)."""
        self.stats.requests += 1
        self.stats.retried += 1
        self._count_discard(reason)
        conn.abort()
        return await self._connect_on_slot(deadline)

    # ---- slots and waiters ----
    async def _wait(self, deadline: float) -> H1Connection | None:
        self.stats.waited += 1
        waiter: asyncio.Future[H1Connection | None] = self.loop.create_future()
        self._waiters.append(waiter)
        timer = self.loop.call_at(deadline, _expire_waiter, waiter, self._limits.total_timeout_s)
        try:
            return await waiter
        except BaseException:
            if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                self._give_back(waiter.result())  # handed over just as this caller gave up
            elif waiter in self._waiters:
                self._waiters.remove(waiter)
            raise
        finally:
            timer.cancel()

    def _hand_over(self, item: H1Connection | None) -> bool:
        """Give a connection (or, for None, a free slot) to the longest waiter; False if nobody waits."""
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(item)
                return True
        return False

    def _keep(self, conn: H1Connection) -> None:
        if not conn.reusable or self._closed:
            self._discard(conn, "not_reusable")
            return
        keep = self._idle_timeout_s
        if conn.keep_alive_s is not None:
            keep = min(keep, conn.keep_alive_s - KEEP_ALIVE_MARGIN_S)
        if keep <= 0:
            self._discard(conn, "not_reusable")
            return
        conn.idle_until = self.loop.time() + keep
        if self._hand_over(conn):
            return
        conn.pooled = True
        self._idle.append(conn)
        if self._sweeper is None or conn.idle_until < self._sweeper.when():
            self._schedule_sweep()

    def _give_back(self, item: H1Connection | None) -> None:
        if item is None:
            self._free_slot()
        else:
            self._keep(item)

    def _free_slot(self) -> None:
        if not self._hand_over(None):
            self._open -= 1

    def _discard(self, conn: H1Connection, reason: str) -> None:
        self._count_discard(reason)
        if conn.reusable:
            conn.close()
        else:
            conn.abort()
        self._free_slot()

    def _count_discard(self, reason: str) -> None:
        self.stats.discarded[reason] = self.stats.discarded.get(reason, 0) + 1

    # ---- connecting ----
    async def _connect_on_slot(self, deadline: float) -> H1Connection:
        try:
            conn = await self._connect(deadline)
        except BaseException:
            self._free_slot()
            raise
        self.stats.opened += 1
        return conn

    async def _connect(self, deadline: float) -> H1Connection:
        budget = max(0.0, min(self._connect_timeout_s, deadline - self.loop.time()))
        try:
            async with asyncio.timeout(budget):
                _, conn = await self.loop.create_connection(
                    lambda: H1Connection(self._limits, self._lost), self.host, self.port, ssl=self._tls,
                    server_hostname=self.host if self._tls else None)
        except TimeoutError:
            if budget == self._connect_timeout_s:
                raise ExchangeError(f"connect to {self.label} timed out after {budget:g}s", timeout=True) from None
            raise ExchangeError(f"timed out after {self._limits.total_timeout_s:g}s (connecting to {self.label})",
                                timeout=True) from None
        except OSError as exc:  # refused, unreachable, DNS (gaierror), TLS (SSLError)
            raise ExchangeError(f"connect to {self.label} failed: {exc}") from None
        return conn

    def _lost(self, conn: H1Connection) -> None:
        """The socket closed. Only an idle connection is the pool's to clean up; an active one fails its exchange
        and is discarded by its caller."""
        if conn.pooled:
            conn.pooled = False
            self._idle.remove(conn)
            self._count_discard("closed")
            self._free_slot()

    # ---- idle expiry ----
    def _schedule_sweep(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
        self._sweeper = self.loop.call_at(min(c.idle_until for c in self._idle), self._sweep) if self._idle else None

    def _sweep(self) -> None:
        self._sweeper = None
        now = self.loop.time()
        for conn in [c for c in self._idle if c.idle_until <= now]:
            conn.pooled = False
            self._idle.remove(conn)
            self._discard(conn, "expired")
        self._schedule_sweep()

    # ---- state ----
    def snapshot(self) -> dict[str, Any]:
        s = self.stats
        return {"upstream": self.label, "open": self._open, "idle": len(self._idle),
                "active": self._open - len(self._idle), "waiting": len(self._waiters), "limit": self._size,
                "opened": s.opened, "requests": s.requests, "reused": s.reused, "retried": s.retried,
                "waited": s.waited, "discarded": dict(s.discarded)}

    def close(self) -> None:
        """Close every idle connection; active ones are closed when they come back."""
        self._closed = True
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        while self._idle:
            conn = self._idle.pop()
            conn.pooled = False
            self._discard(conn, "shutdown")


def _expire_waiter(waiter: asyncio.Future[Any], total_s: float) -> None:
    if not waiter.done():
        waiter.set_exception(ExchangeError(f"timed out after {total_s:g}s waiting for a free upstream connection",
                                           timeout=True))
