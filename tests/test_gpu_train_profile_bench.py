"""bench/gpu_train_profile.py runs end to end on the CPU (``--device cpu``), so that a lent GPU's minutes go to
measuring rather than to fixing the script (issue 33, part 2)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_gpu_train_profile_runs_on_the_cpu(tmp_path):
    cmd = [sys.executable, "bench/gpu_train_profile.py", "--device", "cpu", "--steps", "2", "--batch-size", "16",
           "--variants", "eager,bf16", "--out", str(tmp_path)]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads((tmp_path / "gpu_train_profile.json").read_text())
    assert result["gpu"] == "CPU (cpu)" and result["profile"]["step_ms_profiled"] > 0
    assert [r["variant"] for r in result["variants"]] == ["eager", "bf16"]
    assert all(r["samples_per_s"] > 0 for r in result["variants"]), result["variants"]
    assert (tmp_path / "trace_eager.json").stat().st_size > 0
    assert "| bf16 |" in (tmp_path / "gpu_train_profile.md").read_text()


def test_gpu_train_profile_refuses_an_unknown_variant(tmp_path):
    done = subprocess.run([sys.executable, "bench/gpu_train_profile.py", "--device", "cpu", "--variants", "eager,fast",
                           "--out", str(tmp_path)], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode != 0 and "unknown --variants ['fast']" in done.stderr
