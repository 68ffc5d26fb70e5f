"""Wire protocol: round trips and every rejection path of decode / validate_*."""

from __future__ import annotations

import math

import msgpack
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from robopolicy.deploy.fake import ramp_spec
from robopolicy.deploy.protocol import (
    MAX_FRAMES,
    MAX_HEADER_BYTES,
    PROTOCOL_VERSION,
    PolicySpec,
    ProtocolError,
    decode,
    encode,
    validate_chunk,
    validate_infer,
)


def _raw(header: dict, *frames: bytes) -> list[bytes]:
    return [msgpack.packb(header, use_bin_type=True), *frames]


def _hdr(**kw) -> dict:
    return {"v": PROTOCOL_VERSION, "type": "infer", "seq": 1, "t_send": 0.0, "frames": [], **kw}


def test_round_trip_all_dtypes():
    arrays = {"f32": np.arange(6, dtype=np.float32).reshape(2, 3), "f64": np.array([1.5, -2.0]),
              "i64": np.array([[1, -2]], dtype=np.int64), "u8": np.zeros((4, 4, 3), dtype=np.uint8),
              "big_endian": np.array([1.0, 2.0], dtype=">f4"), "empty": np.zeros((0, 2), dtype=np.float32)}
    m = decode(encode("infer", 7, arrays, t_obs=12.5, t_send=3.0))
    assert m.type == "infer" and m.seq == 7 and m.get("t_obs") == 12.5 and m.get("t_send") == 3.0
    for k, a in arrays.items():
        assert m.arrays[k].shape == a.shape
        np.testing.assert_array_equal(m.arrays[k], a)
    assert m.arrays["big_endian"].dtype == np.dtype("<f4")


def test_spec_round_trip_and_action_times():
    spec = ramp_spec(n_obs_steps=2, horizon=5, n_action_steps=3, fps=10)
    assert PolicySpec.from_dict(decode(encode("hello", 1, spec=spec.to_dict())).get("spec")) == spec
    np.testing.assert_allclose(spec.action_times(1.0), [0.9, 1.0, 1.1, 1.2, 1.3])
    with pytest.raises(ProtocolError):
        PolicySpec.from_dict({"input_features": {}, "action_key": "a", "action_dim": 0, "n_obs_steps": 1,
                              "horizon": 1, "n_action_steps": 1, "fps": 10})


@pytest.mark.parametrize("frames,kind", [
    ([], "malformed"),
    ([b"\xc1"], "malformed"),  # invalid msgpack byte
    ([b"\x92\x01"], "malformed"),  # truncated
    ([msgpack.packb([1, 2])], "malformed"),  # not a map
    ([msgpack.packb({"type": "ping", "seq": 1})], "malformed"),  # no version
    (_raw(_hdr(v=99)), "version"),
    (_raw(_hdr(type="launch_missiles")), "type"),
    (_raw(_hdr(type=5)), "type"),
    (_raw(_hdr(seq=-1)), "malformed"),
    (_raw(_hdr(seq=True)), "malformed"),
    (_raw(_hdr(seq=1.5)), "malformed"),
    (_raw(_hdr(t_send=math.nan)), "nonfinite"),
    (_raw(_hdr(t_send="now")), "malformed"),
    (_raw(_hdr(frames={"a": 1})), "malformed"),
    (_raw(_hdr(frames=[]), b"\x00" * 4), "malformed"),  # frame count mismatch
    (_raw(_hdr(frames=[{"name": "a", "dtype": "float32", "shape": [1]}])), "malformed"),
    (_raw(_hdr(frames=[7]), b"\x00" * 4), "malformed"),
    (_raw(_hdr(frames=[{"name": "", "dtype": "float32", "shape": [1]}]), b"\x00" * 4), "malformed"),
    (_raw(_hdr(frames=[{"name": "a", "dtype": "object", "shape": [1]}]), b"\x00" * 8), "dtype"),
    (_raw(_hdr(frames=[{"name": "a", "dtype": "float16", "shape": [2]}]), b"\x00" * 4), "dtype"),
    (_raw(_hdr(frames=[{"name": "a", "dtype": "float32", "shape": [3]}]), b"\x00" * 8), "shape"),
    (_raw(_hdr(frames=[{"name": "a", "dtype": "float32", "shape": [-1]}]), b"\x00" * 4), "shape"),
    (_raw(_hdr(frames=[{"name": "a", "dtype": "float32", "shape": [2**40, 2**40]}]), b"\x00" * 4), "shape"),
    (_raw(_hdr(frames=[{"name": "a", "dtype": "float32", "shape": [1] * 9}]), b"\x00" * 4), "shape"),
    (_raw(_hdr(frames=[{"name": "a", "dtype": "float32", "shape": "1"}]), b"\x00" * 4), "shape"),
    (_raw(_hdr(frames=[{"name": "a", "dtype": "float32", "shape": [1]}] * 2), b"\x00" * 4, b"\x00" * 4), "malformed"),
    (_raw(_hdr(frames=[{"name": "a", "dtype": "float32", "shape": [1]}]), np.float32([np.nan]).tobytes()), "nonfinite"),
    (_raw(_hdr(frames=[{"name": "a", "dtype": "float64", "shape": [1]}]), np.float64([np.inf]).tobytes()), "nonfinite"),
    ([b"\x80" * (MAX_HEADER_BYTES + 1)], "too_large"),
    ([msgpack.packb(_hdr())] + [b""] * (MAX_FRAMES + 1), "too_large"),
])
def test_decode_rejections(frames, kind):
    with pytest.raises(ProtocolError) as e:
        decode(frames)
    assert e.value.kind == kind


