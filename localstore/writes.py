"""Write requests (§4): validate everything and resolve it into effects first, then apply atomically."""

from __future__ import annotations

import copy
from typing import Any

from .errors import StoreError, bad, invalid_type, not_found, shape, unexpected
from .filters import compile_filter
from .schema import Schema, apply_update, is_vector
from .state import Effects, Namespace
from .values import check_id, coerce, id_type_of, infer_type

WRITE_KEYS = {"upsert_rows", "upsert_columns", "patch_rows", "patch_columns", "deletes", "delete_by_filter",
              "delete_by_filter_allow_partial", "patch_by_filter", "patch_by_filter_allow_partial",
              "upsert_condition", "patch_condition", "delete_condition", "distance_metric", "schema",
              "create_namespace", "copy_from_namespace", "branch_from_namespace", "encryption", "sharding",
              "disable_backpressure", "return_affected_ids"}
METRICS = ("cosine_distance", "euclidean_squared")
READ_ONLY = "💔 Writes not permitted. This namespace is read-only."
CMEK = "customer-managed"


class Plan:
    """A fully validated write: the new metadata and the effects to apply."""

    def __init__(self, ns: Namespace) -> None:
        self.schema: Schema = copy.deepcopy(ns.schema)
        self.id_type = ns.id_type
        self.metric = ns.metric
        self.fx: Effects = {}
        self.upserted: list[Any] = []
        self.patched: list[Any] = []
        self.deleted: list[Any] = []
        self.base = ns.current.rows
        self.remaining = False

    def get(self, doc_id: Any) -> dict[str, Any] | None:
        return self.fx[doc_id] if doc_id in self.fx else self.base.get(doc_id)

    def rows(self) -> list[dict[str, Any]]:
        seen = [r for k, r in self.base.items() if k not in self.fx]
        return seen + [r for r in self.fx.values() if r is not None]


def _rows_from_columns(cols: Any, what: str) -> list[dict[str, Any]]:
    if not isinstance(cols, dict):
        raise invalid_type(cols, "a map of columns", what)
    if "id" not in cols or not isinstance(cols["id"], list):
        raise bad(f"{what}: columns require an id array")
    n = len(cols["id"])
    for k, v in cols.items():
        if not isinstance(v, list) or len(v) != n:
            raise bad(f"{what}: column '{k}' must be an array of length {n}")
    return [{k: cols[k][i] for k in cols} for i in range(n)]


def _row_list(body: dict[str, Any], rows_key: str, cols_key: str) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    if rows_key in body:
        rows = body[rows_key]
        if not isinstance(rows, list):
            raise invalid_type(rows, "a sequence", rows_key)
        for r in rows:
            if not isinstance(r, dict):
                raise shape(f"{rows_key}: each row must be an object")
        out.extend(rows)
    if cols_key in body:
        out.extend(_rows_from_columns(body[cols_key], cols_key))
    return out


def _norm_id(p: Plan, raw: dict[str, Any], what: str) -> Any:
    if "id" not in raw:
        raise bad(f"{what}: every row requires an id")
    v = raw["id"]
    if p.id_type is None and not isinstance(v, bool) and isinstance(v, (int, str)):
        p.id_type = id_type_of(v)
    return check_id(v, p.id_type)


def _attrs(p: Plan, raw: dict[str, Any], patch: bool) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in raw.items():
        if k == "id":
            continue
        if not isinstance(k, str) or not k or k.startswith("$") or len(k.encode()) > 128:
            raise bad(f"invalid attribute name {k!r}")
        if v is None:
            out[k] = None
            continue
        cfg = p.schema.get(k)
        if cfg is None or cfg["type"] == "[]unknown":
            typ = infer_type(k, v)
            if cfg is None or typ != "[]unknown":
                apply_update(p.schema, k, typ, p.id_type)
            cfg = p.schema[k]
        if patch and is_vector(cfg):
            raise bad(f"dense vector attribute '{k}' cannot be patched")
        out[k] = coerce(k, cfg["type"], v)
    return out


def _cond(body: dict[str, Any], key: str, p: Plan) -> Any:
    if key not in body or body[key] is None:
        return None
    return compile_filter(body[key], p.schema, refs=True)


