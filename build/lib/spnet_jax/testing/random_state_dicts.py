"""Random weights in the published PyTorch layouts (deeplab-pytorch, torchvision), numpy only.

The conversion tests and the PyTorch side-by-side benchmark build the same network in both
frameworks from these.
"""

import numpy as np

# DeepLab-v2 ResNet-101: (blocks, output channels) of layer2..layer5.
RESNET101_STAGES = ((3, 256), (4, 512), (23, 1024), (3, 2048))
VGG16_CONVS = ((3, 64), (64, 64), (64, 128), (128, 128), (128, 256), (256, 256), (256, 256))
VGG16_CONVS += ((256, 512), (512, 512), (512, 512), (512, 512), (512, 512), (512, 512))
VGG16_FEATURE_INDICES = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)


def _conv_weight(rng, out: int, inp: int, k: int, gain: float = 1.0) -> np.ndarray:
  """He-scaled random conv weight [out, in, k, k] (keeps activations O(1) through 100 layers)."""
  std = gain * np.sqrt(2.0 / (inp * k * k))
  return (rng.standard_normal((out, inp, k, k)) * std).astype(np.float32)


def _batch_norm(rng, channels: int) -> dict[str, np.ndarray]:
  """Non-trivial frozen BatchNorm statistics, so that a mixed-up leaf changes the output."""
  return {
    "weight": rng.uniform(0.5, 1.5, channels).astype(np.float32),
    "bias": rng.normal(0.0, 0.1, channels).astype(np.float32),
    "running_mean": rng.normal(0.0, 0.1, channels).astype(np.float32),
    "running_var": rng.uniform(0.5, 2.0, channels).astype(np.float32),
    "num_batches_tracked": np.array(100, np.int64),
  }


def caffe_resnet101_state_dict(seed: int, shortcut: str = "shortcut") -> dict[str, np.ndarray]:
  """Random backbone weights in deeplab-pytorch's caffe layout (no ASPP, no prefix)."""
  rng = np.random.default_rng(seed)
  sd: dict[str, np.ndarray] = {}

  def conv_bn(name: str, out: int, inp: int, k: int, gain: float = 1.0) -> None:
    sd[f"{name}.conv.weight"] = _conv_weight(rng, out, inp, k, gain)
    sd.update({f"{name}.bn.{leaf}": v for leaf, v in _batch_norm(rng, out).items()})

  conv_bn("layer1.conv1", 64, 3, 7)
  inp = 64
  for stage, (blocks, out) in enumerate(RESNET101_STAGES, start=2):
    mid = out // 4
    for n in range(1, blocks + 1):
      name = f"layer{stage}.block{n}"
      conv_bn(f"{name}.reduce", mid, inp, 1)
      conv_bn(f"{name}.conv3x3", mid, mid, 3)
      # A small residual branch keeps the sum over 33 blocks from growing large.
      conv_bn(f"{name}.increase", out, mid, 1, gain=0.3)
      if n == 1:
        conv_bn(f"{name}.{shortcut}", out, inp, 1)
      inp = out
  return sd


def torchvision_names(caffe_sd: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """The same tensors under torchvision ResNet names (written independently of convert.py)."""
  parts = {"reduce": "1", "conv3x3": "2", "increase": "3"}
  renamed = {}
  for key, value in caffe_sd.items():
    fields = key.split(".")
    if fields[0] == "layer1":
      new = ("conv1." if fields[2] == "conv" else "bn1.") + fields[3]
    else:
      prefix = f"layer{int(fields[0][5:]) - 1}.{int(fields[1][5:]) - 1}"
      if fields[2] == "shortcut":
        new = f"{prefix}.downsample.{0 if fields[3] == 'conv' else 1}.{fields[4]}"
      else:
        new = f"{prefix}.{fields[3]}{parts[fields[2]]}.{fields[4]}"
    renamed[new] = value
  return renamed


def aspp_state_dict(seed: int, out: int, prefix: str = "aspp.c", inp: int = 2048) -> dict:
  """Random ASPP weights N(0, 0.01)-like scale (DeepLab's head init) with non-zero biases."""
  rng = np.random.default_rng(seed)
  sd = {}
  for i in range(4):
    sd[f"{prefix}{i}.weight"] = _conv_weight(rng, out, inp, 3, gain=0.5)
    sd[f"{prefix}{i}.bias"] = rng.normal(0.0, 0.1, out).astype(np.float32)
  return sd


def vgg16_state_dict(seed: int) -> dict[str, np.ndarray]:
  """Random VGG-16 conv weights under torchvision's `features.{i}` names."""
  rng = np.random.default_rng(seed)
  sd = {}
  for i, (inp, out) in zip(VGG16_FEATURE_INDICES, VGG16_CONVS, strict=True):
    sd[f"features.{i}.weight"] = _conv_weight(rng, out, inp, 3)
    sd[f"features.{i}.bias"] = rng.normal(0.0, 0.1, out).astype(np.float32)
  return sd


def aspp_l_state_dict(seed: int, out: int, hidden: int = 1024) -> dict[str, np.ndarray]:
  """Random ASPP-L weights in our documented layout `aspp.c{i}.fc{6,7,8}.{weight,bias}`."""
  rng = np.random.default_rng(seed)
  sd = {}
  for i in range(4):
    for name, (o, inp, k) in {
      "fc6": (hidden, 512, 3),
      "fc7": (hidden, hidden, 1),
      "fc8": (out, hidden, 1),
    }.items():
      sd[f"aspp.c{i}.{name}.weight"] = _conv_weight(rng, o, inp, k, gain=0.5)
      sd[f"aspp.c{i}.{name}.bias"] = rng.normal(0.0, 0.1, o).astype(np.float32)
  return sd
