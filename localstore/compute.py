"""`compute_attributes` (§6.4): extra values per returned row, validated before the scan, evaluated on the page.

Supported: `[attr, "VectorDist", vector]` (and the `ANN` / `kNN` forms of the same) -> the row's distance under the
namespace metric (null when the row has no vector); BM25 and the other score expressions of rank_by (`Sum`, `Max`,
`Product`, `Attribute`, a filter) -> the row's float32 score, 0 when it does not match. `Embed`, `Highlight` and
`$ref_new` answer a 400 naming what the local store lacks.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from .errors import StoreError, bad, invalid_type
from .ranking import distances, score_expression
from .schema import is_vector
from .state import Docs, Namespace
from .values import f32, to_vector, vec_dims

MAX_COMPUTED = 256
VECTOR_OPS = ("VectorDist", "ANN", "kNN")
Evaluator = Callable[[list[dict[str, Any]]], list[Any]]  # the page's stored rows -> one value per row


def compile_computed(ns: Namespace, docs: Docs, spec: Any) -> Callable[[list[dict[str, Any]]], list[dict[str, Any]]]:
    """Validate every expression now; the result maps the page's stored rows to their computed values."""
    if not isinstance(spec, dict):
        raise invalid_type(spec, "a map", "compute_attributes")
    if len(spec) > MAX_COMPUTED:
        raise bad(f"compute_attributes: at most {MAX_COMPUTED} attributes, got {len(spec)}")
    evaluators = [(name, _compile(ns, docs, name, expr)) for name, expr in spec.items()]

    def run(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        columns = [(name, ev(rows)) for name, ev in evaluators]
        return [{name: values[i] for name, values in columns} for i in range(len(rows))]
    return run


def _compile(ns: Namespace, docs: Docs, name: Any, expr: Any) -> Evaluator:
    where = f"compute_attributes.{name}"
    if not isinstance(name, str) or not name or name.startswith("$") or name == "id" or name in ns.schema:
        raise bad(f"compute_attributes: '{name}' conflicts with an attribute name")
    if isinstance(expr, dict) and "$ref_new" in expr:
        raise bad(f"{where}: $ref_new is only valid in write conditions")
    if not isinstance(expr, list) or not expr:
        raise invalid_type(expr, "an expression", where)
    if expr[0] == "Embed":
        raise bad(f"{where}: Embed needs a native embedding model, which the local store does not have")
    if expr[0] == "Highlight":
        raise bad(f"{where}: Highlight is not supported by the local store")
    if len(expr) == 3 and expr[1] in VECTOR_OPS and isinstance(expr[0], str):
        return _vector_distance(ns, where, expr[0], expr[2])
    if len(expr) == 2 and expr[1] in ("asc", "desc"):
        raise bad(f"{where}: an attribute order is not a value expression")
    try:
        score_expression(ns, docs, expr, set(), computed=True)  # validates; scores nothing
    except StoreError as e:
        raise StoreError(e.status, f"{where}: {e.message}") from None

    def scores(rows: list[dict[str, Any]]) -> list[Any]:
        got = score_expression(ns, docs, expr, {r["id"] for r in rows}, computed=True)
        return [f32(got.get(r["id"], 0.0)) for r in rows]
    return scores


def _vector_distance(ns: Namespace, where: str, attr: str, raw: Any) -> Evaluator:
    cfg = ns.schema.get(attr)
    if cfg is None or not is_vector(cfg):
        raise bad(f"{where}: attribute '{attr}' is not a dense vector attribute")
    q = to_vector(raw, vec_dims(cfg["type"]), f"{where}: query vector")

    def dist(rows: list[dict[str, Any]]) -> list[Any]:
        have = [i for i, r in enumerate(rows) if attr in r]
        out: list[Any] = [None] * len(rows)
        if have:
            mat = np.stack([rows[i][attr] for i in have]).astype(np.float32)
            values = distances(ns.metric, mat, np.linalg.norm(mat, axis=1).astype(np.float32), q)
            for i, v in zip(have, values.tolist()):
                out[i] = f32(v)
        return out
    return dist
