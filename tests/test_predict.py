"""The predict command: any named classes on new images, outputs, and its errors."""

import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from spnet_jax import errors, experiment
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


@pytest.fixture(scope="module")
def unseen_predictor(trained_workdir):
  config = workdir_lib.load_run_config(trained_workdir)
  return predict.Predictor(config, trained_workdir, predict.class_set(config, UNSEEN_ONLY))


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
  with pytest.raises(errors.UserError, match=r"Cannot read image .*broken\.png"):
    predict.read_image(str(bad))
  missing = str(tmp_path / "missing.jpg")
  assert predict.list_images([missing]) == [missing]  # Reported when read, the rest predicted.
  with pytest.raises(errors.UserError, match=r"missing\.jpg does not exist"):
    predict.read_image(missing)


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


def _command(workdir: str, *args: str) -> subprocess.CompletedProcess:
  command = [sys.executable, "-m", "spnet_jax.tools.predict", f"--workdir={workdir}", *args]
  return subprocess.run(command, cwd=ROOT, env=subprocess_env(), capture_output=True, text=True)


def _save_random(path, shape, seed=0) -> None:
  rng = np.random.default_rng(seed)
  Image.fromarray(rng.integers(0, 255, (*shape, 3), dtype=np.uint8)).save(path)


def test_shared_names_unreadable_files_and_a_large_image_through_the_command(
  trained_workdir, tmp_path
):
  for folder in ("x", "y"):
    (tmp_path / folder).mkdir()
  _save_random(tmp_path / "x" / "a.png", (64, 64))
  _save_random(tmp_path / "x" / "a.jpg", (64, 64), seed=1)
  _save_random(tmp_path / "y" / "a.png", (40, 72), seed=2)
  (tmp_path / "x" / "broken.png").write_text("not an image")
  _save_random(tmp_path / "cut.jpg", (64, 64), seed=3)
  (tmp_path / "x" / "cut.jpg").write_bytes((tmp_path / "cut.jpg").read_bytes()[:400])
  _save_random(tmp_path / "big.png", (150, 200), seed=4)
  images = ["x", "y", "gone.png", "big.png"]
  out = tmp_path / "out"
  result = _command(
    trained_workdir,
    f"--images={','.join(str(tmp_path / i) for i in images)}",
    f"--output_dir={out}",
    "--max_side=64",
    "--batch_size=2",
  )
  log = result.stdout + result.stderr
  assert result.returncode == 1, log[-3000:]
  assert "Traceback" not in log
  # The unreadable ones are named, one line each; the others are all written.
  assert f"Skipped: Cannot read image {tmp_path / 'x' / 'broken.png'}" in log
  assert f"Skipped: Cannot read image {tmp_path / 'x' / 'cut.jpg'}" in log
  assert f"Skipped: Image {tmp_path / 'gone.png'} does not exist." in log
  assert "Predicted 4 of 7 images in " in log and "3 could not be read" in log
  # Same stem: longer names, none overwritten, and the log says so.
  assert f"{tmp_path / 'x' / 'a.png'} -> x_a_png" in log
  for name, shape in (("x_a_png", (64, 64)), ("y_a_png", (40, 72)), ("a_jpg", (64, 64))):
    assert np.asarray(Image.open(out / f"{name}_labels.png")).shape == shape
  # Larger than --max_side: announced, run at 64 x 48, labels at its own size.
  assert f"image 7/7: {tmp_path / 'big.png'} (200 x 150, resized to 64 x 48)" in log
  assert np.asarray(Image.open(out / "big_labels.png")).shape == (150, 200)
  assert np.asarray(Image.open(out / "big_overlay.png")).shape[0] == 150


def test_bad_batch_size_is_refused_before_anything_runs(trained_workdir, tmp_path):
  image = tmp_path / "a.png"
  _save_random(image, (64, 64))
  result = _command(
    trained_workdir, f"--images={image}", f"--output_dir={tmp_path}", "--batch_size=-1"
  )
  assert result.returncode != 0
  assert "--batch_size -1" in result.stderr
  assert "Wrote" not in result.stdout and not (tmp_path / "classes.txt").exists()


def test_large_image_runs_at_max_side_and_labels_come_back_at_its_size(
  unseen_predictor, tmp_path, monkeypatch
):
  green_square_image(str(tmp_path / "square.png"))
  square = Image.open(tmp_path / "square.png")
  big = np.asarray(square.resize((256, 192), Image.Resampling.NEAREST))
  Image.fromarray(big).save(tmp_path / "big.png")
  shapes_seen = []
  predict_batch = unseen_predictor.predict_batch

  def spy(images, gamma, batch_size):
    shapes_seen.extend(im.shape[:2] for im in images)
    return predict_batch(images, gamma, batch_size)

  monkeypatch.setattr(unseen_predictor, "predict_batch", spy)
  path = str(tmp_path / "big.png")
  labels = predict.predict_files(unseen_predictor, [path], str(tmp_path / "out"), max_side=64)
  assert shapes_seen == [(48, 64)]
  shrunk = predict.shrink_image(big, (48, 64))
  small = predict_batch([shrunk], gamma=0.0, batch_size=8)[0]
  expected = np.repeat(np.repeat(small, 4, axis=0), 4, axis=1)  # 4x: nearest is a repeat.
  np.testing.assert_array_equal(labels[path], expected)


def test_images_are_decoded_one_batch_at_a_time(unseen_predictor, tmp_path, monkeypatch):
  files = []
  for i in range(3):
    _save_random(tmp_path / f"{i}.png", (64, 64), seed=i)
    files.append(str(tmp_path / f"{i}.png"))
  events = []
  read_image, predict_batch = predict.read_image, unseen_predictor.predict_batch
  monkeypatch.setattr(predict, "read_image", lambda path: events.append("read") or read_image(path))
  monkeypatch.setattr(
    unseen_predictor,
    "predict_batch",
    lambda *args: events.append("predict") or predict_batch(*args),
  )
  predict.predict_files(unseen_predictor, files, str(tmp_path / "out"), batch_size=1)
  assert events == ["read", "predict"] * 3


def test_no_images_is_a_user_error(unseen_predictor, tmp_path):
  with pytest.raises(errors.UserError, match="No images to predict"):
    predict.predict_files(unseen_predictor, [], str(tmp_path / "out"))
