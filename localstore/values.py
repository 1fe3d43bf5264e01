"""Value types: document ids, float32 vectors, attribute schema types, inference and checks."""

from __future__ import annotations

import base64
import binascii
import re
import time
from typing import Any

import numpy as np

from .errors import bad

UUID_RE = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
VEC_RE = re.compile(r"^\[(\d+)\](f32|f16|i8)$")
MULTI_RE = re.compile(r"^\[\]\[(\d+)\](f32|f16)$")
SCALARS = {"string", "int", "uint", "float", "bool", "datetime", "uuid", "bytes"}
TYPES_OK = SCALARS | {"[]" + s for s in SCALARS} | {"[]unknown", "{}f16"}
U64_MAX = (1 << 64) - 1


def check_id(value: Any, id_type: str | None) -> Any:
    """Validate one document id against the namespace id type (None = not fixed yet)."""
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise bad(f"invalid document id {value!r}: expected an unsigned integer or a string")
    if isinstance(value, int):
        if value < 0 or value > U64_MAX:
            raise bad(f"invalid document id {value}: must be an unsigned 64-bit integer")
        if id_type not in (None, "uint"):
            raise bad(f"invalid document id {value}: namespace ids are of type {id_type}")
        return value
    if len(value.encode()) > 64:
        raise bad("invalid document id: string ids must be at most 64 bytes")
    if id_type == "uint":
        raise bad(f"invalid document id {value!r}: namespace ids are of type uint")
    if id_type == "uuid":
        if not UUID_RE.match(value):
            raise bad(f"invalid document id {value!r}: not a UUID")
        return value.lower()
    return value


def id_type_of(value: Any) -> str:
    return "uint" if isinstance(value, int) else "string"


def vec_dims(typ: str) -> int | None:
    m = VEC_RE.match(typ)
    return int(m.group(1)) if m else None


def to_vector(value: Any, dims: int | None, what: str) -> np.ndarray:
    """A JSON array or base64 little-endian f32 string → float32 array (dims checked when known)."""
    if isinstance(value, str):
        try:
            raw = base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            raise bad(f"{what}: invalid base64 vector") from None
        if len(raw) % 4:
            raise bad(f"{what}: base64 vector length is not a multiple of 4 bytes")
        arr = np.frombuffer(raw, dtype="<f4").astype(np.float32)
    elif isinstance(value, list) and (raw_arr := _numeric(value)) is not None:
        arr = raw_arr.astype(np.float32)
    else:
        raise bad(f"{what}: expected a vector (array of numbers or base64 string)")
    if arr.size == 0:
        raise bad(f"{what}: vector must not be empty")
    if dims is not None and arr.size != dims:
        raise bad(f"{what}: vector has {arr.size} dimensions, expected {dims}")
    return arr


def _numeric(value: list[Any]) -> np.ndarray | None:
    """The list as a 1-D numeric array, or None if any element is not an int/float (bools rejected)."""
    try:
        arr = np.asarray(value)
    except (ValueError, TypeError):
        return None
    if arr.ndim != 1 or arr.dtype.kind not in "fiu":
        return None
    return arr


def f32_list(arr: np.ndarray) -> list[float]:
    """float32 values as Python floats whose repr is the shortest float32 round-trip form."""
    return list(map(float, arr.astype(np.float32).astype(str)))


def f32(x: float) -> float:
    return float(str(np.float32(x)))


def rfc3339(ts: float) -> str:
    """A Unix time as RFC 3339 UTC with microseconds."""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts)) + f".{int(ts % 1 * 1e6):06d}Z"


def vec_b64(arr: np.ndarray) -> str:
    return base64.b64encode(arr.astype("<f4").tobytes()).decode()


def infer_type(name: str, value: Any) -> str:
    """Schema type for an undeclared attribute from its first non-null value."""
    if name == "vector" and isinstance(value, (str, list)):
        if isinstance(value, str):
            return f"[{to_vector(value, None, name).size}]f32"
        if value and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in value):
            return f"[{len(value)}]f32"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int"
    if isinstance(value, float):
        return "float"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        if not value:
            return "[]unknown"
        if all(isinstance(x, str) for x in value):
            return "[]string"
        if all(isinstance(x, bool) for x in value):
            return "[]bool"
        if all(isinstance(x, int) and not isinstance(x, bool) for x in value):
            return "[]int"
        if all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in value):
            return "[]float"
        if all(isinstance(x, list) for x in value) and len({len(x) for x in value}) == 1:
            return f"[][{len(value[0])}]f32"
    raise bad(f"attribute '{name}': unsupported value {value!r}")


def _scalar_ok(base: str, v: Any) -> bool:
    if base in ("string", "datetime", "bytes"):
        return isinstance(v, str)
    if base == "uuid":
        return isinstance(v, str) and bool(UUID_RE.match(v))
    if base == "bool":
        return isinstance(v, bool)
    if base == "int":
        return isinstance(v, int) and not isinstance(v, bool)
    if base == "uint":
        return isinstance(v, int) and not isinstance(v, bool) and v >= 0
    if base == "float":
        return isinstance(v, (int, float)) and not isinstance(v, bool)
    return True


def coerce(name: str, typ: str, value: Any) -> Any:
    """Check (and normalise) a non-null attribute value against its schema type."""
    dims = vec_dims(typ)
    if dims is not None:
        arr = to_vector(value, dims, f"attribute '{name}'")
        return arr.astype(np.float16).astype(np.float32) if typ.endswith("f16") else arr
    m = MULTI_RE.match(typ)
    if m:
        if not isinstance(value, list):
            raise bad(f"attribute '{name}': expected an array of vectors")
        return [f32_list(to_vector(v, int(m.group(1)), f"attribute '{name}'")) for v in value]
    if typ == "{}f16":
        if not isinstance(value, dict):
            raise bad(f"attribute '{name}': expected a sparse vector object")
        return value
    if typ.startswith("[]"):
        base = typ[2:]
        if not isinstance(value, list) or not all(_scalar_ok(base, x) for x in value):
            raise bad(f"attribute '{name}': expected type {typ}, got {value!r}")
        return [float(x) for x in value] if base == "float" else value
    if not _scalar_ok(typ, value):
        raise bad(f"attribute '{name}': expected type {typ}, got {value!r}")
    return float(value) if typ == "float" else value


def valid_type(typ: Any) -> bool:
    return isinstance(typ, str) and (typ in TYPES_OK or bool(VEC_RE.match(typ)) or bool(MULTI_RE.match(typ)))
