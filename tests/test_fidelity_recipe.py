"""The paper configs against SPNet's own code: hyperparameters, learning rates, few-label pools.

The official code and configs (../shared/spnet_reference/original/) are the oracle: their yaml
files are read, their functions run on the same inputs. Skipped when that folder is absent.
"""

import ast
import importlib
import os
import pickle
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import yaml

from spnet_jax.data import fewshot, splits
from spnet_jax.train import optimizer

from . import reference_oracle

reference_oracle.skip_unless_available()

ORIGINAL = reference_oracle.ORIGINAL
VOC_SPLIT = os.path.join(ORIGINAL, "..", "voc12", "split")
# (this project's config, the original's yaml) and the original's script that runs it.
PAIRS = [
  ("voc_zlss", "voc12/ZLSS.yaml"),
  ("coco_zlss", "cocostuff/ZLSS.yaml"),
  ("voc_flss", "voc12/FLSS.yaml"),
  ("coco_flss", "cocostuff/FLSS.yaml"),
]


def load_yaml(name: str) -> dict:
  with open(os.path.join(ORIGINAL, "config", name)) as file:
    return yaml.safe_load(file)


def our_config(name: str):
  return importlib.import_module(f"configs.{name}").get_config()


@pytest.mark.parametrize(("name", "yaml_name"), PAIRS)
def test_config_matches_the_original_yaml(name, yaml_name):
  original, config = load_yaml(yaml_name), our_config(name)
  opt, train, data = config.optimizer, config.train, config.data
  assert (opt.name, opt.base_lr) == (original["OPTIMIZER"], original["LR"])
  assert (opt.momentum, opt.weight_decay) == (original["MOMENTUM"], original["WEIGHT_DECAY"])
  assert (opt.schedule, opt.poly_power) == ("poly", original["POLY_POWER"])
  assert opt.schedule_steps == original["ITER_MAX"]
  assert opt.schedule_update_every == original["LR_DECAY"]
  assert train.accumulation_steps == original["ITER_SIZE"]
  assert train.batch_size == original["BATCH_SIZE"]["TRAIN"] * original["ITER_SIZE"]
  assert data.train.crop_size == original["IMAGE"]["SIZE"]["TRAIN"]
  assert data.eval.warp_size == original["IMAGE"]["SIZE"]["TEST"]
  assert data.train.warp_size == 513  # train.py: base_size=513 with WARP_IMAGE.
  assert original["WARP_IMAGE"]
  assert (data.train.min_scale, data.train.max_scale) == (0.5, 1.5)  # train.py: scale=(0.5, 1.5)
  assert tuple(config.model.aspp_rates) == tuple(original["PYRAMIDS"])
  assert data.image_mode == "caffe_bgr"
  mean = original["IMAGE"]["MEAN"]
  from spnet_jax.data import pipeline

  assert pipeline.CAFFE_BGR_MEAN == (mean["B"], mean["G"], mean["R"])


def scripted_steps(script: str, yaml_name: str) -> set[int]:
  """Steps whose checkpoint run_*.sh evaluates (with yaml_name) or continues from."""
  with open(os.path.join(ORIGINAL, script)) as file:
    text = file.read()
  evaluated = {
    int(step)
    for line in text.splitlines()
    if yaml_name in line
    for step in re.findall(r"checkpoint_(\d+)\.pth", line)
  }
  return evaluated | {int(step) for step in re.findall(r"--continue-from (\d+)", text)}


@pytest.mark.parametrize(
  ("name", "script", "yaml_name"),
  [
    ("voc_zlss", "run_pascal.sh", "voc12/ZLSS.yaml"),
    ("coco_zlss", "run_coco.sh", "cocostuff/ZLSS.yaml"),
  ],
)
def test_zero_label_runs_stop_where_the_scripts_evaluate(name, script, yaml_name):
  # run_*.sh evaluate checkpoint_20000 and start the few-label stage from it.
  assert scripted_steps(script, yaml_name) == {our_config(name).train.num_steps}


