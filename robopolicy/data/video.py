"""MP4 camera streams with PyAV: many episodes appended to one file, decoded frame-exactly.

Frame k of a file has presentation time k / fps; an episode starting at ``from_timestamp`` finds its
frame i at ``from_timestamp + i / fps``. Decoding matches frames by presentation index, never by
"next frame after a seek", so B-frames and keyframe spacing cannot shift a frame by one.
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from robopolicy.data.format import LEROBOT_VIDEO_GOP, DatasetError


class VideoAppender:
    """Keeps one MP4 open and appends episodes' frames; ``close()`` writes the index (moov atom).

    The GOP defaults to LeRobot's (a keyframe every 2 frames): LeRobot's ``aggregate_datasets`` stream-copies
    files into one, which only works when the streams have the same decode delay (B-frame depth).
    """

    def __init__(self, path: Path, fps: int, height: int, width: int, codec: str = "libx264", crf: int = 18,
                 pix_fmt: str = "yuv420p", gop: int = LEROBOT_VIDEO_GOP):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.fps = fps
        self.codec = codec
        self.pix_fmt = pix_fmt
        self._container = av.open(str(self.path), mode="w")
        options = {"crf": str(crf)} if codec in ("libx264", "libx264rgb", "libsvtav1") else {}
        self._stream = self._container.add_stream(codec, rate=fps, options=options)
        self._stream.width, self._stream.height = width, height
        self._stream.pix_fmt = pix_fmt
        self._stream.codec_context.time_base = Fraction(1, fps)
        self._stream.codec_context.gop_size = gop
        self.num_frames = 0

    @property
    def timestamp(self) -> float:
        """Where the next appended frame will sit, in seconds."""
        return self.num_frames / self.fps

    def append(self, frames: np.ndarray) -> None:
        if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
            raise ValueError(f"{self.path}: expected uint8 frames (N, H, W, 3), got {frames.dtype} {frames.shape}")
        for frame in frames:
            vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
            vf.pts = self.num_frames  # in the encoder's time base, 1 / fps
            for packet in self._stream.encode(vf):
                self._container.mux(packet)
            self.num_frames += 1

    def close(self) -> None:
        if self._container is None:
            return
        for packet in self._stream.encode():
            self._container.mux(packet)
        self._container.close()
        self._container = None

    def size_mb(self) -> float:
        return self.path.stat().st_size / 1024**2 if self.path.exists() else 0.0


def decode_frames(path: Path, timestamps: np.ndarray | None = None, fps: int | None = None) -> np.ndarray:
    """RGB uint8 frames (N, H, W, 3): all of them, or those at ``timestamps`` (seconds), exactly.

    A requested timestamp must lie within half a frame of a stored frame, else it is an error rather
    than a silently wrong picture.
    """
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: video file is missing")
    try:
        container = av.open(str(path))
    except av.error.FFmpegError as e:
        raise DatasetError(f"{path}: cannot open video ({e})") from e
    with container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        rate = fps or float(stream.average_rate or stream.guessed_rate)
        wanted: dict[int, list[int]] | None = None
        if timestamps is not None:
            timestamps = np.asarray(timestamps, dtype=np.float64)
            indices = np.rint(timestamps * rate).astype(np.int64)
            off = np.abs(indices / rate - timestamps)
            if np.any(off > 0.5 / rate):
                raise DatasetError(f"{path}: timestamps {timestamps[off > 0.5 / rate][:3]} fall between frames")
            wanted = {}
            for out_pos, idx in enumerate(indices):
                wanted.setdefault(int(idx), []).append(out_pos)
            first = min(wanted)
            # Seek to the keyframe at or before the first wanted frame, then decode forward.
            if first > 0:
                container.seek(int(first / rate / stream.time_base), stream=stream, backward=True, any_frame=False)
            last = max(wanted)
            result: list[np.ndarray | None] = [None] * len(indices)
        frames = []
        try:
            for frame in container.decode(stream):
                idx = int(round(float(frame.pts * stream.time_base) * rate))
                if wanted is None:
                    frames.append(frame.to_ndarray(format="rgb24"))
                    continue
                if idx in wanted:
                    image = frame.to_ndarray(format="rgb24")
                    for pos in wanted[idx]:
                        result[pos] = image
                if idx >= last:
                    break
        except av.error.FFmpegError as e:
            raise DatasetError(f"{path}: corrupt video stream ({e})") from e
    if wanted is None:
        if not frames:
            raise DatasetError(f"{path}: no frames decoded")
        return np.stack(frames)
    missing = [int(indices[i]) for i, r in enumerate(result) if r is None]
    if missing:
        raise DatasetError(f"{path}: frames {missing[:5]} not found (file has fewer frames than the metadata says)")
    return np.stack(result)  # type: ignore[arg-type]
