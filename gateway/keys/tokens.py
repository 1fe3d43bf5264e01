"""Minted key tokens: `hvl_` + 40 base62 characters from `secrets`, stored only as a SHA-256 lookup hash."""

from __future__ import annotations

import hashlib
import hmac
import secrets
import string

TOKEN_PREFIX = "hvl_"
TOKEN_CHARS = 40  # 40 x log2(62) = 238 bits of entropy
ALPHABET = string.ascii_letters + string.digits
_ALPHABET_SET = frozenset(ALPHABET)
MIN_CHARS, MAX_CHARS = 32, 128
HASH_PREFIX = "sha256:"


def new_token() -> str:
    return TOKEN_PREFIX + "".join(secrets.choice(ALPHABET) for _ in range(TOKEN_CHARS))


def well_formed(token: str) -> bool:
    """Cheap shape check so garbage never reaches the store."""
    body = token[len(TOKEN_PREFIX):]
    return (token.startswith(TOKEN_PREFIX) and MIN_CHARS <= len(body) <= MAX_CHARS
            and _ALPHABET_SET.issuperset(body))


def lookup_hash(token: str) -> str:
    return HASH_PREFIX + hashlib.sha256(token.encode()).hexdigest()


def hashes_equal(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())
