"""Asynchronous copies (§11.2): `POST /v2/namespaces/{ns}/async` starts one and answers `{"token"}`; the operation
is then read with `GET /v1/namespaces/{ns}/operations/{token}`.

The copy itself is the synchronous `copy_from_namespace` write, run on the event loop after the start request has
been answered (later still when a `copy` fault rule injects a delay, which keeps the operation `running` meanwhile;
a fault status makes it finish with that error). Operations live in memory: a restart forgets them (the poll then
answers 404), and only the newest MAX_OPERATIONS are kept.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from .errors import StoreError, bad, invalid_type, shape
from .values import rfc3339
from .writes import source_name

MAX_OPERATIONS = 1000
Copy = Callable[[str, dict[str, Any]], dict[str, Any]]  # (destination, write body) -> write response


class Operation:
    __slots__ = ("finished_at", "namespace", "result", "started_at")

    def __init__(self, namespace: str) -> None:
        self.namespace = namespace
        self.started_at = time.time()
        self.finished_at: float | None = None
        self.result: dict[str, Any] | None = None

    def view(self) -> dict[str, Any]:
        if self.finished_at is None:
            return {"status": "running", "start_time": rfc3339(self.started_at)}
        return {"status": "finished", "start_time": rfc3339(self.started_at),
                "finish_time": rfc3339(self.finished_at), "result": self.result}


def copy_request(body: Any) -> dict[str, Any]:
    """Validate a start-copy body now (400/422 to the caller); what only the copy can find out (a missing source,
    a read-only destination) becomes the operation's error result."""
    if not isinstance(body, dict):
        raise invalid_type(body, "struct AsyncRequest")
    if "copy_from_namespace" not in body:
        raise shape("missing field `copy_from_namespace`")
    unknown = set(body) - {"copy_from_namespace"}
    if unknown:
        raise bad(f"unknown field(s) in async request: {sorted(unknown)}")
    source_name(body["copy_from_namespace"])
    return {"copy_from_namespace": body["copy_from_namespace"]}


class Operations:
    def __init__(self) -> None:
        self.ops: OrderedDict[str, Operation] = OrderedDict()

    def start(self, namespace: str, write: dict[str, Any], copy: Copy, delay_s: float, fail: int | None) -> str:
        token = "op_" + secrets.token_hex(12)
        op = self.ops[token] = Operation(namespace)
        while len(self.ops) > MAX_OPERATIONS:
            self.ops.popitem(last=False)
        asyncio.get_running_loop().call_later(delay_s, self._run, op, write, copy, fail)
        return token

    @staticmethod
    def _run(op: Operation, write: dict[str, Any], copy: Copy, fail: int | None) -> None:
        try:
            if fail is not None:
                raise StoreError(fail, "injected fault")
            op.result = {"success": copy(op.namespace, write)}
        except StoreError as e:
            op.result = _error(e.status, e.message)
        except Exception as e:  # noqa: BLE001 - an operation always finishes, even on a bug
            op.result = _error(500, f"internal error: {e}")
        op.finished_at = time.time()

    def get(self, namespace: str, token: str) -> dict[str, Any]:
        op = self.ops.get(token)
        if op is None or op.namespace != namespace:
            raise StoreError(404, f"operation '{token}' was not found in namespace '{namespace}'")
        return op.view()


def _error(status: int, message: str) -> dict[str, Any]:
    return {"error": {"status_code": status, "detail": {"status": "error", "error": message}}}
