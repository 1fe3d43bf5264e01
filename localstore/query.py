"""Queries (§6, §7): filters, vector / order-by / BM25 ranking, projection, aggregations, multi-query."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any

import numpy as np

from .compute import compile_computed
from .errors import bad, invalid_type, shape
from .filters import compile_filter
from .ranking import rank_rows
from .schema import is_vector
from .state import Docs, Namespace
from .values import MULTI_RE, f32_list, vec_b64

QUERY_KEYS = {"rank_by", "top_k", "limit", "offset", "filters", "include_attributes", "exclude_attributes",
              "compute_attributes", "aggregate_by", "group_by", "consistency", "distance_metric", "vector_encoding"}
MAX_TOP_K = 10_000


def parse_consistency(c: Any) -> bool:
    """True when the query asks for eventual consistency."""
    if c is None:
        return False
    if not isinstance(c, dict):
        raise invalid_type(c, "struct Consistency")
    level = c.get("level", "strong")
    if level not in ("strong", "eventual"):
        raise shape(f"unknown variant `{level}`, expected `strong` or `eventual`")
    return bool(level == "eventual")


def _int(v: Any, what: str) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < 0:
        raise invalid_type(v, "a non-negative integer", what)
    return v


def _limit(q: dict[str, Any]) -> tuple[int | None, dict[str, Any] | None]:
    lim = q.get("limit", q.get("top_k"))
    per = None
    if isinstance(lim, dict):
        per = lim.get("per")
        lim = lim.get("total")
        if per is not None and (not isinstance(per, dict) or not isinstance(per.get("attributes"), list)):
            raise shape("limit.per: expected {\"attributes\": [str], \"limit\": int}")
    if lim is None:
        return None, per
    n = _int(lim, "limit")
    if n == 0 or n > MAX_TOP_K:
        raise bad(f"limit must be between 1 and {MAX_TOP_K}, got {n}")
    return n, per


def _projector(q: dict[str, Any], ns: Namespace, encoding: str) -> Any:
    inc, exc = q.get("include_attributes"), q.get("exclude_attributes")
    if inc is not None and not isinstance(inc, (bool, list)):
        raise shape("include_attributes: expected a bool or an array of strings")
    if exc is not None:
        if not isinstance(exc, list):
            raise shape("exclude_attributes: expected an array of strings")
        if "id" in exc:
            raise bad("the id attribute cannot be excluded")
    if encoding not in ("float", "base64"):
        raise shape(f"unknown variant `{encoding}`, expected `float` or `base64`")
    names: list[str] | None
    if inc is True or (exc is not None and not inc):
        names = None
    elif isinstance(inc, list):
        names = [a for a in inc if a != "id"]
    else:
        names = []
    skip = set(exc or ())
    vec = set(ns.vector_attrs())

    def project(row: dict[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {"id": row["id"]}
        keys = row.keys() if names is None else names
        for k in keys:
            if k == "id" or k in skip or k not in row:
                continue
            v = row[k]
            if k in vec or isinstance(v, np.ndarray):
                out[k] = vec_b64(v) if encoding == "base64" else f32_list(v)
            else:
                out[k] = v
        return out
    return project


def run_query(ns: Namespace, q: Any, docs: Docs, encoding: str) -> dict[str, Any]:
    if not isinstance(q, dict):
        raise shape("query: expected an object")
    unknown = set(q) - QUERY_KEYS
    if unknown:
        raise bad(f"unknown or unsupported query field(s): {sorted(unknown)}")
    metric = q.get("distance_metric")
    if metric is not None and ns.metric is not None and metric != ns.metric:
        raise bad(f"distance_metric mismatch: namespace uses {ns.metric}")
    rank_by, agg = q.get("rank_by"), q.get("aggregate_by")
    if rank_by is not None and agg is not None:
        raise shape("rank_by cannot be combined with aggregate_by")
    if rank_by is None and agg is None and q.get("filters") is None:
        raise bad("query must have rank_by, filters or aggregate_by")
    limit, per = _limit(q)
    offset = _int(q.get("offset", 0), "offset")
    if offset + (limit or 0) > MAX_TOP_K:
        raise bad(f"offset + limit must be at most {MAX_TOP_K}")
    project = _projector(q, ns, encoding)
    computed = q.get("compute_attributes")
    if computed is not None and agg is not None:
        raise bad("compute_attributes cannot be combined with aggregate_by")
    compute = compile_computed(ns, docs, computed) if computed is not None else None
    flt = q.get("filters")
    rows = list(docs.rows.values())
    filtered = flt is not None
    if flt is not None:
        pred = compile_filter(flt, ns.schema)
        rows = [r for r in rows if pred(r, None)]
    if agg is not None:
        return _aggregate(ns, rows, agg, q.get("group_by"), limit)
    if rank_by is None:
        ranked: list[tuple[dict[str, Any], float | None]] = [(r, None) for r in sorted(rows, key=_idkey)]
    else:
        ranked = rank_rows(ns, docs, rows, rank_by, filtered, (limit or 10) + offset if per is None else None)
    if per is not None:
        ranked = _per_limit(ranked, per)
    ranked = ranked[offset:offset + (limit if limit is not None else 10)]
    out_rows = []
    for r, dist in ranked:
        o = project(r)
        if dist is not None:
            o["$dist"] = dist
        out_rows.append(o)
    if compute is not None:
        for o, values in zip(out_rows, compute([r for r, _ in ranked])):
            o.update(values)
    return {"rows": out_rows}


def _idkey(r: dict[str, Any]) -> Any:
    return r["id"]


def _per_limit(ranked: list[Any], per: dict[str, Any]) -> list[Any]:
    attrs, n = per["attributes"], per.get("limit", 1)
    counts: dict[Any, int] = {}
    out = []
    for r, d in ranked:
        key = tuple(_hashable(r.get(a)) for a in attrs)
        if counts.get(key, 0) < n:
            counts[key] = counts.get(key, 0) + 1
            out.append((r, d))
    return out


def _hashable(v: Any) -> Any:
    return tuple(_hashable(x) for x in v) if isinstance(v, list) else v


def _aggregate(ns: Namespace, rows: list[dict[str, Any]], agg: Any, group_by: Any, limit: int | None) -> dict[str, Any]:
    if not isinstance(agg, dict):
        raise shape("aggregate_by: expected a map of label to aggregate")
    specs: list[tuple[str, str, str | None]] = []
    for label, a in agg.items():
        if not isinstance(a, list) or not a or a[0] not in ("Count", "Sum"):
            raise shape(f"aggregate_by.{label}: expected [\"Count\"] or [\"Sum\", attr]")
        if a[0] == "Sum":
            if len(a) != 2 or a[1] not in ns.schema:
                raise bad(f"aggregate_by.{label}: Sum needs a known numeric attribute")
            specs.append((label, "Sum", a[1]))
        else:
            specs.append((label, "Count", a[1] if len(a) > 1 else None))

    def compute(rs: list[dict[str, Any]]) -> dict[str, Any]:
        res: dict[str, Any] = {}
        for label, kind, attr in specs:
            if kind == "Count":
                res[label] = len(rs) if attr is None else sum(1 for r in rs if r.get(attr) is not None)
            else:
                name = str(attr)
                typ = ns.schema[name]["type"]
                vals = [r[name] for r in rs if isinstance(r.get(name), (int, float))]
                res[label] = float(sum(vals)) if typ == "float" else int(sum(vals))
        return res
    if not group_by:
        return {"aggregations": compute(rows)}
    keys = _group_keys(ns, group_by, agg)
    groups: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for r in rows:
        for key in _group_values(r, keys):
            groups.setdefault(key, []).append(r)

    def order(k: tuple[Any, ...]) -> tuple[Any, ...]:
        return tuple((v is not None, v) for v in k)  # null groups first
    out = []
    for k in sorted(groups, key=order):
        g = {name: _plain(v) for (name, _, _), v in zip(keys, k)}
        g.update(compute(groups[k]))
        out.append(g)
    if limit is not None:
        out = out[:limit]
    return {"aggregation_groups": out}


GroupKey = tuple[str, str, bool]  # (name in the output, source attribute, ForEachUnique)


def _group_keys(ns: Namespace, group_by: Any, agg: dict[str, Any]) -> list[GroupKey]:
    """`group_by` entries: an attribute name, or `{alias: ["ForEachUnique", array_attribute]}` (one group per
    distinct element; a row whose array is empty is in no group, a row without the attribute in the null group)."""
    if not isinstance(group_by, list):
        raise invalid_type(group_by, "a sequence", "group_by")
    keys: list[GroupKey] = []
    for i, entry in enumerate(group_by):
        fn = next(iter(entry.values())) if isinstance(entry, dict) and len(entry) == 1 else None
        if isinstance(entry, str):
            key = (entry, entry, False)
        elif isinstance(fn, list) and len(fn) == 2 and fn[0] == "ForEachUnique" and isinstance(fn[1], str):
            key = (str(next(iter(entry))), fn[1], True)
        else:
            raise shape(f"group_by[{i}]: expected an attribute name or {{alias: [\"ForEachUnique\", attribute]}}")
        name, source, explode = key
        cfg = ns.schema.get(source)
        if name == "id" or source == "id":
            raise bad("group_by: cannot group by id")
        if cfg is None:
            raise bad(f"group_by references unknown attribute '{source}'")
        if is_vector(cfg) or cfg["type"] == "{}f16" or MULTI_RE.match(cfg["type"]):
            raise bad(f"group_by: cannot group by vector attribute '{source}'")
        if explode and not cfg["type"].startswith("[]"):
            raise bad(f"group_by: ForEachUnique needs an array attribute, '{source}' is {cfg['type']}")
        if any(k[0] == name for k in keys):
            raise bad(f"group_by: '{name}' is used more than once")
        if name in agg:
            raise bad(f"group_by: '{name}' is also an aggregate_by label")
        keys.append(key)
    if sum(k[2] for k in keys) > 1:
        raise bad("group_by: ForEachUnique can be used at most once")
    return keys


def _group_values(row: dict[str, Any], keys: list[GroupKey]) -> Iterator[tuple[Any, ...]]:
    per_key = []
    for _, source, explode in keys:
        v = row.get(source)
        if not explode:
            per_key.append([_hashable(v)])
        elif isinstance(v, list):
            per_key.append(list(dict.fromkeys(_hashable(x) for x in v)))
        else:
            per_key.append([None])
    return itertools.product(*per_key)


def _plain(v: Any) -> Any:
    return [_plain(x) for x in v] if isinstance(v, tuple) else v


def rrf(results: list[list[dict[str, Any]]], opts: dict[str, Any], limit: int, offset: int) -> list[dict[str, Any]]:
    k = opts.get("rank_constant", 60)
    weights = opts.get("weights") or [1.0] * len(results)
    if not isinstance(k, (int, float)) or k <= 0:
        raise bad("RRF rank_constant must be > 0")
    if len(weights) != len(results):
        raise bad("RRF weights must have one entry per subquery")
    score: dict[Any, float] = {}
    first: dict[Any, dict[str, Any]] = {}
    for w, rows in zip(weights, results):
        for rank, row in enumerate(rows, 1):
            key = (type(row["id"]).__name__, row["id"])
            score[key] = score.get(key, 0.0) + w / (k + rank)
            first.setdefault(key, row)
    order = sorted(score, key=lambda key: (-score[key], key[1]))
    out = []
    for key in order[offset:offset + limit]:
        row = {kk: vv for kk, vv in first[key].items() if kk != "$dist"}
        row["$dist"] = float(str(np.float32(score[key])))
        out.append(row)
    return out
