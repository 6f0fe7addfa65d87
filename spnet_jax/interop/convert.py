"""PyTorch checkpoints (deeplab-pytorch, SPNet, torchvision) -> Flax variables for spnet_jax.

Run (torch is needed only to read the .pth file: `pip install torch==2.13.0`):
  python -m spnet_jax.interop.convert --format spnet --arch resnet101 \
    --input logs/cocostuff/exp/checkpoint_20000.pth.tar --output /data/spnet_coco_20k
  python -m spnet_jax.interop.convert --format deeplab-pytorch --arch resnet101 \
    --input deeplabv2_resnet101_init.pth --output /data/deeplabv2_init
  python -m spnet_jax.interop.convert --format torchvision --arch vgg16 \
    --input vgg16-397923af.pth --output /data/vgg16_imagenet

The output folder holds `variables/` (an Orbax checkpoint of {'params', 'batch_stats'} with only
the converted leaves) and `metadata.json` (source, architecture, input convention, head, and the
model variables that stay freshly initialised). Start a run from it with
`--config.model.init_checkpoint=DIR`.

Key layouts read (after stripping any `module.`, `scale.` or `base.` wrapper prefixes, which
nn.DataParallel and the MSC wrappers of deeplab-pytorch/SPNet add; a checkpoint dict with a
'state_dict' entry is unwrapped):
  deeplab-pytorch / spnet, resnet101 (caffe layout, stride in the first 1x1 conv):
    layer1.conv1.{conv,bn}.*, layer{2..5}.block{N}.{reduce,conv3x3,increase,shortcut}.{conv,bn}.*
    (older deeplab-pytorch/SPNet name the shortcut `proj`), ASPP aspp.c{i}.{weight,bias} (older:
    aspp.stages.c{i}.*).
  deeplab-pytorch / spnet, vgg16: backbone features.{0,2,...,28}.* (torchvision indices) or
    conv{b}_{i}.*; ASPP-L aspp.c{i}.fc{6,7,8}.{weight,bias} (or aspp.stages.c{i}.fc*.*).
  Either arch, the 'learned' classifier of spnet_jax: classifier.weight [C, d(, 1, 1)] and
    classifier.bias [C] (our own layout; no public checkpoint has it).
  torchvision resnet101: conv1, bn1, layer{1..4}.{N}.{conv,bn}{1,2,3}, .downsample.{0,1}; fc.* is
    the ImageNet classifier (not used). The stride sits in the 3x3 conv, so the model needs
    config.model.stride_in_3x3=True (recorded in the metadata).
  torchvision vgg16: features.{0,2,...,28}.*; classifier.* are the ImageNet FC layers (not used).
"""

import dataclasses
import io
import json
import re
from collections.abc import Mapping
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from absl import app, flags

from spnet_jax import cli, paths
from spnet_jax.errors import UserError
from spnet_jax.models import registry as models

FORMATS = ("deeplab-pytorch", "spnet", "torchvision")
ARCHS = ("resnet101", "vgg16")
TORCH_REQUIREMENT = "torch==2.13.0"
# Caffe-derived weights (deeplab-pytorch's conversions, and SPNet trained from them) expect BGR
# 0..255 minus the caffe mean; torchvision weights expect RGB in [0, 1] normalised by ImageNet
# statistics. Names are those of config.data.image_mode.
IMAGE_MODES = {"deeplab-pytorch": "caffe_bgr", "spnet": "caffe_bgr", "torchvision": "imagenet_rgb"}
# DeepLab-v2's ASPP rates; the weights do not depend on them, but the number of branches does.
ASPP_RATES = (6, 12, 18, 24)
# SPNet's fastText + word2vec width: the assumed embedding head when the file has none (the head
# is then initialised fresh and its width is not part of the converted weights).
DEFAULT_EMBEDDING_DIM = 600
METADATA_FILE = "metadata.json"
VARIABLES_DIR = "variables"

