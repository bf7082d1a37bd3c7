"""Benchmarks that print their figures: ``python -m deq.bench solvers [--preset cpu]``."""
