"""The predict command: any named classes on new images, outputs, and its errors."""

import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from spnet_jax import experiment
from spnet_jax import workdir as workdir_lib
from spnet_jax.data import shapes, splits
from spnet_jax.tools import predict
from tests.conftest import ROOT, subprocess_env, tiny_config

UNSEEN_ONLY = ("background", "red-disc", "green-square", "blue-triangle", "yellow-annulus")


@pytest.fixture(scope="module")
def trained_workdir(shapes_data_dir, tmp_path_factory):
  """A short zero-label run on the tiny shapes data (long enough to learn the colours)."""
  config = tiny_config(shapes_data_dir, num_steps=500, batch_size=8)
  config.train.log_every_steps = 100
  config.optimizer.warmup_steps = 20
  workdir = str(tmp_path_factory.mktemp("predict_run"))
  experiment.train_and_evaluate(config, workdir)
  return workdir


def green_square_image(path: str) -> np.ndarray:
  """A generated 64x64 image: one large green square (an unseen class) on the background."""
  rng = np.random.default_rng(5)
  size = shapes.IMAGE_SIZE
  image = shapes._background(rng, size)
  kind = splits.SHAPE_KINDS.index("square")
  mask = shapes.shape_mask(kind, np.array([32.0, 32.0]), 16.0, 0.3, size)
  colour = shapes.BASE_COLOURS[splits.SHAPE_COLOURS.index("green")]
  image = np.where(mask[:, :, None], colour[None, None, :], image)
  image = np.clip(image + rng.normal(0.0, shapes.PIXEL_NOISE, image.shape), 0, 1)
  Image.fromarray((image * 255).round().astype(np.uint8)).save(path)
  return mask


def test_predict_finds_the_unseen_class_it_was_never_shown(trained_workdir, tmp_path):
  mask = green_square_image(str(tmp_path / "square.png"))
  config = workdir_lib.load_run_config(trained_workdir)
  classes = predict.class_set(config, UNSEEN_ONLY)
  predictor = predict.Predictor(config, trained_workdir, classes)
  out = tmp_path / "out"
  labels = predict.predict_files(predictor, [str(tmp_path / "square.png")], str(out))
  label_map = labels[str(tmp_path / "square.png")]
  green_square = UNSEEN_ONLY.index("green-square")
  assert np.mean(label_map[mask] == green_square) > 0.5  # Most of it, never labelled in training.
  assert np.mean(label_map[~mask] == 0) > 0.8
  written = np.asarray(Image.open(out / "square_labels.png"))
  np.testing.assert_array_equal(written, label_map)
  overlay = np.asarray(Image.open(out / "square_overlay.png"))
  assert overlay.shape[0] == 64 and overlay.shape[1] > 64  # Image plus legend.
  assert (out / "classes.txt").read_text().splitlines()[2] == "2\tgreen-square\tunseen"


def test_folder_of_mixed_sizes_goes_through_the_command(trained_workdir, tmp_path):
  images = tmp_path / "images"
  images.mkdir()
  rng = np.random.default_rng(0)
  for name, shape in (("a.png", (64, 64)), ("b.jpg", (40, 72)), ("c.png", (64, 64))):
    Image.fromarray(rng.integers(0, 255, (*shape, 3), dtype=np.uint8)).save(images / name)
  (images / "notes.txt").write_text("not an image")
  out = tmp_path / "out"
  command = [sys.executable, "-m", "spnet_jax.tools.predict", f"--workdir={trained_workdir}"]
  command += [f"--images={images}", f"--output_dir={out}", "--gamma=0.3", "--overlay_scale=2"]
  result = subprocess.run(command, cwd=ROOT, env=subprocess_env(), capture_output=True, text=True)
  assert result.returncode == 0, result.stderr[-3000:]
  assert "[3/3] images" in result.stdout
  assert np.asarray(Image.open(out / "b_labels.png")).shape == (40, 72)
  assert np.asarray(Image.open(out / "b_overlay.png")).shape[0] == 80
  assert len((out / "classes.txt").read_text().splitlines()) == len(splits.SHAPES_CLASS_NAMES)


