"""PyTorch -> Flax conversion: key accounting, errors, the command, and equivalence with PyTorch.

The equivalence tests run a PyTorch reference (spnet_jax/testing/torch_reference.py, functional code
from the published key layouts) and the converted spnet_jax model on the same random weights and
inputs. They need torch and are skipped without it; the key-accounting tests need numpy only.
"""

import json
import os
import subprocess
import sys

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import shapes_zlss
from spnet_jax.errors import UserError
from spnet_jax.interop import convert
from spnet_jax.models import heads, msc
from spnet_jax.models.registry import create_model
from spnet_jax.testing.random_state_dicts import (
  aspp_l_state_dict,
  aspp_state_dict,
  caffe_resnet101_state_dict,
  torchvision_names,
  vgg16_state_dict,
)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ASPP_FRESH = [
  f"params/embedding_head/c{i}/conv/{leaf}" for i in range(4) for leaf in ("bias", "kernel")
]
# Relative tolerance of the equivalence tests: max|jax - torch| / max|torch|.
TOLERANCE = 1e-4


def relative_error(ours, theirs) -> float:
  """max|ours - theirs| / max|theirs|, ours NHWC (jax) and theirs NCHW (torch)."""
  theirs = theirs.detach().numpy().transpose(0, 2, 3, 1)
  ours = np.asarray(ours)
  assert ours.shape == theirs.shape
  return float(np.abs(ours - theirs).max() / np.abs(theirs).max())


def model_for(metadata: dict, embedding_dim: int, num_classes: int):
  """The spnet_jax model that a config needs for these weights (base config + overrides)."""
  config = shapes_zlss.get_config().model
  config.update(convert.model_config_for(metadata))
  return create_model(config, embedding_dim, num_classes)


def flat(variables) -> dict[str, np.ndarray]:
  return flax.traverse_util.flatten_dict(variables, sep="/")


@pytest.fixture(scope="module")
def torch_module():
  return pytest.importorskip("torch")


@pytest.fixture(scope="module")
def reference(torch_module):
  from spnet_jax.testing import torch_reference

  return torch_reference


@pytest.fixture(scope="module")
def backbone_sd() -> dict[str, np.ndarray]:
  return caffe_resnet101_state_dict(seed=0)


@pytest.fixture(scope="module")
def spnet_conversion(backbone_sd):
  """An SPNet training checkpoint (older deeplab-pytorch names) with a 16-d ASPP, converted."""
  sd = {k.replace(".shortcut.", ".proj."): v for k, v in backbone_sd.items()}
  sd.update(aspp_state_dict(seed=1, out=16, prefix="aspp.stages.c"))
  checkpoint = {
    "iteration": 20000,
    "state_dict": {f"module.scale.{k}": v for k, v in sd.items()},
  }
  variables, metadata = convert.convert_state_dict(checkpoint, "spnet", "resnet101")
  return sd, variables, metadata


# ----------------------------------------------------------------------------------------------
# Equivalence with the PyTorch reference.


def test_spnet_resnet101_aspp_projection_msc_matches_torch(
  spnet_conversion, torch_module, reference
):
  torch = torch_module
  sd, variables, metadata = spnet_conversion
  assert metadata["classifier"] == "projection" and metadata["embedding_dim"] == 16
  assert metadata["image_mode"] == "caffe_bgr" and metadata["initialised_fresh"] == []
  rng = np.random.default_rng(2)
  images = rng.normal(0.0, 50.0, (1, 3, 41, 41)).astype(np.float32)  # Caffe-mean-scale pixels.
  embeddings = rng.standard_normal((5, 16)).astype(np.float32)
  embeddings /= np.linalg.norm(embeddings, axis=1, keepdims=True)

  tsd = {k: torch.from_numpy(v) for k, v in sd.items()}
  emb = torch.from_numpy(embeddings)

  def torch_net(x):
    h = reference.aspp(tsd, reference.caffe_resnet101(tsd, x, shortcut="proj"), "aspp.stages")
    return reference.projection(h, emb)

  with torch.no_grad():
    expected = reference.msc(torch_net, torch.from_numpy(images))

  model = model_for(metadata, embedding_dim=16, num_classes=5)
  outputs = jax.jit(
    lambda v, x: msc.multi_scale_logits(lambda y: model.apply(v, y, embeddings), x, (0.5, 0.75))
  )(variables, images.transpose(0, 2, 3, 1))
  assert len(outputs) == len(expected) == 4
  for ours, theirs in zip(outputs, expected, strict=True):
    assert relative_error(ours, theirs) < TOLERANCE


