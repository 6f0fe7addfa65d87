"""Benchmarks: the training step, convolutions, the input pipeline, PyTorch timing."""
