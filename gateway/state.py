"""Per-worker state, created in the worker's startup hook (never at import time)."""

from __future__ import annotations

import os
from typing import Any

from gateway.auth import KeyVerifier
from gateway.config import Config
from gateway.consistency import Watcher
from gateway.upstream import Upstream


class WorkerState:
    """Everything one worker process owns. Background tasks write it; the hot path only reads it.

    Slots other modules fill after construction (both None until then):
    - `cache`: the document cache (gateway/cache); every cache phase is a no-op while it is None.
    - `key_verifier`: verifies minted `hvl_` bearers (gateway/keys); minted keys are rejected while it is None.
    """

    __slots__ = (
        "cache",
        "config",
        "draining",
        "extras",
        "inflight",
        "key_verifier",
        "pid",
        "router",
        "upstream",
        "watcher",
    )

    def __init__(self, config: Config, router: Any) -> None:
        self.config = config
        self.upstream = Upstream(config)
        self.watcher = Watcher(self.upstream, config.poll_interval_ms, config.stable_poll_interval_ms,
                               config.safety_margin_ms, config.watch_idle_ms)
        self.router = router
        self.cache: Any = None
        self.key_verifier: KeyVerifier | None = None
        self.draining = False
        self.inflight = 0
        self.pid = os.getpid()
        self.extras: dict[str, Any] = {}  # room for other modules' per-worker objects (jobs, pools)
