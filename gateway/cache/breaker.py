"""A circuit breaker: one failure opens it for a fixed time, then exactly one half-open probe decides."""

from __future__ import annotations

import time
from collections.abc import Callable


class CircuitBreaker:
    """Not thread-safe on purpose: it lives on one worker's event loop, which is the only caller."""

    __slots__ = ("_clock", "_open_until", "_probing", "open_s")

    def __init__(self, open_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.open_s = open_s
        self._clock = clock
        self._open_until = 0.0  # 0 = closed
        self._probing = False

    @property
    def state(self) -> str:
        if self._open_until == 0.0:
            return "closed"
        return "half_open" if self._probing or self._clock() >= self._open_until else "open"

    def allow(self) -> bool:
        """True if a call may go out now; while open only the first caller after the pause gets through."""
        if self._open_until == 0.0:
            return True
        if self._probing or self._clock() < self._open_until:
            return False
        self._probing = True
        return True

    def success(self) -> None:
        self._open_until = 0.0
        self._probing = False

    def failure(self) -> None:
        self._open_until = self._clock() + self.open_s
        self._probing = False

    def release(self) -> None:
        """The probe ended without a verdict (caller cancelled): let the next caller probe."""
        self._probing = False
