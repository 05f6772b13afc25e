"""Benchmarks: each a library function with a thin `wavefield bench ...` command over it."""
