"""What the host this process runs on offers (CPU cores), without importing TensorFlow."""

import os


def usable_cores() -> int:
  """CPU cores this process may run on (what tf.data's thread pool and XLA:CPU can use)."""
  return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
