"""Wire protocol between the policy server and robot clients (see ``docs/protocol.md``).

A message is a ZeroMQ multipart message:

- frame 0: a msgpack map, the header: ``{"v": PROTOCOL_VERSION, "type": str, "seq": int,
  "t_send": float, "frames": [{"name", "dtype", "shape"}, ...], ...type-specific fields}``
- frames 1..n: raw little-endian C-ordered array bytes, one per entry of ``header["frames"]``.

Nothing is pickled. :func:`decode` validates everything before touching the payload (sizes, frame
count, version, type, dtypes, shape products against frame byte lengths, finiteness) and raises
:class:`ProtocolError` with a machine-readable ``kind`` that the server echoes in an ``error`` reply.

This module imports neither torch nor zmq, so it can run on a robot computer with numpy + msgpack.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Collection, Mapping, Sequence
from typing import Any

import msgpack
import numpy as np

PROTOCOL_VERSION = 1

# client -> server: hello, infer, ping, estop, clear_estop
# server -> client: hello (reply), chunk, pong, ack, error
MSG_TYPES = frozenset({"hello", "infer", "chunk", "ping", "pong", "error", "estop", "clear_estop", "ack"})
REQUEST_TYPES = frozenset({"hello", "infer", "ping", "estop", "clear_estop"})

ALLOWED_DTYPES: dict[str, np.dtype] = {
    "float32": np.dtype("<f4"),
    "float64": np.dtype("<f8"),
    "int64": np.dtype("<i8"),
    "uint8": np.dtype("u1"),
}

DEFAULT_MAX_MESSAGE_BYTES = 16 * 1024 * 1024  # whole multipart message
MAX_HEADER_BYTES = 64 * 1024
MAX_FRAMES = 64  # array frames per message
MAX_NDIM = 8
MAX_NAME_LEN = 128
MAX_HEADER_DEPTH = 16  # nesting of maps/lists in a header (a spec needs 3); deeper is refused before any repr
# Bounds on a policy spec received in a hello reply, so a hostile or broken server cannot make the robot
# loop allocate or scan millions of history frames (the loop's work per request grows with To).
MAX_OBS_STEPS = 64
MAX_HORIZON = 4096
_INT64_MAX = 2**63 - 1

# Error kinds, as sent in ``error`` replies (``header["kind"]``).
ERROR_KINDS = (
    "malformed",  # undecodable header, wrong field types, frame table mismatch
    "too_large",  # message, header or array over the limits
    "version",  # unknown protocol version
    "type",  # unknown message type, or a type the receiver does not accept
    "dtype",  # array dtype not in ALLOWED_DTYPES
    "shape",  # shape product vs frame byte length, or shape not what the policy expects
    "nonfinite",  # NaN or inf in a float array or timestamp
    "missing_feature",  # an observation feature the policy needs is absent
    "unknown_feature",  # an array the policy does not read
    "busy",  # the server's inference queue is full
    "estopped",  # the server is e-stopped (latched until clear_estop)
    "unsupported",  # a valid request this receiver cannot carry out (e.g. reset on a real arm)
    "policy",  # the policy raised, or returned a non-finite / wrongly shaped chunk
    "forbidden",  # the sender may not do this (clear_estop or reset from a peer that is not an operator)
    "internal",  # anything else on the server (a bug; it keeps serving)
)


class ProtocolError(ValueError):
    """A message that cannot be accepted; ``kind`` is one of :data:`ERROR_KINDS`."""

    def __init__(self, kind: str, message: str, seq: int | None = None):
        super().__init__(f"{kind}: {message}")
        self.kind = kind
        self.message = message
        self.seq = seq


@dataclasses.dataclass
class Message:
    type: str
    seq: int
    header: dict[str, Any]
    arrays: dict[str, np.ndarray]

    def get(self, key: str, default: Any = None) -> Any:
        return self.header.get(key, default)


# ---- encoding ---------------------------------------------------------------------------------


def _dtype_name(a: np.ndarray) -> str:
    for name, dt in ALLOWED_DTYPES.items():
        if a.dtype.kind == dt.kind and a.dtype.itemsize == dt.itemsize:
            return name
    raise ProtocolError("dtype", f"dtype {a.dtype} is not allowed (allowed: {sorted(ALLOWED_DTYPES)})")


def encode(msg_type: str, seq: int, arrays: Mapping[str, np.ndarray] | None = None, *,
           t_send: float | None = None, msg_types: Collection[str] = MSG_TYPES, **fields: Any) -> list[bytes]:
    """Frames of one message. ``fields`` must be msgpack-able (numbers, strings, lists, maps).

    ``msg_types`` lets other message sets (the arm bridge's) reuse the same framing and checks.
    """
    if msg_type not in msg_types:
        raise ProtocolError("type", f"unknown message type {msg_type!r}")
    table = []
    payload: list[bytes] = []
    for name, value in (arrays or {}).items():
        a = np.asarray(value)
        dname = _dtype_name(a)
        a = np.ascontiguousarray(a, dtype=ALLOWED_DTYPES[dname])
        table.append({"name": str(name), "dtype": dname, "shape": list(a.shape)})
        payload.append(a.tobytes())
    header = {**fields, "v": PROTOCOL_VERSION, "type": msg_type, "seq": int(seq),
              "t_send": time.monotonic() if t_send is None else float(t_send), "frames": table}
    return [msgpack.packb(header, use_bin_type=True), *payload]


def error_frames(kind: str, message: str, seq: int, reply_to: int | None = None) -> list[bytes]:
    return encode("error", seq, kind=kind, message=message[:500], reply_to=reply_to)


# ---- decoding ---------------------------------------------------------------------------------


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_number(x: Any) -> bool:
    return (isinstance(x, int | float)) and not isinstance(x, bool)


def describe(x: Any, limit: int = 40) -> str:
    """A short, safe description of an untrusted value for error messages.

    Never ``repr`` a received container: a deeply nested one raises RecursionError (the fuzzer's
    995-1023-level headers did, inside the decoder's own error message) and a huge one costs time.
    Scalars are shown (strings truncated), containers only by type and length."""
    if x is None or isinstance(x, bool | int | float):
        return repr(x)[:limit]
    if isinstance(x, str):
        return repr(x[:limit])
    if isinstance(x, bytes | bytearray):
        return f"<{len(x)} bytes>"
    if isinstance(x, list | tuple | dict):
        return f"<{type(x).__name__} of {len(x)}>"
    return f"<{type(x).__name__}>"


def _depth_exceeds(obj: Any, limit: int) -> bool:
    """True if maps/lists nest deeper than ``limit`` (iterative: no recursion on untrusted input)."""
    stack = [(obj, 1)]
    while stack:
        x, depth = stack.pop()
        if isinstance(x, dict):
            items = list(x.keys()) + list(x.values())
        elif isinstance(x, list):
            items = x
        else:
            continue
        if depth > limit:
            return True
        stack.extend((y, depth + 1) for y in items if isinstance(y, dict | list))
    return False


def _frame_bytes(f: Any) -> memoryview:
    # zmq.Frame exposes .buffer; bytes / bytearray / memoryview work directly.
    buf = getattr(f, "buffer", f)
    return memoryview(buf).cast("B") if not isinstance(buf, bytes) else memoryview(buf)


def decode(frames: Sequence[Any], max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
           check_finite: bool = True, msg_types: Collection[str] = MSG_TYPES) -> Message:
    """Validate and decode one multipart message; raises :class:`ProtocolError` on anything wrong."""
    if len(frames) == 0:
        raise ProtocolError("malformed", "empty message")
    if len(frames) - 1 > MAX_FRAMES:
        raise ProtocolError("too_large", f"{len(frames) - 1} array frames (max {MAX_FRAMES})")
    views = [_frame_bytes(f) for f in frames]
    total = sum(v.nbytes for v in views)
    if total > max_message_bytes:
        raise ProtocolError("too_large", f"message of {total} bytes (max {max_message_bytes})")
    if views[0].nbytes > MAX_HEADER_BYTES:
        raise ProtocolError("too_large", f"header of {views[0].nbytes} bytes (max {MAX_HEADER_BYTES})")
    header = unpack_header(views[0])
    seq = header.get("seq")
    seq = seq if _is_int(seq) and 0 <= seq <= _INT64_MAX else None
    if "v" not in header:
        raise ProtocolError("malformed", "header has no protocol version 'v'", seq)
    if not (_is_int(header["v"]) and header["v"] == PROTOCOL_VERSION):  # True and 1.0 are not version 1
        raise ProtocolError("version", f"protocol version {describe(header['v'])} (this side speaks "
                            f"{PROTOCOL_VERSION}, an integer)", seq)
    msg_type = header.get("type")
    if not isinstance(msg_type, str) or msg_type not in msg_types:
        raise ProtocolError("type", f"unknown message type {describe(msg_type)}", seq)
    if seq is None:
        raise ProtocolError("malformed", "'seq' must be an integer in [0, 2**63)")
    t_send = header.get("t_send")
    if t_send is not None and not (_is_number(t_send) and math.isfinite(t_send)):
        raise ProtocolError("nonfinite" if _is_number(t_send) else "malformed", "'t_send' must be a finite number", seq)
    table = header.get("frames", [])
    if not isinstance(table, list):
        raise ProtocolError("malformed", "'frames' must be a list", seq)
    if len(table) != len(frames) - 1:
        raise ProtocolError("malformed", f"header lists {len(table)} arrays but {len(frames) - 1} frames follow", seq)
    arrays: dict[str, np.ndarray] = {}
    for entry, view in zip(table, views[1:]):
        arrays_name, array = _decode_array(entry, view, seq, check_finite)
        if arrays_name in arrays:
            raise ProtocolError("malformed", f"array {arrays_name!r} appears twice", seq)
        arrays[arrays_name] = array
    return Message(type=msg_type, seq=seq, header=header, arrays=arrays)


def unpack_header(data: Any) -> dict[str, Any]:
    """The msgpack map of a header frame, with bounded sizes and nesting; ProtocolError otherwise."""
    try:
        header = msgpack.unpackb(data, raw=False, strict_map_key=True, use_list=True,
                                 max_str_len=MAX_HEADER_BYTES, max_bin_len=MAX_HEADER_BYTES,
                                 max_array_len=MAX_HEADER_BYTES, max_map_len=MAX_HEADER_BYTES, max_ext_len=0)
    except Exception as e:  # msgpack raises many types (ExtraData, ValueError, UnicodeDecodeError, ...)
        raise ProtocolError("malformed", f"header is not valid msgpack ({type(e).__name__})") from None
    if not isinstance(header, dict):
        raise ProtocolError("malformed", "header is not a map")
    if _depth_exceeds(header, MAX_HEADER_DEPTH):
        raise ProtocolError("malformed", f"header nests maps/lists deeper than {MAX_HEADER_DEPTH} levels")
    return header


def _decode_array(entry: Any, view: memoryview, seq: int, check_finite: bool) -> tuple[str, np.ndarray]:
    if not isinstance(entry, dict):
        raise ProtocolError("malformed", "frame table entries must be maps", seq)
    name, dname, shape = entry.get("name"), entry.get("dtype"), entry.get("shape")
    if not isinstance(name, str) or not 0 < len(name) <= MAX_NAME_LEN:
        raise ProtocolError("malformed", "array name must be a non-empty string", seq)
    if not isinstance(dname, str) or dname not in ALLOWED_DTYPES:
        raise ProtocolError("dtype", f"array {name!r}: dtype {describe(dname, 20)} not allowed "
                            f"(allowed: {sorted(ALLOWED_DTYPES)})", seq)
    if not isinstance(shape, list) or len(shape) > MAX_NDIM or not all(_is_int(d) and 0 <= d <= 2**31 for d in shape):
        raise ProtocolError("shape", f"array {name!r}: shape must be a list of at most {MAX_NDIM} "
                            "non-negative integers", seq)
    dtype = ALLOWED_DTYPES[dname]
    expected = math.prod(shape) * dtype.itemsize  # python ints: no overflow
    if expected != view.nbytes:
        raise ProtocolError("shape", f"array {name!r}: shape {shape} x {dname} needs {expected} bytes, "
                            f"frame has {view.nbytes}", seq)
    try:  # a zero-size array may claim any shape; numpy refuses some (e.g. beyond its maximum size)
        array = np.frombuffer(view, dtype=dtype).reshape(shape).copy()
    except ValueError as e:
        raise ProtocolError("shape", f"array {name!r}: shape {shape} is not a valid array shape ({e})", seq) from None
    if check_finite and dtype.kind == "f" and not np.isfinite(array).all():
        raise ProtocolError("nonfinite", f"array {name!r} contains NaN or inf", seq)
    return name, array


# ---- policy description exchanged by hello ------------------------------------------------------


@dataclasses.dataclass
class PolicySpec:
    """What a client must know about the served policy (sent in the ``hello`` reply)."""

    input_features: dict[str, tuple[int, ...]]  # feature key -> per-step shape
    action_key: str
    action_dim: int
    n_obs_steps: int  # To
    horizon: int  # T
    n_action_steps: int  # Ta
    fps: float  # rate of the observation history and of the actions (dt = 1 / fps)
    name: str = ""

    def __post_init__(self) -> None:
        self.input_features = {str(k): tuple(int(d) for d in v) for k, v in self.input_features.items()}
        if not (self.n_obs_steps >= 1 and self.horizon >= self.n_obs_steps and self.n_action_steps >= 1):
            raise ValueError(f"inconsistent To/T/Ta = {self.n_obs_steps}/{self.horizon}/{self.n_action_steps}")
        if self.n_obs_steps > MAX_OBS_STEPS or self.horizon > MAX_HORIZON or self.n_action_steps > self.horizon:
            raise ValueError(f"To/T/Ta = {self.n_obs_steps}/{self.horizon}/{self.n_action_steps} out of range "
                             f"(To <= {MAX_OBS_STEPS}, T <= {MAX_HORIZON}, Ta <= T)")
        if len(self.input_features) > MAX_FRAMES or any(len(s) > MAX_NDIM - 1 for s in self.input_features.values()):
            raise ValueError(f"at most {MAX_FRAMES} input features of at most {MAX_NDIM - 1} dimensions")
        if not (self.fps > 0 and math.isfinite(self.fps)):
            raise ValueError(f"fps must be positive, got {self.fps}")
        if self.action_dim < 1:
            raise ValueError(f"action_dim must be positive, got {self.action_dim}")

    @property
    def dt(self) -> float:
        return 1.0 / self.fps

    def action_times(self, t_obs: float) -> np.ndarray:
        """``t_i = t_obs + (i - (To - 1)) * dt``: the time each of the T actions of a chunk refers to."""
        return t_obs + (np.arange(self.horizon) - (self.n_obs_steps - 1)) * self.dt

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["input_features"] = {k: list(v) for k, v in self.input_features.items()}
        return d

    def infer_bytes(self) -> int:
        """Size of the arrays of one ``infer`` request (float32), to check against the message limit."""
        return sum(self.n_obs_steps * math.prod(s) * 4 for s in self.input_features.values())

    @classmethod
    def from_dict(cls, d: Any) -> PolicySpec:
        if not isinstance(d, dict):
            raise ProtocolError("malformed", "policy spec must be a map")
        fields = {f.name: d[f.name] for f in dataclasses.fields(cls) if f.name in d}
        for key in ("action_dim", "n_obs_steps", "horizon", "n_action_steps"):
            if key in fields and not _is_int(fields[key]):
                raise ProtocolError("malformed", f"bad policy spec: {key!r} must be an integer, got "
                                    f"{describe(fields[key])}")
        feats = fields.get("input_features")
        if not isinstance(feats, dict) or not all(
                isinstance(k, str) and isinstance(v, list) and all(_is_int(x) and 0 < x <= 2**31 for x in v)
                for k, v in feats.items()):
            raise ProtocolError("malformed", "bad policy spec: 'input_features' must map names to lists of positive "
                                "integers")
        try:
            return cls(**fields)
        except Exception as e:  # any malformed field (a string for a map, ...) is a protocol error, never a crash
            # the message of our own checks names fields and numbers only; anything else is summarized by type
            detail = str(e) if isinstance(e, ValueError) else type(e).__name__
            raise ProtocolError("malformed", f"bad policy spec: {detail[:300]}") from None


def validate_infer(msg: Message, spec: PolicySpec) -> tuple[dict[str, np.ndarray], float]:
    """Observation history (each ``(To, *shape)``) and ``t_obs`` of an ``infer`` request."""
    t_obs = msg.get("t_obs")
    if not _is_number(t_obs):
        raise ProtocolError("malformed", "infer needs a numeric 't_obs'", msg.seq)
    if not math.isfinite(t_obs):
        raise ProtocolError("nonfinite", "'t_obs' is not finite", msg.seq)
    missing = [k for k in spec.input_features if k not in msg.arrays]
    if missing:
        raise ProtocolError("missing_feature", f"missing observation features {missing}", msg.seq)
    extra = [k for k in msg.arrays if k not in spec.input_features]
    if extra:
        raise ProtocolError("unknown_feature", f"policy does not read {extra[:8]}", msg.seq)
    obs = {}
    for key, shape in spec.input_features.items():
        a = msg.arrays[key]
        want = (spec.n_obs_steps, *shape)
        if a.shape != want:
            raise ProtocolError("shape", f"{key!r}: expected shape {list(want)} (To, ...), got {list(a.shape)}", msg.seq)
        if a.dtype.kind == "f" and not np.isfinite(a).all():  # decode(check_finite=False) callers
            raise ProtocolError("nonfinite", f"{key!r} contains NaN or inf", msg.seq)
        obs[key] = a
    return obs, float(t_obs)


def validate_chunk(msg: Message, spec: PolicySpec, t_obs_sent: float | None = None) -> tuple[np.ndarray, float, float]:
    """Actions ``(T, A)``, ``t_first`` and ``dt`` of a ``chunk`` reply.

    The times must be the spec's: ``dt`` its 1 / fps and, given the ``t_obs`` of the request,
    ``t_obs`` echoed and ``t_first = t_obs - (To - 1) dt``, so a server with a wrong clock or
    version cannot shift or stretch the trajectory the robot executes."""
    a = msg.arrays.get(spec.action_key)
    if a is None:
        raise ProtocolError("missing_feature", f"chunk has no {spec.action_key!r} array", msg.seq)
    if a.ndim != 2 or a.shape[1] != spec.action_dim or a.shape[0] < 1:
        raise ProtocolError("shape", f"chunk actions must be (T, {spec.action_dim}), got {list(a.shape)}", msg.seq)
    if not np.isfinite(a).all():
        raise ProtocolError("nonfinite", "chunk contains NaN or inf", msg.seq)
    t_first, dt = msg.get("t_first"), msg.get("dt")
    if not (_is_number(t_first) and _is_number(dt) and math.isfinite(t_first) and math.isfinite(dt) and dt > 0):
        raise ProtocolError("malformed", "chunk needs finite 't_first' and positive 'dt'", msg.seq)
    if abs(dt - spec.dt) > 1e-6 * spec.dt:
        raise ProtocolError("malformed", f"chunk dt {dt} differs from the policy's 1 / fps = {spec.dt}", msg.seq)
    if t_obs_sent is not None:
        t_obs = msg.get("t_obs")
        if not (_is_number(t_obs) and abs(t_obs - t_obs_sent) <= 1e-6):
            raise ProtocolError("malformed", f"chunk t_obs {describe(t_obs)} is not the request's {t_obs_sent}",
                                msg.seq)
        expected = t_obs_sent - (spec.n_obs_steps - 1) * spec.dt
        if abs(t_first - expected) > 1e-6:
            raise ProtocolError("malformed", f"chunk t_first {t_first} is not t_obs - (To - 1) dt = {expected}", msg.seq)
    return a.astype(np.float64), float(t_first), float(dt)


__all__ = [
    "ALLOWED_DTYPES", "DEFAULT_MAX_MESSAGE_BYTES", "ERROR_KINDS", "MAX_FRAMES", "MAX_HEADER_BYTES", "MSG_TYPES",
    "PROTOCOL_VERSION", "REQUEST_TYPES", "Message", "PolicySpec", "ProtocolError", "decode", "describe", "encode",
    "error_frames", "unpack_header", "validate_chunk", "validate_infer",
]
