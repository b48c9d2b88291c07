"""Benchmarks: Linkage against the bare transport, measured in one run."""
