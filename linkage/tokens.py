"""Pseudonymous link tokens.

A token is HMAC-SHA256(linkage_key, "person/v1|" + normalised identifier),
computed at the node. Nodes hold the federation linkage key; the gateway never
does, so it can neither reverse nor enumerate tokens. Identifiers are validated
before use: an NHS number must pass its modulus-11 check, and any other scheme
is named explicitly ("scheme:value").
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from dataclasses import dataclass
from pathlib import Path

from linkage.files import write_private

TOKEN_LEN = 32
MAX_TOKENS_PER_CALL = 1000  # per subscribe or unsubscribe request
MAX_TOKENS_PER_MESSAGE = 64  # per envelope, and per resolve or discovery request
_DOMAIN = b"person/v1|"
_SCHEME_RE = re.compile(r"^[a-z][a-z0-9-]{0,31}$")
_NHS_WEIGHTS = range(10, 1, -1)


def split_tokens(joined: bytes) -> list[bytes]:
    """Link tokens kept end to end in one value, one by one."""
    return [joined[i : i + TOKEN_LEN] for i in range(0, len(joined), TOKEN_LEN)]


class IdentifierError(ValueError):
    """An identifier that must not be turned into a token."""


def nhs_number_is_valid(digits: str) -> bool:
    """Modulus-11 check of a 10-digit NHS number."""
    if len(digits) != 10 or not digits.isdigit():
        return False
    total = sum(int(d) * w for d, w in zip(digits[:9], _NHS_WEIGHTS, strict=True))
    check = 11 - total % 11
    if check == 11:
        check = 0
    return check != 10 and check == int(digits[9])


def normalise_identifier(scheme: str, value: str) -> str:
    """Canonical "scheme:value" text for a validated identifier."""
    scheme = scheme.strip().lower()
    if scheme == "nhs":
        digits = re.sub(r"[\s-]", "", value)
        if not nhs_number_is_valid(digits):
            raise IdentifierError("NHS number fails the modulus-11 check or is not 10 digits")
        return f"nhs:{digits}"
    if not _SCHEME_RE.match(scheme):
        raise IdentifierError(
            "identifier scheme must be 'nhs' or a lowercase name like 'la-csc' (letters, digits, hyphens)"
        )
    cleaned = " ".join(value.split())
    if not cleaned or len(cleaned) > 128:
        raise IdentifierError(f"identifier value for scheme '{scheme}' must be 1-128 characters")
    return f"{scheme}:{cleaned}"


@dataclass(frozen=True)
class LinkageKey:
    version: int
    key: bytes

    def token(self, scheme: str, value: str) -> bytes:
        normalised = normalise_identifier(scheme, value)
        return hmac.new(self.key, _DOMAIN + normalised.encode(), hashlib.sha256).digest()

    def save(self, path: Path) -> None:
        write_private(path, (json.dumps({"version": self.version, "key": self.key.hex()}) + "\n").encode())

    @classmethod
    def load(cls, path: Path) -> LinkageKey:
        try:
            data = json.loads(path.read_text())
            key, version = bytes.fromhex(data["key"]), int(data["version"])
        except (ValueError, KeyError, TypeError):  # JSONDecodeError is a ValueError
            raise ValueError(
                f"{path} is not a linkage key file (its version and key in JSON, as `linkage federation init` "
                "writes it)"
            ) from None
        if len(key) < 32:
            raise ValueError(f"linkage key in {path} is shorter than 32 bytes")
        return cls(version=version, key=key)
