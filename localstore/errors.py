"""Errors as values: a status and a message, rendered as `{"status": "error", "error": ...}`."""

from __future__ import annotations

import json
from typing import Any


class StoreError(Exception):
    """A request that cannot be served; `status` is the HTTP status to answer with."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def bad(message: str) -> StoreError:
    return StoreError(400, message)


def shape(message: str) -> StoreError:
    return StoreError(422, message)


def not_found(ns: str) -> StoreError:
    return StoreError(404, f"namespace '{ns}' was not found")


def unexpected(value: Any) -> str:
    """A JSON value as serde names it in `invalid type: ..., expected ...` (the live service's wording)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"boolean `{'true' if value else 'false'}`"
    if isinstance(value, int):
        return f"integer `{value}`"
    if isinstance(value, float):
        return f"floating point `{value}`"
    if isinstance(value, str):
        return f"string {json.dumps(value)}"
    return "sequence" if isinstance(value, list) else "map"


def invalid_type(value: Any, expected: str, where: str = "") -> StoreError:
    """422 `[where: ]invalid type: <what value is>, expected <expected>`."""
    return shape(f"{where + ': ' if where else ''}invalid type: {unexpected(value)}, expected {expected}")
