"""Write tiny LeRobot datasets with LeRobot's own writer: the reader's CI fixtures (tests/fixtures/lerobot/).

Runs in a side environment that has LeRobot, never in robopolicy's (LeRobot pins its own torch, datasets
and av). Setup used for the committed fixtures (CPU only, no CUDA wheels)::

    python3 -m venv /work/venvs/lerobot
    /work/venvs/lerobot/bin/pip install torch==2.13.0                     # the local CPU wheel
    /work/venvs/lerobot/bin/pip install --no-deps lerobot==0.4.4 torchvision==0.28.0
    /work/venvs/lerobot/bin/pip install "datasets>=4,<5" "diffusers<0.36" "huggingface-hub<0.36" \
        "accelerate<2" "einops<0.9" "opencv-python-headless<4.13" "av>=15,<16" "jsonlines<5" \
        "packaging<26" pyserial "draccus==0.10.0" "gymnasium<2" "deepdiff<9" "imageio[ffmpeg]<3" termcolor

torchvision's PyPI wheel is a CUDA build: its ``_C.so`` cannot load on the CPU torch, and its Python part
then fails to register fakes for ``torchvision::nms``/``qnms``. A ``.pth`` file in the side env defining
those two schemas (``torch.library.Library("torchvision", "DEF").define(...)``) lets ``import lerobot``
work; nothing of torchvision's ops is used for writing. LeRobot 0.4.4 writes only v3.0, so v2.1 comes
from LeRobot 0.3.3 (the last release that wrote it) in a second venv layered on the first::

    python3 -m venv /work/venvs/lerobot033
    echo /work/venvs/lerobot/lib/python3.11/site-packages > \
        /work/venvs/lerobot033/lib/python3.11/site-packages/lerobot044_deps.pth
    /work/venvs/lerobot033/bin/pip install --no-deps lerobot==0.3.3
    /work/venvs/lerobot033/bin/pip install datasets==3.6.0 "gymnasium<1"

Then::

    /work/venvs/lerobot/bin/python bench/make_lerobot_fixtures.py tests/fixtures/lerobot
    /work/venvs/lerobot033/bin/python bench/make_lerobot_fixtures.py tests/fixtures/lerobot

The content is deterministic (seeded): 3 episodes of 8, 11 and 6 frames at 10 fps, a float state and
action, a bool ``next.done``, an int64 ``observation.gripper`` and a 32x48 RGB camera whose every frame
is one flat colour (so a decoded frame can be matched to its source in tests). ``expected.npz`` holds the
source arrays for the tests to compare against.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import numpy as np

FPS = 10
LENGTHS = (8, 11, 6)
HEIGHT, WIDTH = 32, 48
TASKS = ("push the block", "push the block", "reach the goal")


def source_episodes() -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(0)
    episodes, k = [], 0
    for n in LENGTHS:
        colours = np.array([[(37 * (k + i)) % 256, (91 * (k + i)) % 256, (173 * (k + i)) % 256] for i in range(n)])
        k += n
        episodes.append({
            "observation.state": rng.normal(size=(n, 2)).astype(np.float32),
            "action": rng.normal(size=(n, 2)).astype(np.float32),
            "next.done": (np.arange(n) == n - 1)[:, None],
            "observation.gripper": rng.integers(0, 3, size=(n, 1)).astype(np.int64),
            "observation.image": np.broadcast_to(colours[:, None, None, :], (n, HEIGHT, WIDTH, 3)).astype(np.uint8).copy(),
        })
    return episodes


def features(camera_dtype: str) -> dict:
    return {
        "observation.state": {"dtype": "float32", "shape": (2,), "names": ["x", "y"]},
        "action": {"dtype": "float32", "shape": (2,), "names": ["x", "y"]},
        "next.done": {"dtype": "bool", "shape": (1,), "names": None},
        "observation.gripper": {"dtype": "int64", "shape": (1,), "names": None},
        "observation.image": {"dtype": camera_dtype, "shape": (HEIGHT, WIDTH, 3),
                              "names": ["height", "width", "channels"]},
    }


def write(root: Path, use_videos: bool, vcodec: str | None, episodes: list[dict[str, np.ndarray]]) -> None:
    import lerobot
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    if root.exists():
        shutil.rmtree(root)
    kwargs = {"vcodec": vcodec} if vcodec else {}
    ds = LeRobotDataset.create(repo_id=f"robopolicy/{root.name}", fps=FPS, root=root, robot_type="toy",
                               features=features("video" if use_videos else "image"), use_videos=use_videos,
                               **kwargs)
    legacy = lerobot.__version__.startswith("0.3")  # 0.3.x: add_frame(frame, task)
    for ep, task in zip(episodes, TASKS):
        for i in range(len(ep["action"])):
            frame = {k: v[i] for k, v in ep.items()}
            ds.add_frame(frame, task) if legacy else ds.add_frame({**frame, "task": task})
        ds.save_episode()
    if hasattr(ds, "finalize"):  # v3.0 writers buffer metadata until finalize
        ds.finalize()
    for leftover in sorted((root / "images").glob("**/"), reverse=True):  # PNG staging dirs, emptied by LeRobot
        leftover.rmdir()
    (root / "WRITTEN_BY").write_text(f"lerobot {lerobot.__version__} LeRobotDataset.create(use_videos={use_videos}"
                                     + (f", vcodec={vcodec!r}" if vcodec else "") + ")\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    args = parser.parse_args()
    import lerobot

    args.out.mkdir(parents=True, exist_ok=True)
    episodes = source_episodes()
    np.savez_compressed(args.out / "expected.npz", **{
        f"{k}": np.concatenate([e[k] for e in episodes]) for k in episodes[0]
    }, lengths=np.array(LENGTHS), tasks=np.array(TASKS))
    if lerobot.__version__.startswith("0.3"):
        write(args.out / "v21_video", True, None, episodes)  # 0.3.3 encodes with libsvtav1, g=2, crf=30
        written = ["v21_video"]
    else:
        write(args.out / "v30_video_h264", True, "h264", episodes)
        write(args.out / "v30_video_av1", True, "libsvtav1", episodes)
        write(args.out / "v30_image", False, None, episodes)
        written = ["v30_video_h264", "v30_video_av1", "v30_image"]
    for name in written:
        info = json.loads((args.out / name / "meta/info.json").read_text())
        print(name, info["codebase_version"], info["total_episodes"], "episodes", info["total_frames"], "frames")


if __name__ == "__main__":
    main()
