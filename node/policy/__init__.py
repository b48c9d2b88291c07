"""The sharing policy: pure code, no I/O and no clock but the one passed in.

A share request goes in; a decision comes out, with a machine-readable reason
code and a plain message for every rule that failed or warns, and the
minimised payload each recipient may receive.
"""

from node.policy.decide import PolicyResult, RecipientInfo, ShareRequest, decide
from node.policy.rules import Finding

__all__ = ["Finding", "PolicyResult", "RecipientInfo", "ShareRequest", "decide"]
