"""An agency's node: its own store, the sharing policy, the local API for case
systems, and the stream to the federation gateway."""