@pytest.fixture(scope="module")
def random_features(torch_module):
  """Backbone-sized features large enough (27x27) that every ASPP rate (up to 24) is exercised."""
  rng = np.random.default_rng(3)
  features = np.maximum(rng.standard_normal((1, 2048, 27, 27)), 0).astype(np.float32)
  return features, torch_module.from_numpy(features)


@pytest.mark.parametrize("head", ["learned", "deeplab"])
def test_learned_and_deeplab_heads_match_torch(
  head, backbone_sd, random_features, torch_module, reference
):
  torch = torch_module
  sd = dict(backbone_sd)
  rng = np.random.default_rng(4)
  if head == "learned":
    sd.update(aspp_state_dict(seed=5, out=16))
    sd["classifier.weight"] = rng.standard_normal((5, 16, 1, 1)).astype(np.float32)
    sd["classifier.bias"] = rng.normal(0.0, 0.1, 5).astype(np.float32)
    variables, metadata = convert.convert_state_dict(sd, "deeplab-pytorch", "resnet101")
    assert (metadata["embedding_dim"], metadata["num_classes"]) == (16, 5)
  else:
    sd.update(aspp_state_dict(seed=5, out=7))
    variables, metadata = convert.convert_state_dict(
      {f"base.{k}": v for k, v in sd.items()}, "deeplab-pytorch", "resnet101", num_classes=7
    )
    assert (metadata["embedding_dim"], metadata["num_classes"]) == (None, 7)
  assert metadata["classifier"] == head

  features, torch_features = random_features
  tsd = {k: torch.from_numpy(v) for k, v in sd.items() if "classifier" in k or "aspp" in k}
  with torch.no_grad():
    expected = reference.aspp(tsd, torch_features)
    if head == "learned":
      expected = reference.learned_classifier(
        expected, tsd["classifier.weight"], tsd["classifier.bias"]
      )

  model = model_for(metadata, embedding_dim=16, num_classes=metadata["num_classes"])
  params = variables["params"]
  ours = model.embedding_head.apply(
    {"params": params["embedding_head"]}, features.transpose(0, 2, 3, 1)
  )
  if head == "learned":
    ours = model.classifier.apply({"params": params["classifier"]}, ours)
  assert relative_error(ours, expected) < TOLERANCE


def test_projection_head_on_large_features_matches_torch(
  spnet_conversion, random_features, torch_module, reference
):
  """The ASPP at every rate (the 41x41 MSC test only reaches the centre taps)."""
  torch = torch_module
  sd, variables, metadata = spnet_conversion
  features, torch_features = random_features
  embeddings = np.random.default_rng(6).standard_normal((3, 16)).astype(np.float32)
  tsd = {k: torch.from_numpy(v) for k, v in sd.items() if k.startswith("aspp")}
  with torch.no_grad():
    h = reference.aspp(tsd, torch_features, "aspp.stages")
    expected = reference.projection(h, torch.from_numpy(embeddings))
  model = model_for(metadata, embedding_dim=16, num_classes=3)
  phi = model.embedding_head.apply(
    {"params": variables["params"]["embedding_head"]}, features.transpose(0, 2, 3, 1)
  )
  assert relative_error(heads.semantic_projection(phi, jnp.asarray(embeddings)), expected) < (
    TOLERANCE
  )


def test_vgg16_aspp_l_projection_matches_torch(torch_module, reference):
  """DeepLab-v2 VGG-16 + ASPP-L (torchvision `features.*` names, ASPP-L as documented)."""
  torch = torch_module
  sd = {**vgg16_state_dict(seed=7), **aspp_l_state_dict(seed=8, out=8)}
  variables, metadata = convert.convert_state_dict(sd, "deeplab-pytorch", "vgg16")
  assert metadata["embedding_dim"] == 8 and metadata["initialised_fresh"] == []
  assert flat(variables["batch_stats"]) == {}
  rng = np.random.default_rng(9)
  # 57x57 -> 8x8 at output stride 8, so fc6's dilation 6 reaches past the centre tap.
  images = rng.normal(0.0, 50.0, (1, 3, 57, 57)).astype(np.float32)
  embeddings = rng.standard_normal((4, 8)).astype(np.float32)
  tsd = {k: torch.from_numpy(v) for k, v in sd.items()}
  with torch.no_grad():
    h = reference.aspp_l(tsd, reference.vgg16(tsd, torch.from_numpy(images)))
    expected = reference.projection(h, torch.from_numpy(embeddings))
  model = model_for(metadata, embedding_dim=8, num_classes=4)
  ours = jax.jit(model.apply)(variables, images.transpose(0, 2, 3, 1), embeddings)
  assert relative_error(ours, expected) < TOLERANCE


