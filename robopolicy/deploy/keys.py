"""CurveZMQ keys: generation (``robopolicy keys``), loading, and who may do what.

Keys are ZeroMQ certificate files (the format of :func:`zmq.auth.create_certificates`):
``<name>.key`` holds the public key (safe to copy to the other side), ``<name>.key_secret`` the
public + secret key (keep it on its machine). The server loads its secret certificate and the public
certificates of the clients it allows; a client loads its secret certificate and the server's public one.

Permission rules (as ssh's for private keys; ``docs/protocol.md``):

- a secret certificate is created with mode 0600 from its first byte (``O_CREAT | O_EXCL``, never an
  existing file), in a directory created 0700;
- loading refuses a secret certificate that is not owned by this user or that its group or others can
  read or write (:class:`KeyPermissionError`): a key others could read is not secret any more;
- an allow list admits public keys only: the server's own key is never a client (``allowed_clients=``
  pointed at the folder ``robopolicy keys`` wrote skips ``server.key``), and a secret file is refused.

Operators: ``operator`` keys (``robopolicy keys names=[server,client,operator]``) are the only CURVE
identities that may clear an e-stop (:mod:`robopolicy.deploy.operator`); they are admitted to the socket
like clients, and a client key is never an operator key.
"""

from __future__ import annotations

import dataclasses
import datetime
import logging
import os
import stat
from pathlib import Path

import zmq
import zmq.auth

log = logging.getLogger("robopolicy.deploy.keys")


class KeyPermissionError(PermissionError):
    """A secret key that others can read or that belongs to another user."""


def check_secret_key_file(path: str | Path) -> None:
    """Refuse a secret certificate others could read or change (mode & 0o077) or that another user owns."""
    path = Path(path)
    st = path.stat()
    if hasattr(os, "geteuid") and st.st_uid != os.geteuid():
        raise KeyPermissionError(f"{path}: secret key owned by uid {st.st_uid}, not by this user "
                                 f"(uid {os.geteuid()}); refusing to use it")
    if st.st_mode & 0o077:
        raise KeyPermissionError(f"{path}: secret key has mode {stat.S_IMODE(st.st_mode):04o}; its group or others "
                                 f"can access it, so it may be known to them. Refusing to use it "
                                 f"(fix with: chmod 600 {path}, or make a new key)")


def _load_secret_certificate(path: str | Path) -> tuple[bytes, bytes]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such secret key file")
    check_secret_key_file(path)
    public, secret = zmq.auth.load_certificate(str(path))
    if secret is None:
        raise ValueError(f"{path}: not a secret certificate (use the .key_secret file)")
    return public, secret


@dataclasses.dataclass
class ServerCurve:
    public: bytes
    secret: bytes
    allowed_clients: frozenset[bytes]  # z85 public keys; empty = nobody gets in

    operator_keys: frozenset[bytes] = frozenset()  # z85 public keys that may clear an e-stop

    def __post_init__(self) -> None:
        if self.public in self.allowed_clients or self.public in self.operator_keys:
            raise ValueError("the server's own public key cannot be a client or operator key")
        both = self.allowed_clients & self.operator_keys
        if both:
            raise ValueError(f"{len(both)} key(s) are both client and operator keys; an operator key must be "
                             "distinct from every client key")

    @property
    def admitted(self) -> frozenset[bytes]:
        """Every key that completes the handshake: clients and operators."""
        return self.allowed_clients | self.operator_keys

    @classmethod
    def load(cls, server_secret_file: str | Path, allowed: str | Path | list[bytes | str],
             operators: str | Path | list[bytes | str] | None = None) -> ServerCurve:
        public, secret = _load_secret_certificate(server_secret_file)
        operator_keys = load_public_keys(operators, exclude=public) if operators else frozenset()
        clients = load_public_keys(allowed, exclude=public)
        if not isinstance(allowed, list | tuple | set | frozenset) and Path(allowed).is_dir():
            clients -= operator_keys  # the folder `robopolicy keys` wrote also holds operator.key: an operator
        return cls(public, secret, clients, operator_keys)


@dataclasses.dataclass
class ClientCurve:
    public: bytes
    secret: bytes
    server_public: bytes

    @classmethod
    def load(cls, client_secret_file: str | Path, server_public_file: str | Path) -> ClientCurve:
        public, secret = _load_secret_certificate(client_secret_file)
        server_public, _ = zmq.auth.load_certificate(str(server_public_file))
        return cls(public, secret, server_public)


