"""Write triggers (design §2.4): an acknowledged write through the gateway enqueues (or revives) the rows it
touched for every UDF with `write` in its triggers that targets the namespace.

Runs in a task after the response; a failure is logged and counted, never failing the write. Candidates: upserted
ids, and patched ids whose patch sets one of the UDF's inputs (any patch when it has none); conditional and filter
writes use the ids the upstream reports (the gateway asks for them). With a spec filter, only the candidates the
store matches are kept. UDF write-backs never trigger (no self-retrigger loop); deletes trigger nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import msgspec

from gateway import metrics
from gateway.queue import items, rows
from gateway.queue.service import QueueService, now_ms
from gateway.queue.spec import UdfSpec

log = logging.getLogger("gateway.queue")
RESPONSE_DRIVEN = ("upsert_condition", "patch_condition", "patch_by_filter")
NOT_INPUTS = frozenset({"id", "_hevlayer_upserted_at"})


class AffectedIds(msgspec.Struct):
    upserted_ids: list[Any] = []
    patched_ids: list[Any] = []


_affected = msgspec.json.Decoder(AffectedIds).decode
_encode_id = msgspec.json.encode


def _rows(doc: dict[str, Any], rows_key: str, cols_key: str) -> Iterator[tuple[Any, set[str]]]:
    """(id, attribute names set) per row of a row-wise and a column-wise write part."""
    for row in doc.get(rows_key) or ():
        if isinstance(row, dict) and "id" in row:
            yield row["id"], set(row) - NOT_INPUTS
    cols = doc.get(cols_key)
    if isinstance(cols, dict) and isinstance(cols.get("id"), list):
        names = set(cols) - NOT_INPUTS
        for doc_id in cols["id"]:
            yield doc_id, names


class WriteTrigger:
    """Built before the upstream write (it may ask for affected ids), fired after it succeeded."""

    def __init__(self, svc: QueueService, ns: str, udfs: list[tuple[str, UdfSpec]]) -> None:
        self.svc, self.ns, self.udfs = svc, ns, udfs

    @classmethod
    def before_write(cls, svc: QueueService, ns: str, doc: dict[str, Any]) -> WriteTrigger:
        if any(doc.get(k) is not None for k in RESPONSE_DRIVEN):
            doc["return_affected_ids"] = True
        return cls(svc, ns, svc.write_triggers.get(ns, []))

    def fire(self, doc: dict[str, Any], response: bytes, key: str | None) -> None:
        upserted, patched = self._touched(doc, response)
        if upserted or patched:
            self.svc.spawn(self._enqueue(upserted, patched, key))

    def _touched(self, doc: dict[str, Any], response: bytes) -> tuple[list[Any], list[tuple[Any, set[str]]]]:
        """(upserted ids, [(patched id, attribute names set)])."""
        upserted = [i for i, _ in _rows(doc, "upsert_rows", "upsert_columns")]
        patched = list(_rows(doc, "patch_rows", "patch_columns"))
        if not any(doc.get(k) is not None for k in RESPONSE_DRIVEN):
            return upserted, patched
        try:
            affected = _affected(response)
        except msgspec.DecodeError:
            return [], []
        if doc.get("upsert_condition") is not None:
            upserted = affected.upserted_ids
        names = {str(i): n for i, n in patched}
        pbf = doc.get("patch_by_filter")
        filter_names = set(pbf["patch"]) - NOT_INPUTS if isinstance(pbf, dict) and isinstance(pbf.get("patch"), dict) \
            else set()
        return upserted, [(i, names.get(str(i), filter_names)) for i in affected.patched_ids]

    async def _enqueue(self, upserted: list[Any], patched: list[tuple[Any, set[str]]], key: str | None) -> None:
        for udf_id, spec in self.udfs:
            wanted = set(spec.inputs) - {"id"}
            ids = list(upserted) + [i for i, names in patched if not spec.inputs or names & wanted]
            try:
                await self._enqueue_udf(udf_id, spec, ids, key)
            except Exception as exc:  # noqa: BLE001 - the write succeeded; discovery catches what this missed
                metrics.inc(metrics.UDF_TRIGGER_ERRORS.labels(metrics.queue_label(udf_id)))
                log.warning("write trigger of UDF %s on %s failed: %s", udf_id, self.ns, exc)

    async def _enqueue_udf(self, udf_id: str, spec: UdfSpec, ids: list[Any], key: str | None) -> None:
        unique = list({str(i): i for i in ids}.values())
        if spec.filter is not None and unique:
            unique = await self._matching(spec.filter, unique, key)
        if not unique:
            return
        keyed = [(str(i), _encode_id(i).decode()) for i in unique]
        revived = await self.svc.db.write(items.revive, udf_id, self.ns, keyed, now_ms())
        self.svc.status_cache.clear()
        metrics.inc(metrics.UDF_ENQUEUED.labels(metrics.queue_label(udf_id), "write"), revived)

    async def _matching(self, flt: Any, ids: list[Any], key: str | None) -> list[Any]:
        kept: list[Any] = []
        for start in range(0, len(ids), rows.ID_BATCH):
            chunk = ids[start:start + rows.ID_BATCH]
            body = {"rank_by": ["id", "asc"], "top_k": len(chunk), "include_attributes": False,
                    "filters": ["And", [flt, ["id", "In", chunk]]]}
            kept += [r["id"] for r in await rows.query(self.svc.state, self.ns, body, key) or ()]
        return kept
