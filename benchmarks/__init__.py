"""Benchmarks: the timing protocol and the scripts that reproduce benchmarks/RESULTS.md."""