def load_public_keys(source: str | Path | list[bytes | str], exclude: bytes | None = None) -> frozenset[bytes]:
    """z85 public keys from a directory of ``*.key`` certificates, one certificate file, or a list.

    ``exclude`` (the server's own public key) is skipped in a directory (``robopolicy keys`` writes
    ``server.key`` next to the client keys) and refused when named explicitly. Secret certificates are
    refused: an allow list holds public keys only."""
    in_directory = False
    if isinstance(source, list | tuple | set | frozenset):
        keys = {k.encode() if isinstance(k, str) else bytes(k) for k in source}
    else:
        path = Path(source)
        if not path.exists():
            raise FileNotFoundError(f"{path}: no such key file or directory")
        in_directory = path.is_dir()
        files = sorted(f for f in path.glob("*.key") if f.is_file()) if in_directory else [path]
        keys = set()
        for f in files:
            public, secret = zmq.auth.load_certificate(str(f))
            if secret is not None:
                raise ValueError(f"{f}: a secret certificate; an allow list takes public .key files only")
            if in_directory and public == exclude:
                log.info("%s: the server's own key, not admitted as a client", f)
                continue
            keys.add(public)
    for k in keys:
        if len(k) != 40:
            raise ValueError(f"not a z85 CURVE public key (40 characters): {k[:50]!r}")
    if exclude is not None and exclude in keys:
        raise ValueError("the server's own public key cannot be admitted as a client or operator")
    return frozenset(keys)


_SECRET_BANNER = ("#   ****  Generated on {} by robopolicy  ****\n#   ZeroMQ CURVE **Secret** Certificate\n"
                  "#   DO NOT PROVIDE THIS FILE TO OTHER USERS nor change its permissions.\n\n")
_PUBLIC_BANNER = ("#   ****  Generated on {} by robopolicy  ****\n#   ZeroMQ CURVE Public Certificate\n"
                  "#   Exchange securely, or verify its contents after the exchange.\n\n")


def _write_certificate(path: Path, banner: str, public: bytes, secret: bytes | None, mode: int) -> None:
    """A certificate file in zmq.auth's format, created with ``mode`` (never an existing file, never wider)."""
    text = banner.format(datetime.datetime.now()) + "metadata\ncurve\n"
    text += f'    public-key = "{public.decode()}"\n'
    if secret is not None:
        text += f'    secret-key = "{secret.decode()}"\n'
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), mode)
    try:
        os.fchmod(fd, mode)  # the umask may only narrow it; make it exact
        os.write(fd, text.encode())
    finally:
        os.close(fd)


def generate_keypair(directory: str | Path, name: str) -> tuple[Path, Path]:
    """Write ``<name>.key`` (0644) and ``<name>.key_secret`` (0600 from its creation) into ``directory``."""
    if not zmq.has("curve"):
        raise RuntimeError("this libzmq was built without CURVE support")
    directory = Path(directory)
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    public_file, secret_file = directory / f"{name}.key", directory / f"{name}.key_secret"
    for f in (public_file, secret_file):
        if f.exists() or f.is_symlink():
            raise FileExistsError(f"{f} exists; refusing to overwrite a key")
    public, secret = zmq.curve_keypair()
    _write_certificate(secret_file, _SECRET_BANNER, public, secret, 0o600)
    _write_certificate(public_file, _PUBLIC_BANNER, public, None, 0o644)
    return public_file, secret_file


def generate_keys(directory: str | Path, names: tuple[str, ...] = ("server", "client", "operator")
                  ) -> dict[str, tuple[Path, Path]]:
    return {name: generate_keypair(directory, name) for name in names}


ZAP_DOMAIN = "robopolicy"


class _AllowList:
    """Credentials provider for :meth:`zmq.auth.thread.ThreadAuthenticator.configure_curve_callback`.

    Refused handshakes are counted and logged (the first few keys in full, then one line per 100),
    so an operator sees a robot with a wrong key instead of silence."""

    def __init__(self, allowed: frozenset[bytes]):
        self.allowed = allowed
        self.denied = 0

    def callback(self, domain: str, key: bytes) -> bool:
        ok = key in self.allowed
        if not ok:
            self.denied += 1
            if self.denied <= 10 or self.denied % 100 == 0:
                log.warning("refused a CURVE handshake from public key %s (not an allowed client; %d refused so "
                            "far)", key.decode("ascii", "replace")[:40], self.denied)
        return ok


def start_authenticator(ctx: zmq.Context, curve: ServerCurve):
    """A ZAP handler on ``ctx`` that admits only ``curve.allowed_clients``; returns (authenticator, allow list)."""
    from zmq.auth.thread import ThreadAuthenticator

    auth = ThreadAuthenticator(ctx)
    auth.start()
    allow = _AllowList(curve.admitted)
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


__all__ = ["ClientCurve", "KeyPermissionError", "ServerCurve", "apply_client_curve", "apply_server_curve",
           "check_secret_key_file", "generate_keypair", "generate_keys", "load_public_keys", "start_authenticator"]
