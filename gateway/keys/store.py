"""The KeyStore protocol every backend implements, and the choice of backend from the environment."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol, TypeVar

from gateway.config import KeySettings, load_key_settings
from gateway.keys.model import KeyRecord

T = TypeVar("T")
SQLITE_FILE = "keys.sqlite3"


class KeyStoreUnavailable(Exception):
    """The backend did not answer; the message never contains a token or hash."""


class KeyStore(Protocol):
    """Where minted keys live; every worker of every host sees the same store.

    All methods are coroutines; blocking backends run their calls on a small thread pool, never on the loop.
    Any backend failure raises KeyStoreUnavailable.
    """

    async def create(self, rec: KeyRecord) -> None:
        """Insert a new key and bump the generation."""
        ...

    async def get(self, key_id: str) -> KeyRecord | None:
        """The key with this id, or None."""
        ...

    async def find(self, lookup_hash: str) -> KeyRecord | None:
        """The key whose token hashes to `lookup_hash`, or None."""
        ...

    async def list(self) -> list[KeyRecord]:
        """Every key, in creation order."""
        ...

    async def revoke(self, key_id: str, at_ms: int) -> KeyRecord | None:
        """Mark revoked (idempotent: the first revocation time is kept), bump the generation; None if absent."""
        ...

    async def delete(self, key_id: str) -> bool:
        """Remove the key for good and bump the generation; False if it did not exist."""
        ...

    async def touch(self, key_id: str, at_ms: int) -> None:
        """Record `lastSeenAt` (callers rate-limit this to once per 5 minutes per worker)."""
        ...

    async def generation(self) -> int:
        """A counter that changes whenever a key is created, revoked or deleted (workers poll it)."""
        ...

    async def hit(self, bucket: str, window: int, window_seconds: int) -> int:
        """Count one hit of `bucket` in fixed window number `window`; returns the hits so far in that window."""
        ...

    async def close(self) -> None:
        """Release connections and threads."""
        ...


class ThreadedStore:
    """A blocking backend behind the KeyStore coroutines: each call runs on the backend's own small thread pool and
    its errors (`errors`) become KeyStoreUnavailable. Subclasses implement the blocking `_create`, `_get`, ...
    """

    errors: tuple[type[BaseException], ...] = ()
    backend = ""

    def __init__(self, threads: int, name: str) -> None:
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix=name)

    async def _run(self, fn: Callable[..., T], *args: object) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, fn, *args)

    async def _call(self, fn: Callable[..., T], *args: object) -> T:
        try:
            return await self._run(fn, *args)
        except self.errors as exc:
            raise KeyStoreUnavailable(f"key store ({self.backend}) failed: {type(exc).__name__}") from None

    def _shutdown(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)

    # the blocking operations each backend implements
    def _create(self, rec: KeyRecord) -> None: raise NotImplementedError
    def _get(self, key_id: str) -> KeyRecord | None: raise NotImplementedError
    def _find(self, lookup_hash: str) -> KeyRecord | None: raise NotImplementedError
    def _list(self) -> list[KeyRecord]: raise NotImplementedError
    def _revoke(self, key_id: str, at_ms: int) -> KeyRecord | None: raise NotImplementedError
    def _delete(self, key_id: str) -> bool: raise NotImplementedError
    def _touch(self, key_id: str, at_ms: int) -> None: raise NotImplementedError
    def _generation(self) -> int: raise NotImplementedError
    def _hit(self, bucket: str, window: int, window_seconds: int) -> int: raise NotImplementedError
    def _close(self) -> None: raise NotImplementedError

    async def create(self, rec: KeyRecord) -> None:
        await self._call(self._create, rec)

    async def get(self, key_id: str) -> KeyRecord | None:
        return await self._call(self._get, key_id)

    async def find(self, lookup_hash: str) -> KeyRecord | None:
        return await self._call(self._find, lookup_hash)

    async def list(self) -> list[KeyRecord]:
        return await self._call(self._list)

    async def revoke(self, key_id: str, at_ms: int) -> KeyRecord | None:
        return await self._call(self._revoke, key_id, at_ms)

    async def delete(self, key_id: str) -> bool:
        return await self._call(self._delete, key_id)

    async def touch(self, key_id: str, at_ms: int) -> None:
        await self._call(self._touch, key_id, at_ms)

    async def generation(self) -> int:
        return await self._call(self._generation)

    async def hit(self, bucket: str, window: int, window_seconds: int) -> int:
        return await self._call(self._hit, bucket, window, window_seconds)

    async def close(self) -> None:
        try:
            await self._run(self._close)
        finally:  # waiting for the pool's threads blocks: not on the event loop
            await asyncio.get_running_loop().run_in_executor(None, self._shutdown)


def key_store_for(data_dir: str, settings: KeySettings) -> KeyStore:
    """Aerospike when AEROSPIKE_HOSTS is set, else SQLite in `data_dir` (shared by every worker process)."""
    if settings.aerospike_hosts:
        from gateway.keys.aerospike import AerospikeKeyStore

        return AerospikeKeyStore(settings.aerospike_hosts, settings.aerospike_namespace,
                                 cluster_name=settings.cluster_name, set_prefix=settings.aerospike_set_prefix)
    from gateway.keys.sqlite import SqliteKeyStore

    os.makedirs(data_dir, exist_ok=True)
    return SqliteKeyStore(os.path.join(data_dir, SQLITE_FILE))


def open_key_store(data_dir: str, env: Mapping[str, str] | None = None) -> KeyStore:
    """The store the settings in `env` (default: the environment) describe."""
    return key_store_for(data_dir, load_key_settings(os.environ if env is None else env))