def original_learning_rates(yaml_name: str, steps: list[int]) -> dict[int, tuple]:
  """The three group rates SPNet's loop uses at each step (poly_lr_scheduler, iter = step)."""
  import torch

  train = reference_oracle.import_original_train()
  original = load_yaml(yaml_name)
  params = [torch.nn.Parameter(torch.zeros(1)) for _ in range(3)]
  sgd = torch.optim.SGD([{"params": [p], "lr": 0.0} for p in params], lr=0.0, momentum=0.9)
  rates = {}
  for step in range(max(steps) + 1):
    train.poly_lr_scheduler(
      sgd, original["LR"], step, original["LR_DECAY"], original["ITER_MAX"], original["POLY_POWER"]
    )
    if step in steps:
      rates[step] = tuple(group["lr"] for group in sgd.param_groups)
  return rates


@pytest.mark.parametrize(
  ("name", "yaml_name", "steps"),
  [
    ("coco_zlss", "cocostuff/ZLSS.yaml", [0, 9, 10, 11, 12345, 19999, 20000]),
    ("voc_zlss", "voc12/ZLSS.yaml", [0, 9, 10, 11, 12345, 19989, 19990, 19999]),
    ("voc_flss", "voc12/FLSS.yaml", [0, 1, 10, 1000, 1999]),
    ("coco_flss", "cocostuff/FLSS.yaml", [0, 1, 10, 1000, 1999]),
  ],
)
def test_learning_rates_equal_spnets(name, yaml_name, steps):
  config = our_config(name)
  schedule = optimizer.create_learning_rate_schedule(config.optimizer, config.train.num_steps)
  multipliers = config.optimizer.lr_multipliers
  want = original_learning_rates(yaml_name, steps)
  for step in steps:
    base = float(schedule(jnp.asarray(step)))
    got = (base * multipliers.backbone_kernel, base * multipliers.head_kernel)
    got += (base * multipliers.head_bias,)
    np.testing.assert_allclose(got, want[step], rtol=2e-6, err_msg=f"step {step}")
  if name == "coco_zlss":  # Step 20,000 of a 100,000-step poly: still ~82% of the base rate.
    np.testing.assert_allclose(want[20000][0], 2.5e-4 * 0.8**0.9, rtol=1e-12)


def test_few_label_stage_restarts_the_schedule_and_keeps_momentum():
  config = our_config("voc_flss")
  tx = optimizer.create_optimizer(config.optimizer, config.train.num_steps)
  params = {"backbone": {"kernel": jnp.ones(3)}, "head": {"kernel": jnp.ones(2)}}
  grads = jax.tree.map(jnp.ones_like, params)
  updates, state = tx.update(grads, tx.init(params), params)  # Builds momentum g + wd p.
  params = optax.apply_updates(params, updates)
  is_schedule = lambda node: isinstance(node, optax.ScaleByScheduleState)
  # As restored from a zero-label run at step 20,000 (past this stage's 2,000-step horizon).
  state = jax.tree.map(
    lambda node: node._replace(count=node.count + 19999) if is_schedule(node) else node,
    state,
    is_leaf=is_schedule,
  )
  stale, _ = tx.update(grads, state, params)
  assert float(jnp.abs(stale["backbone"]["kernel"]).max()) == 0.0  # Rate 0: schedule not reset.
  updates, _ = tx.update(grads, optimizer.restart_schedule(state), params)
  # SGD (PyTorch's): buffer = 0.9 buffer + g + wd p; update = -lr buffer at rate 1e-4 (step 0).
  buffer = 0.9 * (1.0 + 5e-4) + 1.0 + 5e-4 * (1.0 - 1e-4 * (1.0 + 5e-4))
  np.testing.assert_allclose(updates["backbone"]["kernel"], -1e-4 * buffer, rtol=1e-5)
  head_param = 1.0 - 1e-3 * (1.0 + 5e-4)
  np.testing.assert_allclose(
    updates["head"]["kernel"], -1e-3 * (0.9 * (1.0 + 5e-4) + 1.0 + 5e-4 * head_param), rtol=1e-5
  )


