"""CurveZMQ key files: created private, refused when others can read them, allow lists of public keys only."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
import zmq.auth

from robopolicy.deploy import keys as keys_module
from robopolicy.deploy.keys import (
    ClientCurve,
    KeyPermissionError,
    ServerCurve,
    generate_keypair,
    generate_keys,
    load_public_keys,
)

REPO = Path(__file__).resolve().parents[1]


def test_secret_key_is_never_readable_by_others_even_briefly(tmp_path, monkeypatch):
    """The old code let zmq write the file with the umask's mode and chmod-ed it afterwards."""
    modes = []
    real_open = os.open

    def spy_open(path, flags, mode=0o777, *a, **kw):
        fd = real_open(path, flags, mode, *a, **kw)
        if str(path).endswith(".key_secret"):
            modes.append((flags, stat.S_IMODE(os.fstat(fd).st_mode)))
        return fd

    monkeypatch.setattr(os, "open", spy_open)
    old = os.umask(0)  # the most permissive umask: only the mode given at creation protects the file
    try:
        public, secret = generate_keypair(tmp_path / "k", "client")
    finally:
        os.umask(old)
    assert modes and all(m == 0o600 for _, m in modes)
    assert all(f & os.O_EXCL and f & os.O_CREAT for f, _ in modes)
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "k").stat().st_mode) == 0o700
    pub, sec = zmq.auth.load_certificate(str(secret))
    assert sec is not None and zmq.auth.load_certificate(str(public)) == (pub, None)


def test_existing_keys_are_not_overwritten(tmp_path):
    generate_keypair(tmp_path, "server")
    with pytest.raises(FileExistsError):
        generate_keypair(tmp_path, "server")


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o660, 0o644])
def test_loading_a_secret_key_others_can_read_is_refused(tmp_path, mode):
    k = generate_keys(tmp_path, ("server", "client"))
    k["client"][1].chmod(mode)
    with pytest.raises(KeyPermissionError, match=f"client.key_secret.*mode {mode:04o}.*chmod 600"):
        ClientCurve.load(k["client"][1], k["server"][0])
    k["server"][1].chmod(mode)
    with pytest.raises(KeyPermissionError, match="server.key_secret"):
        ServerCurve.load(k["server"][1], [zmq.auth.load_certificate(str(k["client"][0]))[0]])


def test_loading_a_secret_key_of_another_user_is_refused(tmp_path, monkeypatch):
    k = generate_keys(tmp_path, ("server", "client"))
    monkeypatch.setattr(os, "geteuid", lambda: k["client"][1].stat().st_uid + 1)
    with pytest.raises(KeyPermissionError, match="owned by uid"):
        ClientCurve.load(k["client"][1], k["server"][0])


def test_allowed_clients_folder_never_admits_the_servers_own_key(tmp_path):
    """``allowed_clients=`` pointed at the folder ``robopolicy keys`` wrote admitted ``server.key`` too."""
    k = generate_keys(tmp_path, ("server", "client", "operator"))
    curve = ServerCurve.load(k["server"][1], tmp_path)
    server_public = zmq.auth.load_certificate(str(k["server"][0]))[0]
    assert server_public not in curve.allowed_clients and server_public not in curve.admitted
    assert zmq.auth.load_certificate(str(k["client"][0]))[0] in curve.allowed_clients
    with pytest.raises(ValueError, match="server's own public key"):
        ServerCurve.load(k["server"][1], k["server"][0])
    with pytest.raises(ValueError, match="server's own public key"):
        ServerCurve.load(k["server"][1], [server_public])
    with pytest.raises(ValueError, match="secret certificate"):
        load_public_keys(k["client"][1])


def test_operator_keys_must_differ_from_client_keys(tmp_path):
    k = generate_keys(tmp_path, ("server", "client", "operator"))
    with pytest.raises(ValueError, match="both client and operator"):
        ServerCurve.load(k["server"][1], k["client"][0], operators=k["client"][0])
    curve = ServerCurve.load(k["server"][1], k["client"][0], operators=k["operator"][0])
    operator_key = zmq.auth.load_certificate(str(k["operator"][0]))[0]
    assert curve.operator_keys == {operator_key}
    # the folder `robopolicy keys` wrote as allowed_clients: its operator key stays an operator, not a client
    curve = ServerCurve.load(k["server"][1], tmp_path, operators=k["operator"][0])
    assert operator_key not in curve.allowed_clients and operator_key in curve.admitted


def test_default_keys_folder_is_outside_the_repository_and_keys_are_ignored_by_git():
    from robopolicy.configs import load_config, resolve_path

    cfg = load_config("keys", [])
    assert not resolve_path(cfg.dir).is_relative_to(REPO)
    assert "operator" in cfg.names
    ignored = (REPO / ".gitignore").read_text().splitlines()
    assert "keys/" in ignored or "/keys/" in ignored


def test_refused_handshakes_are_logged(caplog):
    allow = keys_module._AllowList(frozenset({b"a" * 40}))
    with caplog.at_level("WARNING", logger="robopolicy.deploy.keys"):
        assert not allow.callback("robopolicy", b"b" * 40)
        assert allow.callback("robopolicy", b"a" * 40)
    assert allow.denied == 1 and "refused a CURVE handshake" in caplog.text and "b" * 40 in caplog.text
