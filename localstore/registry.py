"""The set of namespaces: lookup, durable write commit, delete, copy, listing."""

from __future__ import annotations

import base64
import binascii
import time
from typing import Any

import msgspec

from .accounting import elapsed_whole_ms
from .errors import bad, not_found, shape
from .journal import Journal
from .state import Namespace
from .storage import Store
from .writes import Plan, check_exists, plan_write, source_name, write_response

NAME_OK = set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.")


def check_name(name: str) -> None:
    if not name or len(name) > 128 or not set(name) <= NAME_OK or name in (".", ".."):
        raise bad(f"invalid namespace name {name!r}: must match [A-Za-z0-9-_.]{{1,128}}")


class Registry:
    def __init__(self, data_dir: str, lag_ms: int) -> None:
        self.store = Store(data_dir)
        self.lag_s = lag_ms / 1000.0
        self.spaces: dict[str, Namespace] = self.store.load()
        self.journal = Journal()

    def get(self, name: str) -> Namespace:
        ns = self.spaces.get(name)
        if ns is None:
            raise not_found(name)
        return ns

    def write(self, name: str, body: Any) -> dict[str, Any]:
        t0 = time.perf_counter()
        check_name(name)
        if not isinstance(body, dict):
            raise shape("write request: expected an object")
        existing = self.spaces.get(name)
        check_exists(name, body, existing is not None)
        ns = existing or Namespace(name)
        copy_src = body.get("copy_from_namespace") or body.get("branch_from_namespace")
        if copy_src is not None:
            src = self.get(source_name(copy_src))
            if body.get("branch_from_namespace") is not None and existing is not None:
                raise bad(f"cannot branch onto existing namespace '{name}'")
            if existing is None:
                ns.schema = {k: dict(v) for k, v in src.schema.items()}
                ns.id_type, ns.metric = src.id_type, src.metric
        plan = plan_write(ns, {k: v for k, v in body.items()}, existing is not None)
        if copy_src is not None:
            for doc_id, row in src.current.rows.items():
                if plan.id_type not in (None, src.id_type):
                    raise bad("copy source id type does not match the destination namespace")
                plan.fx.setdefault(doc_id, row)
                plan.upserted.append(doc_id)
            plan.id_type = plan.id_type or src.id_type
        creates = bool(plan.fx) or body.get("create_namespace") is True or copy_src is not None
        if existing is None and not creates and body.get("schema") is None:
            return write_response(plan, body, 0, elapsed_whole_ms(t0))
        if body.get("create_namespace") is True and existing is None and plan.id_type is None:
            plan.id_type = "uint"
        self._commit(ns, plan)
        resp = write_response(plan, body, sum(64 for _ in plan.fx), elapsed_whole_ms(t0))
        if copy_src is not None:
            resp.pop("rows_upserted", None)
            resp.pop("upserted_ids", None)
        return resp

    def _commit(self, ns: Namespace, plan: Plan) -> None:
        ns.schema, ns.id_type, ns.metric = plan.schema, plan.id_type, plan.metric
        ns.updated_at = time.time()
        self.store.append(ns, plan.fx)
        ns.apply(plan.fx, self.lag_s)
        self.journal.applied(ns.name, plan.fx)
        self.spaces[ns.name] = ns
        self.store.maybe_compact(ns)

    def save_meta(self, ns: Namespace) -> None:
        ns.updated_at = time.time()
        self.store.append(ns, {})
        self.store.maybe_compact(ns)

    def delete(self, name: str) -> None:
        self.get(name)
        del self.spaces[name]
        self.store.drop(name)
        self.journal.dropped(name)

    def listing(self, prefix: str, page_size: int, cursor: str | None) -> dict[str, Any]:
        after = ""
        if cursor:
            try:
                after = msgspec.json.decode(base64.urlsafe_b64decode(cursor.encode()))["start_after"]
            except (binascii.Error, ValueError, KeyError, TypeError, msgspec.DecodeError):
                raise bad("invalid cursor") from None
            if not isinstance(after, str):
                raise bad("invalid cursor")
        names = sorted(n for n in self.spaces if n.startswith(prefix) and n > after)
        page = names[:page_size]
        nxt = None
        if len(names) > page_size:
            nxt = base64.urlsafe_b64encode(msgspec.json.encode({"start_after": page[-1]})).decode()
        return {"namespaces": [{"id": n} for n in page], "next_cursor": nxt}
