"""What the policy says about a request: a reason code and a plain message."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Finding:
    code: str
    message: str
    severity: str = "error"  # "error" stops the share; "warning" is shown before sending
