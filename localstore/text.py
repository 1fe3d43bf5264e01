"""Full-text search: tokenisation (§5.1 FTS options) and BM25 scoring over a per-state term-frequency cache.

Word tokenizers: lowercase (unless case_sensitive), ASCII-fold (ascii_folding), split into words, drop tokens
longer than max_token_length, drop stopwords (remove_stopwords; the Snowball English list: Turbopuffer does not
document its list, and this one reproduces the live rankings we port; other languages have no list here), then stem
(stemming) with the Snowball stemmer of `language`. `pre_tokenized_array` takes the elements of a []string verbatim as the tokens.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from functools import lru_cache
from typing import Any

import numpy as np
import snowballstemmer  # type: ignore[import-untyped]

WORD_RE = re.compile(r"\w+|[^\w\s]", re.UNICODE)
PRE_TOKENIZED = "pre_tokenized_array"
LANGUAGES = ("arabic", "danish", "dutch", "english", "finnish", "french", "german", "greek", "hungarian", "italian",
             "norwegian", "portuguese", "romanian", "russian", "spanish", "swedish", "tamil", "turkish")
TOKENIZERS = ("word_v0", "word_v1", "word_v2", "word_v3", "word_v4", PRE_TOKENIZED)
# https://snowballstem.org/algorithms/english/stop.txt (words with apostrophes never survive the word split)
ENGLISH_STOPWORDS = frozenset("""
i me my myself we our ours ourselves you your yours yourself yourselves he him his himself she her hers herself it
its itself they them their theirs themselves what which who whom this that these those am is are was were be been
being have has had having do does did doing would should could ought cannot a an the and but if or because as until
while of at by for with about against between into through during before after above below to from up down in out
on off over under again further then once here there when where why how all any both each few more most other some
such no nor not only own same so than too very
""".split())  # noqa: SIM905 - a word list reads better as text


@lru_cache(maxsize=len(LANGUAGES))
def _stemmer(language: str) -> Any:
    return snowballstemmer.stemmer(language)


@lru_cache(maxsize=200_000)
def _stem(language: str, word: str) -> str:
    return str(_stemmer(language).stemWord(word))


def _fold(text: str) -> str:
    return "".join(c for c in unicodedata.normalize("NFKD", text) if not unicodedata.combining(c))


def tokenize(text: Any, fts: dict[str, Any] | None = None) -> list[str]:
    """The tokens of a string, or of every element of a string array, under the attribute's FTS options."""
    return positioned_tokens(text, fts)[0]


def positioned_tokens(text: Any, fts: dict[str, Any] | None) -> tuple[list[str], int]:
    """(tokens, positions): removed stopwords leave their positions behind, and BM25's document length counts
    positions, a position-based field norm (the live service ranks "walrus is slow and inferior" above "the fox is
    quick and brown" for equally matching terms, which token counts after stopword removal cannot explain)."""
    if fts is not None and fts.get("tokenizer") == PRE_TOKENIZED:
        items = text if isinstance(text, list) else [text]
        tokens = [t for t in items if isinstance(t, str)]
        return tokens, len(tokens)
    if isinstance(text, list):
        out: list[str] = []
        positions = 0
        for t in text:
            toks, n = positioned_tokens(t, fts)
            out.extend(toks)
            positions += n
        return out, positions
    if not isinstance(text, str):
        return [], 0
    if fts is None or not fts.get("case_sensitive"):
        text = text.lower()
    if fts is not None and fts.get("ascii_folding"):
        text = _fold(text)
    limit = int(fts.get("max_token_length", 39)) if fts else 39
    tokens = [t for t in WORD_RE.findall(text)
              if len(t) <= limit and (t[0].isalnum() or t[0] == "_" or _is_symbol(t))]
    positions = len(tokens)
    if fts is None:
        return tokens, positions
    language = fts.get("language") or "english"
    if fts.get("remove_stopwords") and language == "english":
        tokens = [t for t in tokens if t.lower() not in ENGLISH_STOPWORDS]
    if fts.get("stemming"):
        tokens = [_stem(language, t) for t in tokens]
    return tokens, positions


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
        toks, length = positioned_tokens(value, fts)
        if not toks:
            return
        c = Counter(toks)
        self.tf[doc_id] = (c, length)
        self.total_len += length
        self.df.update(c.keys())

    def remove(self, doc_id: Any) -> None:
        old = self.tf.pop(doc_id, None)
        if old is not None:
            self.total_len -= old[1]
            self.df.subtract(old[0].keys())

    def scores(self, query: Any, fts: dict[str, Any], allowed: set[Any] | None,
               computed: bool = False) -> dict[Any, float]:
        """BM25 per document id (documents without a query term are absent). `computed`: the score a
        `compute_attributes` BM25 expression reports, which live Turbopuffer computes per row against a fixed
        baseline, not the namespace's statistics: IDF ln 2 and an average length of 1 (minifugu's live-checked
        finding; rank_by BM25 on the same rows gives different numbers)."""
        terms = query if isinstance(query, list) else tokenize(query, fts)
        n = len(self.tf)
        if not n or not terms:
            return {}
        k1 = np.float32(fts.get("k1", 1.2))
        b = np.float32(fts.get("b", 0.75))
        one = np.float32(1.0)
        avg = one if computed else np.float32(self.total_len) / np.float32(n)
        out: dict[Any, float] = {}
        for term in dict.fromkeys(terms):
            df = self.df.get(term, 0)
            if df <= 0:
                continue
            qtf = terms.count(term)
            half, fn, fdf = np.float32(0.5), np.float32(n), np.float32(df)
            idf = np.float32(np.log(2.0)) if computed else np.float32(np.log(one + (fn - fdf + half) / (fdf + half)))
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
