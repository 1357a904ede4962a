"""Benchmarks: `make bench` (BENCH_QUICK=1 for a short run). Ratios against a baseline measured in the same run."""
