"""Hand-written conveniences of the published hevlayer 0.7.3 client that are not operations of their own."""

from __future__ import annotations

from typing import Any


def patch_columns_body(ids: list[str], attrs: dict[str, list[Any]]) -> dict[str, Any]:
    if not ids:
        raise ValueError("patch_columns requires at least one id")
    columns: dict[str, list[Any]] = {"id": list(ids)}
    for name, values in attrs.items():
        if name == "id":
            raise ValueError("patch_columns attrs must not include id")
        column = list(values)
        if len(column) != len(ids):
            raise ValueError(f"patch_columns attr {name!r} has {len(column)} values for {len(ids)} ids")
        columns[name] = column
    return {"patch_columns": columns}


class AsyncHelpers:
    async def warm_namespace(self, namespace: str, *, page_size: int | None = None, with_perf: bool = False) -> Any:
        return await self.warm_cache(namespace, page_size=page_size, with_perf=with_perf)  # type: ignore[attr-defined]

    async def patch_columns(self, namespace: str, ids: list[str], attrs: dict[str, list[Any]], *,
                            with_perf: bool = False) -> Any:
        body = patch_columns_body(ids, attrs)
        return await self.write_namespace(namespace, body, with_perf=with_perf)  # type: ignore[attr-defined]


class SyncHelpers:
    def warm_namespace(self, namespace: str, *, page_size: int | None = None, with_perf: bool = False) -> Any:
        return self.warm_cache(namespace, page_size=page_size, with_perf=with_perf)  # type: ignore[attr-defined]

    def patch_columns(self, namespace: str, ids: list[str], attrs: dict[str, list[Any]], *,
                      with_perf: bool = False) -> Any:
        return self.write_namespace(namespace, patch_columns_body(ids, attrs),  # type: ignore[attr-defined]
                                    with_perf=with_perf)