# Prefixes that wrappers put in front of the network's own names: nn.DataParallel ('module.'),
# SPNet's and older deeplab-pytorch's MSC ('scale.'), newer deeplab-pytorch's MSC ('base.').
_WRAPPER_PREFIXES = ("module.", "scale.", "base.")
_BN_LEAVES = {"weight": "scale", "bias": "bias", "running_mean": "mean", "running_var": "var"}
# VGG-16 conv names (caffe) in order, and their indices in torchvision's `features` Sequential.
_VGG_CONVS = tuple(
  f"conv{block}_{i}" for block, n in enumerate((2, 2, 3, 3, 3), start=1) for i in range(1, n + 1)
)
_VGG_FEATURE_INDICES = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)
_VGG_BY_INDEX = dict(zip(_VGG_FEATURE_INDICES, _VGG_CONVS, strict=True))
_TORCHVISION_BOTTLENECK = {"1": "reduce", "2": "conv3x3", "3": "increase"}


@dataclasses.dataclass(frozen=True)
class _Target:
  """Where a torch tensor goes: a flax variable path and how to lay the tensor out.

  Attributes:
    path: (collection, module..., leaf), e.g. ('params', 'backbone', 'conv1_1', 'conv', 'bias').
    kind: 'conv' (OIHW -> HWIO), 'dense' ([C, d(, 1, 1)] -> [d, C]) or 'vector' (as is).
  """

  path: tuple[str, ...]
  kind: str


# A torch key that is known and deliberately dropped (ImageNet classifiers, BN step counters).
_UNUSED = object()


def _conv_bn(module: tuple[str, ...], part: str, leaf: str) -> _Target | object | None:
  """Target of `<module>.{conv,bn}.<leaf>` in a ConvBN block (deeplab-pytorch's _ConvBnReLU)."""
  if part == "conv" and leaf == "weight":
    return _Target(("params", "backbone", *module, "conv", "kernel"), "conv")
  if part == "bn" and leaf in _BN_LEAVES:
    return _Target(("batch_stats", "backbone", *module, "bn", _BN_LEAVES[leaf]), "vector")
  if part == "bn" and leaf == "num_batches_tracked":
    return _UNUSED
  return None


def _biased_conv(prefix: tuple[str, ...], leaf: str) -> _Target | None:
  """Target of the weight/bias of a conv with bias (VGG convs, ASPP branches)."""
  if leaf == "weight":
    return _Target(("params", *prefix, "conv", "kernel"), "conv")
  if leaf == "bias":
    return _Target(("params", *prefix, "conv", "bias"), "vector")
  return None


def _learned_classifier(leaf: str) -> _Target | None:
  if leaf == "weight":
    return _Target(("params", "classifier", "conv", "kernel"), "dense")
  if leaf == "bias":
    return _Target(("params", "classifier", "conv", "bias"), "vector")
  return None


def _map_deeplab_key(key: str, arch: str) -> _Target | object | None:
  """Target of a deeplab-pytorch / SPNet key (wrapper prefixes stripped); None if unknown."""
  if m := re.fullmatch(r"classifier\.(weight|bias)", key):
    return _learned_classifier(m[1])
  if arch == "resnet101":
    if m := re.fullmatch(r"layer1\.conv1\.(conv|bn)\.(\w+)", key):
      return _conv_bn(("layer1", "conv1"), m[1], m[2])
    pattern = r"(layer[2-5])\.(block\d+)\.(reduce|conv3x3|increase|shortcut|proj)\.(conv|bn)\.(\w+)"
    if m := re.fullmatch(pattern, key):
      # Older deeplab-pytorch (and SPNet's copy of it) called the projection shortcut `proj`.
      name = "shortcut" if m[3] == "proj" else m[3]
      return _conv_bn((m[1], m[2], name), m[4], m[5])
    if m := re.fullmatch(r"aspp\.(?:stages\.)?(c\d+)\.(weight|bias)", key):
      return _biased_conv(("embedding_head", m[1]), m[2])
    return None
  if m := re.fullmatch(r"features\.(\d+)\.(weight|bias)", key):
    name = _VGG_BY_INDEX.get(int(m[1]))
    return _biased_conv(("backbone", name), m[2]) if name else None
  if (m := re.fullmatch(r"(conv\d_\d)\.(weight|bias)", key)) and m[1] in _VGG_CONVS:
    return _biased_conv(("backbone", m[1]), m[2])
  if m := re.fullmatch(r"aspp\.(?:stages\.)?(c\d+)\.(fc[678])\.(weight|bias)", key):
    return _biased_conv(("embedding_head", m[1], m[2]), m[3])
  return None


