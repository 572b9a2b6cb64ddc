"""Benchmarks, run on demand (not in CI): ``python -m bench.<name>``. Results are recorded,
with the command and the machine, in docs/benchmarks.md."""
