"""Errors as values: a status and a message, rendered as `{"status": "error", "error": ...}`."""

from __future__ import annotations


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
