"""LeRobot's own ``aggregate_datasets`` merging a robopolicy-written dataset with a LeRobot-written one, both orders.

Runs in robopolicy's environment and calls a side environment that has LeRobot (see
bench/make_lerobot_fixtures.py for how it is set up)::

    python bench/lerobot_merge.py --lerobot-python /work/venvs/lerobot/bin/python

1. robopolicy writes the fixtures' source data (tests/fixtures/lerobot/expected.npz) twice: as h264 video
   and as images (``use_videos=False``), with the fixtures' features, fps and robot type.
2. In the side environment, ``lerobot.datasets.aggregate.aggregate_datasets`` merges each with the
   LeRobot-written fixture of the same storage, robopolicy first and LeRobot first, then LeRobot's
   ``LeRobotDataset`` loads the result (metadata, tasks, per-frame rows).
3. Back here, robopolicy's reader reads every merged dataset and checks every column and every camera
   frame against the source data, in merged order.

Prints one line per merge and writes bench/results/lerobot_merge.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO / "tests/fixtures/lerobot"


def lerobot_side(sources: list[str], out: str) -> None:
    """Runs in the side env: LeRobot merges ``sources`` into ``out`` and loads the result."""
    import lerobot
    from lerobot.datasets.aggregate import aggregate_datasets
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    roots = [Path(s) for s in sources]
    aggregate_datasets(repo_ids=[f"local/{r.name}" for r in roots], aggr_repo_id="local/merged", roots=roots,
                       aggr_root=Path(out))
    ds = LeRobotDataset("local/merged", root=out, video_backend="pyav")
    rows = ds.hf_dataset.with_format(None)  # the parquet rows, as LeRobot's loader sees them
    print(json.dumps({"lerobot": lerobot.__version__, "episodes": ds.meta.total_episodes, "frames": ds.meta.total_frames,
                      "rows": len(rows), "tasks": list(ds.meta.tasks.index), "camera_keys": ds.meta.camera_keys}))


def write_robopolicy_copy(root: Path, use_videos: bool) -> Path:
    from robopolicy.data.reader import LeRobotDataset
    from robopolicy.data.writer import LeRobotDatasetWriter

    fixture = LeRobotDataset(FIXTURES / ("v30_video_h264" if use_videos else "v30_image"))
    features = {k: {kk: v for kk, v in ft.items() if kk != "info"} for k, ft in fixture.features.items()
                if k not in ("timestamp", "frame_index", "episode_index", "index", "task_index")}
    source = np.load(FIXTURES / "expected.npz")
    bounds = np.cumsum([0, *source["lengths"]])
    with LeRobotDatasetWriter(root, fps=fixture.fps, features=features, robot_type=fixture.info["robot_type"],
                              use_videos=use_videos) as writer:
        for e, task in enumerate(source["tasks"]):
            writer.add_episode({k: source[k][bounds[e]:bounds[e + 1]] for k in features}, task=str(task))
    return root


def check_merged(root: Path) -> dict:
    """robopolicy reads the merged dataset: columns and frames equal the source data twice over."""
    from robopolicy.data.reader import LeRobotDataset

    source = np.load(FIXTURES / "expected.npz")
    ds = LeRobotDataset(root)
    worst = 0.0
    for key in ("observation.state", "action", "next.done", "observation.gripper"):
        expected = np.concatenate([source[key], source[key]])
        got = ds.column(key).reshape(expected.shape)
        if not np.array_equal(got, expected):
            raise AssertionError(f"{root}: column {key!r} differs from the source data")
    frames = ds.column("observation.image").astype(int)
    expected = np.concatenate([source["observation.image"], source["observation.image"]]).astype(int)
    worst = float(np.abs(frames - expected).mean(axis=(1, 2, 3)).max())
    if worst > 4:  # codec loss on flat colours is ~1; a frame off by one is ~60
        raise AssertionError(f"{root}: a decoded frame differs from its source by {worst:.1f} on average")
    return {"episodes": ds.num_episodes, "frames": ds.num_frames, "worst_frame_mean_abs_err": round(worst, 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lerobot-python", default="/work/venvs/lerobot/bin/python")
    parser.add_argument("--side", nargs="+", help=argparse.SUPPRESS)  # internal: SOURCE... OUT, in the side env
    args = parser.parse_args()
    if args.side:
        lerobot_side(args.side[:-1], args.side[-1])
        return
    results = []
    with tempfile.TemporaryDirectory(prefix="lerobot-merge-") as tmp:
        work = Path(tmp)
        for storage, use_videos in (("video h264", True), ("image", False)):
            ours = write_robopolicy_copy(work / f"robopolicy_{use_videos}", use_videos)
            theirs = work / f"lerobot_{use_videos}"
            shutil.copytree(FIXTURES / ("v30_video_h264" if use_videos else "v30_image"), theirs)
            for order, sources in (("robopolicy+lerobot", [ours, theirs]), ("lerobot+robopolicy", [theirs, ours])):
                out = work / f"merged_{use_videos}_{order}"
                t0 = time.perf_counter()
                proc = subprocess.run([args.lerobot_python, __file__, "--side", *map(str, sources), str(out)],
                                      capture_output=True, text=True, timeout=600)
                row = {"storage": storage, "order": order, "ok": proc.returncode == 0,
                       "wall_s": round(time.perf_counter() - t0, 1)}
                if proc.returncode == 0:
                    row["lerobot_load"] = json.loads(proc.stdout.strip().splitlines()[-1])
                    row["robopolicy_read"] = check_merged(out)
                else:
                    row["error"] = proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "(no stderr)"
                results.append(row)
                print(f"{storage:10s} {order:20s} {'OK' if row['ok'] else 'FAILED'}  "
                      + json.dumps(row.get("robopolicy_read") or row.get("error")))
    out = REPO / "bench/results/lerobot_merge.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "machine": platform.node(),
                               "command": "python bench/lerobot_merge.py --lerobot-python " + args.lerobot_python,
                               "results": results}, indent=2) + "\n")
    sys.exit(0 if all(r["ok"] for r in results) else 1)


if __name__ == "__main__":
    main()
