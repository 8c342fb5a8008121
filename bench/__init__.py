"""Benchmarks: every figure is a ratio against an alternative measured in the same run."""