def test_torchvision_resnet101_matches_torch_with_stride_in_3x3(
  backbone_sd, torch_module, reference
):
  torch = torch_module
  sd = torchvision_names(backbone_sd)
  variables, metadata = convert.convert_state_dict(sd, "torchvision", "resnet101")
  assert metadata["stride_in_3x3"] is True
  assert convert.model_config_for(metadata)["stride_in_3x3"] is True
  images = np.random.default_rng(10).normal(0.0, 1.0, (1, 3, 33, 33)).astype(np.float32)
  tsd = {k: torch.from_numpy(v) for k, v in sd.items()}
  with torch.no_grad():
    expected = reference.torchvision_resnet101_dilated(tsd, torch.from_numpy(images))
  model = model_for(metadata, embedding_dim=16, num_classes=1)
  backbone_vars = {c: variables[c]["backbone"] for c in ("params", "batch_stats")}
  ours = jax.jit(model.backbone.apply)(backbone_vars, images.transpose(0, 2, 3, 1))
  assert relative_error(ours, expected) < TOLERANCE
  # The caffe model (stride in the 1x1 conv) on the same weights is a different network.
  caffe = model_for({**metadata, "stride_in_3x3": False}, embedding_dim=16, num_classes=1)
  wrong = jax.jit(caffe.backbone.apply)(backbone_vars, images.transpose(0, 2, 3, 1))
  assert relative_error(wrong, expected) > 1e-2


# ----------------------------------------------------------------------------------------------
# Key accounting and errors (numpy state dicts; no torch needed).


def test_key_variants_convert_to_the_same_variables(backbone_sd, spnet_conversion):
  """deeplab-pytorch (`base.`, `shortcut`, `aspp.c`) and SPNet (`module.scale.`, `proj`,
  `aspp.stages.c`) names give identical variables."""
  sd = {**backbone_sd, **aspp_state_dict(seed=1, out=16)}
  variables, metadata = convert.convert_state_dict(
    {f"base.{k}": v for k, v in sd.items()}, "deeplab-pytorch", "resnet101"
  )
  _, spnet_variables, spnet_metadata = spnet_conversion
  ours, theirs = flat(variables), flat(spnet_variables)
  assert ours.keys() == theirs.keys()
  assert all(np.array_equal(ours[k], theirs[k]) for k in ours)
  assert all(v.dtype == np.float32 for v in ours.values())
  assert metadata["image_mode"] == "caffe_bgr" and metadata["stride_in_3x3"] is False
  assert spnet_metadata["not_used"][0] == "iteration (checkpoint entry besides state_dict)"
  tracked = [k for k in metadata["not_used"] if k.endswith("num_batches_tracked")]
  assert len(tracked) == len(metadata["not_used"]) == 104  # Every BatchNorm of ResNet-101.


def test_deeplab_init_without_aspp_reports_it_initialised_fresh(backbone_sd):
  variables, metadata = convert.convert_state_dict(backbone_sd, "deeplab-pytorch", "resnet101")
  assert metadata["initialised_fresh"] == ASPP_FRESH
  assert metadata["classifier"] is None and metadata["embedding_dim"] is None
  assert "embedding_head" not in variables["params"]
  assert "classifier" not in convert.model_config_for(metadata)


def test_torchvision_imagenet_init(backbone_sd):
  sd = torchvision_names(backbone_sd)
  sd["fc.weight"] = np.zeros((1000, 2048), np.float32)
  sd["fc.bias"] = np.zeros(1000, np.float32)
  variables, metadata = convert.convert_state_dict(sd, "torchvision", "resnet101")
  assert metadata["image_mode"] == "imagenet_rgb"
  assert metadata["stride_in_3x3"] is True
  assert metadata["initialised_fresh"] == ASPP_FRESH
  assert {"fc.weight", "fc.bias"} <= set(metadata["not_used"])
  ours = flat(variables)
  assert np.array_equal(
    ours["params/backbone/layer3/block1/conv3x3/conv/kernel"],
    sd["layer2.0.conv2.weight"].transpose(2, 3, 1, 0),
  )
  assert np.array_equal(
    ours["batch_stats/backbone/layer5/block1/shortcut/bn/var"],
    sd["layer4.0.downsample.1.running_var"],
  )


