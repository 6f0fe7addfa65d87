"""Fakes and references shared by the tests and the benchmarks."""
