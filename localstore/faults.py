"""Fault injection rules (`/_localstore/faults`): injected statuses and delays per route and namespace.

A rule delays the matching request by `delay_ms`, then either answers `status` without applying it (fail before
apply), or with `"apply": true` applies it and answers `status` anyway (an outcome the caller cannot know). A rule
without a status delays and applies. `after_ms` holds the answer of an applied request back (applied, answered late).
"""

from __future__ import annotations

from typing import Any

from .errors import shape

# "copy" is not a request: it delays (delay_ms) or fails (status) the copy an async copy operation runs.
ROUTES = {"query", "write", "metadata", "namespaces", "delete", "schema", "hint_cache_warm", "explain_query",
          "recall", "async", "operation", "copy", "*"}


class Faults:
    def __init__(self) -> None:
        self.rules: list[dict[str, Any]] = []

    def add(self, body: Any) -> dict[str, Any]:
        if not isinstance(body, dict) or body.get("route") not in ROUTES:
            raise shape(f"fault: route must be one of {sorted(ROUTES)}")
        rule: dict[str, Any] = {"route": body["route"], "status": None, "count": None, "delay_ms": 0,
                                "namespace": None, "apply": False, "after_ms": 0}
        for key, typ in (("status", int), ("count", int), ("delay_ms", int), ("namespace", str), ("apply", bool),
                         ("after_ms", int)):
            v = body.get(key)
            if v is not None:
                if not isinstance(v, typ) or (typ is not bool and isinstance(v, bool)):
                    raise shape(f"fault: {key} has the wrong type")
                rule[key] = v
        unknown = set(body) - set(rule)
        if unknown:
            raise shape(f"fault: unknown field(s) {sorted(unknown)}")
        self.rules.append(rule)
        return rule

    def clear(self) -> None:
        self.rules.clear()

    def match(self, route: str, ns: str | None) -> dict[str, Any] | None:
        """The first live rule for this request (consuming one of its count), if any."""
        for rule in self.rules:
            if rule["route"] not in ("*", route):
                continue
            if rule["namespace"] is not None and rule["namespace"] != ns:
                continue
            if rule["count"] is not None:
                rule["count"] -= 1
                if rule["count"] <= 0:
                    self.rules.remove(rule)
            return rule
        return None

    def listing(self) -> dict[str, Any]:
        return {"faults": [dict(r, remaining=r["count"]) for r in self.rules]}
