"""Every file of a run in a bucket (gs://), on a local GCS emulator: the path layer file by file,
then a gs:// workdir end to end (kill -9 and resume, evaluate, predict, figures).

The unit tests run each file kind three ways: on the emulator (epath through gcsfs), on the
local disk, and on the local disk through TensorFlow's gfile, the backend epath gives gs://
paths in production, which cannot be pointed at an emulator (tests/gcs_emulator.py).
"""

import io
import os
import pickle
import re
import signal
import subprocess
import sys
import time

import fsspec
import jax
import numpy as np
import pytest
from etils.epath import backend as epath_backend
from etils.epath import gpath
from PIL import Image

from spnet_jax import config_validation, paths, workdir_lock
from spnet_jax import workdir as workdir_lib
from spnet_jax.data import fewshot, safe_pickle, splits
from spnet_jax.embeddings import class_embeddings, word_vectors
from spnet_jax.errors import UserError
from spnet_jax.evaluation import calibration
from spnet_jax.interop import convert
from spnet_jax.tools import figures, predict, report
from spnet_jax.train import checkpoint
from spnet_jax.zsl import data as zsl_data

from . import gcs_emulator
from .conftest import ROOT, subprocess_env, tiny_config
from .test_figures import _synthetic_workdir
from .test_resume import _assert_same_tree, _command, _params
from .test_word_vectors import _write_bin, _write_vec
from .test_zsl import write_xlsa17

SHAPES = splits.get_split("shapes", "default")


@pytest.fixture(scope="module")
def gcs(tmp_path_factory):
  """The emulator's environment, also set in this process while the module's tests run."""
  log = str(tmp_path_factory.mktemp("gcs") / "emulator.log")
  with gcs_emulator.running(log) as url, pytest.MonkeyPatch.context() as patch:
    env = gcs_emulator.environment(url)
    for key, value in env.items():
      patch.setenv(key, value)
    # fsspec read its FSSPEC_* variables when it was imported; gcsfs lists afresh each time, as
    # subprocesses write to the same bucket.
    patch.setitem(fsspec.config.conf, "gcs", {"token": "anon", "use_listings_cache": False})
    # epath decides once per process whether gs:// goes through TensorFlow (EPATH_USE_TF).
    gpath._is_tf_installed.cache_clear()
    # gcsfs picks its class when imported (GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT): the plain one,
    # should something have imported it before.
    import gcsfs.core

    patch.setattr(gcsfs, "GCSFileSystem", gcsfs.core.GCSFileSystem)
    yield env
  gpath._is_tf_installed.cache_clear()


@pytest.fixture(params=["gs", "local", "gfile"])
def root(request, tmp_path, monkeypatch):
  """A folder for one test: in the emulator's bucket, local, or local through TF's gfile."""
  if request.param == "gs":
    request.getfixturevalue("gcs")
    yield f"gs://{gcs_emulator.BUCKET}/{tmp_path.name}"
    # Nothing went to a local folder named after the URI (os.path.abspath('gs://...') does).
    assert gcs_emulator.local_uri_folders(ROOT, os.getcwd(), str(tmp_path)) == []
    return
  if request.param == "gfile":
    # What etils' own epath.testing does to swap backends.
    monkeypatch.setitem(gpath._PREFIX_TO_BACKEND, None, epath_backend.tf_backend)
  yield str(tmp_path / "root")


def _join(*parts: str) -> str:
  return "/".join(parts)


def _upload_tree(local: str, target: str) -> None:
  """Copies the files of a local folder to `target` (any path) through the path layer."""
  for folder, _, names in os.walk(local):
    for name in names:
      relative = os.path.relpath(os.path.join(folder, name), local)
      with open(os.path.join(folder, name), "rb") as f:
        paths.write_bytes(_join(target, relative), f.read())


# ---------------------------------------------------------------------------------------------
# (a) The path layer, file kind by file kind.