def test_message_size_limit_and_seq_echo():
    frames = encode("infer", 42, {"a": np.zeros(1000, dtype=np.float64)}, t_obs=0.0)
    with pytest.raises(ProtocolError) as e:
        decode(frames, max_message_bytes=1000)
    assert e.value.kind == "too_large"
    with pytest.raises(ProtocolError) as e:
        decode(_raw(_hdr(seq=42, v=2)))
    assert e.value.seq == 42


def test_encode_rejects_unknown_dtype_and_type():
    with pytest.raises(ProtocolError):
        encode("infer", 1, {"a": np.zeros(2, dtype=np.float16)})
    with pytest.raises(ProtocolError):
        encode("bogus", 1)


def test_validate_infer_and_chunk():
    spec = ramp_spec(n_obs_steps=2, horizon=4, n_action_steps=2)
    ok = {"observation.state": np.zeros((2, 2), np.float32)}
    obs, t = validate_infer(decode(encode("infer", 1, ok, t_obs=5.0)), spec)
    assert t == 5.0 and obs["observation.state"].shape == (2, 2)
    cases = [({}, {"t_obs": 1.0}, "missing_feature"),
             ({**ok, "extra": np.zeros(1)}, {"t_obs": 1.0}, "unknown_feature"),
             ({"observation.state": np.zeros((1, 2), np.float32)}, {"t_obs": 1.0}, "shape"),
             (ok, {}, "malformed"), (ok, {"t_obs": math.inf}, "nonfinite")]
    for arrays, fields, kind in cases:
        with pytest.raises(ProtocolError) as e:
            validate_infer(decode(encode("infer", 1, arrays, **fields)), spec)
        assert e.value.kind == kind, (arrays, fields)
    nan_obs = {"observation.state": np.full((2, 2), np.nan, np.float32)}
    with pytest.raises(ProtocolError) as e:
        validate_infer(decode(encode("infer", 1, nan_obs, t_obs=1.0), check_finite=False), spec)
    assert e.value.kind == "nonfinite"
    a, t_first, dt = validate_chunk(decode(encode("chunk", 1, {"action": np.ones((4, 2))}, t_first=1.0, dt=0.1)), spec)
    assert a.shape == (4, 2) and t_first == 1.0 and dt == 0.1
    for arrays, fields in [({"action": np.ones((4, 3))}, {"t_first": 1.0, "dt": 0.1}),
                           ({"x": np.ones((4, 2))}, {"t_first": 1.0, "dt": 0.1}),
                           ({"action": np.ones((4, 2))}, {"t_first": 1.0, "dt": 0.0}),
                           ({"action": np.ones((4, 2))}, {"dt": 0.1})]:
        with pytest.raises(ProtocolError):
            validate_chunk(decode(encode("chunk", 1, arrays, **fields)), spec)


@settings(max_examples=3000, deadline=None)
@given(st.lists(st.binary(max_size=300), min_size=0, max_size=6))
def test_decode_fuzz_random_frames_never_raises_anything_else(frames):
    try:
        decode(frames, max_message_bytes=4096)
    except ProtocolError:
        pass


_values = st.recursive(st.none() | st.booleans() | st.integers(-2**63, 2**64 - 1) | st.floats() | st.text(max_size=10)
                       | st.binary(max_size=10), lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=5), c, max_size=3),
                       max_leaves=8)


@settings(max_examples=1000, deadline=None)
@given(st.dictionaries(st.sampled_from(["v", "type", "seq", "t_send", "frames", "t_obs", "x"]), _values, max_size=6),
       st.lists(st.binary(max_size=64), max_size=3))
def test_decode_fuzz_structured_headers(header, payload):
    try:
        decode([msgpack.packb(header, use_bin_type=True), *payload])
    except ProtocolError:
        pass
