"""The /v2/keys operations as plain coroutines over a KeyStore; routes/keys.py adapts them to HTTP."""

from __future__ import annotations

import time
import uuid
from collections.abc import Awaitable
from typing import TypeVar

import msgspec

from gateway.config import KeySettings
from gateway.http import GatewayError, validation_error
from gateway.keys.model import (
    ACTIVE,
    DEFAULT_STORE_TARGET,
    ApiKey,
    ApiKeyList,
    AuthenticateKeyResponse,
    KeyRecord,
    KeyValidationError,
    MintKeyResponse,
    StatusResponse,
    api_key,
    authenticate_request_decoder,
    duration_seconds,
    mint_request_decoder,
    now_ms,
    rfc3339,
    validate_mint,
)
from gateway.keys.store import KeyStore, KeyStoreUnavailable, key_store_for
from gateway.keys.tokens import lookup_hash, new_token, well_formed
from gateway.keys.verifier import MintedKeyVerifier

RATE_WINDOW_S = 60
DEFAULT_RATE_LIMIT = 120
STORE_TARGETS = frozenset({DEFAULT_STORE_TARGET})
T = TypeVar("T")
DELETED = StatusResponse(status="OK", message="key deleted")
# One answer for every token that does not authenticate, so callers learn nothing about why.
INVALID_TOKEN = GatewayError("invalid_api_key", "the token is not a valid, active key", status=401)


def key_not_found(key_id: str) -> GatewayError:
    return GatewayError("not_found", f"API key '{key_id}' not found", status=404)


def _unavailable(exc: KeyStoreUnavailable) -> GatewayError:
    return GatewayError("service_unavailable", str(exc), status=503, source="internal", retryable=True)


class KeyService:
    """Mint, list, read, revoke, delete and authenticate keys; owns the worker's store and verifier."""

    def __init__(self, store: KeyStore, rate_limit_per_min: int = DEFAULT_RATE_LIMIT) -> None:
        self.store = store
        self.verifier = MintedKeyVerifier(store)
        self.rate_limit = rate_limit_per_min

    @classmethod
    def from_settings(cls, data_dir: str, settings: KeySettings) -> KeyService:
        return cls(key_store_for(data_dir, settings), settings.auth_rate_limit_per_min)

    async def mint(self, body: bytes) -> MintKeyResponse:
        try:
            req = mint_request_decoder.decode(body)
            expires_after = validate_mint(req, STORE_TARGETS)
        except (msgspec.ValidationError, msgspec.DecodeError, KeyValidationError) as exc:
            raise validation_error(str(exc)) from None
        token = new_token()
        created = now_ms()
        ttl = duration_seconds(expires_after)
        rec = KeyRecord(
            key_id=str(uuid.uuid4()), name=req.name.strip(), lookup_hash=lookup_hash(token),
            entitlements=req.entitlements or {}, expires_after=expires_after, created_ms=created,
            owner=req.owner, description=req.description,
            expires_ms=None if ttl is None else created + ttl * 1000,
        )
        await self._guard(self.store.create(rec))
        return MintKeyResponse(
            key_id=rec.key_id, name=rec.name, entitlements=rec.entitlements, phase=ACTIVE,
            created_at=rfc3339(created) or "", token=token, owner=rec.owner, description=rec.description,
            expires_after=expires_after, expires_at=rfc3339(rec.expires_ms),
        )

    async def list(self, include_revoked: bool) -> ApiKeyList:
        now = now_ms()
        recs = await self._guard(self.store.list())
        keys = [api_key(r, now) for r in recs]
        if not include_revoked:
            keys = [k for k in keys if k.phase == ACTIVE]
        return ApiKeyList(keys=keys)

    async def get(self, key_id: str) -> ApiKey:
        rec = await self._guard(self.store.get(key_id))
        if rec is None:
            raise key_not_found(key_id)
        return api_key(rec, now_ms())

    async def revoke(self, key_id: str) -> ApiKey:
        rec = await self._guard(self.store.revoke(key_id, now_ms()))
        if rec is None:
            raise key_not_found(key_id)
        self.verifier.invalidate()
        return api_key(rec, now_ms())

    async def delete(self, key_id: str) -> StatusResponse:
        if not await self._guard(self.store.delete(key_id)):
            raise key_not_found(key_id)
        self.verifier.invalidate()
        return DELETED

    async def check_rate(self, client: str) -> None:
        """The authenticate rate limit (a fixed window per client address, shared by all workers); run before the
        request body is read, so a client over the limit costs no body."""
        window = int(time.time()) // RATE_WINDOW_S
        hits = await self._guard(self.store.hit(f"auth:{client}", window, RATE_WINDOW_S))
        if hits > self.rate_limit:
            retry_after = RATE_WINDOW_S - int(time.time()) % RATE_WINDOW_S
            raise GatewayError("rate_limited", f"too many authenticate requests; limit is {self.rate_limit}"
                               " per minute per client", status=429, headers=[("retry-after", str(retry_after))])

    async def authenticate(self, body: bytes) -> AuthenticateKeyResponse:
        try:
            token = authenticate_request_decoder.decode(body).token
        except (msgspec.ValidationError, msgspec.DecodeError) as exc:
            raise validation_error(str(exc)) from None
        if not well_formed(token):
            raise INVALID_TOKEN
        rec = await self._guard(self.store.find(lookup_hash(token)))
        if rec is None or rec.phase(now_ms()) != ACTIVE:
            raise INVALID_TOKEN
        return AuthenticateKeyResponse(key_id=rec.key_id, name=rec.name, entitlements=rec.entitlements,
                                       owner=rec.owner, expires_at=rfc3339(rec.expires_ms))

    @staticmethod
    async def _guard(aw: Awaitable[T]) -> T:
        try:
            return await aw
        except KeyStoreUnavailable as exc:
            raise _unavailable(exc) from None

    async def close(self) -> None:
        await self.verifier.close()
        await self.store.close()