def original_pool(n: int, seen: np.ndarray, novel: np.ndarray, split_dir: str) -> list:
  """SPNet's few-label entries ([train position, 0 or novel index + 1], before shuffling).

  Runs the pool-building statements of the original train.py's main() (from `novelset = []` to
  the sampler) on its own inputs: inputmix 'both', --nshot n, --ishot 0.
  """
  train = reference_oracle.import_original_train()
  tree = ast.parse(open(train.__file__).read())
  main = next(
    node for node in tree.body if isinstance(node, ast.FunctionDef) and node.name == "main"
  )
  body = main.body
  start = next(
    i
    for i, node in enumerate(body)
    if isinstance(node, ast.Assign) and ast.unparse(node) == "novelset = []"
  )
  stop = next(i for i, node in enumerate(body) if "RandomImageSampler(" in ast.unparse(node))
  code = compile(ast.Module(body=body[start:stop], type_ignores=[]), train.__file__, "exec")
  namespace = {
    "np": np,
    "pickle": pickle,
    "inputmix": "both",
    "nshot": n,
    "ishot": 0,
    "seen_classes": seen,
    "novel_classes": novel,
    "datadir": split_dir,
    "train": None,
  }
  exec(code, namespace)
  return train.RandomImageSampler(namespace["seenset"], namespace["novelset"]).data_index


@pytest.mark.parametrize("n", [1, 2, 5, 10, 20])
def test_voc_few_label_pools_equal_spnets(n, tmp_path):
  # train.py reads <datadir>/split/inverse_dict_train.pkl; seen classes are seen + val.
  (tmp_path / "split").mkdir()
  os.symlink(
    os.path.abspath(os.path.join(VOC_SPLIT, "inverse_dict_train.pkl")),
    tmp_path / "split" / "inverse_dict_train.pkl",
  )
  seen = np.concatenate([np.load(os.path.join(VOC_SPLIT, f"{p}_cls.npy")) for p in ("seen", "val")])
  novel = np.load(os.path.join(VOC_SPLIT, "novel_cls.npy"))
  want = original_pool(n, seen.astype(int), novel, str(tmp_path))

  config = our_config("voc_flss")
  split = splits.get_split(config.data.name, config.data.split)
  lists = fewshot.lists_from_spnet_pickle(
    os.path.join(VOC_SPLIT, "inverse_dict_train.pkl"), os.path.join(VOC_SPLIT, "train_ids.txt")
  )
  pool = fewshot.build_pool(
    lists, split, n, keep_duplicates=True, seen_draw_order=split.seen + split.val
  )
  with open(os.path.join(VOC_SPLIT, "train_ids.txt")) as file:
    train_ids = [line.strip() for line in file if line.strip()]
  expected = [
    (train_ids[position], fewshot.SEEN_TAG if which == 0 else int(novel[which - 1]))
    for position, which in want
  ]
  assert [(e.image_id, e.tag) for e in pool.entries] == expected
  # SPNet keeps an image drawn for several seen classes once per class: 20 entries at n = 1.
  assert len(expected) == {1: 20, 20: 400}.get(n, len(expected))
  distinct = fewshot.build_pool(lists, split, n)
  assert len(distinct.entries) < len(pool.entries) or n > 20


def run_original_statements(script: str, first: str, last: str, namespace: dict) -> dict:
  """Runs the statements of original/<script>.py's main() from the one starting with `first`
  up to (not including) the one starting with `last`, in `namespace`; returns the namespace."""
  path = os.path.join(ORIGINAL, f"{script}.py")
  with open(path) as file:
    tree = ast.parse(file.read())
  body = next(node for node in tree.body if getattr(node, "name", "") == "main").body
  sources = [ast.unparse(node) for node in body]
  start = next(i for i, source in enumerate(sources) if source.startswith(first))
  stop = next(i for i, source in enumerate(sources) if source.startswith(last) and i > start)
  exec(compile(ast.Module(body=body[start:stop], type_ignores=[]), path, "exec"), namespace)
  return namespace


