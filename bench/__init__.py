"""Benchmarks (run as scripts); helpers shared by them."""
