"""E-stop authority: who may clear a latched e-stop (and reset a simulated arm).

Anyone who can reach a socket may *press* the e-stop (stopping is always safe). Only an **operator** may
clear it, deliberately:

- over the network, a peer whose CurveZMQ public key is an *operator key* (``robopolicy keys`` writes
  ``operator.key``; the server loads it with ``operator_keys=``). Operator keys are distinct from every
  client key, so a robot computer holding a client key cannot clear an e-stop;
- on the machine itself, a message on the **operator socket**: an ``ipc://`` socket inside a directory that
  only this user can enter (0700, owned by this user: :func:`robopolicy.utils.private_dir.check_owned`), so
  other local users cannot connect to it. ``python -m robopolicy.deploy.operator clear <address>`` sends it.

Everyone else's ``clear_estop`` (and an arm bridge's ``reset``) is refused with an ``error`` reply of kind
``forbidden`` and logged with the peer's key. See ``docs/protocol.md``.
"""

from __future__ import annotations

import argparse
import hashlib
import re
import sys
from pathlib import Path
from typing import Any

from robopolicy.deploy.protocol import decode, encode
from robopolicy.utils.private_dir import UnsafePathError, check_owned, user_runtime_dir


def peer_key(frame: Any) -> bytes | None:
    """The CURVE public key (z85) a received frame was authenticated with, or None (no CURVE / no ZAP)."""
    try:
        user_id = frame.get("User-Id")
    except Exception:  # plain bytes (copy=True), or a transport without metadata
        return None
    if not user_id:
        return None
    key = user_id.encode() if isinstance(user_id, str) else bytes(user_id)
    return key if len(key) == 40 else None


def describe_peer(key: bytes | None) -> str:
    return f"CURVE key {key.decode('ascii', 'replace')}" if key else "an unauthenticated peer"


def operator_address(address: str) -> str:
    """Check an operator socket address: ``ipc://`` in a directory only this user can enter.

    ``"auto"`` is not resolved here (see :func:`default_operator_address`). Raises ValueError or
    :class:`~robopolicy.utils.private_dir.UnsafePathError` with what is wrong."""
    if not address.startswith("ipc://"):
        raise ValueError(f"operator socket {address!r}: must be an ipc:// address (a local socket whose directory "
                         "only this user can enter); tcp is reachable by every local user and beyond")
    directory = Path(address.removeprefix("ipc://")).parent
    if not directory.is_dir():
        raise FileNotFoundError(f"operator socket {address!r}: directory {directory} does not exist")
    check_owned(directory, forbid=0o077)
    return address


def default_operator_address(for_address: str, kind: str = "policy-server") -> str:
    """``ipc://$XDG_RUNTIME_DIR/robopolicy/<kind>-<port or hash>.ipc`` (a private directory), one per served
    address (ipc paths are limited to about 100 bytes, so a long address is hashed)."""
    port = re.fullmatch(r"tcp://[^/]*:(\d+)", for_address)
    name = port.group(1) if port else hashlib.sha256(for_address.encode()).hexdigest()[:12]
    return f"ipc://{user_runtime_dir()}/{kind}-{name}.ipc"


def send_operator_command(address: str, command: str, timeout_s: float = 2.0) -> dict[str, Any]:
    """Send ``estop`` or ``clear_estop`` to a policy server's operator socket; the ``ack`` header."""
    import zmq  # like the arm bridge: importing this module needs no zmq

    if command not in ("estop", "clear_estop"):
        raise ValueError(f"operator command must be estop or clear_estop, got {command!r}")
    operator_address(address)
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.linger = 0
    try:
        sock.connect(address)
        sock.send_multipart(encode(command, 1))
        if not sock.poll(int(timeout_s * 1000)):
            raise TimeoutError(f"no answer from the operator socket {address} within {timeout_s} s")
        reply = decode(sock.recv_multipart())
        if reply.type != "ack":
            raise RuntimeError(f"{command} refused: {reply.get('kind')}: {reply.get('message')}")
        return reply.header
    finally:
        sock.close(0)
        ctx.term()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m robopolicy.deploy.operator",
                                     description="Press or clear a policy server's e-stop from this machine.")
    parser.add_argument("command", choices=["estop", "clear"])
    parser.add_argument("address", help="the server's operator socket (ipc://...; `serve` prints it at start)")
    args = parser.parse_args(argv)
    try:
        ack = send_operator_command(args.address, "estop" if args.command == "estop" else "clear_estop")
    except (OSError, ValueError, RuntimeError, UnsafePathError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"{args.command}: server e-stopped = {ack.get('estopped')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())


__all__ = ["default_operator_address", "describe_peer", "operator_address", "peer_key", "send_operator_command"]