@pytest.mark.parametrize("excludeval", [False, True])
def test_trained_and_scored_classes_equal_spnets(excludeval, tmp_path):
  (tmp_path / "split").mkdir()
  for name in os.listdir(VOC_SPLIT):
    (tmp_path / "split" / name).symlink_to(os.path.abspath(os.path.join(VOC_SPLIT, name)))
  np.save(tmp_path / "split" / "test_list.npy", np.array([]))  # Read, not used for classes.
  datadir = str(tmp_path)
  trained = run_original_statements(
    "train",
    "visibility_mask = {}",
    "if excludeval:\n    train =",
    {"np": np, "datadir": datadir, "excludeval": excludeval},
  )
  scored = run_original_statements(
    "eval",
    "if run == 'zlss'",
    "if threshold is not None and run",
    {"np": np, "datadir": datadir, "excludeval": excludeval, "run": "gzlss"},
  )
  config = our_config("voc_zlss")
  config.data.exclude_val_classes = excludeval
  from spnet_jax import experiment

  split = experiment.run_split(config)
  # Training: the labelled classes of the zero-label stage.
  assert set(split.train_classes) == set(np.flatnonzero(trained["visibility_mask"][0] >= 0))
  # GZLSS: seen (incl. val unless excluded) vs unseen; everything else ignored.
  assert set(split.seen + split.val) == set(scored["vals_cls"].tolist())
  assert set(split.unseen) == set(scored["valu_cls"].tolist())
  assert set(split.eval_classes) == set(scored["visible_classes"].tolist())


@pytest.mark.parametrize(("dataset", "name"), [("voc12", "voc_zlss"), ("cocostuff", "coco_zlss")])
def test_class_embeddings_equal_spnets(dataset, name, tmp_path):
  import torch
  import torch.nn.functional as F

  folder = os.path.abspath(os.path.join(ORIGINAL, "..", dataset, "word_vectors"))
  (tmp_path / "word_vectors").symlink_to(folder)
  namespace = {"np": np, "pickle": pickle, "torch": torch, "F": F, "sys": None}
  namespace.update(datadir=str(tmp_path), embedding="fastnvec")  # train.py's default.
  with reference_oracle.cuda_as_cpu():
    run_original_statements("train", "if embedding ==", "loader_iter = iter(loader)", namespace)
  want = namespace["class_emb"].numpy()

  from spnet_jax.embeddings import class_embeddings as embeddings

  config = our_config(name)
  config.embeddings.paths = ",".join(
    os.path.join(folder, f) for f in ("fasttext.pkl", "word2vec.pkl")
  )
  split = splits.get_split(config.data.name, config.data.split)
  got = embeddings.load_class_embeddings(config, split)
  np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)


def test_few_label_label_tables_equal_spnets_visibility_masks(tmp_path):
  (tmp_path / "split").symlink_to(os.path.abspath(VOC_SPLIT))
  trained = run_original_statements(
    "train",
    "visibility_mask = {}",
    "if excludeval:\n    train =",
    {"np": np, "datadir": str(tmp_path), "excludeval": False},
  )
  masks, visible = trained["visibility_mask"], trained["seen_novel_classes"]
  config = our_config("voc_flss")
  split = splits.get_split(config.data.name, config.data.split)
  lists = fewshot.lists_from_spnet_pickle(
    os.path.join(VOC_SPLIT, "inverse_dict_train.pkl"), os.path.join(VOC_SPLIT, "train_ids.txt")
  )
  pool = fewshot.build_pool(lists, split, 1, keep_duplicates=True)
  tables = fewshot.pool_label_tables(pool)
  # Row 0: images drawn for seen classes (SPNet's mask 0); row k: novel class k (mask k).
  for row, mask in enumerate(masks[i] for i in range(len(pool.tags))):
    labelled = np.flatnonzero(mask >= 0)
    np.testing.assert_array_equal(np.flatnonzero(tables[row] != splits.IGNORE_LABEL), labelled)
    # Both map a labelled value to the index of that same class among their visible classes.
    assert [visible[mask[c]] for c in labelled] == list(labelled)
    assert [pool.visible_classes[tables[row][c]] for c in labelled] == list(labelled)


def test_coco_few_label_pools_equal_spnets():
  pickle_path = os.path.join(ORIGINAL, "..", "cocostuff", "split", "inverse_dict_train.pkl")
  if not os.path.exists(pickle_path):
    pytest.skip(
      "No oracle for the COCO-Stuff pools: the official COCO-Stuff inverse_dict_train.pkl (and "
      "its train list) is not among the published reference files; the VOC pools are compared."
    )
  raise AssertionError(f"{pickle_path} appeared: compare its pools as the VOC test does.")