def _map_torchvision_key(key: str, arch: str) -> _Target | object | None:
  """Target of a torchvision resnet101 / vgg16 key; None if unknown."""
  if arch == "resnet101":
    if re.fullmatch(r"fc\.(weight|bias)", key):
      return _UNUSED  # The ImageNet classifier; DeepLab replaces it with the ASPP.
    if m := re.fullmatch(r"(conv|bn)1\.(\w+)", key):
      return _conv_bn(("layer1", "conv1"), m[1], m[2])
    if m := re.fullmatch(r"layer([1-4])\.(\d+)\.(conv|bn)([123])\.(\w+)", key):
      module = (f"layer{int(m[1]) + 1}", f"block{int(m[2]) + 1}", _TORCHVISION_BOTTLENECK[m[4]])
      return _conv_bn(module, m[3], m[5])
    if m := re.fullmatch(r"layer([1-4])\.(\d+)\.downsample\.([01])\.(\w+)", key):
      module = (f"layer{int(m[1]) + 1}", f"block{int(m[2]) + 1}", "shortcut")
      return _conv_bn(module, "conv" if m[3] == "0" else "bn", m[4])
    return None
  if re.fullmatch(r"classifier\.\d+\.(weight|bias)", key):
    return _UNUSED  # ImageNet fc6/fc7/fc8 as Linear layers; DeepLab-v2 uses its own ASPP-L.
  if m := re.fullmatch(r"features\.(\d+)\.(weight|bias)", key):
    name = _VGG_BY_INDEX.get(int(m[1]))
    return _biased_conv(("backbone", name), m[2]) if name else None
  return None


def _layout_hint(unknown: list[str], source_format: str) -> str:
  """Why the keys may be unknown, when they look like another format's."""
  if source_format != "torchvision" and any(
    re.match(r"(bn1\.|layer\d\.\d+\.(conv|bn)\d|layer\d\.\d+\.downsample)", k) for k in unknown
  ):
    return (
      " These look like torchvision ResNet keys: use --format torchvision (the model then needs "
      "config.model.stride_in_3x3=True and imagenet_rgb inputs). They are not mapped onto the "
      "caffe layout, whose stride sits in a different conv."
    )
  if source_format == "torchvision" and any(
    re.search(r"\.block\d+\.|^aspp\.|^layer1\.conv1\.", k) for k in unknown
  ):
    return " These look like deeplab-pytorch / SPNet keys: use --format deeplab-pytorch or spnet."
  return ""


def _strip_wrappers(key: str) -> str:
  while key.startswith(_WRAPPER_PREFIXES):
    key = key.split(".", 1)[1]
  return key


def _to_numpy(value: Any) -> np.ndarray:
  """A torch tensor (any float dtype, bfloat16 included) or array-like as a numpy array."""
  if hasattr(value, "detach"):
    value = value.detach().cpu()
    if value.is_floating_point():
      value = value.float()  # numpy has no bfloat16; float32 is what we store anyway.
    return value.numpy()
  return np.asarray(value)


def _laid_out(array: np.ndarray, kind: str) -> np.ndarray:
  """The torch tensor in flax layout; returned unchanged when its rank does not fit `kind`."""
  if kind == "conv" and array.ndim == 4:
    return array.transpose(2, 3, 1, 0)  # [out, in, kh, kw] -> [kh, kw, in, out]
  if kind == "dense":
    if array.ndim == 4 and array.shape[2:] == (1, 1):
      array = array[:, :, 0, 0]  # A 1x1 conv classifier is a dense layer over channels.
    if array.ndim == 2:
      return array.T  # [C, d] -> [d, C]
  return array


