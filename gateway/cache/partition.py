"""The name the cache knows a namespace by, for one caller.

With a store key there is one organisation behind the gateway: the cache name is the namespace name. In
derive-from-request mode each caller brings its own Turbopuffer key, and namespaces live per organisation: two
organisations may each own a `docs`, and a namespace deleted and created again keeps its name. The cache name is
then `name@fingerprint`, the fingerprint of the namespace upstream showed this caller (gateway/verdicts.py: its
`created_at`), so documents, fences and warm jobs of one namespace are never those of another of the same name.
The watermark watcher (gateway/consistency.py) keeps its watch state under the same name.
`@` cannot occur in a Turbopuffer namespace name, so the two forms never meet.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from gateway.http import Ctx
    from gateway.state import WorkerState

SEPARATOR = "@"


def partitioned(ns: str, fingerprint: str) -> str:
    return f"{ns}{SEPARATOR}{fingerprint}"


def namespace_of(cache_ns: str) -> str:
    """The upstream namespace name of a cache name."""
    return cache_ns.split(SEPARATOR, 1)[0]


async def cache_namespace(state: WorkerState, ns: str, key: str | None, ctx: Ctx | None = None) -> str | None:
    """The cache name of `ns` for a caller acting with upstream key `key`; None when the namespace's identity is
    not known (upstream does not accept the key for it, or shows no `created_at`): leave the cache alone. The
    verdict of the auth phase (ctx.identity) is used when there is one; otherwise the worker's verdict cache."""
    verdicts = state.verdicts
    if verdicts is None or key is None:
        return ns
    if ctx is not None and ctx.identity is not None and ctx.namespace == ns:
        found: object = ctx.identity
    else:
        found = await verdicts.check(key, ns)
    return partitioned(ns, found) if isinstance(found, str) and found else None
