"""Full-text search: word tokenisation and BM25 scoring over a per-state term-frequency cache."""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from typing import Any

import numpy as np

WORD_RE = re.compile(r"\w+|[^\w\s]", re.UNICODE)


def tokenize(text: Any, fts: dict[str, Any] | None = None) -> list[str]:
    """Lowercased word tokens of a string or of every element of a string array."""
    if isinstance(text, list):
        out: list[str] = []
        for t in text:
            out.extend(tokenize(t, fts))
        return out
    if not isinstance(text, str):
        return []
    if fts is None or not fts.get("case_sensitive"):
        text = text.lower()
    limit = int(fts.get("max_token_length", 39)) if fts else 39
    return [t for t in WORD_RE.findall(text)
            if len(t) <= limit and (t[0].isalnum() or t[0] == "_" or _is_symbol(t))]


def _is_symbol(t: str) -> bool:
    """Emoji and other symbols count as tokens (matches live scores); punctuation does not."""
    return len(t) == 1 and unicodedata.category(t)[0] == "S"


class TermIndex:
    """Term frequencies and lengths of one attribute across the rows of one state (built lazily)."""

    __slots__ = ("df", "tf", "total_len")

    def __init__(self) -> None:
        self.tf: dict[Any, tuple[Counter[str], int]] = {}
        self.total_len = 0
        self.df: Counter[str] = Counter()

    def add(self, doc_id: Any, value: Any, fts: dict[str, Any]) -> None:
        toks = tokenize(value, fts)
        if not toks:
            return
        c = Counter(toks)
        self.tf[doc_id] = (c, len(toks))
        self.total_len += len(toks)
        self.df.update(c.keys())

    def remove(self, doc_id: Any) -> None:
        old = self.tf.pop(doc_id, None)
        if old is not None:
            self.total_len -= old[1]
            self.df.subtract(old[0].keys())

    def scores(self, query: Any, fts: dict[str, Any], allowed: set[Any] | None) -> dict[Any, float]:
        terms = query if isinstance(query, list) else tokenize(query, fts)
        n = len(self.tf)
        if not n or not terms:
            return {}
        k1 = np.float32(fts.get("k1", 1.2))
        b = np.float32(fts.get("b", 0.75))
        one = np.float32(1.0)
        avg = np.float32(self.total_len) / np.float32(n)
        out: dict[Any, float] = {}
        for term in dict.fromkeys(terms):
            df = self.df.get(term, 0)
            if df <= 0:
                continue
            qtf = terms.count(term)
            half, fn, fdf = np.float32(0.5), np.float32(n), np.float32(df)
            idf = np.float32(np.log(one + (fn - fdf + half) / (fdf + half)))
            weight = idf * (one + k1) * np.float32(qtf)
            hits = [(doc_id, c[term], dl) for doc_id, (c, dl) in self.tf.items()
                    if term in c and (allowed is None or doc_id in allowed)]
            if not hits:
                continue
            tf = np.array([h[1] for h in hits], dtype=np.float32)
            dl = np.array([h[2] for h in hits], dtype=np.float32)
            norm = k1 * (one - b + b * dl / avg)
            s = (weight * (tf / (tf + norm))).astype(np.float32)
            for (doc_id, _, _), v in zip(hits, s.tolist()):
                prev = out.get(doc_id)
                out[doc_id] = v if prev is None else float(np.float32(prev + v))
        return out