def _unwrap(checkpoint: Mapping[str, Any]) -> tuple[Mapping[str, Any], list[str]]:
  """The state dict inside a training checkpoint, and the entries around it (not used)."""
  inner = checkpoint.get("state_dict")
  if isinstance(inner, Mapping):
    others = [f"{k} (checkpoint entry besides state_dict)" for k in checkpoint if k != "state_dict"]
    return inner, others
  return checkpoint, []


def _model_config(overrides: dict[str, Any]) -> ml_collections.ConfigDict:
  """A config.model for create_model from model_config_for's overrides (float32, no extras)."""
  config = ml_collections.ConfigDict(
    {
      "backbone": "resnet101",
      "stride_in_3x3": False,
      "classifier": "projection",
      "learned_head_width": 0,
      "embedding_head": "aspp",
      "aspp_rates": ASPP_RATES,
      "dtype": "float32",
    }
  )
  config.update(overrides)
  return config


def expected_variables(
  arch: str,
  stride_in_3x3: bool,
  classifier: str,
  embedding_dim: int,
  num_classes: int,
) -> dict[str, jax.ShapeDtypeStruct]:
  """Flat {'collection/module/.../leaf': ShapeDtypeStruct} of the spnet_jax model (no compute)."""
  overrides = model_config_for({"arch": arch, "stride_in_3x3": stride_in_3x3})
  overrides["classifier"] = classifier
  model = models.create_model(_model_config(overrides), embedding_dim, num_classes)
  images = jax.ShapeDtypeStruct((1, 65, 65, 3), jnp.float32)
  embeddings = jax.ShapeDtypeStruct((2, embedding_dim), jnp.float32)
  if classifier == "projection":
    shapes = jax.eval_shape(model.init, jax.random.key(0), images, embeddings)
  else:
    shapes = jax.eval_shape(model.init, jax.random.key(0), images)
  return flax.traverse_util.flatten_dict(flax.core.unfreeze(shapes), sep="/")


def _collect(
  checkpoint: Mapping[str, Any], source_format: str, arch: str
) -> tuple[dict[str, tuple[_Target, np.ndarray]], dict[str, str], list[str]]:
  """Maps every key of the checkpoint.

  Returns:
    targets {flax path: (target, torch array)}, sources {flax path: torch key}, and the keys not
    used.

  Raises:
    UserError: listing every unknown key, or when two keys map to one variable.
  """
  state_dict, not_used = _unwrap(checkpoint)
  map_key = _map_torchvision_key if source_format == "torchvision" else _map_deeplab_key
  targets: dict[str, tuple[_Target, np.ndarray]] = {}
  sources: dict[str, str] = {}
  unknown: list[str] = []
  for key, value in state_dict.items():
    target = map_key(_strip_wrappers(key), arch)
    if target is _UNUSED:
      not_used.append(key)
    elif target is None:
      unknown.append(key)
    else:
      path = "/".join(target.path)
      if path in sources:
        raise UserError(f"{key!r} and {sources[path]!r} both map to {path}.")
      sources[path] = key
      targets[path] = (target, _to_numpy(value))
  if unknown:
    raise UserError(
      f"{len(unknown)} {source_format} keys are unknown for {arch}: {unknown}."
      + _layout_hint(unknown, source_format)
    )
  return targets, sources, not_used


