"""rank_by evaluation: exact ANN/kNN over the vector matrix, attribute order-by, BM25 score expressions."""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from .errors import StoreError, bad, shape
from .filters import compile_filter
from .state import Docs, Namespace
from .text import PRE_TOKENIZED
from .values import f32, to_vector

Ranked = list[tuple[dict[str, Any], Any]]


def rank_rows(ns: Namespace, docs: Docs, rows: list[dict[str, Any]], rank_by: Any, filtered: bool,
              k: int | None) -> Ranked:
    if not isinstance(rank_by, list) or not rank_by:
        raise shape("rank_by: expected an array")
    if len(rank_by) == 3 and rank_by[1] in ("ANN", "kNN") and isinstance(rank_by[0], str):
        if rank_by[1] == "kNN" and not filtered:
            raise bad("kNN requires filters")
        return _vector(ns, docs, rows, rank_by[0], rank_by[2], filtered, k)
    if _is_order(rank_by):
        return _order(ns, rows, [rank_by])
    if all(isinstance(x, list) and _is_order(x) for x in rank_by):
        if len(rank_by) > 8:
            raise bad("rank_by: at most 8 order-by keys")
        return _order(ns, rows, rank_by)
    allowed = {r["id"] for r in rows} if filtered else None
    scores = score_expression(ns, docs, rank_by, allowed)
    by_id = docs.rows
    items = [(i, s) for i, s in scores.items() if s > 0 and i in by_id and (allowed is None or i in allowed)]
    items.sort(key=lambda t: (-t[1], t[0]))
    return [(by_id[i], f32(s)) for i, s in items]


def _is_order(x: list[Any]) -> bool:
    return len(x) == 2 and isinstance(x[0], str) and x[1] in ("asc", "desc")


def _order(ns: Namespace, rows: list[dict[str, Any]], keys: list[list[Any]]) -> Ranked:
    for attr, _ in keys:
        if attr != "id" and attr not in ns.schema:
            raise bad(f"rank_by references unknown attribute '{attr}'")
    out = sorted(rows, key=lambda r: r["id"])
    for attr, direction in reversed(keys):
        present = [r for r in out if r.get(attr) is not None]
        missing = [r for r in out if r.get(attr) is None]
        try:
            present.sort(key=lambda r: r[attr], reverse=direction == "desc")
        except TypeError:
            raise bad(f"attribute '{attr}' cannot be ordered") from None
        out = missing + present if direction == "asc" else present + missing
    return [(r, None) for r in out]


def _vector(ns: Namespace, docs: Docs, rows: list[dict[str, Any]], attr: str, qv: Any, filtered: bool,
            k: int | None) -> Ranked:
    cfg = ns.schema.get(attr)
    if cfg is None or not cfg["ann"] and not cfg["type"].startswith("["):
        raise bad(f"attribute '{attr}' is not a vector attribute")
    m = docs.matrix(attr)
    q = to_vector(qv, m.mat.shape[1] if len(m.ids) else None, "query vector")
    if not len(m.ids):
        return []
    dist = distances(ns.metric, m.mat, m.norms, q)
    if filtered:
        idx = np.fromiter((m.pos[r["id"]] for r in rows if r["id"] in m.pos), dtype=np.int64)
    else:
        idx = np.arange(len(m.ids))
    if k is not None and k < len(idx):
        sub = dist[idx]
        part = np.argpartition(sub, k - 1)[:k]
        thresh = sub[part].max()
        idx = idx[sub <= thresh]
    sel = dist[idx]
    ids = m.ids
    order = sorted(range(len(idx)), key=lambda j: (float(sel[j]), ids[idx[j]]))
    if k is not None:
        order = order[:k]
    by_id = docs.rows
    return [(by_id[ids[idx[j]]], float(str(sel[j]))) for j in order]


