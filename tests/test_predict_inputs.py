"""predict's inputs, no model needed: image modes, output names and the options' ranges."""

import math
from fractions import Fraction

import numpy as np
import pytest
from PIL import Image

from spnet_jax import errors
from spnet_jax.tools import predict


def _read_back(image: Image.Image, path) -> np.ndarray:
  """Saves `image` to `path` (format from the suffix) and reads it the way predict does."""
  image.save(path)
  return predict.read_image(str(path))


def _grey_rgb(grey) -> np.ndarray:
  grey = np.asarray(grey, np.uint8)
  return np.stack([grey, grey, grey], axis=-1)


def test_16_bit_grey_png_maps_0_to_65535_linearly(tmp_path):
  values = np.array([[0, 1, 128, 129, 257, 1000], [32767, 32768, 40000, 65279, 65534, 65535]])
  path = tmp_path / "depth.png"
  Image.fromarray(values.astype(np.uint16)).save(path)
  assert Image.open(path).mode == "I;16"
  # v * 255 / 65535 rounded half up, in integers.
  expected = (values * 255 * 2 + 65535) // (2 * 65535)
  np.testing.assert_array_equal(predict.read_image(str(path)), _grey_rgb(expected))


def test_32_bit_integer_image_scales_by_its_range(tmp_path):
  sixteen_bit = np.array([[0, 257, 65535]], np.int32)
  got = _read_back(Image.fromarray(sixteen_bit, mode="I"), tmp_path / "small.tif")
  np.testing.assert_array_equal(got, _grey_rgb([[0, 1, 255]]))
  wide = np.array([[-(2**31), -1, 0, 2**20, 2**31 - 1]], np.int64)
  got = _read_back(Image.fromarray(wide.astype(np.int32), mode="I"), tmp_path / "wide.tif")
  expected = [[round(Fraction(v + 2**31) * 255 / (2**32 - 1)) for v in wide[0]]]
  np.testing.assert_array_equal(got, _grey_rgb(expected))


def test_float_image_maps_0_to_1_and_clips(tmp_path):
  values = np.array([[-0.5, 0.0, 0.1, 0.5, 1.0, 3.0]], np.float32)
  got = _read_back(Image.fromarray(values, mode="F"), tmp_path / "float.tif")
  expected = [[0, 0, round(0.1 * 255), round(0.5 * 255), 255, 255]]
  np.testing.assert_array_equal(got, _grey_rgb(expected))


def test_palette_image_goes_through_its_palette_transparency_dropped(tmp_path):
  rng = np.random.default_rng(0)
  indices = rng.integers(0, 4, (6, 5)).astype(np.uint8)
  colours = np.array([[10, 20, 30], [200, 0, 50], [0, 255, 0], [90, 90, 240]], np.uint8)
  image = Image.fromarray(indices, mode="P")
  image.putpalette(colours.reshape(-1).tolist())
  image.info["transparency"] = 0  # Index 0 transparent: its colour is kept all the same.
  np.testing.assert_array_equal(_read_back(image, tmp_path / "palette.png"), colours[indices])


@pytest.mark.parametrize("mode", ["L", "1", "LA", "RGBA", "CMYK"])
def test_other_modes_against_numpy(mode, tmp_path):
  rng = np.random.default_rng(1)
  bands = len(mode) if mode != "1" else 1
  data = rng.integers(0, 256, (7, 9, bands)).astype(np.uint8)
  if mode == "1":
    data = np.where(data > 127, 255, 0).astype(np.uint8)
  image = Image.fromarray(data[..., 0] if bands == 1 else data, mode="L" if bands == 1 else mode)
  image = image.convert("1") if mode == "1" else image
  if mode in ("L", "1", "LA"):
    expected = _grey_rgb(data[..., 0])  # Alpha dropped.
  elif mode == "RGBA":
    expected = data[..., :3]  # Alpha dropped: the stored colour, not composited.
  else:
    ink = (255 - data[..., :3].astype(np.int64)) * (255 - data[..., 3:].astype(np.int64))
    expected = np.round(ink / 255).astype(np.uint8)
  suffix = ".tif" if mode == "CMYK" else ".png"
  np.testing.assert_array_equal(_read_back(image, tmp_path / f"image{suffix}"), expected)


def test_stems_shared_by_several_inputs_get_longer_names():
  names = predict.output_names
  assert names(["x/a.png", "x/b.jpg"]) == {"x/a.png": "a", "x/b.jpg": "b"}
  assert names(["x/a.png", "x/a.jpg", "x/b.png"]) == {
    "x/a.png": "a_png",
    "x/a.jpg": "a_jpg",
    "x/b.png": "b",
  }
  assert names(["p/x/a.png", "p/y/a.png", "q/y/a.png"]) == {
    "p/x/a.png": "x_a_png",
    "p/y/a.png": "p_y_a_png",
    "q/y/a.png": "q_y_a_png",
  }
  # Case-insensitive disks: A.png and a.jpg would be one file.
  assert names(["A.png", "a.jpg"]) == {"A.png": "A_png", "a.jpg": "a_jpg"}
  # A longer name that meets another file's stem makes that one longer too.
  assert names(["a.png", "a.jpg", "a_png.jpg"]) == {
    "a.png": "a_png",
    "a.jpg": "a_jpg",
    "a_png.jpg": "a_png_jpg",
  }
  # Nothing left to tell them apart: numbered in input order.
  assert names(["a.png", "./a.png"]) == {"a.png": "a_png", "./a.png": "a_png_2"}


@pytest.mark.parametrize(
  "options, flag",
  [
    ({"batch_size": 0}, "--batch_size 0"),
    ({"batch_size": -1}, "--batch_size -1"),
    ({"overlay_scale": 0}, "--overlay_scale 0"),
    ({"checkpoint_step": -1}, "--checkpoint_step -1"),
    ({"gamma": -0.1}, "--gamma -0.1"),
    ({"gamma": 1.5}, "--gamma 1.5"),
    ({"gamma": math.nan}, "--gamma nan"),
    ({"max_side": -1}, "--max_side -1"),
    ({"max_side": 8}, "--max_side 8"),
  ],
)
def test_options_out_of_range_are_refused(options, flag):
  with pytest.raises(errors.UserError, match=flag):
    predict.check_options(**options)


def test_options_in_range_pass():
  predict.check_options(gamma=1.0, batch_size=1, overlay_scale=1, checkpoint_step=0, max_side=0)
  predict.check_options(gamma=0.0, max_side=predict.MIN_MAX_SIDE)


def test_large_sizes_shrink_to_max_side_aspect_kept():
  assert predict.network_size((3000, 4000), 1024) == (768, 1024)
  assert predict.network_size((4000, 30), 1024) == (1024, 8)
  assert predict.network_size((600, 800), 1024) == (600, 800)
  assert predict.network_size((3000, 4000), 0) == (3000, 4000)
  labels = np.array([[0, 1], [2, 3]])
  np.testing.assert_array_equal(
    predict.enlarge_labels(labels, (4, 6)),
    [[0, 0, 0, 1, 1, 1], [0, 0, 0, 1, 1, 1], [2, 2, 2, 3, 3, 3], [2, 2, 2, 3, 3, 3]],
  )
