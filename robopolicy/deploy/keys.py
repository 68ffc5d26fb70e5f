"""CurveZMQ keys: generation (``robopolicy keys``) and loading.

Keys are ZeroMQ certificate files written by :func:`zmq.auth.create_certificates`:
``<name>.key`` holds the public key (safe to copy to the other side), ``<name>.key_secret`` the
public + secret key (keep it on its machine, mode 0600). The server loads its secret certificate
and the public certificates of the clients it allows; a client loads its secret certificate and
the server's public one.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import zmq
import zmq.auth


@dataclasses.dataclass
class ServerCurve:
    public: bytes
    secret: bytes
    allowed_clients: frozenset[bytes]  # z85 public keys; empty = nobody gets in

    @classmethod
    def load(cls, server_secret_file: str | Path, allowed: str | Path | list[bytes | str]) -> ServerCurve:
        public, secret = zmq.auth.load_certificate(str(server_secret_file))
        if secret is None:
            raise ValueError(f"{server_secret_file}: not a secret certificate (use the .key_secret file)")
        return cls(public, secret, load_public_keys(allowed))


@dataclasses.dataclass
class ClientCurve:
    public: bytes
    secret: bytes
    server_public: bytes

    @classmethod
    def load(cls, client_secret_file: str | Path, server_public_file: str | Path) -> ClientCurve:
        public, secret = zmq.auth.load_certificate(str(client_secret_file))
        if secret is None:
            raise ValueError(f"{client_secret_file}: not a secret certificate (use the .key_secret file)")
        server_public, _ = zmq.auth.load_certificate(str(server_public_file))
        return cls(public, secret, server_public)


def load_public_keys(source: str | Path | list[bytes | str]) -> frozenset[bytes]:
    """z85 public keys from a directory of ``*.key`` certificates, one certificate file, or a list."""
    if isinstance(source, list | tuple | set | frozenset):
        keys = {k.encode() if isinstance(k, str) else bytes(k) for k in source}
    else:
        path = Path(source)
        files = sorted(path.glob("*.key")) if path.is_dir() else [path]
        keys = {zmq.auth.load_certificate(str(f))[0] for f in files}
    for k in keys:
        if len(k) != 40:
            raise ValueError(f"not a z85 CURVE public key (40 characters): {k[:50]!r}")
    return frozenset(keys)


def generate_keypair(directory: str | Path, name: str) -> tuple[Path, Path]:
    """Write ``<name>.key`` and ``<name>.key_secret`` into ``directory`` (the secret one mode 0600)."""
    if not zmq.has("curve"):
        raise RuntimeError("this libzmq was built without CURVE support")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    for suffix in (".key", ".key_secret"):
        if (directory / f"{name}{suffix}").exists():
            raise FileExistsError(f"{directory / (name + suffix)} exists; refusing to overwrite a key")
    public_file, secret_file = zmq.auth.create_certificates(str(directory), name)
    os.chmod(secret_file, 0o600)
    return Path(public_file), Path(secret_file)


def generate_keys(directory: str | Path, names: tuple[str, ...] = ("server", "client")) -> dict[str, tuple[Path, Path]]:
    return {name: generate_keypair(directory, name) for name in names}


ZAP_DOMAIN = "robopolicy"


class _AllowList:
    """Credentials provider for :meth:`zmq.auth.thread.ThreadAuthenticator.configure_curve_callback`."""

    def __init__(self, allowed: frozenset[bytes]):
        self.allowed = allowed
        self.denied = 0

    def callback(self, domain: str, key: bytes) -> bool:
        ok = key in self.allowed
        if not ok:
            self.denied += 1
        return ok


def start_authenticator(ctx: zmq.Context, curve: ServerCurve):
    """A ZAP handler on ``ctx`` that admits only ``curve.allowed_clients``; returns (authenticator, allow list)."""
    from zmq.auth.thread import ThreadAuthenticator

    auth = ThreadAuthenticator(ctx)
    auth.start()
    allow = _AllowList(curve.allowed_clients)
    auth.configure_curve_callback(domain=ZAP_DOMAIN, credentials_provider=allow)
    return auth, allow


def apply_server_curve(sock: zmq.Socket, curve: ServerCurve) -> None:
    sock.curve_server = True
    sock.curve_publickey = curve.public
    sock.curve_secretkey = curve.secret
    sock.zap_domain = ZAP_DOMAIN.encode()


def apply_client_curve(sock: zmq.Socket, curve: ClientCurve) -> None:
    sock.curve_publickey = curve.public
    sock.curve_secretkey = curve.secret
    sock.curve_serverkey = curve.server_public


__all__ = ["ClientCurve", "ServerCurve", "apply_client_curve", "apply_server_curve", "generate_keypair",
           "generate_keys", "load_public_keys", "start_authenticator"]
