"""Where each image of a global batch goes when the batch does not divide over the devices.

The paper's batch of 10 does not divide over 4 or 8 chips. Rather than change the recipe, each
global batch is padded with images whose labels are all ignore pixels: the loss, a mean over
labelled pixels of each micro-batch, is then exactly the unpadded one (BatchNorm is frozen, so
no statistic sees the padding either).

Layout of a padded global batch of P rows: rows 0..B-1 hold the B real images in stream order,
rows B..P-1 are padding. With k accumulation steps, micro-batch j takes rows j, j + k, ...
(train/step.py), so it holds the same real images as without padding: row q*k + j is real iff
q < B / k. Process p holds rows [p*P/N, (p+1)*P/N) of N processes.
"""

import dataclasses

from absl import logging

from spnet_jax.errors import UserError


@dataclasses.dataclass(frozen=True)
class BatchLayout:
  """One process's rows of each padded global batch."""

  batch_size: int  # Real images per update (config.train.batch_size).
  padded_size: int  # Rows per update after padding: a multiple of devices x accumulation.
  process_count: int
  process_index: int

  @property
  def local_size(self) -> int:
    """Rows of each global batch this process provides."""
    return self.padded_size // self.process_count

  @property
  def first_row(self) -> int:
    return self.process_index * self.local_size

  @property
  def real_rows(self) -> range:
    """This process's rows that hold real images (global row indices; may be empty)."""
    return range(self.first_row, min(self.first_row + self.local_size, self.batch_size))

  @property
  def padding(self) -> int:
    return self.padded_size - self.batch_size


def padded_batch_size(batch_size: int, devices: int, accumulation_steps: int = 1) -> int:
  """The smallest size >= batch_size that gives every device whole micro-batches of one size.

  Each of the accumulation_steps micro-batches holds batch_size / accumulation_steps real
  images, padded up to a multiple of the device count.
  """
  if batch_size % accumulation_steps:
    raise UserError(
      f"train.batch_size={batch_size} must be divisible by "
      f"train.accumulation_steps={accumulation_steps} (micro-batches of one size)."
    )
  micro = batch_size // accumulation_steps
  return accumulation_steps * (-(-micro // devices) * devices)


def batch_layout(
  batch_size: int,
  devices: int,
  process_count: int,
  process_index: int,
  accumulation_steps: int = 1,
) -> BatchLayout:
  """The padded layout of a global batch over `devices` devices of `process_count` processes."""
  padded = padded_batch_size(batch_size, devices, accumulation_steps)
  return BatchLayout(batch_size, padded, process_count, process_index)


def log_padding(batch_size: int, padded_size: int, devices: int) -> None:
  """Says at start how much compute the padding costs (nothing when there is none)."""
  if padded_size > batch_size:
    logging.warning(
      "The training batch of %d does not divide over %d devices: each update computes %d "
      "rows, %d of them padding images with ignore labels (%.0f%% extra compute; the loss and "
      "gradients are those of the batch of %d). To use every row, choose a batch that divides, "
      "e.g. --config.train.batch_size=%d, and a learning rate for it (README, 'Scaling').",
      batch_size,
      devices,
      padded_size,
      padded_size - batch_size,
      100.0 * (padded_size - batch_size) / batch_size,
      batch_size,
      padded_size,
    )
