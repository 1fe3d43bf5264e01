"""Python: pydantic v2 models (the published hevlayer 0.7.3 shapes) and httpx clients, sync and async."""

from __future__ import annotations

import keyword
from typing import Any

OUTPUTS = {
    "models.py.j2": "clients/python/hevlayer/models.py",
    "client.py.j2": "clients/python/hevlayer/client.py",
}

SCALARS = {"any": "Any", "string": "str", "integer": "int", "number": "float", "boolean": "bool",
           "object": "dict[str, Any]"}


def py_type(t: Any) -> str:
    if t.kind in SCALARS:
        out = SCALARS[t.kind]
    elif t.kind == "ref":
        out = t.ref
    elif t.kind == "array":
        out = f"list[{py_type(t.items)}]"
    elif t.kind == "map":
        out = f"dict[str, {py_type(t.items)}]"
    elif t.kind == "enum":
        out = "Literal[" + ", ".join(repr(v) for v in t.values) + "]"
    elif t.kind == "union":
        out = " | ".join(py_type(v) for v in t.variants)
    else:
        raise ValueError(t.kind)
    return f"{out} | None" if t.nullable and out != "Any" else out


def py_name(name: str) -> str:
    """A usable Python identifier for a wire name (`from` -> `from_`)."""
    ident = "".join(c if c.isalnum() or c == "_" else "_" for c in name)
    return ident + "_" if keyword.iskeyword(ident) else ident


def py_field(f: Any) -> str:
    name, annotation = py_name(f.name), py_type(f.type)
    alias = name != f.name
    if f.required and not alias:
        return f"{name}: {annotation}"
    if not f.required and "None" not in annotation and annotation != "Any":
        annotation += " | None"
    default = repr(f.default) if f.has_default else "None"
    if alias:
        required = "..." if f.required else default
        return f"{name}: {annotation} = Field({required}, alias={f.name!r})"
    return f"{name}: {annotation} = {default}"


def py_param(p: Any) -> str:
    annotation = py_type(p.type)
    return f"{py_name(p.client_name)}: {annotation} | None = None"


def py_result(op: Any) -> str:
    return "str" if op.response_kind == "text" else py_type(op.response) if op.response else "None"


def uses_aliases(ir: Any) -> bool:
    return any(py_name(f.name) != f.name for m in ir.models for f in m.fields)


def filters(ir: Any) -> dict[str, Any]:
    return {"py_type": py_type, "py_name": py_name, "py_field": py_field, "py_param": py_param,
            "py_result": py_result, "uses_aliases": uses_aliases}
