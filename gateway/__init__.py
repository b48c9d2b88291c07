"""The federation gateway: routes sealed envelopes by family-link subscription.

It holds the signed directory, the subscription index and who is connected.
It never holds content, identifiers, node private keys or the linkage key.
"""
