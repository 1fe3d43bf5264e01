"""The document cache: `open_cache()` picks Aerospike when AEROSPIKE_HOSTS is set, else the embedded SQLite cache."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from gateway.cache.base import CacheDoc, CacheError, DocumentCache, JobStore, WarmJob
from gateway.config import CacheSettings, load_cache_settings

__all__ = ["CacheDoc", "CacheError", "CacheSettings", "DocumentCache", "JobStore", "WarmJob", "cache_for", "open_cache"]


def cache_for(settings: CacheSettings) -> DocumentCache:
    """Build this worker's cache. Nothing connects here: backends connect lazily on first use (after fork)."""
    if settings.backend == "aerospike":
        from gateway.cache.aerospike import AerospikeCache

        return AerospikeCache(settings)
    from gateway.cache.local import LocalCache

    return LocalCache(settings)


def open_cache(env: Mapping[str, str] | None = None) -> DocumentCache:
    """The cache the settings in `env` (default: the environment) describe."""
    return cache_for(load_cache_settings(os.environ if env is None else env))


async def attach(state: Any) -> None:
    """Worker startup hook (gateway.app): put this worker's cache service into `state.cache`."""
    from gateway.cache.service import CacheService

    service = CacheService(cache_for(state.config.cache))
    await service.start()
    state.cache = service
    config = state.config
    from gateway.cache.results import ResultCache

    # Also with LAYER_RESULT_CACHE off (it then serves nothing): every write bumps the shared generation, since
    # another gateway on this backend may have the cache on.
    fresh_s = (config.stable_poll_interval_ms + 2 * config.poll_interval_ms) / 1000
    state.results = ResultCache(config.results, service.store, fresh_s)
    if config.results.on:
        state.watcher.on_upstream_metadata = state.results.upstream_metadata


async def detach(state: Any) -> None:
    results, state.results = state.results, None
    if results is not None:
        state.watcher.on_upstream_metadata = None
        await results.stop()
    service, state.cache = state.cache, None
    if service is not None:
        await service.stop()