def distances(metric: str | None, mat: np.ndarray, norms: np.ndarray, q: np.ndarray) -> np.ndarray:
    """float32 distance of each matrix row to `q` under the namespace's metric (cosine when unset)."""
    if metric == "euclidean_squared":
        diff = mat - q
        return np.einsum("ij,ij->i", diff, diff).astype(np.float32)
    dots = mat @ q
    qn = np.float32(np.linalg.norm(q))
    with np.errstate(divide="ignore", invalid="ignore"):
        dist = np.float32(1) - dots / (norms * qn)
    return np.nan_to_num(dist, nan=1.0).astype(np.float32)


def score_expression(ns: Namespace, docs: Docs, expr: Any, allowed: set[Any] | None,
                     computed: bool = False) -> dict[Any, float]:
    """Scores of a BM25 / score expression per row id (rows that score 0 are absent); `computed`: BM25 scored as
    `compute_attributes` scores it (TermIndex.scores)."""
    if not isinstance(expr, list) or not expr:
        raise shape(f"invalid rank_by expression {expr!r}")
    head = expr[0]
    if head in ("Sum", "Max") and len(expr) == 2 and isinstance(expr[1], list):
        parts = [score_expression(ns, docs, e, allowed, computed) if isinstance(e, list) else e for e in expr[1]]
        out: dict[Any, float] = {}
        floor = 0.0
        for p in parts:
            if isinstance(p, (int, float)):
                floor = max(floor, float(p))
                continue
            for i, s in p.items():
                out[i] = float(np.float32(out.get(i, 0.0) + s)) if head == "Sum" else max(out.get(i, 0.0), s)
        if floor and head == "Max":
            out = {i: max(s, floor) for i, s in out.items()}
        return out
    if head == "Product" and len(expr) == 3:
        a, b = expr[1], expr[2]
        w, sub = (a, b) if isinstance(a, (int, float)) else (b, a)
        if not isinstance(w, (int, float)) or isinstance(w, bool) or not isinstance(sub, list):
            raise shape("Product expects a number and a ranking expression")
        fw = float(np.float32(w))
        return {i: float(np.float32(s * fw)) for i, s in score_expression(ns, docs, sub, allowed, computed).items()}
    if head == "Product" and len(expr) == 2 and isinstance(expr[1], list) and len(expr[1]) == 2:
        return score_expression(ns, docs, ["Product", *expr[1]], allowed, computed)
    if len(expr) in (3, 4) and expr[1] == "BM25" and isinstance(expr[0], str):
        cfg = ns.schema.get(expr[0])
        if cfg is None:
            raise bad(f"rank_by references unknown attribute '{expr[0]}'")
        if not cfg["fts"]:
            raise bad(f"attribute '{expr[0]}' does not have full_text_search enabled")
        _check_text_input(expr[0], expr[2], cfg["fts"].get("tokenizer") == PRE_TOKENIZED)
        return docs.term_index(expr[0], cfg["fts"]).scores(expr[2], cfg["fts"], allowed, computed)
    if len(expr) == 2 and expr[0] == "Attribute" and isinstance(expr[1], str):
        return {r["id"]: float(r[expr[1]]) for r in docs.rows.values()
                if isinstance(r.get(expr[1]), (int, float)) and r[expr[1]] > 0}
    try:
        pred = compile_filter(expr, ns.schema)
    except StoreError:
        raise bad(f"unsupported rank_by expression {expr!r}") from None
    return {r["id"]: 1.0 for r in docs.rows.values() if pred(r, None)}


def _check_text_input(attr: str, query: Any, tokens: bool) -> None:
    """A BM25 query is a string, or an array of strings for a pre_tokenized_array field (Turbopuffer's wording)."""
    ok = isinstance(query, list) and all(isinstance(t, str) for t in query) if tokens else isinstance(query, str)
    if not ok:
        raise bad(f"invalid input '{_shown(query)}' for rank_by field \"{attr}\", "
                  f"expecting {'[]string' if tokens else 'string'}")


def _shown(v: Any) -> str:
    if isinstance(v, str):
        return v
    if isinstance(v, list):
        return "[" + ", ".join(_shown(x) for x in v) + "]"
    return json.dumps(v)
