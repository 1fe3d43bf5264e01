"""The backend seam: a transaction (`Tx`) and a database (`Db`) that runs transaction functions.

A transaction function is an `async def f(tx, *args)` that only awaits `tx` calls and does no other I/O. PostgreSQL
awaits it on the event loop; SQLite runs it to completion on its own thread, where every `tx` call finishes
synchronously (so the coroutine never suspends). The queue's state machines are written once, in store.py and
items.py, for both backends.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol, TypeVar

from gateway.http import GatewayError

T = TypeVar("T")
TxFn = Callable[..., Awaitable[T]]


class QueueUnavailable(GatewayError):
    """The queue database did not answer (or refused): 503 `queue_unavailable`, retryable."""

    def __init__(self, message: str) -> None:
        super().__init__("queue_unavailable", message, status=503, source="internal", retryable=True)


class Tx(Protocol):
    async def rows(self, sql: str, **params: Any) -> Sequence[Any]:
        """All rows of a statement; rows index by position and by column name."""
        ...

    async def row(self, sql: str, **params: Any) -> Any | None:
        """The first row, or None."""
        ...

    async def run(self, sql: str, **params: Any) -> int:
        """Execute; the number of rows the statement inserted, updated or deleted."""
        ...


class Db(Protocol):
    backend: str

    async def write(self, fn: TxFn[T], *args: Any) -> T:
        """Run `fn(tx, *args)` in one write transaction (SQLite: BEGIN IMMEDIATE; PostgreSQL: retried on deadlock or
        serialization failure, so `fn` must be safe to run again). Raises QueueUnavailable on backend failure."""
        ...

    async def read(self, fn: TxFn[T], *args: Any) -> T:
        """Run a read-only `fn(tx, *args)`: each statement on its own (no transaction around them)."""
        ...

    async def close(self) -> None:
        """Release connections and threads."""
        ...


def drive(coro: Any) -> Any:
    """Run a coroutine that never suspends (a transaction function over SQLite's synchronous Tx)."""
    try:
        coro.send(None)
    except StopIteration as done:
        return done.value
    coro.close()
    raise RuntimeError("a queue transaction awaited something other than its transaction")
