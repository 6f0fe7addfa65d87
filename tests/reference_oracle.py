"""The official SPNet code (../shared/spnet_reference/original/) as an oracle for tests.

The official repository is never copied into this project: tests import it from the shared
folder and compare this project's numbers with what it computes. Its modules import packages
that only its logging, data loading or CRF post-processing use; where one is not installed here,
`install_stand_ins` registers a minimal module in its place (never over an installed one):

  click                      train.py / eval.py decorate `main` with click.command/option: the
                             stand-ins return the function unchanged (we never run `main`).
  addict                     train.py / eval.py read the yaml config into an addict.Dict: a dict
                             with attribute access (nested dicts converted).
  tensorboardX               train.py's SummaryWriter (TensorBoard logging only): a no-op class.
  torchnet, torchnet.meter   train.py's MovingAverageValueMeter (logging only): a no-op class.
  torchvision, .models,      train.py imports torchvision.models.resnet and never uses it: empty
  .models.resnet             modules.
  pydensecrf, .densecrf,     libs/utils/__init__.py imports the CRF (eval.py's optional
  .utils                     post-processing): empty modules; calling the CRF fails loudly.

The original calls `.cuda()` on its class embeddings (in DeepLabV2.__init__ and in every
forward); `cuda_as_cpu()` makes `.cuda()` return its tensor or module unchanged while active.

Use:
  reference_oracle.skip_unless_available()  # at module level: skips the test module if absent
  train = reference_oracle.import_original_train()  # get_params, poly_lr_scheduler, ...
  models = reference_oracle.import_original_models()  # libs.models: MSC, DeepLabV2, ...
  datasets = reference_oracle.import_original_module("libs.datasets.cocostuff")
  evaluation = reference_oracle.import_original_script("eval")
  with reference_oracle.cuda_as_cpu(): ...
or, per test, the `original_code` fixture (import it into the test module): the train module,
skipping the test when the original cannot run.
"""

import contextlib
import importlib
import importlib.util
import os
import sys
import types

import pytest

from .conftest import SHARED

ORIGINAL = os.path.abspath(os.path.join(SHARED, "spnet_reference", "original"))
# Module name under which train.py / eval.py are imported (their own names are too generic).
_PREFIX = "spnet_original_"


def skip_reason() -> str | None:
  """Why the oracle cannot run here (None when it can)."""
  if not os.path.isfile(os.path.join(ORIGINAL, "train.py")):
    return (
      f"The official SPNet code is not at {ORIGINAL} (a checkout without the shared reference "
      "folder); the fidelity tests against it are skipped."
    )
  # What its train.py / eval.py and libs/ import at module level and that no stand-in replaces.
  for module in ("torch", "cv2", "yaml", "tqdm", "h5py", "scipy", "PIL"):
    if importlib.util.find_spec(module) is None:
      return f"The official SPNet code needs {module!r}, which is not installed."
  return None


def skip_unless_available() -> None:
  """pytest.skip for the whole calling test module when the oracle cannot run."""
  reason = skip_reason()
  if reason:
    pytest.skip(reason, allow_module_level=True)


@pytest.fixture(scope="session")
def original_code():
  """The imported train module (skips the test when the original is unavailable)."""
  reason = skip_reason()
  if reason:
    pytest.skip(reason)
  return import_original_train()


def _missing(name: str) -> bool:
  """Whether `name` (possibly dotted) cannot be imported from the installed packages."""
  if name in sys.modules:
    return False
  try:
    return importlib.util.find_spec(name) is None
  except ModuleNotFoundError:  # The parent package is missing.
    return True


class _AttrDict(dict):
  """addict.Dict's read side: d.KEY is d['KEY'], nested dicts converted too."""

  def __init__(self, *args, **kwargs):
    super().__init__(*args, **kwargs)
    for key, value in self.items():
      if isinstance(value, dict) and not isinstance(value, _AttrDict):
        self[key] = _AttrDict(value)

  def __getattr__(self, name):
    try:
      return self[name]
    except KeyError as error:
      raise AttributeError(name) from error


class _NoOp:
  """Accepts any constructor arguments and method calls and does nothing (loggers)."""

  def __init__(self, *args, **kwargs):
    pass

  def __getattr__(self, name):
    return lambda *args, **kwargs: None


def _click_decorator(*args, **kwargs):
  return lambda function: function


def _stand_ins() -> dict[str, dict[str, object]]:
  """Module name -> attributes of its stand-in (parents listed before children)."""
  return {
    "click": {"command": _click_decorator, "option": _click_decorator},
    "addict": {"Dict": _AttrDict},
    "tensorboardX": {"SummaryWriter": _NoOp},
    "torchnet": {},
    "torchnet.meter": {"MovingAverageValueMeter": _NoOp},
    "torchvision": {},
    "torchvision.models": {},
    "torchvision.models.resnet": {},
    "pydensecrf": {},
    "pydensecrf.densecrf": {},
    "pydensecrf.utils": {},
  }


def install_stand_ins() -> list[str]:
  """Registers the stand-ins for the missing modules; returns the names registered."""
  registered = []
  for name, attributes in _stand_ins().items():
    if not _missing(name):
      continue
    module = types.ModuleType(name, f"Test stand-in for {name} (tests/reference_oracle.py).")
    module.__dict__.update(attributes)
    sys.modules[name] = module
    parent, _, child = name.rpartition(".")
    if parent:
      setattr(sys.modules[parent], child, module)
    registered.append(name)
  return registered


def _prepare() -> None:
  reason = skip_reason()
  if reason:
    raise RuntimeError(reason)
  install_stand_ins()
  if ORIGINAL not in sys.path:
    sys.path.insert(0, ORIGINAL)  # Its modules import `libs.*` as a top-level package.


def import_original_script(name: str) -> types.ModuleType:
  """Imports original/<name>.py (e.g. 'train', 'eval') as module `spnet_original_<name>`."""
  _prepare()
  module_name = _PREFIX + name
  if module_name not in sys.modules:
    spec = importlib.util.spec_from_file_location(module_name, os.path.join(ORIGINAL, f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
      spec.loader.exec_module(module)
    except BaseException:
      del sys.modules[module_name]
      raise
  return sys.modules[module_name]


def import_original_train() -> types.ModuleType:
  """The original train.py: get_params, poly_lr_scheduler, resize_target, RandomImageSampler."""
  return import_original_script("train")


def import_original_module(name: str) -> types.ModuleType:
  """A module of the original's `libs` package, e.g. 'libs.models' or 'libs.datasets'."""
  _prepare()
  return importlib.import_module(name)


def import_original_models() -> types.ModuleType:
  """The original libs.models (MSC, DeepLabV2, DeepLabV2_ResNet101_MSC, ...)."""
  return import_original_module("libs.models")


@contextlib.contextmanager
def cuda_as_cpu():
  """While active, Tensor.cuda() and Module.cuda() return their tensor / module unchanged."""
  import torch

  saved = torch.Tensor.cuda, torch.nn.Module.cuda
  torch.Tensor.cuda = lambda self, *args, **kwargs: self
  torch.nn.Module.cuda = lambda self, *args, **kwargs: self
  try:
    yield
  finally:
    torch.Tensor.cuda, torch.nn.Module.cuda = saved