def _resolve_head(
  targets: Mapping[str, tuple[_Target, np.ndarray]],
  arch: str,
  classifier: str | None,
  embedding_dim: int | None,
  num_classes: int | None,
) -> tuple[str, int, int]:
  """(classifier, embedding_dim, num_classes) of the model to build (see convert_state_dict).

  Sizes come from the arguments when given (a contradicting file then fails the shape check),
  else from the head weights in the file, else from defaults (the head is then fresh anyway).
  """
  head_out = "params/embedding_head/c0/" + ("conv" if arch == "resnet101" else "fc8/conv")
  head_width = (
    targets[f"{head_out}/kernel"][1].shape[0] if f"{head_out}/kernel" in targets else None
  )
  classifier_kernel = "params/classifier/conv/kernel"
  classes_in_file = targets[classifier_kernel][1].shape[0] if classifier_kernel in targets else None
  if classifier is None:
    if classes_in_file is not None:
      classifier = "learned"
    elif head_width is not None and head_width == num_classes:
      classifier = "deeplab"
    else:
      classifier = "projection"
  if classifier == "deeplab":
    num_classes = num_classes or head_width
    embedding_dim = embedding_dim or DEFAULT_EMBEDDING_DIM  # Unused by this head.
  else:
    embedding_dim = embedding_dim or head_width or DEFAULT_EMBEDDING_DIM
    num_classes = num_classes or classes_in_file
  if num_classes is None:
    if classifier != "projection":
      raise UserError(
        f"The {classifier!r} classifier needs --num_classes (the file does not tell it)."
      )
    num_classes = 1  # The projection scores the embeddings it is given, not a fixed list.
  return classifier, embedding_dim, num_classes


def convert_state_dict(
  state_dict: Mapping[str, Any],
  source_format: str,
  arch: str,
  classifier: str | None = None,
  embedding_dim: int | None = None,
  num_classes: int | None = None,
  source_file: str | None = None,
) -> tuple[dict[str, dict], dict[str, Any]]:
  """Converts a PyTorch state dict into spnet_jax variables, accounting for every key.

  Args:
    state_dict: the loaded .pth (torch tensors or arrays), optionally a checkpoint dict holding it
      under 'state_dict'.
    source_format: one of FORMATS.
    arch: 'resnet101' or 'vgg16'.
    classifier: 'projection', 'learned' or 'deeplab'; None infers it: 'learned' when the file has
      classifier.* keys, 'deeplab' when the ASPP emits `num_classes` channels, else 'projection'
      with embedding_dim = the ASPP's output channels.
    embedding_dim: width of the embedding head (projection / learned); inferred from the ASPP.
    num_classes: classes of the 'deeplab' ASPP or the 'learned' classifier; inferred likewise.
    source_file: recorded in the metadata.

  Returns:
    (variables, metadata): variables = {'params': ..., 'batch_stats': ...} nested dicts of float32
    numpy arrays holding only the converted leaves; metadata as written to metadata.json.

  Raises:
    UserError: unknown keys (all listed), shape mismatches (torch key, flax path, both shapes),
      backbone variables with no source (all listed), or a head only partly present.
  """
  if source_format not in FORMATS:
    raise UserError(f"Unknown source format {source_format!r}; valid: {FORMATS}.")
  if arch not in ARCHS:
    raise UserError(f"Unknown arch {arch!r}; valid: {ARCHS}.")
  if classifier is not None and classifier not in models.CLASSIFIERS:
    raise UserError(f"Unknown classifier {classifier!r}; valid: {models.CLASSIFIERS}.")
  targets, sources, not_used = _collect(state_dict, source_format, arch)
  classifier, embedding_dim, num_classes = _resolve_head(
    targets, arch, classifier, embedding_dim, num_classes
  )

  stride_in_3x3 = source_format == "torchvision" and arch == "resnet101"
  expected = expected_variables(arch, stride_in_3x3, classifier, embedding_dim, num_classes)

  no_place = [sources[path] for path in targets if path not in expected]
  if no_place:
    raise UserError(
      f"{len(no_place)} keys have no variable in the {arch} model with the {classifier!r} "
      f"classifier (ASPP rates {ASPP_RATES}): {no_place}."
    )
  converted: dict[str, np.ndarray] = {}
  mismatches: list[str] = []
  for path, (target, array) in targets.items():
    laid_out = _laid_out(array, target.kind)
    want = tuple(expected[path].shape)
    if laid_out.shape != want:
      mismatches.append(
        f"{sources[path]} {tuple(array.shape)} -> {path}: expected {want}, "
        f"got {tuple(laid_out.shape)} after the {target.kind} layout"
      )
    converted[path] = np.ascontiguousarray(laid_out, dtype=np.float32)
  if mismatches:
    raise UserError(f"{len(mismatches)} shape mismatches: " + "; ".join(mismatches) + ".")

  fresh = sorted(set(expected) - set(converted))
  missing_backbone = [p for p in fresh if p.split("/")[1] == "backbone"]
  if missing_backbone:
    raise UserError(
      f"The {source_format} file lacks {len(missing_backbone)} backbone variables of {arch}: "
      f"{missing_backbone}."
    )
  head_given = {
    module: any(p.split("/")[1] == module for p in converted)
    for module in ("embedding_head", "classifier")
  }
  partial = [p for p in fresh if head_given.get(p.split("/")[1], False)]
  if partial:
    raise UserError(f"The file has part of a head only; missing: {partial}.")

  has_head = head_given["embedding_head"] or head_given["classifier"]
  metadata = {
    "source_format": source_format,
    "source_file": source_file,
    "arch": arch,
    "stride_in_3x3": stride_in_3x3,
    "image_mode": IMAGE_MODES[source_format],
    # No head in the file: any classifier fits these weights, so none is recorded.
    "classifier": classifier if has_head else None,
    "embedding_dim": (
      embedding_dim if head_given["embedding_head"] and classifier != "deeplab" else None
    ),
    "num_classes": (
      num_classes
      if (classifier == "deeplab" and head_given["embedding_head"]) or head_given["classifier"]
      else None
    ),
    "initialised_fresh": fresh,
    "not_used": not_used,
  }
  variables = flax.traverse_util.unflatten_dict(converted, sep="/")
  variables = {
    "params": variables.get("params", {}),
    "batch_stats": variables.get("batch_stats", {}),
  }
  return variables, metadata