def plan_write(ns: Namespace, body: dict[str, Any], exists: bool) -> Plan:
    unknown = set(body) - WRITE_KEYS
    if unknown:
        raise bad(f"unknown field(s) in write request: {sorted(unknown)}")
    if body.get("encryption") is not None:
        check_encryption(body["encryption"], "encryption")
    if ns.read_only and exists:
        raise bad(READ_ONLY)
    p = Plan(ns)
    if body.get("schema") is not None:
        if not isinstance(body["schema"], dict):
            raise invalid_type(body["schema"], "a map", "schema")
        for name, param in body["schema"].items():
            new_id = apply_update(p.schema, name, param, p.id_type)
            if new_id:
                p.id_type = new_id
    metric = body.get("distance_metric")
    if metric is not None:
        if metric not in METRICS:
            raise shape(f"unknown variant `{metric}`, expected `cosine_distance` or `euclidean_squared`")
        if p.metric is not None and p.metric != metric:
            raise bad(f"distance_metric mismatch: namespace uses {p.metric}, request has {metric}")
        p.metric = metric
    if "delete_by_filter" in body and "delete_condition" in body:
        raise bad("delete_condition cannot be combined with delete_by_filter")
    if "patch_by_filter" in body and "patch_condition" in body:
        raise bad("patch_condition cannot be combined with patch_by_filter")
    if body.get("delete_by_filter") is not None:
        pred = compile_filter(body["delete_by_filter"], p.schema)
        for r in p.rows():
            if pred(r, None):
                p.fx[r["id"]] = None
                p.deleted.append(r["id"])
    pbf = body.get("patch_by_filter")
    if pbf is not None:
        if not isinstance(pbf, dict) or "filters" not in pbf or not isinstance(pbf.get("patch"), dict):
            raise shape("patch_by_filter: expected {\"filters\": Filter, \"patch\": {attr: value}}")
        pred = compile_filter(pbf["filters"], p.schema)
        attrs = _attrs(p, pbf["patch"], patch=True)
        for r in p.rows():
            if pred(r, None):
                p.fx[r["id"]] = _patched(r, attrs)
                p.patched.append(r["id"])
    seen: set[Any] = set()

    def once(doc_id: Any) -> None:
        if doc_id in seen:
            raise bad(f"duplicate document id {doc_id!r} in write request")
        seen.add(doc_id)

    ups = _row_list(body, "upsert_rows", "upsert_columns")
    cond = _cond(body, "upsert_condition", p)
    for raw in ups:
        doc_id = _norm_id(p, raw, "upsert")
        once(doc_id)
        attrs = _attrs(p, raw, patch=False)
        row = {"id": doc_id, **{k: v for k, v in attrs.items() if v is not None}}
        if cond is not None and not cond(p.get(doc_id) or {"id": doc_id}, row):
            continue
        p.fx[doc_id] = row
        p.upserted.append(doc_id)
    for name, cfg in p.schema.items():
        if is_vector(cfg) and ups and p.metric is None and any(name in r for r in ups):
            raise bad("distance_metric is required when writing vectors to a namespace")
    patches = _row_list(body, "patch_rows", "patch_columns")
    cond = _cond(body, "patch_condition", p)
    for raw in patches:
        doc_id = _norm_id(p, raw, "patch")
        once(doc_id)
        attrs = _attrs(p, raw, patch=True)
        cur = p.get(doc_id)
        if cur is None:
            continue
        new = {"id": doc_id, **attrs}
        if cond is not None and not cond(cur, new):
            continue
        p.fx[doc_id] = _patched(cur, attrs)
        p.patched.append(doc_id)
    dels = body.get("deletes")
    if dels is not None:
        if not isinstance(dels, list):
            raise invalid_type(dels, "a sequence", "deletes")
        cond = _cond(body, "delete_condition", p)
        for raw_id in dels:
            doc_id = check_id(raw_id, p.id_type or (id_type_of(raw_id) if isinstance(raw_id, (int, str)) else None))
            once(doc_id)
            cur = p.get(doc_id)
            if cond is not None and (cur is None or not cond(cur, None)):
                continue
            p.fx[doc_id] = None
            p.deleted.append(doc_id)
    return p


def _patched(cur: dict[str, Any], attrs: dict[str, Any]) -> dict[str, Any]:
    new = dict(cur)
    for k, v in attrs.items():
        if v is None:
            new.pop(k, None)
        else:
            new[k] = v
    return new


def write_response(p: Plan, body: dict[str, Any], nbytes: int, ms: int) -> dict[str, Any]:
    out: dict[str, Any] = {"status": "OK", "message": "Success", "rows_affected": 0}
    aff = 0
    for key, ids in (("upserted", p.upserted), ("patched", p.patched), ("deleted", p.deleted)):
        if ids:
            out[f"rows_{key}"] = len(ids)
            aff += len(ids)
            if body.get("return_affected_ids"):
                out[f"{key}_ids"] = ids
    out["rows_affected"] = aff
    if p.remaining:
        out["rows_remaining"] = True
    out["billing"] = {"billable_logical_bytes_written": nbytes}
    out["performance"] = {"server_total_ms": ms}
    return out


def source_name(v: Any) -> str:
    """The source namespace of `copy_from_namespace` / `branch_from_namespace` (a name or a config object)."""
    if isinstance(v, str):
        return v
    if isinstance(v, dict) and isinstance(v.get("source_namespace"), str):
        if v.get("dest_encryption") is not None:
            check_encryption(v["dest_encryption"], "dest_encryption")
        return str(v["source_namespace"])
    raise shape("copy source: expected a namespace name or {\"source_namespace\": str}")


def check_encryption(value: Any, where: str) -> None:
    """The store has default encryption only. A customer-managed key is answered as Turbopuffer answers a key it
    cannot use (400 "Malformed Cloud KMS crypto key: <name>"), never accepted and then ignored."""
    if not isinstance(value, dict):
        raise invalid_type(value, "struct Encryption", where)
    if "cmek" in value:  # the pre-2.0 shape {"cmek": {"key_name": ...}}
        value = {"mode": CMEK, **(value["cmek"] if isinstance(value["cmek"], dict) else {})}
    mode = value.get("mode")
    if mode == "default":
        return
    if mode != CMEK:
        if mode is None:
            raise shape(f"{where}: missing field `mode`")
        raise shape(f"{where}: unknown variant `{mode}`, expected `default` or `{CMEK}`")
    key = value.get("key_name")
    if not isinstance(key, str):
        raise shape(f"{where}: missing field `key_name`" if key is None else
                    f"{where}.key_name: invalid type: {unexpected(key)}, expected a string")
    raise bad(f"Malformed Cloud KMS crypto key: {key}")


def check_exists(name: str, body: dict[str, Any], exists: bool) -> None:
    if not exists and body.get("create_namespace") is False:
        raise not_found(name)


__all__ = ["READ_ONLY", "Plan", "StoreError", "check_exists", "plan_write", "source_name", "write_response"]