def test_paths_keep_uris_and_make_local_paths_absolute(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  assert str(paths.absolute("gs://bucket/run")) == "gs://bucket/run"
  assert str(paths.absolute("run")) == str(tmp_path / "run")
  assert str(paths.absolute("~/run")) == os.path.expanduser("~/run")
  assert str(paths.as_path("~/run")) == os.path.expanduser("~/run")
  assert str(paths.as_path("run")) == "run"
  assert paths.is_uri("gs://b/x") and not paths.is_uri("/tmp/gs:/b")


def test_json_text_and_arrays(root):
  path = _join(root, "sub", "a.json")
  paths.write_json(path, {"x": [1, 2]})
  assert paths.read_json(path) == {"x": [1, 2]}
  with pytest.raises(ValueError, match=r"b\.json does not exist: make it first"):
    paths.read_json(_join(root, "b.json"), "make it first")
  array = np.arange(12.0).reshape(3, 4)
  paths.save_array(_join(root, "m.npy"), array)
  np.testing.assert_array_equal(paths.load_array(_join(root, "m.npy")), array)
  paths.save_arrays(_join(root, "c.npz"), a=array, b=np.eye(2, dtype=np.int64))
  loaded = paths.load_arrays(_join(root, "c.npz"))
  assert sorted(loaded) == ["a", "b"] and loaded["b"].dtype == np.int64


def test_run_config_results_and_gamma_file(root, fast_config):
  workdir = _join(root, "run")
  workdir_lib.write_config(workdir, fast_config)
  assert workdir_lib.load_run_config(workdir).model.dilations == (1, 2)
  workdir_lib.write_json(_join(workdir, "results.json"), {"miou": float("nan")})
  assert paths.read_json(_join(workdir, "results.json")) == {"miou": None}
  with pytest.raises(ValueError, match="not a training workdir"):
    workdir_lib.load_run_config(_join(root, "elsewhere"))

  sweep = {"gammas": [0.0, 0.5], "seen_miou": [0.5, 0.4], "unseen_miou": [0.1, 0.3]}
  sweep.update(harmonic=[0.17, 0.34], best_gamma=0.5)
  written = calibration.write_sweep(workdir, sweep, ["cat"], step=3)
  assert written == _join(workdir, "calibration.json")
  assert paths.read_bytes(_join(workdir, "calibration.png")).startswith(b"\x89PNG")
  assert calibration.read_gamma(written)[0] == 0.5
  fast_config.eval.gamma_file = written
  config_validation.validate_config(fast_config)
  fast_config.eval.gamma_file = _join(root, "none.json")
  with pytest.raises(ValueError, match=r"eval\.gamma_file"):
    config_validation.validate_config(fast_config)


def test_checkpoints_save_and_restore(root):
  manager = checkpoint.create_manager(_join(root, "run"), max_to_keep=2)
  assert str(manager.directory) == str(paths.absolute(_join(root, "run", "checkpoints")))
  state = {"w": np.arange(4.0, dtype=np.float32)}
  checkpoint.save(manager, 3, state)
  manager.wait_until_finished()
  sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  abstract = checkpoint.abstract_with_sharding(state, sharding)
  restored = checkpoint.restore(manager, abstract)
  np.testing.assert_array_equal(restored["w"], state["w"])
  # A damaged step 4 (its checksum no longer matches) is moved aside by a training rerun.
  checkpoint.save(manager, 4, {"w": np.ones(4, np.float32)})
  manager.wait_until_finished()
  sums_path = _join(root, "run", checkpoint.CHECKSUMS_DIR, "4.json")
  sums = paths.read_json(sums_path)
  sums["['w']"]["crc32"] = "00000000"
  paths.write_json(sums_path, sums)
  with pytest.raises(checkpoint.CheckpointError, match=r"step 4 .* is damaged"):
    checkpoint.restore(manager, abstract)
  restored = checkpoint.restore(manager, abstract, fallback=True)
  np.testing.assert_array_equal(restored["w"], state["w"])
  assert manager.all_steps() == [3]
  assert paths.exists(_join(root, "run", checkpoint.UNUSABLE_DIR, "4", "default"))
  manager.close()


def test_workdir_lock(root):
  workdir = _join(root, "run")
  with workdir_lock.WorkdirLock(workdir):
    assert paths.read_json(_join(workdir, workdir_lock.LOCK_FILE))["pid"] == os.getpid()
    with pytest.raises(UserError, match=f"{workdir} is in use by process {os.getpid()}"):
      workdir_lock.WorkdirLock(workdir).acquire()
  assert not paths.exists(_join(workdir, workdir_lock.LOCK_FILE))
  # A holder on another host silent for longer than stale_secs is taken over.
  holder = {"host": "elsewhere", "pid": 1, "heartbeat": time.time() - 100}
  paths.write_json(_join(workdir, workdir_lock.LOCK_FILE), holder)
  with pytest.raises(UserError, match="in use by process 1 on host elsewhere"):
    workdir_lock.WorkdirLock(workdir, stale_secs=200).acquire()
  with workdir_lock.WorkdirLock(workdir, stale_secs=50):
    assert paths.read_json(_join(workdir, workdir_lock.LOCK_FILE))["pid"] == os.getpid()


def test_figures_and_report_of_a_workdir(root, tmp_path):
  _upload_tree(_synthetic_workdir(tmp_path / "synthetic"), _join(root, "run"))
  written = figures.workdir_figures(_join(root, "run"))
  assert written == [
    _join(root, "run", figures.PER_CLASS_FIGURE),
    _join(root, "run", "calibration_curve.png"),
  ]
  for path in written:
    assert paths.read_bytes(path).startswith(b"\x89PNG")
  assert "| run |" in report.markdown_table([_join(root, "run")])
  report.write_suite_report(root, {"seeds": [0], "zero_label": [], "few_label": [], "checks": []})
  assert paths.read_json(_join(root, "suite.json"))["seeds"] == [0]
  assert paths.exists(_join(root, "results.md"))


def test_embeddings_word_vectors_and_pickles(root, tmp_path):
  rng = np.random.default_rng(0)
  words = {w for name in SHAPES.class_names for w in word_vectors.class_name_words(name)}
  vocabulary = [(w, rng.normal(size=4).astype(np.float32)) for w in sorted(words)]
  (tmp_path / "vocab").mkdir()
  _write_vec(tmp_path / "vocab" / "v.vec", vocabulary)
  _write_bin(tmp_path / "vocab" / "v.bin", vocabulary)
  _upload_tree(str(tmp_path / "vocab"), _join(root, "vocab"))
  fasttext = word_vectors.write_class_embeddings(
    "shapes", "fasttext", _join(root, "vocab", "v.vec"), _join(root, "out", "fasttext.npy")
  )
  word2vec = word_vectors.build_class_embeddings(
    _join(root, "vocab", "v.bin"), "word2vec", SHAPES.class_names
  )
  np.testing.assert_allclose(word2vec, fasttext, rtol=1e-6)
  loaded = class_embeddings.load_npy(_join(root, "out", "fasttext.npy"), SHAPES.num_classes)
  np.testing.assert_array_equal(loaded, fasttext)

  paths.write_bytes(_join(root, "w.pkl"), pickle.dumps(fasttext, protocol=3))
  np.testing.assert_array_equal(class_embeddings.load_pkl(_join(root, "w.pkl"), 17), fasttext)
  paths.write_bytes(_join(root, "evil.pkl"), pickle.dumps(os.system, protocol=3))
  with pytest.raises(pickle.UnpicklingError, match="Refused global"):
    safe_pickle.load_pickle(_join(root, "evil.pkl"))


def test_few_label_lists(root):
  lists = {0: ["b", "a"], 3: [], 17: ["x_000001"]}
  path = _join(root, "lists", "class_image_lists.train.json")
  fewshot.save_class_image_lists(path, lists)
  assert fewshot.load_class_image_lists(path) == lists
  assert [p.name for p in paths.as_path(_join(root, "lists")).iterdir()] == [os.path.basename(path)]
  positions = {1: np.array([2, 0]), 2: np.array([1])}
  paths.write_bytes(_join(root, "inverse_dict_train.pkl"), pickle.dumps(positions, protocol=3))
  paths.write_text(_join(root, "train_ids.txt"), "a\nb\nc\n")
  spnet = fewshot.lists_from_spnet_pickle(
    _join(root, "inverse_dict_train.pkl"), _join(root, "train_ids.txt")
  )
  assert spnet == {1: ["c", "a"], 2: ["b"]}


def test_converted_checkpoints_and_pth_files(root):
  variables = {"params": {"conv": {"kernel": np.arange(6.0, dtype=np.float32).reshape(2, 3)}}}
  variables["batch_stats"] = {"bn": {"mean": np.ones(3, np.float32)}}
  convert.save_converted(_join(root, "converted"), variables, {"arch": "vgg16"})
  loaded, metadata = convert.load_converted(_join(root, "converted"))
  assert metadata == {"arch": "vgg16"}
  _assert_same_tree(loaded, variables)
  with pytest.raises(UserError, match="not a finished"):
    convert.load_converted(_join(root, "nothing"))
  torch = pytest.importorskip("torch")
  buffer = io.BytesIO()
  torch.save({"w": torch.ones(2)}, buffer)
  paths.write_bytes(_join(root, "weights.pth"), buffer.getvalue())
  assert convert.load_torch_checkpoint(_join(root, "weights.pth"))["w"].tolist() == [1.0, 1.0]


def test_zero_shot_classification_files(root, tmp_path):
  truth = write_xlsa17(str(tmp_path / "xlsa17"))
  _upload_tree(str(tmp_path / "xlsa17"), _join(root, "xlsa17"))
  dataset = zsl_data.load_dataset(_join(root, "xlsa17"), "CUB")
  np.testing.assert_allclose(dataset.features, truth["features"])
  with pytest.raises(ValueError, match="Missing"):
    zsl_data.load_dataset(_join(root, "xlsa17"), "SUN")


def test_predict_inputs_and_outputs(root):
  rng = np.random.default_rng(0)
  for name in ("a.png", "b.jpg"):
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (8, 12, 3), dtype=np.uint8)).save(buffer, format="PNG")
    paths.write_bytes(_join(root, "images", name), buffer.getvalue())
  paths.write_text(_join(root, "images", "notes.txt"), "not an image")
  files = predict.list_images([_join(root, "images")])
  assert files == [_join(root, "images", "a.png"), _join(root, "images", "b.jpg")]
  image = predict.read_image(files[0])
  paths.write_text(_join(root, "names.txt"), "background\nred-disc\n")
  names = predict.read_names_file(_join(root, "names.txt"))
  classes = predict.ClassSet(tuple(names), np.eye(2, dtype=np.float32), np.ones(2, bool), "test")
  labels = np.zeros(image.shape[:2], np.int32)
  predict.write_outputs(_join(root, "out"), files[0], image, labels, classes)
  with Image.open(io.BytesIO(paths.read_bytes(_join(root, "out", "a_labels.png")))) as written:
    np.testing.assert_array_equal(np.asarray(written), labels)
  assert paths.exists(_join(root, "out", "a_overlay.png"))


