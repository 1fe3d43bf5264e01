"""Scoped API keys: minted `hvl_` tokens, their stores, the per-worker verifier and the operator CLI.

The app calls `attach(state)` in each worker's startup hook and `detach(state)` at shutdown.
"""

from __future__ import annotations

from typing import Any

EXTRAS_SLOT = "keys"


async def attach(state: Any) -> None:
    """Open this worker's key store and fill the `key_verifier` slot."""
    from gateway.keys.service import KeyService

    service = KeyService.from_settings(state.config.data_dir, state.config.keys)
    state.extras[EXTRAS_SLOT] = service
    state.key_verifier = service.verifier


async def detach(state: Any) -> None:
    service = state.extras.pop(EXTRAS_SLOT, None)
    state.key_verifier = None
    if service is not None:
        await service.close()
