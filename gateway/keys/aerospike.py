"""KeyStore on Aerospike (AEROSPIKE_HOSTS, persistent namespace AEROSPIKE_KEYS_NAMESPACE).

Sets: `api_keys` (key id -> `rec` JSON + `rv` revoked ms + `ls` last seen ms), `api_key_hash` (lookup hash -> `id`),
`api_key_meta` (`generation` -> `g`), `api_key_rate` (bucket:window -> `n`, expiring). The official client is
synchronous, so every call runs on this store's thread pool.
"""

from __future__ import annotations

from typing import Any

import aerospike
from aerospike import exception as aex
from aerospike_helpers.operations import operations as ops
from msgspec.structs import replace

from gateway.keys.model import KeyRecord, record_decoder, record_encoder
from gateway.keys.store import ThreadedStore

KEYS_SET, HASH_SET, META_SET, RATE_SET = "api_keys", "api_key_hash", "api_key_meta", "api_key_rate"
GENERATION = "generation"
THREADS = 4
TIMEOUT_MS = 1000
# TTLs go in the policy (meta["ttl"] is deprecated in client 19): key records never expire.
WRITE_POLICY = {"total_timeout": TIMEOUT_MS, "key": aerospike.POLICY_KEY_SEND, "ttl": aerospike.TTL_NEVER_EXPIRE}
CREATE_POLICY = {**WRITE_POLICY, "exists": aerospike.POLICY_EXISTS_CREATE}
UPDATE_POLICY = {**WRITE_POLICY, "exists": aerospike.POLICY_EXISTS_UPDATE, "ttl": aerospike.TTL_DONT_UPDATE}


def parse_hosts(text: str) -> list[tuple[str, int]]:
    hosts = []
    for part in text.split(","):
        part = part.strip()
        if part:
            host, _, port = part.rpartition(":") if ":" in part else (part, "", "3000")
            hosts.append((host, int(port)))
    return hosts


class AerospikeKeyStore(ThreadedStore):
    errors = (aex.AerospikeError,)
    backend = "aerospike"

    def __init__(self, hosts: str, namespace: str, cluster_name: str | None = None, set_prefix: str = "") -> None:
        super().__init__(THREADS, "keys-aerospike")
        self._ns = namespace
        self._sets = {s: set_prefix + s for s in (KEYS_SET, HASH_SET, META_SET, RATE_SET)}
        self._config: dict[str, Any] = {
            "hosts": parse_hosts(hosts),
            "policies": {"read": {"total_timeout": TIMEOUT_MS}, "write": {"total_timeout": TIMEOUT_MS}},
            "connect_timeout": TIMEOUT_MS,
        }
        if cluster_name:
            self._config["cluster_name"] = cluster_name
        self._client: Any = None

    def _c(self) -> Any:
        if self._client is None:
            self._client = aerospike.client(self._config)
        return self._client

    def _key(self, set_name: str, pk: str) -> tuple[str, str, str]:
        return (self._ns, self._sets[set_name], pk)

    def _read(self, set_name: str, pk: str) -> dict[str, Any] | None:
        try:
            _, _, bins = self._c().get(self._key(set_name, pk))
        except aex.RecordNotFound:
            return None
        return bins  # type: ignore[no-any-return]

    def _bump(self) -> None:
        self._c().operate(self._key(META_SET, GENERATION), [ops.increment("g", 1)], None, WRITE_POLICY)

    def _record(self, bins: dict[str, Any] | None) -> KeyRecord | None:
        if not bins or "rec" not in bins:
            return None
        rec = record_decoder.decode(bins["rec"])
        return replace(rec, revoked_ms=bins.get("rv"), last_seen_ms=bins.get("ls"))

    def _create(self, rec: KeyRecord) -> None:
        immutable = replace(rec, revoked_ms=None, last_seen_ms=None)
        c = self._c()
        c.put(self._key(KEYS_SET, rec.key_id), {"rec": record_encoder.encode(immutable).decode(),
                                                 "ct": rec.created_ms}, None, CREATE_POLICY)
        c.put(self._key(HASH_SET, rec.lookup_hash), {"id": rec.key_id}, None, WRITE_POLICY)
        self._bump()

    def _get(self, key_id: str) -> KeyRecord | None:
        return self._record(self._read(KEYS_SET, key_id))

    def _find(self, lookup_hash: str) -> KeyRecord | None:
        pointer = self._read(HASH_SET, lookup_hash)
        if not pointer or "id" not in pointer:
            return None
        rec = self._get(str(pointer["id"]))
        return rec if rec is not None and rec.lookup_hash == lookup_hash else None

    def _list(self) -> list[KeyRecord]:
        out: list[KeyRecord] = []
        for _, _, bins in self._c().query(self._ns, self._sets[KEYS_SET]).results():
            rec = self._record(bins)
            if rec is not None:
                out.append(rec)
        out.sort(key=lambda r: (r.created_ms, r.key_id))
        return out

    def _revoke(self, key_id: str, at_ms: int) -> KeyRecord | None:
        rec = self._get(key_id)
        if rec is None:
            return None
        if rec.revoked_ms is None:
            self._c().put(self._key(KEYS_SET, key_id), {"rv": at_ms}, None, UPDATE_POLICY)
            rec = replace(rec, revoked_ms=at_ms)
        self._bump()
        return rec

    def _delete(self, key_id: str) -> bool:
        rec = self._get(key_id)
        if rec is None:
            return False
        c = self._c()
        try:
            c.remove(self._key(KEYS_SET, key_id))
        except aex.RecordNotFound:
            return False
        try:
            c.remove(self._key(HASH_SET, rec.lookup_hash))
        except aex.RecordNotFound:
            pass
        self._bump()
        return True

    def _touch(self, key_id: str, at_ms: int) -> None:
        try:
            self._c().put(self._key(KEYS_SET, key_id), {"ls": at_ms}, None, UPDATE_POLICY)
        except aex.RecordNotFound:
            pass

    def _generation(self) -> int:
        bins = self._read(META_SET, GENERATION)
        return int(bins.get("g", 0)) if bins else 0

    def _hit(self, bucket: str, window: int, window_seconds: int) -> int:
        key = self._key(RATE_SET, f"{bucket}:{window}")
        policy = {**WRITE_POLICY, "ttl": window_seconds * 2}
        _, _, bins = self._c().operate(key, [ops.increment("n", 1), ops.read("n")], None, policy)
        return int(bins["n"])

    def _close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
