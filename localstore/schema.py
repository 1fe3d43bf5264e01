"""Attribute schema: declared/inferred configs, updates (§5.1/5.3) and the two views (§5.2, §5.4)."""

from __future__ import annotations

from typing import Any

from .errors import bad
from .text import LANGUAGES, PRE_TOKENIZED, TOKENIZERS
from .values import MULTI_RE, valid_type, vec_dims

FTS_DEFAULTS: dict[str, Any] = {
    "ascii_folding": False, "b": 0.75, "case_sensitive": False, "k1": 1.2, "k3": 8.0, "language": "english",
    "max_token_length": 39, "remove_stopwords": False, "stemming": False, "tokenizer": "word_v4",
}
OPTION_KEYS = {"type", "ann", "filterable", "full_text_search", "regex", "glob", "fuzzy", "sparse_knn", "embed"}

Schema = dict[str, dict[str, Any]]  # attr -> {"type", "filterable", "fts", "ann", "regex", "glob"}


def _check_fts(name: str, typ: str, fts: dict[str, Any]) -> None:
    if fts.get("language") not in LANGUAGES:
        raise bad(f"schema for '{name}': unsupported full_text_search language {fts.get('language')!r}")
    if fts.get("tokenizer") not in TOKENIZERS:
        raise bad(f"schema for '{name}': unknown full_text_search tokenizer {fts.get('tokenizer')!r}")
    if fts["tokenizer"] == PRE_TOKENIZED and typ != "[]string":
        raise bad(f"schema for '{name}': tokenizer {PRE_TOKENIZED} requires type []string")
    length = fts.get("max_token_length")
    if isinstance(length, bool) or not isinstance(length, int) or not 1 <= length <= 254:
        raise bad(f"schema for '{name}': full_text_search max_token_length must be 1..254, got {length!r}")
    for flag in ("stemming", "remove_stopwords", "case_sensitive", "ascii_folding"):
        if not isinstance(fts.get(flag), bool):
            raise bad(f"schema for '{name}': full_text_search {flag} must be a boolean")


def is_vector(cfg: dict[str, Any]) -> bool:
    return vec_dims(cfg["type"]) is not None


def new_attr(typ: str) -> dict[str, Any]:
    vec = vec_dims(typ) is not None or bool(MULTI_RE.match(typ)) or typ in ("bytes", "{}f16")
    return {"type": typ, "filterable": not vec, "fts": None, "ann": vec_dims(typ) is not None, "regex": False,
            "glob": False}


def apply_update(schema: Schema, name: str, param: Any, id_type: str | None) -> str | None:
    """Apply one AttributeSchemaParam to `schema` in place; returns a new id type when `name` is `id`."""
    if not isinstance(name, str) or not name or len(name.encode()) > 128 or name.startswith("$"):
        raise bad(f"invalid attribute name {name!r}")
    if isinstance(param, str):
        param = {"type": param, "_bare": True}
    if not isinstance(param, dict):
        raise bad(f"schema for '{name}': expected a type string or an object")
    if name == "id":
        typ = param.get("type")
        if typ not in ("uint", "string", "uuid"):
            raise bad(f"schema for 'id': type must be uint, string or uuid, got {typ!r}")
        if id_type is not None and typ != id_type:
            raise bad(f"schema for 'id': cannot change id type from {id_type} to {typ}")
        return str(typ)
    if param.get("drop") is True:
        if len(param) != 1:
            raise bad(f"schema for '{name}': drop takes no other options")
        schema.pop(name, None)
        return None
    unknown = set(param) - OPTION_KEYS - {"_bare"}
    if unknown:
        raise bad(f"schema for '{name}': unknown option(s) {sorted(unknown)}")
    cur = schema.get(name)
    typ = param.get("type", cur["type"] if cur else None)
    if not valid_type(typ):
        raise bad(f"schema for '{name}': invalid type {typ!r}")
    typ = str(typ)
    if cur is not None and cur["type"] != typ and cur["type"] != "[]unknown":
        raise bad(f"schema for '{name}': cannot change type from {cur['type']} to {typ}")
    cfg = dict(cur) if cur and not param.get("_bare") else new_attr(typ)
    if cur and param.get("_bare"):
        cfg["filterable"] = cur["filterable"]
    cfg["type"] = typ
    if "full_text_search" in param:
        fts = param["full_text_search"]
        if fts is True or isinstance(fts, dict):
            if not (typ == "string" or typ == "[]string"):
                raise bad(f"schema for '{name}': full_text_search requires string or []string")
            base = dict(cfg["fts"] or FTS_DEFAULTS)
            base.update(fts if isinstance(fts, dict) else {})
            _check_fts(name, typ, base)
            cfg["fts"] = base
            if "filterable" not in param and not cur:
                cfg["filterable"] = False
        elif fts in (False, None):
            cfg["fts"] = None
        else:
            raise bad(f"schema for '{name}': invalid full_text_search")
    for opt in ("regex", "glob"):
        if opt in param:
            cfg[opt] = bool(param[opt])
            if param[opt] and "filterable" not in param and not cur:
                cfg["filterable"] = False
    if "ann" in param:
        ann = param["ann"]
        if ann and vec_dims(typ) is None and not MULTI_RE.match(typ):
            raise bad(f"schema for '{name}': ann requires a vector type")
        cfg["ann"] = ann if isinstance(ann, dict) else bool(ann)
    if "filterable" in param:
        if not isinstance(param["filterable"], bool):
            raise bad(f"schema for '{name}': filterable must be a bool")
        cfg["filterable"] = param["filterable"]
    schema[name] = cfg
    return None


def full_view(schema: Schema, id_type: str | None) -> dict[str, Any]:
    """The GET/POST /v1/.../schema view (§5.2)."""
    out: dict[str, Any] = {"id": {"type": id_type or "uint", "filterable": None, "full_text_search": None}}
    for name in sorted(schema):
        cfg = schema[name]
        v: dict[str, Any] = {"type": cfg["type"], "filterable": cfg["filterable"], "full_text_search": cfg["fts"]}
        if cfg["regex"]:
            v["regex"] = True
        if cfg["glob"]:
            v["glob"] = True
        if cfg["ann"]:
            v["ann"] = True
        out[name] = v
    return out


def meta_view(schema: Schema, id_type: str | None, metric: str | None) -> dict[str, Any]:
    """The sparser schema view inside metadata (§5.4)."""
    out: dict[str, Any] = {"id": {"type": id_type or "uint"}}
    for name in sorted(schema):
        cfg = schema[name]
        v: dict[str, Any] = {"type": cfg["type"], "filterable": cfg["filterable"]}
        if cfg["fts"]:
            v["full_text_search"] = cfg["fts"]
        if cfg["regex"]:
            v["regex"] = True
        if cfg["ann"]:
            v["ann"] = {"distance_metric": metric} if metric else True
        out[name] = v
    return out