def test_summaries_of_a_bucket_workdir_are_copied_there(gcs, tmp_path):
  workdir = f"gs://{gcs_emulator.BUCKET}/{tmp_path.name}"
  writer = workdir_lib.create_writer(workdir)
  writer.write_scalars(1, {"train_loss": 0.5})
  writer.flush()
  events = [p for p in paths.as_path(workdir).iterdir() if p.name.startswith("events.out")]
  assert len(events) == 1
  writer.write_scalars(2, {"train_loss": 0.25})
  writer.close()
  assert _scalars(str(events[0]), tmp_path) == {1: 0.5, 2: 0.25}


def test_event_copier_copies_changed_files_only(tmp_path):
  staging, destination = tmp_path / "staging", str(tmp_path / "destination")
  staging.mkdir()
  copier = workdir_lib.EventCopier(str(staging), destination, every_secs=3600)
  (staging / "events.a").write_bytes(b"1")
  copier.write_scalars(1, {})  # Too soon for a periodic copy.
  assert not os.path.exists(destination)
  assert copier.copy() == ["events.a"]
  assert copier.copy() == []
  (staging / "events.a").write_bytes(b"12")
  (staging / "events.b").write_bytes(b"3")
  copier.close()
  assert sorted(os.listdir(destination)) == ["events.a", "events.b"]
  assert (tmp_path / "destination" / "events.a").read_bytes() == b"12"
  assert not staging.exists()


