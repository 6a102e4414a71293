"""Benchmark scenarios: each module runs one kind of measurement and returns plain data."""
