"""The sharing policy: pure code, no I/O and no clock but the one passed in.

A share request goes in; a decision comes out, with a machine-readable reason
code and a plain message for every rule that failed or warns, and the
minimised payload each recipient may receive under the data-sharing agreement.
"""

from node.policy.agreement import Agreement, RecipientRules
from node.policy.decide import PolicyContext, PolicyResult, RecipientInfo, ShareRequest, decide
from node.policy.findings import Finding
from node.policy.glossary import Glossary

__all__ = [
    "Agreement",
    "Finding",
    "Glossary",
    "PolicyContext",
    "PolicyResult",
    "RecipientInfo",
    "RecipientRules",
    "ShareRequest",
    "decide",
]
