"""Go: standard library only, `go 1.22` in go.mod, code that Go 1.19 compiles (no min/max/clear, slices, maps)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

OUTPUTS = {
    "models_gen.go.j2": "clients/go/models_gen.go",
    "client_gen.go.j2": "clients/go/client_gen.go",
    "dispatch_gen_test.go.j2": "clients/go/dispatch_gen_test.go",
}

INITIALISMS = {"id": "ID", "ids": "IDs", "url": "URL", "api": "API", "http": "HTTP", "json": "JSON", "ms": "MS",
               "sha": "SHA", "ttl": "TTL", "ann": "ANN", "v1": "V1", "v2": "V2"}
SCALARS = {"any": "interface{}", "string": "string", "integer": "int64", "number": "float64", "boolean": "bool",
           "object": "map[string]interface{}"}


def go_name(name: str) -> str:
    parts = [p for p in re.split(r"[^A-Za-z0-9]+|(?<=[a-z0-9])(?=[A-Z])", name) if p]
    return "".join(INITIALISMS.get(p.lower(), p[:1].upper() + p[1:]) for p in parts)


def go_arg(name: str) -> str:
    exported = go_name(name)
    lead = re.match(r"[A-Z]+(?![a-z])|[A-Z][a-z0-9]*", exported)
    assert lead is not None
    head = lead.group(0)
    return head.lower() + exported[len(head):]


def go_type(t: Any, models: dict[str, Any]) -> str:
    if t.kind in SCALARS:
        return SCALARS[t.kind]
    if t.kind == "ref":
        return t.ref
    if t.kind == "array":
        return "[]" + go_type(t.items, models)
    if t.kind == "map":
        return "map[string]" + go_type(t.items, models)
    if t.kind == "enum":
        return SCALARS.get(t.items.kind if t.items else "string", "string")
    if t.kind == "union":
        return "interface{}"
    raise ValueError(t.kind)


def _by_reference(go: str) -> bool:
    return go.startswith(("[]", "map[", "interface{}"))


def filters(ir: Any) -> dict[str, Any]:
    models = {m.name: m for m in ir.models}

    def model_of(t: Any) -> Any:
        return models.get(t.ref) if t.kind == "ref" else None

    def is_struct(t: Any) -> bool:
        m = model_of(t)
        return m is not None and m.kind == "object" and bool(m.fields)

    def nilable(t: Any) -> bool:
        """Slices, maps and interface{} (and models that are one of these) need no pointer to be absent."""
        m = model_of(t)
        if m is not None:
            return (m.kind == "object" and not m.fields) or (m.kind == "alias" and nilable(m.type))
        return _by_reference(gtype(t))

    def gtype(t: Any) -> str:
        return go_type(t, models)

    def go_field_type(f: Any) -> str:
        """Required, non-null fields are values; the rest are pointers (or nil-able), so 0 / false can be sent."""
        base = gtype(f.type)
        return base if nilable(f.type) or (f.required and not f.type.nullable) else "*" + base

    def go_model_type(m: Any) -> str:
        return "map[string]interface{}" if m.kind == "object" else gtype(m.type)

    def go_tag(f: Any) -> str:
        omit = "" if f.required else ",omitempty"
        return f'`json:"{f.name}{omit}"`'

    def go_param_type(p: Any) -> str:
        return gtype(p.type) if nilable(p.type) else "*" + gtype(p.type)

    def go_body_type(t: Any) -> str:
        return "*" + gtype(t) if is_struct(t) else gtype(t)

    def go_result(op: Any) -> str:
        return "string" if op.response_kind == "text" else gtype(op.response) if op.response else "struct{}"

    def go_enum_values(m: Any) -> list[tuple[str, str]]:
        return [(m.name + go_name(str(v)), json.dumps(v)) for v in m.type.values]

    return {"go_name": go_name, "go_arg": go_arg, "go_type": gtype, "go_field_type": go_field_type, "go_tag": go_tag,
            "go_param_type": go_param_type, "go_body_type": go_body_type, "go_result": go_result,
            "go_model_type": go_model_type, "go_enum_values": go_enum_values, "is_struct": is_struct,
            "go_str": json.dumps}


def format_files(paths: list[Path]) -> None:
    gofmt = shutil.which("gofmt")
    if gofmt is None:
        raise SystemExit("gofmt not found: install Go (Debian: apt-get install -y golang-go)")
    subprocess.run([gofmt, "-w", *map(str, paths)], check=True)
