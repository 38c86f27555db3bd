"""Benchmarks print their figures; `make bench` runs them all."""
