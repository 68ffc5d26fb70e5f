"""robopolicy as users install it: the wheel built from this tree, into fresh virtual environments.

* Runtime profile (a robot computer): ``pip install 'robopolicy-*.whl[runtime]'`` from the package index into an
  empty venv. No torch, Hydra or diffusers arrives; from an empty directory it serves an ONNX artifact and a C
  export made during setup, answers a request, drives ``robopolicy run robot=echo`` and writes keys.
* Full profile (the training stack): ``pip install 'robopolicy-*.whl[train]'`` into another empty venv (torch's
  CPU wheel, as the README says to install it); from an empty directory ``robopolicy --help``, ``robopolicy train
  --cfg job`` and a shortened ``robopolicy demo`` on the bundled demos, read from the installed package.

Both ``pip check``. The wheel is built once per session without build isolation (no download); pip's cache serves
the profiles' dependencies after the first run (about a minute each).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TRAINING_STACK = ("torch", "hydra-core", "diffusers", "safetensors", "gym-pusht")


def _run(args: list[str], cwd: Path, timeout: float = 600, check: bool = True, **kw) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(kw.pop("env", {}))
    proc = subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env, **kw)
    if check:
        assert proc.returncode == 0, f"{args}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


@pytest.fixture(scope="session")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out), str(REPO)],
         cwd=out)
    (path,) = out.glob("robopolicy-*.whl")
    return path


def _venv(root: Path) -> Path:
    _run([sys.executable, "-m", "venv", str(root)], cwd=root.parent)
    return root / "bin"


def _installed(bin_dir: Path) -> dict[str, str]:
    rows = json.loads(_run([str(bin_dir / "python"), "-m", "pip", "list", "--format", "json"], cwd=bin_dir).stdout)
    return {r["name"].lower(): r["version"] for r in rows}


@pytest.fixture(scope="session")
def exported(tmp_path_factory) -> dict[str, Path]:
    """An MLP trained for a few steps on a 2-D mapping, exported to ONNX and to C (observation.state -> action,
    both 2-D: the echo robot's shapes)."""
    import torch

    from robopolicy.data.reader import LeRobotDataset
    from robopolicy.export import export_policy
    from robopolicy.export.c_export import export_c
    from robopolicy.train.trainer import make_policy_for_dataset
    from tests.conftest import linear_mapping_episodes, write_dataset

    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("artifacts")
    ds = LeRobotDataset(write_dataset(root / "ds", linear_mapping_episodes(n_episodes=2)))
    policy = make_policy_for_dataset({"type": "mlp", "n_obs_steps": 1, "horizon": 4, "n_action_steps": 2,
                                      "hidden_dims": [16, 16]}, ds, ["observation.state"], "action", "min_max")
    return {"onnx": export_policy(policy, root / "onnx"), "c": export_c(policy, root / "c")}


@pytest.fixture(scope="session")
def runtime_venv(tmp_path_factory, wheel) -> Path:
    bin_dir = _venv(tmp_path_factory.mktemp("venv") / "runtime")
    _run([str(bin_dir / "python"), "-m", "pip", "install", "-q", f"{wheel}[runtime]"], cwd=bin_dir, timeout=900)
    return bin_dir


def test_runtime_install_pulls_no_training_stack(runtime_venv):
    installed = _installed(runtime_venv)
    assert {"robopolicy", "onnxruntime", "pyzmq", "msgpack", "numpy"} <= set(installed)
    assert not [name for name in installed if name in TRAINING_STACK or name.startswith("nvidia-")], installed
    _run([str(runtime_venv / "python"), "-m", "pip", "check"], cwd=runtime_venv)


def test_runtime_install_writes_keys_from_an_empty_directory(runtime_venv, tmp_path):
    _run([str(runtime_venv / "robopolicy"), "keys", "dir=keys"], cwd=tmp_path)
    secret = tmp_path / "keys" / "client.key_secret"
    assert secret.is_file() and (tmp_path / "keys" / "server.key").is_file()
    assert secret.stat().st_mode & 0o077 == 0  # the secret key is readable by its owner only


@pytest.mark.parametrize("kind", ["onnx", "c"])
def test_runtime_install_serves_and_drives_the_control_loop(runtime_venv, exported, tmp_path, kind):
    from robopolicy.deploy.client import PolicyClient

    address = f"ipc://{tmp_path}/policy.ipc"
    server = subprocess.Popen([str(runtime_venv / "robopolicy"), "serve", f"checkpoint={exported[kind]}",
                               f"address={address}", "max_runtime_s=60", "status_every_s=0"],
                              cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
    try:
        with PolicyClient(address) as client:
            spec = None
            deadline = time.monotonic() + 120  # a C export compiles on first load
            while spec is None and time.monotonic() < deadline and server.poll() is None:
                spec = client.hello(timeout_s=1.0)
            assert spec is not None, server.stdout.read() if server.poll() is not None else "no hello reply"
            assert spec.action_dim == 2 and spec.input_features == {"observation.state": (2,)}
        run = _run([str(runtime_venv / "robopolicy"), "run", "robot=echo", f"server={address}", "duration_s=1.5",
                    "control_hz=50"], cwd=tmp_path, timeout=120)
        summary = json.loads(run.stdout[run.stdout.index("{"):])
        assert summary["chunks"] > 0 and summary["fatal"] is None, summary
        assert summary["ticks"] > 0 and summary["watchdog_trips"] == 0, summary
    finally:
        server.kill()
        server.wait(timeout=30)


@pytest.fixture(scope="session")
def full_venv(tmp_path_factory, wheel) -> Path:
    bin_dir = _venv(tmp_path_factory.mktemp("venv") / "full")
    # torch's CPU build first, as the README's install line does, so nothing reaches for the CUDA one
    _run([str(bin_dir / "python"), "-m", "pip", "install", "-q", "torch==2.13.0"], cwd=bin_dir, timeout=900)
    _run([str(bin_dir / "python"), "-m", "pip", "install", "-q", f"{wheel}[train]"], cwd=bin_dir, timeout=900)
    return bin_dir


def test_full_install_runs_from_an_empty_directory(full_venv, tmp_path):
    python, cli = str(full_venv / "python"), str(full_venv / "robopolicy")
    located = _run([python, "-c", "import robopolicy, robopolicy.configs as c; "
                    "print(robopolicy.__file__); print(c.resolve_path('bundled:pusht')); "
                    "print(c.resolve_path('bundled:pusht_mirror'))"], cwd=tmp_path).stdout.split()
    package_dir = Path(located[0]).parent
    assert package_dir.is_relative_to(full_venv.parent), "the wheel's robopolicy, not the checkout's"
    assert Path(located[1]) == package_dir / "_bundled" / "pusht"
    assert Path(located[2]) == package_dir / "_bundled" / "pusht_mirror"  # policy=flow_pusht's training set
    assert "usage: robopolicy <command>" in _run([cli, "--help"], cwd=tmp_path).stdout
    composed = _run([cli, "train", "--cfg", "job", "policy=mlp"], cwd=tmp_path).stdout
    assert "root: bundled:pusht" in composed and "type: mlp" in composed
    # the main job, shortened: bundled demos -> train -> evaluate -> ONNX export -> served control loop
    _run([cli, "demo", "train.steps=20", "train.batch_size=16", "train.warmup_steps=2", "train.progress=false",
          "eval.n_episodes=2", "eval.n_workers=1", "eval.n_videos=0", "eval.max_steps=60", "control_episodes=1",
          "output_dir=demo"], cwd=tmp_path, timeout=900)
    report = json.loads((tmp_path / "demo" / "demo_report.json").read_text())
    assert report["train"]["steps"] == 20 and report["eval"]["n_episodes"] == 2, report
    assert report["control_loop"]["n_episodes"] == 1, report
    assert Path(report["dataset"]) == package_dir / "_bundled" / "pusht_mirror"  # section 12's recipe trains on it
    assert Path(report["artifacts"]["onnx"]).is_relative_to(tmp_path), "outputs go under the current directory"



def test_full_install_is_consistent_and_cpu_only(full_venv):
    installed = _installed(full_venv)
    assert {"torch", "hydra-core", "diffusers", "onnxruntime", "gym-pusht"} <= set(installed)
    assert not [name for name in installed if name.startswith("nvidia-")], installed
    _run([str(full_venv / "python"), "-m", "pip", "check"], cwd=full_venv)
