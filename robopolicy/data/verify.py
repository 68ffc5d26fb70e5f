"""``verify_dataset``: a dataset's files against ``meta/checksums.json``, then every check the reader makes.

The reader already hashes what it reads on load; this goes further: every file (videos included), files the
checksum file does not list, and a decode of every episode's video frames.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from robopolicy.data.checksums import (
    check_digest,
    dataset_files,
    file_digest,
    read_checksums,
    write_checksums,
)
from robopolicy.data.format import CHECKSUMS_PATH, DatasetError
from robopolicy.data.reader import LeRobotDataset


@dataclass
class VerifyReport:
    """What :func:`verify_dataset` found; ``ok`` when the dataset matches its checksums and loads."""

    root: Path
    checked: int = 0
    problems: list[str] = field(default_factory=list)
    unlisted: list[str] = field(default_factory=list)
    has_checksums: bool = True
    written: bool = False

    @property
    def ok(self) -> bool:
        return self.has_checksums and not self.problems and not self.unlisted


def verify_dataset(root: str | Path, decode_videos: bool = True, write: bool = False) -> VerifyReport:
    """Check a dataset: each listed file's size and sha256, files not listed, and a full load (metadata,
    statistics, timestamps, values) with ``decode_videos`` decoding every episode's frames.

    ``write``: for a dataset without checksums (one LeRobot wrote), record the current files in
    ``meta/checksums.json`` once the dataset loads cleanly. Never overwrites an existing checksum file: a
    mismatch there is corruption to investigate, not to paper over.
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root}: dataset directory does not exist")
    report = VerifyReport(root)
    expected = read_checksums(root)
    if expected is None:
        report.has_checksums = False
    else:
        for name, entry in sorted(expected.items()):
            path = root / name
            if not path.is_file():
                report.problems.append(f"{path}: missing file listed in {root / CHECKSUMS_PATH}")
                continue
            report.checked += 1
            try:
                check_digest(root, name, entry, file_digest(path))
            except DatasetError as e:
                report.problems.append(str(e))
        report.unlisted = [n for n in dataset_files(root) if n not in expected]
    try:
        dataset = LeRobotDataset(root, check_checksums=False)
        if decode_videos:
            for key in dataset.video_keys:
                for e in range(dataset.num_episodes):
                    dataset.video_frames(key, e)
    except DatasetError as e:
        report.problems.append(str(e))
    if write and not report.has_checksums and not report.problems:
        report.checked = len(write_checksums(root))
        report.has_checksums = report.written = True
    return report


__all__ = ["VerifyReport", "verify_dataset"]