def model_config_for(metadata: Mapping[str, Any]) -> dict[str, Any]:
  """config.model overrides under which the converted weights fit the model.

  Args:
    metadata: convert_state_dict's metadata (or metadata.json of a converted folder).

  Returns:
    {'backbone', 'stride_in_3x3', 'embedding_head', 'aspp_rates'} plus 'classifier' (and, for
    'learned', 'learned_head_width') when the weights include a head. The embedding width and the
    class count are not config.model fields: they come from the embeddings and the dataset.
  """
  arch = metadata["arch"]
  overrides: dict[str, Any] = {
    "backbone": arch,
    "stride_in_3x3": bool(metadata.get("stride_in_3x3", False)),
    "embedding_head": "aspp" if arch == "resnet101" else "aspp_l",
    "aspp_rates": ASPP_RATES,
  }
  if metadata.get("classifier"):
    overrides["classifier"] = metadata["classifier"]
    if metadata["classifier"] == "learned" and metadata.get("embedding_dim"):
      overrides["learned_head_width"] = metadata["embedding_dim"]
  return overrides


def save_converted(directory: str, variables: Mapping[str, Any], metadata: Mapping[str, Any]):
  """Writes DIR/variables (Orbax) and DIR/metadata.json; an existing conversion is replaced.

  Args:
    directory: output folder (created if needed).
    variables: {'params': ..., 'batch_stats': ...} nested dicts of arrays.
    metadata: JSON-serialisable description (convert_state_dict's metadata).
  """
  directory = paths.makedirs(paths.absolute(directory))
  tree = jax.tree.map(
    lambda x: np.asarray(x, np.float32) if np.issubdtype(np.asarray(x).dtype, np.floating) else x,
    dict(variables),
  )
  checkpointer = ocp.StandardCheckpointer()
  checkpointer.save(directory / VARIABLES_DIR, tree, force=True)
  checkpointer.wait_until_finished()
  checkpointer.close()
  # metadata.json last, through a rename: its presence marks a complete conversion.
  temporary = directory / (METADATA_FILE + ".tmp")
  paths.write_json(temporary, dict(metadata))
  temporary.replace(directory / METADATA_FILE)


