"""Structured logs: one JSON object per line on stderr; one line per request at info. Never keys or bodies."""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

import msgspec

_encode = msgspec.json.Encoder().encode
access_log = logging.getLogger("gateway.access")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if fields:
            out.update(fields)
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return _encode(out).decode()


def setup_logging(level: str) -> None:
    root = logging.getLogger()
    for h in list(root.handlers):
        if getattr(h, "_layer", False):
            root.removeHandler(h)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    handler._layer = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    logging.getLogger("gateway").setLevel(level.upper())
    logging.getLogger("gateway").propagate = True


def log_request(method: str, route: str, namespace: str | None, status: int, started: float,
                upstream_s: float, principal: str | None, extra: dict[str, Any] | None) -> None:
    if not access_log.isEnabledFor(logging.INFO):
        return
    fields: dict[str, Any] = {
        "method": method, "route": route, "namespace": namespace, "status": status,
        "duration_ms": round((time.perf_counter() - started) * 1000, 3),
        "upstream_ms": round(upstream_s * 1000, 3), "principal": principal,
    }
    if extra:
        fields.update(extra)
    access_log.info("request", extra={"fields": fields})
