"""Linkage: a federated exchange of signed, minimised risk-assessment summaries.

This package holds what the node and the gateway share: the generated protocol
(`linkage.v1`), identities and keys, the envelope, the signed directory,
configuration and logging. `node` and `gateway` import from here and never
from each other.
"""

__version__ = "0.1.0"
