"""Per-worker state, created in the worker's startup hook (never at import time)."""

from __future__ import annotations

import logging
import os
import sqlite3
from typing import Any

from gateway.auth import KeyVerifier
from gateway.body import BodyBudget
from gateway.config import Config
from gateway.consistency import Watcher
from gateway.upstream import Upstream
from gateway.verdicts import Verdicts
from gateway.watch_board import WatchBoard

log = logging.getLogger("gateway.state")


class WorkerState:
    """Everything one worker process owns. Background tasks write it; the hot path only reads it.

    Slots other modules fill after construction (both None until then):
    - `cache`: the document cache (gateway/cache); every cache phase is a no-op while it is None.
    - `key_verifier`: verifies minted `hvl_` bearers (gateway/keys); minted keys are rejected while it is None.
    - `results`: the query-result cache (gateway/cache/results.py), set with the cache: it bumps the shared
      generations on every write, and serves only the namespaces LAYER_RESULT_CACHE names.
    - `queue`: pipelines and functions (gateway/queue); its routes answer 503 and write triggers are off while None.
    `verdicts` is set only in derive-from-request mode (no store key): upstream's word on each caller's bearer.
    """

    __slots__ = (
        "bodies",
        "cache",
        "config",
        "draining",
        "extras",
        "inflight",
        "key_verifier",
        "pid",
        "queue",
        "results",
        "router",
        "upstream",
        "verdicts",
        "watcher",
    )

    def __init__(self, config: Config, router: Any) -> None:
        self.config = config
        self.upstream = Upstream(config)
        board: Any = None
        if config.watch_shared == "sqlite":
            try:
                board = WatchBoard.in_dir(config.data_dir)
            except (OSError, sqlite3.Error) as exc:  # soft state (the default): per-worker records then
                log.warning("watch board: %s unusable, watch records stay per worker: %s", config.data_dir, exc)
        elif config.watch_shared == "aerospike":
            from gateway.watch_board_aerospike import AerospikeWatchBoard  # the client loads only when used

            board = AerospikeWatchBoard(config.cache)
        self.watcher = Watcher(self.upstream, config.poll_interval_ms, config.stable_poll_interval_ms,
                               config.safety_margin_ms, config.watch_idle_ms, board, config.watch_mirror_ms,
                               fallback_budget=config.watch_fallback_polls_per_s, fence=config.watch_fence)
        self.router = router
        self.bodies = BodyBudget(config.max_buffered_body_bytes)
        self.verdicts: Verdicts | None = None
        if config.upstream_key is None:
            self.verdicts = Verdicts(self.upstream, config.auth_verdict_ttl_s)
            self.upstream.on_denied = self.verdicts.forget
        self.cache: Any = None
        self.key_verifier: KeyVerifier | None = None
        self.queue: Any = None
        self.results: Any = None
        self.draining = False
        self.inflight = 0
        self.pid = os.getpid()
        self.extras: dict[str, Any] = {}  # room for other modules' per-worker objects (jobs, pools)
