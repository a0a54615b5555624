"""Throughput benchmarks: each measures memstream against a baseline in the same run."""
