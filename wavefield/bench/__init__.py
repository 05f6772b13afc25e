"""Benchmarks: speed and memory of the wave mixer and model against attention peers."""
