"""The layers of docs/architecture.md, enforced: import-linter's contracts (pyproject.toml), a proof that they
catch a forbidden import, and what each torch-free entry point actually loads."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def _lint(root: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(root)}
    return subprocess.run([str(LINT_IMPORTS), "--no-cache", "--no-logo", str(root / "pyproject.toml")], cwd=root,
                          env=env, capture_output=True, text=True, timeout=300)


def test_the_layer_contracts_hold():
    proc = _lint(REPO)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "3 kept, 0 broken" in proc.stdout


@pytest.mark.parametrize("module, planted, broken", [
    # a low layer reaching up (the cycle the contracts exist to prevent), as a function-level import
    ("robopolicy/deploy/timing.py", "def _hidden():\n    from robopolicy.robots import make_robot\n", "Layers point one way"),
    # the control loop pulling in torch
    ("robopolicy/deploy/protocol.py", "import torch\n", "import no torch"),
    # a policy importing an inference engine
    ("robopolicy/policies/noise.py", "import onnxruntime\n", "never import an inference engine"),
])
def test_a_forbidden_import_breaks_a_contract(tmp_path, module, planted, broken):
    shutil.copytree(REPO / "robopolicy", tmp_path / "robopolicy", ignore=shutil.ignore_patterns("__pycache__", "_bundled"))
    shutil.copy(REPO / "pyproject.toml", tmp_path / "pyproject.toml")
    target = tmp_path / module
    target.write_text(target.read_text() + "\n" + planted)
    proc = _lint(tmp_path)
    assert proc.returncode != 0, proc.stdout
    assert f"{broken}" in proc.stdout and "BROKEN" in proc.stdout, proc.stdout


IMPORTS_LOADED = """
import importlib, json, sys
importlib.import_module(sys.argv[1])
heavy = ("torch", "onnxruntime", "hydra", "diffusers", "openvino", "tensorrt", "robopolicy.policies")
print(json.dumps(sorted({m.split(".")[0] if not m.startswith("robopolicy.") else "robopolicy.policies"
                         for m in sys.modules if m in heavy or m.split(".")[0] in heavy[:-1]
                         or m.startswith("robopolicy.policies")})))
"""


@pytest.mark.parametrize("module", ["robopolicy.cli", "robopolicy.deploy", "robopolicy.deploy.server",
                                    "robopolicy.deploy.client", "robopolicy.runtime", "robopolicy.robots",
                                    "robopolicy.robots.crazyflie", "robopolicy.configs"])
def test_robot_side_modules_load_no_torch_and_no_engine(module):
    """What a robot computer imports loads neither torch nor Hydra nor an inference engine it did not choose."""
    import json

    proc = subprocess.run([sys.executable, "-c", IMPORTS_LOADED, module], capture_output=True, text=True,
                          cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == [], f"{module} loaded {proc.stdout}"


def test_act_imports_without_onnxruntime():
    """The ACT policy's temporal ensembler comes from the runtime package; that must not need ONNX Runtime."""
    code = ("import importlib.abc, sys\n"
            "class Block(importlib.abc.MetaPathFinder):\n"
            "    def find_spec(self, name, path=None, target=None):\n"
            "        if name.split('.')[0] == 'onnxruntime':\n"
            "            raise ImportError('onnxruntime blocked')\n"
            "sys.meta_path.insert(0, Block())\n"
            "import robopolicy.policies.act\n"
            "from robopolicy.policies.registry import get_policy_class\n"
            "print(get_policy_class('act').__name__)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO,
                          env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ACTPolicy"


def test_artifact_folders_hold_no_python():
    """datasets/, sim/, hardware/ and deploy/ hold artifacts, never importable code (``datasets`` would shadow
    Hugging Face's): scripts that serve them live in the package and run with ``python -m``."""
    found = [str(p.relative_to(REPO)) for folder in ("datasets", "sim", "hardware", "deploy")
             for p in (REPO / folder).rglob("*.py")]
    assert not found, f"Python files in artifact folders: {found}"
