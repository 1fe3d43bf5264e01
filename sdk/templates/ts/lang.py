"""TypeScript: an ESM package of plain JavaScript (no build step; Node 18+, global fetch) with .d.ts types."""

from __future__ import annotations

import json
from typing import Any

OUTPUTS = {
    "models.gen.d.ts.j2": "clients/ts/src/models.gen.d.ts",
    "client.gen.js.j2": "clients/ts/src/client.gen.js",
    "client.gen.d.ts.j2": "clients/ts/src/client.gen.d.ts",
    "dispatch.gen.js.j2": "clients/ts/test/dispatch.gen.js",
}

SCALARS = {"any": "unknown", "string": "string", "integer": "number", "number": "number", "boolean": "boolean",
           "object": "{ [key: string]: unknown }"}


def ts_type(t: Any, prefix: str = "") -> str:
    if t.kind in SCALARS:
        out = SCALARS[t.kind]
    elif t.kind == "ref":
        out = prefix + t.ref
    elif t.kind == "array":
        inner = ts_type(t.items, prefix)
        out = f"({inner})[]" if " " in inner else f"{inner}[]"
    elif t.kind == "map":
        out = f"{{ [key: string]: {ts_type(t.items, prefix)} }}"
    elif t.kind == "enum":
        out = " | ".join(json.dumps(v) for v in t.values)
    elif t.kind == "union":
        out = " | ".join(ts_type(v, prefix) for v in t.variants)
    else:
        raise ValueError(t.kind)
    return f"{out} | null" if t.nullable else out


def ts_key(name: str) -> str:
    return name if name.isidentifier() else json.dumps(name)


def ts_field(f: Any) -> str:
    return f"{ts_key(f.name)}{'' if f.required else '?'}: {ts_type(f.type)};"


def ts_result(op: Any) -> str:
    if op.response_kind == "text":
        return "string"
    return ts_type(op.response, "M.") if op.response else "void"


def js(value: Any) -> str:
    return json.dumps(value)


def header_triples(fields: Any) -> list[list[str]]:
    return [[f.header, f.field, f.kind] for f in fields]


def filters(ir: Any) -> dict[str, Any]:
    return {"ts_type": ts_type, "ts_field": ts_field, "ts_key": ts_key, "ts_result": ts_result, "js": js,
            "header_triples": header_triples}
