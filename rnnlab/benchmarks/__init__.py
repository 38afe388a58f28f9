"""Benchmarks behind ``rnnlab bench``: each returns a JSON-able dict of timings and ratios
measured in one run (never asserted in tests)."""