def test_npy_embeddings_with_names(trained_workdir, tmp_path):
  config = workdir_lib.load_run_config(trained_workdir)
  from spnet_jax.embeddings import class_embeddings as embeddings

  names = list(splits.SHAPES_CLASS_NAMES)
  matrix = embeddings.attribute_embeddings(tuple(names))
  np.save(tmp_path / "emb.npy", matrix)
  (tmp_path / "names.txt").write_text("\n".join(names))
  classes = predict.class_set(
    config, ["green-square", "background"], str(tmp_path / "emb.npy"), str(tmp_path / "names.txt")
  )
  expected = embeddings.l2_normalize(matrix[[6, 0]])
  np.testing.assert_allclose(classes.vectors, expected, rtol=1e-6)
  assert classes.calibrated.tolist() == [False, True]


def test_unknown_class_name_is_named(trained_workdir):
  config = workdir_lib.load_run_config(trained_workdir)
  with pytest.raises(ValueError, match=r"\['purple-star'\] have no embedding"):
    predict.class_set(config, ["background", "purple-star"])


def test_unreadable_image_is_named(tmp_path):
  bad = tmp_path / "broken.png"
  bad.write_bytes(b"not a png")
  with pytest.raises(ValueError, match=r"Cannot read image .*broken\.png"):
    predict.read_image(str(bad))
  with pytest.raises(ValueError, match="does not exist"):
    predict.list_images([str(tmp_path / "missing.jpg")])


def test_embedding_width_mismatch_is_named(trained_workdir, tmp_path):
  config = workdir_lib.load_run_config(trained_workdir)
  np.save(tmp_path / "wide.npy", np.random.default_rng(0).normal(size=(2, 300)))
  (tmp_path / "names.txt").write_text("cat\ndog\n")
  classes = predict.class_set(
    config, ["cat", "dog"], str(tmp_path / "wide.npy"), str(tmp_path / "names.txt")
  )
  with pytest.raises(ValueError, match=r"d_w=9 dimensions.*have 300 columns"):
    predict.Predictor(config, trained_workdir, classes)


def test_workdir_without_config_says_what_to_do(tmp_path):
  with pytest.raises(ValueError, match=r"config\.json does not exist"):
    workdir_lib.load_run_config(str(tmp_path))
  assert os.path.isdir(tmp_path)


def test_warped_input_predicts_at_each_images_own_size(trained_workdir, tmp_path):
  """Configs that warp (VOC/COCO: 513) resize logits back to every image's original size."""
  mask = green_square_image(str(tmp_path / "square.png"))
  config = workdir_lib.load_run_config(trained_workdir)
  native = predict.Predictor(config, trained_workdir, predict.class_set(config, UNSEEN_ONLY))
  config.data.eval.warp_size = 56
  warped = predict.Predictor(config, trained_workdir, predict.class_set(config, UNSEEN_ONLY))
  square = predict.read_image(str(tmp_path / "square.png"))
  wide = np.asarray(Image.fromarray(square).resize((96, 40)))
  labels = warped.predict_batch([square, wide], gamma=0.0, batch_size=2)
  assert [x.shape for x in labels] == [(64, 64), (40, 96)]
  reference = native.predict_batch([square], gamma=0.0, batch_size=1)[0]
  assert np.mean(labels[0] == reference) > 0.9
  assert np.mean(labels[0][mask] == UNSEEN_ONLY.index("green-square")) > 0.5


def test_raw_word_vector_files_embed_new_names(trained_workdir, tmp_path):
  config = workdir_lib.load_run_config(trained_workdir)
  rng = np.random.default_rng(1)
  words = {w: rng.normal(size=9) for w in ("purple", "star", "background")}
  lines = ["3 9"] + [f"{w} " + " ".join(f"{x:.6f}" for x in v) for w, v in words.items()]
  (tmp_path / "tiny.vec").write_text("\n".join(lines) + "\n")
  classes = predict.class_set(
    config, ["background", "purple-star"], word_vector_files=[str(tmp_path / "tiny.vec")]
  )
  # A name of several words is the mean of its words' vectors, then L2-normalised.
  expected = (words["purple"] + words["star"]) / 2
  np.testing.assert_allclose(classes.vectors[1], expected / np.linalg.norm(expected), atol=1e-5)
  assert classes.calibrated.tolist() == [True, False]
  assert predict.Predictor(config, trained_workdir, classes).classes.names[1] == "purple-star"
  with pytest.raises(ValueError, match="unknown format"):
    predict.class_set(config, ["background"], word_vector_files=[str(tmp_path / "tiny.npz")])
