"""Benchmarks: how much the privacy machinery costs over plain Polars (not tests; run by hand)."""
