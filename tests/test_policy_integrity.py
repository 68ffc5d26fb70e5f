"""Policy directories: per-file hashes, and every load error names the file and field (issue 27 item 5)."""

from __future__ import annotations

import json
import logging
import struct
from pathlib import Path

import pytest
import torch

from robopolicy.policies import load_policy
from robopolicy.policies.base import PolicyLoadError
from tests.test_policy import tiny_policy


@pytest.fixture
def saved(lowdim_dataset: Path, tmp_path: Path) -> Path:
    tiny_policy(lowdim_dataset).save(tmp_path / "p")
    return tmp_path / "p"


def _edit_json(path: Path, edit) -> None:
    d = json.loads(path.read_text())
    edit(d)
    path.write_text(json.dumps(d))


def test_checksums_cover_every_file_and_a_weight_bit_flip_fails(saved: Path):
    listed = json.loads((saved / "checksums.json").read_text())["files"]
    assert set(listed) == {"config.json", "normalization.json", "model.safetensors"}
    load_policy(saved)
    path = saved / "model.safetensors"
    data = bytearray(path.read_bytes())
    header = struct.unpack("<Q", data[:8])[0]
    data[8 + header] ^= 0x01  # the lowest mantissa bit of the first weight: a finite, slightly different number
    path.write_bytes(bytes(data))
    with pytest.raises(PolicyLoadError, match=r"model\.safetensors: size or sha256 differs from .*checksums\.json"):
        load_policy(saved)


def test_altered_statistics_fail_the_hash(saved: Path):
    _edit_json(saved / "normalization.json", lambda d: d["stats"]["action"].update(
        max=[2 * v for v in d["stats"]["action"]["max"]]))
    with pytest.raises(PolicyLoadError, match=r"normalization\.json: size or sha256 differs"):
        load_policy(saved)


def test_a_directory_without_checksums_loads_with_a_warning(saved: Path, caplog):
    (saved / "checksums.json").unlink()
    with caplog.at_level(logging.WARNING, logger="robopolicy.policies.base"):
        load_policy(saved)
    assert "no checksums.json" in caplog.text


@pytest.mark.parametrize("file, edit, message", [
    ("normalization.json", lambda d: d["stats"]["action"].__setitem__("min", [float("nan"), 0.0]),
     r"normalization\.json: field 'stats\.action\.min' is not finite"),
    ("normalization.json", lambda d: d["stats"]["action"].__setitem__("min", [0.0, 0.0, 0.0]),
     r"normalization\.json: field 'stats\.action\.min' has shape \[3\] but 'max' has \[2\]"),
    ("normalization.json", lambda d: d["stats"]["action"].update(min=[0.0], max=[1.0, 2.0, 3.0]),
     r"normalization\.json: field 'stats\.action\.min' has shape \[1\] but 'max' has \[3\]"),
    ("normalization.json", lambda d: d["stats"]["observation.state"].update(min=[0.0] * 3, max=[1.0] * 3),
     r"normalization\.json: field 'stats\.observation\.state\.min' has shape \[3\], but config\.json declares "
     r"feature 'observation\.state' with shape \[2\]"),
    ("normalization.json", lambda d: d["stats"]["action"].update(min=[1.0, 1.0], max=[0.0, 0.0]),
     r"normalization\.json: field 'stats\.action\.min' exceeds"),
    ("config.json", lambda d: d.__setitem__("type", "transformer9000"),
     r"config\.json: field 'type' names no policy family"),
    ("config.json", lambda d: d.__setitem__("horizon", "16"), r"config\.json: field 'horizon' must be int, got '16'"),
    ("config.json", lambda d: d["input_features"][0].__setitem__("shape", "2"),
     r"config\.json: a feature must be {key: str, shape: \[positive ints\]}"),
    ("config.json", lambda d: d["output_features"][0].__setitem__("shape", [3]),
     r"normalization\.json: field 'stats\.action\.min' has shape \[2\], but config\.json declares feature 'action'"),
    ("config.json", lambda d: d.__setitem__("down_dims", [16, 32]),
     r"model\.safetensors: weights do not fit .*config\.json"),
])
def test_bad_files_fail_at_load_naming_the_file_and_field(saved: Path, file, edit, message):
    _edit_json(saved / file, edit)
    with pytest.raises(PolicyLoadError, match=message):
        load_policy(saved)


def test_truncated_weights_name_the_file(saved: Path):
    path = saved / "model.safetensors"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(PolicyLoadError, match=r"model\.safetensors: unreadable safetensors file, truncated or corrupt"):
        load_policy(saved)


def test_non_finite_weights_are_refused(lowdim_dataset: Path, tmp_path: Path):
    policy = tiny_policy(lowdim_dataset)
    with torch.no_grad():
        next(iter(policy.parameters())).view(-1)[0] = float("nan")
    policy.save(tmp_path / "nan")  # hashes match: the value itself must be caught
    with pytest.raises(PolicyLoadError, match=r"model\.safetensors: tensor .* holds NaN or inf"):
        load_policy(tmp_path / "nan")
