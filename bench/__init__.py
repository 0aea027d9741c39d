"""Benchmarks that print their numbers: `python -m bench.<name>` from the repository root."""
