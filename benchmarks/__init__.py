"""Benchmarks of raydf against a faithful seed-style run on the same data (`python -m benchmarks.run`)."""