def test_torchvision_keys_are_not_silently_read_as_caffe_layout(backbone_sd):
  sd = torchvision_names(backbone_sd)
  with pytest.raises(ValueError, match="use --format torchvision") as error:
    convert.convert_state_dict(sd, "deeplab-pytorch", "resnet101")
  assert "'layer1.0.conv2.weight'" in str(error.value)
  with pytest.raises(ValueError, match="use --format deeplab-pytorch or spnet"):
    convert.convert_state_dict(backbone_sd, "torchvision", "resnet101")


def test_unknown_keys_are_all_listed(backbone_sd):
  sd = {**backbone_sd, "foo.weight": np.zeros(3), "layer2.block1.extra.conv.weight": np.zeros(3)}
  with pytest.raises(ValueError, match="2 deeplab-pytorch keys are unknown") as error:
    convert.convert_state_dict(sd, "deeplab-pytorch", "resnet101")
  assert "'foo.weight'" in str(error.value)
  assert "'layer2.block1.extra.conv.weight'" in str(error.value)


def test_keys_without_a_model_variable_are_rejected(backbone_sd):
  """A fifth ASPP branch, or a learned classifier forced into a projection model."""
  sd = {**backbone_sd, **aspp_state_dict(seed=1, out=16, inp=2048)}
  sd["aspp.c4.weight"], sd["aspp.c4.bias"] = sd["aspp.c0.weight"], sd["aspp.c0.bias"]
  with pytest.raises(ValueError, match=r"no variable .*\['aspp.c4.weight', 'aspp.c4.bias'\]"):
    convert.convert_state_dict(sd, "deeplab-pytorch", "resnet101")


def test_missing_backbone_keys_are_all_listed(backbone_sd):
  sd = dict(backbone_sd)
  del sd["layer4.block7.conv3x3.conv.weight"], sd["layer1.conv1.bn.running_var"]
  with pytest.raises(ValueError, match="lacks 2 backbone variables") as error:
    convert.convert_state_dict(sd, "deeplab-pytorch", "resnet101")
  assert "batch_stats/backbone/layer1/conv1/bn/var" in str(error.value)
  assert "params/backbone/layer4/block7/conv3x3/conv/kernel" in str(error.value)


def test_shape_mismatch_names_key_path_and_shapes(backbone_sd):
  sd = {**backbone_sd, **aspp_state_dict(seed=1, out=16)}
  sd["layer2.block2.reduce.conv.weight"] = np.zeros((64, 128, 1, 1), np.float32)
  with pytest.raises(ValueError, match="1 shape mismatches") as error:
    convert.convert_state_dict(sd, "deeplab-pytorch", "resnet101")
  assert (
    "layer2.block2.reduce.conv.weight (64, 128, 1, 1) -> "
    "params/backbone/layer2/block2/reduce/conv/kernel: expected (1, 1, 256, 64), "
    "got (1, 1, 128, 64)"
  ) in str(error.value)
  # A width given on the command line that the ASPP weights contradict.
  sd["layer2.block2.reduce.conv.weight"] = backbone_sd["layer2.block2.reduce.conv.weight"]
  with pytest.raises(ValueError, match=r"aspp.c0.weight \(16, 2048, 3, 3\) -> params/embedding"):
    convert.convert_state_dict(sd, "deeplab-pytorch", "resnet101", embedding_dim=600)


def test_classifier_inference_and_explicit_choice(backbone_sd):
  sd = {**backbone_sd, **aspp_state_dict(seed=1, out=21)}
  _, metadata = convert.convert_state_dict(sd, "deeplab-pytorch", "resnet101")
  assert (metadata["classifier"], metadata["embedding_dim"]) == ("projection", 21)
  _, metadata = convert.convert_state_dict(sd, "deeplab-pytorch", "resnet101", num_classes=21)
  assert (metadata["classifier"], metadata["num_classes"]) == ("deeplab", 21)
  _, metadata = convert.convert_state_dict(sd, "deeplab-pytorch", "resnet101", classifier="deeplab")
  assert (metadata["classifier"], metadata["num_classes"]) == ("deeplab", 21)
  # An ASPP reused under a fresh learned classifier.
  _, metadata = convert.convert_state_dict(
    sd, "deeplab-pytorch", "resnet101", classifier="learned", num_classes=3
  )
  assert metadata["initialised_fresh"] == [
    "params/classifier/conv/bias",
    "params/classifier/conv/kernel",
  ]
  assert convert.model_config_for(metadata)["learned_head_width"] == 21
  with pytest.raises(ValueError, match="needs --num_classes"):
    convert.convert_state_dict(backbone_sd, "deeplab-pytorch", "resnet101", classifier="learned")


