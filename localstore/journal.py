"""Test hook (`/_localstore/journal`): per namespace, the document states each applied write left, with the
CLOCK_MONOTONIC time it was applied (comparable with `time.monotonic_ns()` in any process of the host), so a test
can tell exactly which versions the store held during any interval. Off until a namespace is started; bounded."""

from __future__ import annotations

import time
from typing import Any

import numpy as np

MAX_ENTRIES = 200_000  # per namespace; past it the oldest entries go (a test reading them would see the gap)


class Journal:
    def __init__(self) -> None:
        self.namespaces: dict[str, list[dict[str, Any]]] = {}

    def start(self, ns: str) -> None:
        self.namespaces[ns] = []

    def entries(self, ns: str) -> list[dict[str, Any]]:
        return self.namespaces.get(ns, [])

    def applied(self, ns: str, fx: dict[Any, dict[str, Any] | None]) -> None:
        """A write's effects (id -> new full row or None) were applied just now; vectors are left out."""
        entries = self.namespaces.get(ns)
        if entries is None or not fx:
            return
        docs = {str(doc_id): None if row is None else
                {k: v for k, v in row.items() if k != "id" and not isinstance(v, np.ndarray)}
                for doc_id, row in fx.items()}
        self._add(entries, {"at_ns": time.monotonic_ns(), "docs": docs})

    def dropped(self, ns: str) -> None:
        entries = self.namespaces.get(ns)
        if entries is not None:
            self._add(entries, {"at_ns": time.monotonic_ns(), "dropped": True})

    @staticmethod
    def _add(entries: list[dict[str, Any]], entry: dict[str, Any]) -> None:
        entries.append(entry)
        if len(entries) > MAX_ENTRIES:
            del entries[: len(entries) - MAX_ENTRIES]
