"""What a refusal says, kept to a length gRPC will carry (and a log will hold).

A refusal often quotes what the caller sent (an unknown agency, a code not in a list), and
a repeated field can name hundreds. gRPC sends the message in a header, percent-encoding
every byte outside printable ASCII as three, and its client may drop headers past 8 KB
(always past 16 KB): a long message would reach the caller as a bare RESOURCE_EXHAUSTED
("Stream removed") in place of the reason. Cut here, the reason stays."""

from __future__ import annotations

# In UTF-8: at most 6 KB percent-encoded, well inside the 8 KB the client takes for certain.
MAX_BYTES = 2_000


def bounded(message: str, most: int = MAX_BYTES) -> str:
    """`message`, or as much of its start as fits in `most` bytes of UTF-8 and how much was
    left out."""
    encoded = message.encode()
    if len(encoded) <= most:
        return message
    kept = encoded[:most].decode(errors="ignore")  # not half a character
    return f"{kept}... ({len(message) - len(kept):,} more characters left out)"
