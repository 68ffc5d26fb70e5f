"""Evaluation artifacts: the JSON report, a summary plot and rollout videos."""

from __future__ import annotations

import json
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

import numpy as np

from robopolicy.utils.io import atomic_write_bytes, atomic_write_text

if TYPE_CHECKING:
    from robopolicy.sim.evaluate import EvalResult

REPORT_FILE = "eval_report.json"
PLOT_FILE = "eval_plot.png"
VIDEO_DIR = "videos"


def video_relpath(seed: int) -> str:
    return f"{VIDEO_DIR}/episode_{seed}.mp4"


class VideoWriter:
    """Streams RGB frames into an H.264 MP4 (yuv420p, playable everywhere) without holding them in memory.

    The first frame fixes the size; yuv420p needs even sides, so odd ones are rejected up front.
    """

    def __init__(self, path: str | Path, fps: int = 10, codec: str = "libx264", crf: int = 23):
        self.path = Path(path)
        self.fps, self.codec, self.crf = fps, codec, crf
        self._container: Any = None
        self._stream: Any = None
        self.n_frames = 0

    def write(self, frame: np.ndarray) -> None:
        import av

        frame = np.asarray(frame)
        if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
            raise ValueError(f"video frames must be RGB uint8 (H, W, 3), got {frame.dtype} {frame.shape}")
        if self._container is None:
            h, w = frame.shape[:2]
            if h % 2 or w % 2:
                raise ValueError(f"yuv420p video needs even frame sides, got {w}x{h}")
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._container = av.open(str(self.path), mode="w")
            self._stream = self._container.add_stream(self.codec, rate=self.fps)
            self._stream.width, self._stream.height = w, h
            self._stream.pix_fmt = "yuv420p"
            self._stream.options = {"crf": str(self.crf)}
        elif frame.shape[:2] != (self._stream.height, self._stream.width):
            raise ValueError(
                f"{self.path}: frame size {frame.shape[1]}x{frame.shape[0]} differs from the first frame's "
                f"{self._stream.width}x{self._stream.height}"
            )
        for packet in self._stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
            self._container.mux(packet)
        self.n_frames += 1

    def close(self) -> None:
        if self._container is None:
            return
        for packet in self._stream.encode():  # flush the encoder's delayed frames
            self._container.mux(packet)
        self._container.close()
        self._container = None

    def __enter__(self) -> VideoWriter:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def write_report_json(result: EvalResult, path: str | Path) -> Path:
    path = Path(path)
    atomic_write_text(path, json.dumps(result.to_dict(), indent=2) + "\n")
    return path


def plot_eval(result: EvalResult, path: str | Path) -> Path:
    """Max-coverage histogram with the success line, and max coverage per seed coloured by success."""
    import io

    import matplotlib

    matplotlib.use("Agg")  # files only; never needs a display
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    seeds = np.array([e.seed for e in result.episodes])
    cover = np.array([e.max_coverage for e in result.episodes])
    success = np.array([e.success for e in result.episodes], dtype=bool)
    thr = result.success_threshold

    fig, (ax_hist, ax_seed) = plt.subplots(1, 2, figsize=(11, 4), constrained_layout=True)
    ax_hist.hist(cover, bins=np.linspace(0.0, 1.0, 21), color="tab:blue", edgecolor="white")
    ax_hist.axvline(thr, color="tab:red", linestyle="--", label=f"success ≥ {thr:g}")
    ax_hist.set_xlabel("max coverage in episode")
    ax_hist.set_ylabel("episodes")
    ax_hist.legend(loc="upper left")

    ax_seed.scatter(seeds[success], cover[success], color="tab:green", s=18, label="success")
    ax_seed.scatter(seeds[~success], cover[~success], color="tab:gray", s=18, label="failure")
    ax_seed.axhline(thr, color="tab:red", linestyle="--", linewidth=1)
    ax_seed.set_ylim(-0.02, 1.02)
    ax_seed.set_xlabel("episode seed")
    ax_seed.set_ylabel("max coverage")
    ax_seed.legend(loc="best")
    ax_seed.ticklabel_format(axis="x", style="plain", useOffset=False)  # show seeds as written
    for ax in (ax_hist.yaxis, ax_seed.xaxis):
        ax.set_major_locator(MaxNLocator(integer=True))

    lo, hi = result.success_ci
    fig.suptitle(
        f"success {result.n_successes}/{result.n_episodes} = {result.success_rate:.1%} "
        f"(95% Wilson [{lo:.1%}, {hi:.1%}]), mean max coverage {result.mean_max_coverage:.3f}"
    )
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    path = Path(path)
    atomic_write_bytes(path, buf.getvalue())
    return path


def write_eval_artifacts(result: EvalResult, output_dir: str | Path) -> dict[str, Path]:
    output_dir = Path(output_dir)
    return {
        "report": write_report_json(result, output_dir / REPORT_FILE),
        "plot": plot_eval(result, output_dir / PLOT_FILE),
    }


__all__ = [
    "PLOT_FILE",
    "REPORT_FILE",
    "VIDEO_DIR",
    "VideoWriter",
    "plot_eval",
    "video_relpath",
    "write_eval_artifacts",
    "write_report_json",
]