def load_converted(directory: str) -> tuple[dict[str, Any], dict[str, Any]]:
  """Reads a folder written by save_converted (no torch needed).

  Args:
    directory: the conversion's output folder.

  Returns:
    (variables, metadata): nested dicts of numpy arrays, and the metadata.json contents.
  """
  directory = paths.absolute(directory)
  metadata_path = directory / METADATA_FILE
  if not metadata_path.exists():
    raise UserError(
      f"{metadata_path} does not exist: {directory} is not a finished `python -m "
      "spnet_jax.interop.convert` output."
    )
  metadata = json.loads(metadata_path.read_text())
  checkpointer = ocp.StandardCheckpointer()
  variables = checkpointer.restore(directory / VARIABLES_DIR)
  checkpointer.close()
  return jax.tree.map(np.asarray, dict(variables)), metadata


def load_torch_checkpoint(path: str) -> Mapping[str, Any]:
  """torch.load of a .pth on the CPU, tensors and plain containers only (weights_only)."""
  try:
    import torch  # Optional: needed only to read .pth files, so imported here.
  except ImportError as error:
    raise ImportError(
      f"Reading PyTorch checkpoints needs torch (the CPU build is enough): pip install "
      f"{TORCH_REQUIREMENT}"
    ) from error
  return torch.load(io.BytesIO(paths.read_bytes(path)), map_location="cpu", weights_only=True)


FLAGS = flags.FLAGS


def _define_flags() -> None:
  """Command-line flags, defined only when run as a script (importing adds no global flags)."""
  flags.DEFINE_enum("format", None, list(FORMATS), "Layout of the PyTorch checkpoint.")
  flags.DEFINE_enum("arch", None, list(ARCHS), "Backbone of the checkpoint.")
  flags.DEFINE_string("input", None, "The .pth / .pth.tar file.")
  flags.DEFINE_string("output", None, "Folder for variables/ and metadata.json.")
  flags.DEFINE_enum(
    "classifier",
    None,
    list(models.CLASSIFIERS),
    "Head of the weights; by default inferred (see convert_state_dict).",
  )
  flags.DEFINE_integer("embedding_dim", None, "Embedding width when the file has no ASPP weights.")
  flags.DEFINE_integer("num_classes", None, "Class count of a 'deeplab' or 'learned' head.")
  flags.mark_flags_as_required(["format", "arch", "input", "output"])


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  try:
    checkpoint = load_torch_checkpoint(FLAGS.input)
    variables, metadata = convert_state_dict(
      checkpoint,
      FLAGS.format,
      FLAGS.arch,
      classifier=FLAGS.classifier,
      embedding_dim=FLAGS.embedding_dim,
      num_classes=FLAGS.num_classes,
      source_file=str(paths.absolute(FLAGS.input)),
    )
  except (ImportError, ValueError) as error:  # No torch, or a file that is not such a checkpoint.
    raise UserError(f"convert: {error}") from error
  save_converted(FLAGS.output, variables, metadata)
  count = len(jax.tree.leaves(variables))
  print(f"Converted {count} tensors of {FLAGS.input} ({FLAGS.format}, {FLAGS.arch}).")
  print(f"Not used ({len(metadata['not_used'])}): {', '.join(metadata['not_used']) or '-'}")
  fresh = metadata["initialised_fresh"]
  print(f"Initialised fresh ({len(fresh)}): {', '.join(fresh) or '-'}")
  overrides = " ".join(
    f"--config.model.{k}={','.join(map(str, v)) if isinstance(v, tuple) else v}"
    for k, v in model_config_for(metadata).items()
  )
  output = paths.absolute(FLAGS.output)
  print(
    f"Wrote {output}. Use it with --config.model.init_checkpoint="
    f"{output} --config.data.image_mode={metadata['image_mode']} {overrides}"
  )


def run() -> None:
  """The `spnet-convert` command (also `python -m` of this module)."""
  cli.run(main, __doc__, _define_flags)


if __name__ == "__main__":
  run()
