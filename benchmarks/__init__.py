"""Benchmarks of the pipeline on real data: `python -m benchmarks.run` (see benchmarks/results/README.md)."""
