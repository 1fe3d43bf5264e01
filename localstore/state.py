"""In-memory namespace state: rows, lazily built vector matrices and term indexes, index lag."""

from __future__ import annotations

import time
from collections import deque
from typing import Any

import numpy as np

from .schema import Schema, is_vector
from .text import TermIndex

Effects = dict[Any, "dict[str, Any] | None"]  # id -> new full row, or None = deleted


class VectorMatrix:
    """Contiguous float32 matrix of one vector attribute over the rows that have it.

    Built once per view, then maintained in place by writes (overwrite, amortised append, swap-remove).
    """

    __slots__ = ("buf", "ids", "n", "nbuf", "pos")

    def __init__(self, rows: dict[Any, dict[str, Any]], attr: str) -> None:
        self.ids = [k for k, r in rows.items() if attr in r]
        self.pos = {k: i for i, k in enumerate(self.ids)}
        vecs = [rows[k][attr] for k in self.ids]
        self.buf: np.ndarray = np.stack(vecs).astype(np.float32) if vecs else np.zeros((0, 1), np.float32)
        self.nbuf: np.ndarray = np.linalg.norm(self.buf, axis=1).astype(np.float32)
        self.n = len(self.ids)

    @property
    def mat(self) -> np.ndarray:
        return self.buf[:self.n]

    @property
    def norms(self) -> np.ndarray:
        return self.nbuf[:self.n]

    def set(self, doc_id: Any, vec: np.ndarray) -> None:
        i = self.pos.get(doc_id)
        if i is None:
            if self.n and vec.shape[0] != self.buf.shape[1]:
                raise ValueError("dimension mismatch")
            if self.n == self.buf.shape[0] or vec.shape[0] != self.buf.shape[1]:
                cap = max(16, 2 * self.n)
                buf = np.zeros((cap, vec.shape[0]), np.float32)
                buf[:self.n] = self.buf[:self.n]
                nbuf = np.zeros(cap, np.float32)
                nbuf[:self.n] = self.nbuf[:self.n]
                self.buf, self.nbuf = buf, nbuf
            i = self.n
            self.n += 1
            self.ids.append(doc_id)
            self.pos[doc_id] = i
        self.buf[i] = vec
        self.nbuf[i] = np.float32(np.linalg.norm(vec))

    def remove(self, doc_id: Any) -> None:
        i = self.pos.pop(doc_id, None)
        if i is None:
            return
        last = self.n - 1
        if i != last:
            moved = self.ids[last]
            self.ids[i] = moved
            self.pos[moved] = i
            self.buf[i] = self.buf[last]
            self.nbuf[i] = self.nbuf[last]
        self.ids.pop()
        self.n -= 1


class Docs:
    """One consistent view of a namespace's rows (current, or indexed-only under eventual consistency)."""

    __slots__ = ("mats", "nbytes", "rows", "terms")

    def __init__(self, rows: dict[Any, dict[str, Any]] | None = None) -> None:
        self.rows: dict[Any, dict[str, Any]] = rows if rows is not None else {}
        self.mats: dict[str, VectorMatrix] = {}
        self.terms: dict[str, TermIndex] = {}
        self.nbytes = 0

    def clone(self) -> Docs:
        d = Docs(dict(self.rows))
        d.nbytes = self.nbytes
        return d

    def apply(self, fx: Effects) -> None:
        if not fx:
            return
        for attr, m in list(self.mats.items()):
            try:
                for doc_id, row in fx.items():
                    if row is not None and attr in row:
                        m.set(doc_id, row[attr])
                    else:
                        m.remove(doc_id)
            except ValueError:
                del self.mats[attr]
        for doc_id, row in fx.items():
            old = self.rows.pop(doc_id, None)
            if old is not None:
                self.nbytes -= row_bytes(old)
            for ti in self.terms.values():
                ti.remove(doc_id)
            if row is not None:
                self.rows[doc_id] = row
                self.nbytes += row_bytes(row)

    def matrix(self, attr: str) -> VectorMatrix:
        m = self.mats.get(attr)
        if m is None:
            m = self.mats[attr] = VectorMatrix(self.rows, attr)
        return m

    def term_index(self, attr: str, fts: dict[str, Any]) -> TermIndex:
        ti = self.terms.get(attr)
        if ti is None:
            ti = TermIndex()
            for doc_id, row in self.rows.items():
                if attr in row:
                    ti.add(doc_id, row[attr], fts)
            self.terms[attr] = ti
        return ti


def row_bytes(row: dict[str, Any]) -> int:
    n = 8
    for k, v in row.items():
        n += len(k)
        if isinstance(v, np.ndarray):
            n += v.nbytes
        elif isinstance(v, str):
            n += len(v)
        elif isinstance(v, list):
            n += 8 * len(v)
        else:
            n += 8
    return n


class Namespace:
    """A namespace: schema and metadata plus its current rows and (with index lag) the indexed rows."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.schema: Schema = {}
        self.id_type: str | None = None
        self.metric: str | None = None
        self.read_only = False
        now = time.time()
        self.created_at = now
        self.updated_at = now
        self.current = Docs()
        self.indexed = self.current
        self.pending: deque[tuple[float, Effects, int]] = deque()

    def meta(self) -> dict[str, Any]:
        return {"schema": self.schema, "id_type": self.id_type, "metric": self.metric, "read_only": self.read_only,
                "created_at": self.created_at, "updated_at": self.updated_at}

    def set_meta(self, m: dict[str, Any]) -> None:
        self.schema, self.id_type, self.metric = m["schema"], m["id_type"], m["metric"]
        self.read_only, self.created_at, self.updated_at = m["read_only"], m["created_at"], m["updated_at"]

    def apply(self, fx: Effects, lag_s: float) -> None:
        """Apply resolved effects; with lag > 0 the indexed view catches up `lag_s` later."""
        self.settle()
        if lag_s > 0 and fx:
            if self.indexed is self.current:
                self.indexed = self.current.clone()
            nbytes = sum(row_bytes(r) for r in fx.values() if r is not None) + 8 * len(fx)
            self.pending.append((time.monotonic() + lag_s, fx, nbytes))
        self.current.apply(fx)
        self._refresh_terms(self.current, fx)

    def _refresh_terms(self, docs: Docs, fx: Effects) -> None:
        for attr, ti in docs.terms.items():
            cfg = self.schema.get(attr)
            for doc_id, row in fx.items():
                if row is not None and attr in row and cfg and cfg["fts"] and doc_id not in ti.tf:
                    ti.add(doc_id, row[attr], cfg["fts"])

    def settle(self) -> None:
        now = time.monotonic()
        while self.pending and self.pending[0][0] <= now:
            _, fx, _ = self.pending.popleft()
            self.indexed.apply(fx)
            self._refresh_terms(self.indexed, fx)
        if not self.pending and self.indexed is not self.current:
            self.indexed = self.current

    def view(self, eventual: bool) -> tuple[Docs, int]:
        """Rows a query sees, and how many unindexed rows it scans exhaustively."""
        self.settle()
        unindexed = sum(len(fx) for _, fx, _ in self.pending)
        return (self.indexed, 0) if eventual else (self.current, unindexed)

    def index_status(self) -> dict[str, Any]:
        self.settle()
        if not self.pending:
            return {"status": "up-to-date"}
        return {"status": "updating", "unindexed_bytes": sum(p[2] for p in self.pending),
                "unindexed_rows": sum(len(p[1]) for p in self.pending)}

    def vector_attrs(self) -> list[str]:
        return [k for k, c in self.schema.items() if is_vector(c)]
