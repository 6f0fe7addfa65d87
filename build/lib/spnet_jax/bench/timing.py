"""Timing of jitted calls, shared by the benchmarks."""

import time

import jax


def time_calls(call, warmup: int, steps: int) -> list[float]:
  """Seconds per call, each ended by a device synchronisation, after `warmup` calls."""
  if steps == 0:  # Compile only.
    return []
  for _ in range(warmup):
    jax.block_until_ready(call())
  seconds = []
  for _ in range(steps):
    start = time.perf_counter()
    jax.block_until_ready(call())
    seconds.append(time.perf_counter() - start)
  return seconds