def _scalars(events_path: str, tmp_path) -> dict[int, float]:
  """{step: train_loss} of an event file (read through the path layer, parsed locally)."""
  import tensorflow as tf

  local = tmp_path / "events.copy"
  local.write_bytes(paths.read_bytes(events_path))
  found = {}
  for event in tf.compat.v1.train.summary_iterator(str(local)):
    for value in event.summary.value:
      if value.tag == "train_loss":
        found[event.step] = float(tf.make_ndarray(value.tensor))
  return found


# ---------------------------------------------------------------------------------------------
# (b) A gs:// workdir end to end.


def _run(command: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
  result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  return result


@pytest.mark.multiprocess
def test_bucket_workdir_resumes_after_kill_9_and_serves_evaluate_predict_figures(
  gcs, shapes_data_dir, tmp_path
):
  env = {**subprocess_env(), **gcs}
  workdir = f"gs://{gcs_emulator.BUCKET}/run"
  # Class embeddings from an .npy file (the shapes attribute vectors), in the bucket for the
  # bucket run and on local disk for the reference run.
  config = tiny_config(shapes_data_dir)
  matrix = class_embeddings.attribute_embeddings(
    SHAPES.class_names, config.embeddings.extra_dim, config.embeddings.seed
  )
  local_npy, bucket_npy = str(tmp_path / "attributes.npy"), f"gs://{gcs_emulator.BUCKET}/a.npy"
  np.save(local_npy, matrix)
  paths.save_array(bucket_npy, matrix)
  embeddings = lambda npy: ("--config.embeddings.source=files", f"--config.embeddings.paths={npy}")
  reference = str(tmp_path / "reference")
  _run(_command(reference, shapes_data_dir, *embeddings(local_npy)), subprocess_env())
  # The dataset in the bucket too, as a user copies a prepared TFDS folder there.
  data_dir = f"gs://{gcs_emulator.BUCKET}/tfds"
  _upload_tree(shapes_data_dir, data_dir)
  run_command = _command(workdir, data_dir, *embeddings(bucket_npy))

  process = subprocess.Popen(
    run_command,
    cwd=ROOT,
    env=env,
    stdout=subprocess.DEVNULL,
    stderr=subprocess.PIPE,
    text=True,
  )
  for line in process.stderr:
    # By step 9 the save of step 4 has completed (a save waits for the one before it).
    if "step 9/12" in line:
      process.send_signal(signal.SIGKILL)
      break
  process.wait(timeout=60)
  assert process.returncode == -signal.SIGKILL
  rerun = _run(run_command, env)
  assert re.search(r"Restored checkpoint step (4|8) from gs://bucket/run/checkpoints", rerun.stderr)
  _assert_same_tree(_params(workdir, 12), _params(reference, 12))
  results = paths.read_json(_join(workdir, "results.json"))
  assert results["step"] == 12
  events = [p for p in paths.as_path(workdir).iterdir() if p.name.startswith("events.out")]
  # The rerun's events (the killed run's came before its first copy, EVENTS_COPY_SECS).
  assert any(12 in _scalars(str(p), tmp_path) for p in events)

  # Evaluation with a gamma file from the bucket (the embeddings come from there too).
  sweep = {"gammas": [0.0, 0.5], "seen_miou": [0.5, 0.4], "unseen_miou": [0.1, 0.3]}
  sweep.update(harmonic=[0.17, 0.34], best_gamma=0.5)
  gamma_file = calibration.write_sweep(f"gs://{gcs_emulator.BUCKET}/held_out", sweep, ["x"], 1)
  overrides = ("--config.mode=evaluate", f"--config.eval.gamma_file={gamma_file}")
  evaluated = _run([*run_command, *overrides], env)
  assert "Restored checkpoint step 12 " in evaluated.stderr
  again = paths.read_json(_join(workdir, "results.json"))
  assert again["test"]["zlss"] == results["test"]["zlss"]
  assert again["test"]["gzlss"]["calibrated"]["gamma"] == 0.5

  buffer = io.BytesIO()
  Image.fromarray(np.full((64, 64, 3), 90, np.uint8)).save(buffer, format="PNG")
  paths.write_bytes(f"gs://{gcs_emulator.BUCKET}/images/grey.png", buffer.getvalue())
  output = f"gs://{gcs_emulator.BUCKET}/predictions"
  command = [sys.executable, "-m", "spnet_jax.tools.predict", f"--workdir={workdir}"]
  command += [f"--images=gs://{gcs_emulator.BUCKET}/images", f"--output_dir={output}"]
  assert "[1/1] images" in _run(command, env).stdout
  assert paths.exists(_join(output, "grey_labels.png"))
  assert paths.read_text(_join(output, "classes.txt")).startswith("0\tbackground\t")

  command = [sys.executable, "-m", "spnet_jax.tools.figures", f"--workdir={workdir}"]
  assert _run(command, env).stdout.split() == [
    _join(workdir, figures.PER_CLASS_FIGURE),
    _join(workdir, figures.CALIBRATION_FIGURE),
  ]
  assert paths.read_bytes(_join(workdir, figures.PER_CLASS_FIGURE)).startswith(b"\x89PNG")
  # No local folder named after the URI (what os.path.abspath('gs://...') makes).
  assert gcs_emulator.local_uri_folders(ROOT, str(tmp_path), os.getcwd()) == []
