"""Filter grammar (§6.3) compiled once per request into a predicate over stored rows."""

from __future__ import annotations

import fnmatch
import operator
import re
from collections.abc import Callable
from typing import Any

from .errors import bad, shape
from .schema import Schema
from .text import tokenize

Pred = Callable[[dict[str, Any], "dict[str, Any] | None"], bool]
CMP: dict[str, Callable[[Any, Any], bool]] = {
    "Lt": operator.lt, "Lte": operator.le, "Gt": operator.gt, "Gte": operator.ge}
OPS = {"Eq", "NotEq", "In", "NotIn", "Lt", "Lte", "Gt", "Gte", "Contains", "NotContains", "ContainsAny",
       "NotContainsAny", "AnyLt", "AnyLte", "AnyGt", "AnyGte", "Glob", "NotGlob", "IGlob", "NotIGlob", "Regex",
       "ContainsAllTokens", "ContainsAnyToken", "ContainsTokenSequence"}


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _operand(v: Any, refs: bool) -> Callable[[dict[str, Any] | None], Any]:
    if isinstance(v, dict):
        if refs and set(v) == {"$ref_new"} and isinstance(v["$ref_new"], str):
            name = v["$ref_new"]
            return lambda new: (new or {}).get(name)
        raise bad(f"invalid filter operand {v!r}")
    return lambda new: v


def _check_operand(attr: str, typ: str, v: Any) -> None:
    if v is None or isinstance(v, dict):
        return
    base = typ.removeprefix("[]")
    if base in ("int", "uint", "float"):
        ok = _is_num(v)
    elif base in ("string", "datetime", "uuid"):
        ok = isinstance(v, str)
    elif base == "bool":
        ok = isinstance(v, bool)
    else:
        ok = True
    if not ok:
        raise bad(f"filter on '{attr}': operand {v!r} does not match attribute type {typ}")


def _glob(pattern: Any, ci: bool) -> re.Pattern[str]:
    if not isinstance(pattern, str):
        raise bad("glob pattern must be a string")
    return re.compile(fnmatch.translate(pattern), re.IGNORECASE if ci else 0)


