"""Directories that only this user controls: caches of native code, operator sockets.

Anything loaded or trusted from a directory (a compiled ``.so``, an ipc socket that grants operator rights)
is only as safe as the directory: if another local user created it first, or can write into it, they can
plant a library or bind the socket. So such directories are created 0700 and, before anything in them is
trusted, checked to be a real directory (not a symlink) owned by this user with no group/other write
(or, for ``forbid=0o077``, no group/other access at all).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path


class UnsafePathError(PermissionError):
    """A directory or file that another user could control."""


def _euid() -> int | None:
    return os.geteuid() if hasattr(os, "geteuid") else None


def check_owned(path: str | Path, forbid: int = 0o022, what: str = "directory") -> None:
    """Raise :class:`UnsafePathError` unless ``path`` is owned by this user, not a symlink, and has none of
    the ``forbid`` mode bits (default: group/other write)."""
    path = Path(path)
    st = os.lstat(path)
    if stat.S_ISLNK(st.st_mode):
        raise UnsafePathError(f"{path}: {what} is a symlink; refusing to trust it")
    if what == "directory" and not stat.S_ISDIR(st.st_mode):
        raise UnsafePathError(f"{path}: expected a directory")
    euid = _euid()
    if euid is not None and st.st_uid != euid:
        raise UnsafePathError(f"{path}: {what} is owned by uid {st.st_uid}, not by this user (uid {euid}); another "
                              "user may have created it to plant files. Refusing to trust it; remove it or choose "
                              "another location")
    if st.st_mode & forbid:
        raise UnsafePathError(f"{path}: {what} has mode {stat.S_IMODE(st.st_mode):04o}; group or others can "
                              f"{'write to' if forbid == 0o022 else 'access'} it. Refusing to trust it "
                              f"(fix with: chmod go-{'w' if forbid == 0o022 else 'rwx'} {path})")


def private_dir(path: str | Path, forbid: int = 0o022) -> Path:
    """Create ``path`` (and missing parents) with mode 0700 if absent, then :func:`check_owned` it."""
    path = Path(path)
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    check_owned(path, forbid)
    return path


def user_cache_dir(*parts: str) -> Path:
    """``$XDG_CACHE_HOME/robopolicy/<parts>`` (default ``~/.cache``), created 0700 and checked."""
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    base = private_dir(Path(root) / "robopolicy")
    return private_dir(base.joinpath(*parts)) if parts else base


def user_runtime_dir(*parts: str) -> Path:
    """A directory for this user's ipc sockets: ``$XDG_RUNTIME_DIR/robopolicy`` (else the cache), 0700, no
    group/other access at all (connecting to a unix socket needs only write access to the socket file)."""
    root = os.environ.get("XDG_RUNTIME_DIR")
    base = private_dir(Path(root) / "robopolicy", 0o077) if root else private_dir(user_cache_dir("run"), 0o077)
    return private_dir(base.joinpath(*parts), 0o077) if parts else base


__all__ = ["UnsafePathError", "check_owned", "private_dir", "user_cache_dir", "user_runtime_dir"]
