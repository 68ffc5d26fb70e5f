"""What `robopolicy serve` shows an operator: its start line, status lines, refused handshakes (issue 27)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from robopolicy.deploy.client import PolicyClient
from robopolicy.deploy.fake import RampPolicy
from robopolicy.deploy.keys import ClientCurve, ServerCurve, generate_keys
from robopolicy.deploy.server import PolicyServer
from tests.test_control_loop import _tiny_mlp

REPO = Path(__file__).resolve().parents[1]


def test_serve_prints_its_start_line_and_status_lines_with_their_prefix(tmp_path):
    """The start line was only logged (logging is not configured), and rich ate "[policy server]" as markup."""
    _tiny_mlp().save(tmp_path / "ckpt")
    runtime = Path(tempfile.mkdtemp(prefix="rp-run-"))  # short: ipc paths are limited to ~100 bytes
    env = {**os.environ, "PYTHONPATH": str(REPO), "XDG_RUNTIME_DIR": str(runtime), "OMP_NUM_THREADS": "1",
           "COLUMNS": "250"}
    out = subprocess.run([sys.executable, "-m", "robopolicy.cli", "serve", f"checkpoint={tmp_path / 'ckpt'}",
                          f"address=ipc://{tmp_path}/serve.ipc", "max_runtime_s=1.5", "status_every_s=0.5"],
                         capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path)
    shutil.rmtree(runtime, ignore_errors=True)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout.splitlines()
    start = [line for line in lines if line.startswith("[policy server] serving")]
    assert start, out.stdout
    assert f"ipc://{tmp_path}/serve.ipc" in start[0] and "without CURVE" in start[0]
    assert f"operator socket ipc://{runtime}/robopolicy/" in start[0]  # operator_address=auto: a private dir
    assert any(line.startswith("[policy server] ") and "received" in line for line in lines), out.stdout


def test_status_line_counts_refused_curve_handshakes(tmp_path):
    k = generate_keys(tmp_path / "keys", ("server", "client", "intruder"))
    curve = ServerCurve.load(k["server"][1], k["client"][0])
    with PolicyServer(RampPolicy(), address=f"ipc://{tmp_path}/c.ipc", curve=curve, status_every_s=0) as srv:
        intruder = PolicyClient(srv.endpoint, curve=ClientCurve.load(k["intruder"][1], k["server"][0]))
        assert intruder.call("hello", timeout_s=0.5) is None
        intruder.close()
        deadline = time.monotonic() + 3
        while srv.auth_denied == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert "CURVE handshakes refused" in srv.status_line()
        assert "with CURVE (1 client keys, 0 operator keys)" in srv.start_line()