def test_torchvision_vgg16_keeps_features_and_drops_imagenet_classifier():
  sd = vgg16_state_dict(seed=7)
  # The ImageNet FC layers (shapes shrunk: they are only counted, never read).
  sd.update(
    {f"classifier.{i}.{leaf}": np.zeros(2) for i in (0, 3, 6) for leaf in ("weight", "bias")}
  )
  variables, metadata = convert.convert_state_dict(sd, "torchvision", "vgg16")
  assert metadata["image_mode"] == "imagenet_rgb" and metadata["stride_in_3x3"] is False
  assert sorted(metadata["not_used"]) == sorted(k for k in sd if k.startswith("classifier."))
  assert len(metadata["initialised_fresh"]) == 24  # ASPP-L: 4 branches x fc6/7/8 x kernel/bias.
  assert all("/embedding_head/" in p for p in metadata["initialised_fresh"])
  conv5_3 = flat(variables)["params/backbone/conv5_3/conv/kernel"]
  np.testing.assert_array_equal(conv5_3, sd["features.28.weight"].transpose(2, 3, 1, 0))


def test_converted_variables_fit_the_configured_model(spnet_conversion):
  """model_config_for + create_model give a model whose variables the conversion fills exactly."""
  _, variables, metadata = spnet_conversion
  model = model_for(metadata, embedding_dim=16, num_classes=5)
  shapes = jax.eval_shape(
    model.init, jax.random.key(0), jnp.zeros((1, 65, 65, 3)), jnp.zeros((5, 16))
  )
  expected = {k: tuple(v.shape) for k, v in flat(flax.core.unfreeze(shapes)).items()}
  assert expected == {k: v.shape for k, v in flat(variables).items()}


# ----------------------------------------------------------------------------------------------
# Saving, loading and the command.


def test_save_and_load_round_trip(spnet_conversion, tmp_path):
  _, variables, metadata = spnet_conversion
  directory = str(tmp_path / "converted")
  convert.save_converted(directory, variables, {**metadata, "source_file": "x.pth"})
  loaded, loaded_metadata = convert.load_converted(directory)
  assert loaded_metadata == {**metadata, "source_file": "x.pth"}
  ours, theirs = flat(loaded), flat(variables)
  assert ours.keys() == theirs.keys()
  assert all(isinstance(v, np.ndarray) and np.array_equal(v, theirs[k]) for k, v in ours.items())
  # Empty collections (a backbone without BatchNorm) survive too.
  convert.save_converted(directory, {"params": {}, "batch_stats": {}}, {"arch": "vgg16"})
  assert convert.load_converted(directory) == ({"params": {}, "batch_stats": {}}, {"arch": "vgg16"})
  with pytest.raises(UserError, match=r"metadata\.json does not exist"):
    convert.load_converted(str(tmp_path / "nothing"))


def test_reading_a_pth_without_torch_says_what_to_install(monkeypatch):
  monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` now raises ImportError.
  with pytest.raises(ImportError, match=r"pip install torch==2\.13\.0"):
    convert.load_torch_checkpoint("weights.pth")


def test_command_end_to_end(torch_module, tmp_path):
  torch = torch_module
  sd = vgg16_state_dict(seed=11)
  sd["classifier.0.weight"] = np.zeros((4, 2), np.float32)
  path = str(tmp_path / "vgg16.pth")
  torch.save({k: torch.from_numpy(v) for k, v in sd.items()}, path)
  output = str(tmp_path / "out")
  command = [
    sys.executable,
    "-m",
    "spnet_jax.interop.convert",
    "--format=torchvision",
    "--arch=vgg16",
  ]
  result = subprocess.run(
    [*command, f"--input={path}", f"--output={output}"],
    cwd=ROOT,
    capture_output=True,
    text=True,
    check=False,
  )
  assert result.returncode == 0, result.stderr
  assert (
    "Initialised fresh (24)" in result.stdout
    and "Not used (1): classifier.0.weight" in result.stdout
  )
  with open(os.path.join(output, "metadata.json")) as f:
    metadata = json.load(f)
  assert metadata["image_mode"] == "imagenet_rgb"
  assert metadata["source_format"] == "torchvision" and metadata["source_file"] == path
  variables, _ = convert.load_converted(output)
  np.testing.assert_array_equal(
    variables["params"]["backbone"]["conv1_1"]["conv"]["kernel"],
    sd["features.0.weight"].transpose(2, 3, 1, 0),
  )