def compile_filter(f: Any, schema: Schema, refs: bool = False) -> Pred:
    """Validate and compile a filter; raises StoreError(400/422) on bad input."""
    if not isinstance(f, list) or not f:
        raise shape(f"invalid filter {f!r}: expected an array")
    head = f[0]
    if head in ("And", "Or") and len(f) == 2:
        if not isinstance(f[1], list):
            raise shape(f"{head} expects an array of filters")
        subs = [compile_filter(x, schema, refs) for x in f[1]]
        if head == "And":
            return lambda d, n: all(p(d, n) for p in subs)
        return lambda d, n: any(p(d, n) for p in subs)
    if head == "Not" and len(f) == 2:
        sub = compile_filter(f[1], schema, refs)
        return lambda d, n: not sub(d, n)
    if len(f) not in (3, 4) or not isinstance(head, str) or not isinstance(f[1], str):
        raise bad(f"invalid filter {f!r}")
    attr, op, arg = head, f[1], f[2]
    if op not in OPS:
        raise bad(f"unknown filter operator {op!r}")
    if attr == "id":
        typ = "uint"
        cfg: dict[str, Any] | None = None
    else:
        cfg = schema.get(attr)
        if cfg is None:
            raise bad(f"filter references unknown attribute '{attr}'")
        typ = cfg["type"]
        is_text_op = op.startswith("Contains") and "Token" in op
        if not cfg["filterable"] and not is_text_op and not (op == "Regex" and cfg["regex"]):
            raise bad(f"attribute '{attr}' is not filterable")
    is_arr = typ.startswith("[]")
    if len(f) == 4 and "Token" not in op:
        raise bad(f"invalid filter {f!r}: too many elements")

    def get(d: dict[str, Any]) -> Any:
        return d["id"] if attr == "id" else d.get(attr)
    if op in ("Eq", "NotEq"):
        if attr != "id":
            _check_operand(attr, typ, arg)
        val = _operand(arg, refs)

        def eq(d: dict[str, Any], n: dict[str, Any] | None) -> bool:
            x, v = get(d), val(n)
            if v is None:
                return x is None
            if isinstance(x, list) and not isinstance(v, list):
                return v in x
            return bool(x == v)
        return eq if op == "Eq" else (lambda d, n: not eq(d, n))
    if op in ("In", "NotIn", "ContainsAny", "NotContainsAny"):
        items = arg if isinstance(arg, list) else [arg]
        if any(x is None for x in items):
            raise shape(f"{op}: null is not allowed in the list")
        if attr != "id":
            for x in items:
                _check_operand(attr, typ, x)
        try:
            s: Any = frozenset(items)
        except TypeError:
            s = items

        def isin(d: dict[str, Any], n: dict[str, Any] | None) -> bool:
            x = get(d)
            if x is None:
                return False
            if isinstance(x, list):
                return any(e in s for e in x)
            return x in s
        return isin if op in ("In", "ContainsAny") else (lambda d, n: not isin(d, n))
    if op in CMP:
        if is_arr:
            raise bad(f"{op} is not supported on array attribute '{attr}'; use Any{op}")
        if attr != "id":
            _check_operand(attr, typ, arg)
        cmp, val = CMP[op], _operand(arg, refs)

        def rng(d: dict[str, Any], n: dict[str, Any] | None) -> bool:
            x, v = get(d), val(n)
            if v is None:  # null sorts below everything
                return op == "Gte" or (op == "Lte" and x is None) or (op == "Gt" and x is not None)
            if x is None:
                return op in ("Lt", "Lte")
            try:
                return bool(cmp(x, v))
            except TypeError:
                return False
        return rng
    if op.startswith("Any"):
        cmp, val = CMP[op[3:]], _operand(arg, refs)
        _check_operand(attr, typ, arg)

        def anycmp(d: dict[str, Any], n: dict[str, Any] | None) -> bool:
            x, v = get(d), val(n)
            if x is None or v is None:
                return False
            xs = x if isinstance(x, list) else [x]
            try:
                return any(cmp(e, v) for e in xs)
            except TypeError:
                return False
        return anycmp
    if op in ("Contains", "NotContains"):
        _check_operand(attr, typ, arg)
        val = _operand(arg, refs)

        def contains(d: dict[str, Any], n: dict[str, Any] | None) -> bool:
            x = get(d)
            if x is None:
                return False
            return val(n) in x if isinstance(x, list) else bool(x == val(n))
        return contains if op == "Contains" else (lambda d, n: not contains(d, n))
    if op in ("Glob", "NotGlob", "IGlob", "NotIGlob", "Regex"):
        if op == "Regex":
            if not isinstance(arg, str):
                raise bad("Regex pattern must be a string")
            try:
                rx = re.compile(arg)
            except re.error as e:
                raise bad(f"invalid regex: {e}") from None
            match = rx.search
        else:
            match = _glob(arg, "I" in op).match

        def glob(d: dict[str, Any], n: dict[str, Any] | None) -> bool:
            x = get(d)
            if x is None:
                return False
            xs = x if isinstance(x, list) else [x]
            return any(isinstance(e, str) and match(e) is not None for e in xs)
        return (lambda d, n: not glob(d, n)) if op.startswith("Not") else glob
    # token filters
    fts = cfg["fts"] if cfg else None
    if fts is None:
        raise bad(f"{op} requires full_text_search on '{attr}'")
    qt = arg if isinstance(arg, list) else tokenize(arg, fts)
    prefix = bool(len(f) == 4 and isinstance(f[3], dict) and f[3].get("last_as_prefix"))

    def tokens(d: dict[str, Any], n: dict[str, Any] | None) -> bool:
        toks = tokenize(get(d), fts)
        if not qt:
            return False
        ts = set(toks)
        has = [t in ts for t in qt]
        if prefix:
            has[-1] = any(t.startswith(qt[-1]) for t in ts)
        if op == "ContainsAllTokens":
            return all(has)
        if op == "ContainsAnyToken":
            return any(has)
        k = len(qt)
        return any(toks[i:i + k] == qt for i in range(len(toks) - k + 1))
    return tokens
