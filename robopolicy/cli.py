"""``robopolicy <command> [hydra overrides]``: convert, train, eval, demo.

Each command composes ``configs/<command>.yaml`` with Hydra; overrides use Hydra syntax, e.g.
``robopolicy train policy.num_inference_steps=16 steps=500``.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from functools import partial
from pathlib import Path

from omegaconf import DictConfig, OmegaConf
from rich.console import Console

from robopolicy.configs import default_output_dir, load_config, resolve_path

console = Console()

USAGE = """usage: robopolicy <command> [key=value ...]

commands:
  convert   import demonstrations into a LeRobot v3.0 dataset (configs/convert.yaml)
  train     train a policy (configs/train.yaml; policy=<family>)
  eval      evaluate a policy in simulation (configs/eval.yaml; checkpoint=<policy dir>)
  demo      the main job end to end on the bundled PushT demos (configs/demo.yaml)
  export    export a policy to ONNX / TensorRT (configs/export.yaml; checkpoint=<policy dir>)
  serve     serve a policy over ZeroMQ (configs/serve.yaml; checkpoint=<policy dir or ONNX artifact>)
  run       drive a robot from a policy server (configs/run.yaml; robot=<name> server=<address>)
  keys      generate CurveZMQ keypairs (configs/keys.yaml; dir=<dir>)
  record    record arm demonstrations (configs/record.yaml; output=<dataset> device=keyboard|gamepad|zmq|expert)
  dataset   dataset tools without LeRobot (configs/dataset.yaml; action=info|verify|merge|split|delete-episodes)
  viz       show a dataset on Rerun: save an .rrd or serve the web viewer (configs/viz.yaml; root=<dataset>)

Add --cfg (or --cfg job) to print the composed config and exit. Overrides use Hydra syntax.
"""


def cmd_convert(cfg: DictConfig) -> Path:
    if cfg.mirror and cfg.source != "pusht_zarr":
        raise ValueError(f"convert: mirror=true is a PushT augmentation (source=pusht_zarr), not for {cfg.source!r}")
    if cfg.source == "robomimic_hdf5":
        from robopolicy.importers.robomimic_hdf5 import convert_robomimic_hdf5

        out = convert_robomimic_hdf5(resolve_path(cfg.input), resolve_path(cfg.output), max_episodes=cfg.max_episodes,
                                     image_keys=None if cfg.with_images else [], overwrite=cfg.overwrite,
                                     video_codec=cfg.video_codec, video_crf=cfg.video_crf)
        console.print(f"wrote LeRobot v3.0 dataset to {out}")
        return out
    if cfg.source != "pusht_zarr":
        raise ValueError(f"convert: unknown source {cfg.source!r} (known: pusht_zarr, robomimic_hdf5)")
    from robopolicy.importers.diffusion_policy_zarr import convert_pusht_zarr

    out = convert_pusht_zarr(resolve_path(cfg.input), resolve_path(cfg.output), max_episodes=cfg.max_episodes,
                             with_images=cfg.with_images, overwrite=cfg.overwrite, video_codec=cfg.video_codec,
                             video_crf=cfg.video_crf, mirror=cfg.mirror)
    console.print(f"wrote LeRobot v3.0 dataset to {out}")
    return out


def cmd_train(cfg: DictConfig) -> Path:
    from robopolicy.train.trainer import train

    return train(cfg)


def _is_export(path: Path) -> bool:
    """An ONNX artifact (manifest.json) or a C export (export.json + policy.c): served without torch."""
    return (path / "manifest.json").is_file() or ((path / "export.json").is_file() and (path / "policy.c").is_file())


def _resolve_policy_dir(checkpoint: str) -> Path:
    """Accept a policy dir, a training run dir, or a checkpoint dir."""
    path = resolve_path(checkpoint)
    for candidate in (path, path / "policy"):
        if (candidate / "config.json").is_file():
            return candidate
    from robopolicy.train.checkpoint import POLICY_DIR, latest_checkpoint

    latest = latest_checkpoint(path / "checkpoints")
    if latest is not None:
        return latest / POLICY_DIR
    raise FileNotFoundError(f"{path}: no policy found (expected a directory with config.json, a run dir, or a checkpoint)")


def load_policy_for_eval(policy_dir: str, noise_scheduler_type: str | None, num_inference_steps: int | None,
                         n_action_steps: int | None = None):
    """Worker-side factory: load a checkpoint and apply sampler and execution-horizon overrides.

    Ta is an inference-time choice (the network predicts T actions whatever Ta is), so a trained policy can be
    evaluated, exported and deployed with another one; the family's config checks it against T and To.
    """
    from robopolicy.policies.registry import load_policy

    policy = load_policy(policy_dir)
    if noise_scheduler_type is not None or num_inference_steps is not None:
        if not hasattr(policy, "set_sampler"):
            raise ValueError(f"policy family {policy.name!r} has no configurable sampler")
        policy.set_sampler(noise_scheduler_type, num_inference_steps)
    if n_action_steps is not None:
        try:
            policy.config = dataclasses.replace(policy.config, n_action_steps=int(n_action_steps))
        except ValueError as e:
            raise ValueError(f"n_action_steps={n_action_steps} does not fit the policy at {policy_dir}: {e}") from e
    return policy


def load_artifact_for_eval(artifact_dir: str, noise_scheduler_type: str | None, num_inference_steps: int | None,
                           n_action_steps: int | None = None, providers: tuple[str, ...] = ("cpu",),
                           graph: str = "auto", threads: int = 1):
    """Worker-side factory for an exported artifact: the torch-free runtime, with the same overrides as
    :func:`load_policy_for_eval` (sampler overrides need the per-step graph)."""
    from robopolicy.runtime import OnnxPolicy

    policy = OnnxPolicy.load(artifact_dir, providers=tuple(providers), intra_op_threads=threads, graph=graph)
    if noise_scheduler_type is not None or num_inference_steps is not None:
        policy.set_sampler(noise_scheduler_type, num_inference_steps)
    if n_action_steps is not None:
        policy.set_n_action_steps(n_action_steps)
    return policy


def load_c_export_for_eval(export_dir: str, n_action_steps: int | None = None):
    """Worker-side factory for a C export: its library compiled for this host (cached), called through ctypes."""
    from robopolicy.runtime.c_policy import CPolicy

    policy = CPolicy.load(export_dir)
    if n_action_steps is not None:
        policy.set_n_action_steps(n_action_steps)
    return policy


def cmd_eval(cfg: DictConfig) -> dict:
    from robopolicy.policies.registry import load_policy
    from robopolicy.sim.envs import ARM_TASKS, QUADROTOR_ENVS, arm_renderer_available, env_factory
    from robopolicy.sim.evaluate import evaluate

    if not cfg.checkpoint:
        raise ValueError("eval: give checkpoint=<policy dir, training run dir, exported ONNX artifact or C export dir>")
    out = resolve_path(cfg.output_dir) if cfg.output_dir else default_output_dir("eval")
    artifact = resolve_path(cfg.checkpoint)
    if (artifact / "manifest.json").is_file():  # an exported artifact: evaluate the torch-free runtime
        if cfg.env.name in QUADROTOR_ENVS:  # every drone of a batch through the runtime's batched select_action
            return _eval_quadrotor(cfg, artifact, out, load_artifact_for_eval(
                str(artifact), cfg.noise_scheduler_type, cfg.num_inference_steps, cfg.n_action_steps,
                tuple(cfg.providers), cfg.graph, cfg.threads))
        from robopolicy.runtime.manifest import read_manifest

        policy_dir = artifact
        factory = partial(load_artifact_for_eval, str(artifact), cfg.noise_scheduler_type, cfg.num_inference_steps,
                          cfg.n_action_steps, tuple(cfg.providers), cfg.graph, cfg.threads)
        input_keys = [f["key"] for f in read_manifest(artifact)["input_features"]]
    elif (artifact / "export.json").is_file() and (artifact / "policy.c").is_file():  # the C a microcontroller runs
        if cfg.noise_scheduler_type is not None or cfg.num_inference_steps is not None:
            raise ValueError("eval: a C export's sampler is compiled in; noise_scheduler_type and "
                             "num_inference_steps do not apply")
        if cfg.env.name in QUADROTOR_ENVS:  # the code that will fly, on every drone of a batch
            return _eval_quadrotor(cfg, artifact, out, load_c_export_for_eval(str(artifact), cfg.n_action_steps))
        from robopolicy.runtime.c_policy import CPolicy

        policy_dir = artifact
        input_keys = [key for key, _ in CPolicy.load(artifact).obs_layout]  # also builds the library once
        factory = partial(load_c_export_for_eval, str(artifact), cfg.n_action_steps)
    else:
        policy_dir = _resolve_policy_dir(cfg.checkpoint)
        if cfg.env.name in QUADROTOR_ENVS:
            return _eval_quadrotor(cfg, policy_dir, out)
        if cfg.env.name.startswith("newton_"):
            return _eval_newton(cfg, policy_dir, out)
        factory = partial(load_policy_for_eval, str(policy_dir), cfg.noise_scheduler_type, cfg.num_inference_steps,
                          cfg.n_action_steps)
        input_keys = [f.key for f in load_policy(policy_dir).config.input_features]
    n_videos = cfg.n_videos
    if cfg.env.name in ARM_TASKS and n_videos > 0 and not arm_renderer_available():
        console.print("[yellow]no offscreen renderer (MUJOCO_GL=egl or osmesa): evaluating without videos[/]")
        n_videos = 0
    recorder = None
    if cfg.viz:  # the recorded episodes (the first n_videos) as Rerun recordings too
        from robopolicy.viz.rerun_views import RolloutRecordingWriter

        recorder = RolloutRecordingWriter(out / "rerun", action_extent=512.0 if cfg.env.name == "pusht" else None,
                                          info={"policy": str(policy_dir), "env": cfg.env.name})
    result = evaluate(factory, env_factory=env_factory(cfg.env.name, input_keys, render=n_videos > 0),
                      n_episodes=cfg.n_episodes, start_seed=cfg.start_seed, max_steps=cfg.max_steps,
                      n_workers=cfg.n_workers, n_videos=n_videos, output_dir=out,
                      success_threshold=cfg.success_threshold, rollout_recorder=recorder)
    report = result.to_dict()
    lo, hi = report["success_ci95"]
    console.print(f"[bold]{policy_dir}[/]: success {report['success_rate']:.1%} (95% CI {lo:.1%}–{hi:.1%}), "
                  f"mean max coverage {report['mean_max_coverage']:.3f} (reward {report['mean_max_reward']:.3f}) over {report['n_episodes']} episodes -> {out}")
    return report


def _eval_quadrotor(cfg: DictConfig, policy_dir: Path, out: Path, policy=None) -> dict:
    """Vectorized: ``n_episodes`` drones (1,024 at a time) fly one episode each; episode k starts from seed
    start_seed + k.

    ``policy``: an exported runtime (``OnnxPolicy``, ``CPolicy``) instead of the torch checkpoint at ``policy_dir``.
    """
    import torch

    from robopolicy.sim.envs import evaluate_quadrotor

    torch.manual_seed(cfg.start_seed)
    if policy is None:  # the sampler and Ta overrides apply here as on every other task
        policy = load_policy_for_eval(str(policy_dir), cfg.noise_scheduler_type, cfg.num_inference_steps,
                                      cfg.n_action_steps)
    else:
        policy.seed(cfg.start_seed)  # the runtime's own noise
    report = evaluate_quadrotor(policy, cfg.env.name, n_episodes=cfg.n_episodes,
                                seed=cfg.start_seed, progress=True)
    return _save_vectorized_report(cfg, policy_dir, out, report, f"crash {report['crash_rate']:.1%}, "
                                                                   f"RMSE {report['rmse_mean']:.3f} m, ")


def _eval_newton(cfg: DictConfig, policy_dir: Path, out: Path) -> dict:
    """Vectorized in Newton: ``n_episodes`` episodes, 256 worlds stepped together (bench/newton_throughput.py)."""
    import torch

    from robopolicy.sim.envs import evaluate_newton

    torch.manual_seed(cfg.start_seed)
    policy = load_policy_for_eval(str(policy_dir), cfg.noise_scheduler_type, cfg.num_inference_steps, cfg.n_action_steps)
    report = evaluate_newton(policy, cfg.env.name, n_episodes=cfg.n_episodes, seed=cfg.start_seed,
                             n_envs=min(cfg.n_episodes, 256))
    return _save_vectorized_report(cfg, policy_dir, out, report)


def _save_vectorized_report(cfg: DictConfig, policy_dir: Path, out: Path, report: dict, details: str = "") -> dict:
    """``eval_report.json`` and the console line of a vectorized evaluation (quadrotors, Newton)."""
    report.update(policy=str(policy_dir), env=cfg.env.name, start_seed=cfg.start_seed)
    out.mkdir(parents=True, exist_ok=True)
    (out / "eval_report.json").write_text(json.dumps(report, indent=2))
    lo, hi = report["success_ci95"]
    console.print(f"[bold]{policy_dir}[/] on {cfg.env.name}: success {report['success_rate']:.1%} (95% CI "
                  f"{lo:.1%}–{hi:.1%}), {details}over {report['n_episodes']} episodes -> {out}")
    return report


def cmd_demo(cfg: DictConfig) -> dict:
    """Bundled demos -> train -> evaluate -> export to ONNX -> closed loop through the ZeroMQ control loop."""
    from robopolicy.robots.closed_loop import run_served_episodes

    out = resolve_path(cfg.output_dir) if cfg.output_dir else default_output_dir("demo")
    t0 = time.perf_counter()
    dataset_root = resolve_path(cfg.train.dataset.root)
    if not (dataset_root / "meta" / "info.json").is_file():
        raise FileNotFoundError(f"{dataset_root}: bundled dataset missing; run `robopolicy convert` first")
    cfg.train.output_dir = str(out / "train")
    run_dir = cmd_train(cfg.train)
    cfg.eval.checkpoint = str(run_dir / "policy")
    cfg.eval.output_dir = str(out / "eval")
    report = cmd_eval(cfg.eval)
    artifact = cmd_export(OmegaConf.merge(load_config("export"), {"checkpoint": str(run_dir / "policy"),
                                                                   "output": str(out / "onnx")}))
    summary = {
        "dataset": str(dataset_root),
        "train": json.loads((run_dir / "train_summary.json").read_text()),
        "eval": {k: report[k] for k in ("n_episodes", "success_rate", "success_ci95", "mean_max_coverage", "mean_max_reward") if k in report},
        "latency_ms": report.get("latency_ms"),
        "artifacts": {"policy": str(run_dir / "policy"), "eval": str(out / "eval"), "onnx": str(artifact)},
    }
    if cfg.control_episodes > 0:
        console.print(f"closed loop: ONNX artifact -> policy server -> control loop -> simulated PushT robot, "
                      f"{cfg.control_episodes} real-time episode(s)")
        served = run_served_episodes(str(artifact), cfg.control_episodes, start_seed=cfg.eval.start_seed, verbose=False)
        summary["control_loop"] = {k: served[k] for k in ("n_episodes", "success_rate", "success_ci95", "mean_max_coverage")}
        summary["control_loop"]["episodes"] = served["episodes"]
    summary["total_time_s"] = round(time.perf_counter() - t0, 1)
    cut_short = demo_cut_short_warning(summary["train"])
    if cut_short:  # first in the report and on screen, so nobody reads the success figure without it
        summary = {"warning": cut_short, **summary}
    summary["next_steps"] = demo_next_steps(summary)
    (out / "demo_report.json").write_text(json.dumps(summary, indent=2))
    if cut_short:
        console.print(f"[bold yellow]{cut_short}")
    console.print_json(json.dumps(summary))
    if cut_short:
        console.print(f"[bold yellow]{cut_short}")
    console.print("next:\n" + "\n".join(f"  {step}" for step in summary["next_steps"]))
    console.print(f"demo report written to {out / 'demo_report.json'}")
    return summary


def demo_cut_short_warning(train_summary: dict) -> str | None:
    """What the success figure means when the wall-clock cap stopped training before its planned steps."""
    done, planned = train_summary.get("steps", 0), train_summary.get("steps_planned")
    if planned is None or done >= planned:
        return None
    run_dir = Path(train_summary["policy_dir"]).parent if "policy_dir" in train_summary else "<run dir>"
    return (f"training was cut short by the wall-clock cap: {done} of {planned} planned steps "
            f"({100 * done / planned:.0f} %), so the success figure is that of an under-trained policy, not what "
            f"this demo yields on an idle machine (docs/benchmarks.md). Finish the run with `robopolicy train "
            f"resume=true output_dir={run_dir} time_budget_min=0`, or rerun with a larger train.time_budget_min.")


def demo_next_steps(summary: dict) -> list[str]:
    """The commands that take the demo's policy further: a longer evaluation, export, serving it."""
    policy, onnx = summary["artifacts"]["policy"], summary["artifacts"]["onnx"]
    return [f"evaluate longer:  robopolicy eval checkpoint={policy} n_episodes=500",
            f"export again:     robopolicy export checkpoint={policy} output=<dir>   (format=c for microcontrollers)",
            f"serve it:         robopolicy serve checkpoint={onnx}",
            "drive a robot:    robopolicy run robot=sim_pusht   (robot=lerobot ... for a LeRobot arm; docs/arms.md)"]


def cmd_export(cfg: DictConfig) -> Path:
    """Checkpoint -> ONNX artifact (manifest.json + graphs) for robopolicy.runtime; format=tensorrt adds engines;
    format=c writes C99 sources (microcontrollers, and CPolicy on a host)."""
    import torch

    from robopolicy.export import export_policy

    if not cfg.checkpoint:
        raise ValueError("export: give checkpoint=<policy dir or training run dir>")
    if cfg.format not in ("onnx", "tensorrt", "c"):
        raise ValueError(f"export: format must be 'onnx', 'tensorrt' or 'c', got {cfg.format!r}")
    if cfg.format == "c" and cfg.precision not in ("fp32", "int8"):
        raise ValueError(f"export: format=c takes precision fp32 or int8 (int8 weights), got {cfg.precision!r}")
    if cfg.format == "tensorrt":  # say what is missing before exporting anything
        from robopolicy.runtime.tensorrt_engines import PRECISIONS, import_tensorrt

        if cfg.precision not in PRECISIONS:
            raise ValueError(f"export: precision must be one of {PRECISIONS}, got {cfg.precision!r}")
        import_tensorrt()
    torch.set_num_threads(1)
    policy_dir = _resolve_policy_dir(cfg.checkpoint)
    out = resolve_path(cfg.output) if cfg.output else default_output_dir("export")
    policy = load_policy_for_eval(str(policy_dir), cfg.noise_scheduler_type, cfg.num_inference_steps, cfg.n_action_steps)
    if cfg.format == "c":
        from robopolicy.export.c_export import export_c

        if cfg.fps is not None:
            policy.config.fps = float(cfg.fps)
        path = export_c(policy, out, int8=cfg.precision == "int8")
        console.print(f"wrote C sources of {policy_dir} to {path} (run on a host with robopolicy.runtime.CPolicy)")
        return path
    path = export_policy(policy, out, graph_kinds=tuple(cfg.graph_kinds), opset=cfg.opset, fused_steps=cfg.fused_steps,
                         exporter=cfg.exporter, fps=cfg.fps)
    console.print(f"wrote ONNX artifact of {policy_dir} to {path}")
    if cfg.format == "tensorrt":
        from robopolicy.export.tensorrt import build_engines

        engines = build_engines(path, precision=cfg.precision, max_batch=cfg.max_batch)
        console.print(f"built {len(engines)} TensorRT {cfg.precision} engine(s) in {path / 'tensorrt'}")
    return path


def _torch_checkpoint_loader(policy_dir: Path):
    """``load_policy`` for a torch checkpoint (the training stack); None for exported artifacts, whose runtime
    needs no torch."""
    if not (Path(policy_dir) / "config.json").is_file():
        return None
    from robopolicy.policies.registry import load_policy

    return load_policy


def _show_logs(logger_name: str) -> None:
    """Warnings and errors of ``logger_name`` (refused handshakes, refused e-stop clears) on the console."""
    import logging

    from rich.logging import RichHandler

    logger = logging.getLogger(logger_name)
    if not any(isinstance(h, RichHandler) for h in logger.handlers):
        logger.addHandler(RichHandler(console=console, markup=False, show_path=False))
    logger.setLevel(min(logger.getEffectiveLevel(), logging.INFO))


def cmd_serve(cfg: DictConfig) -> dict:
    from robopolicy.deploy.adapter import load_policy_adapter
    from robopolicy.deploy.keys import ServerCurve
    from robopolicy.deploy.operator import default_operator_address
    from robopolicy.deploy.server import serve

    _show_logs("robopolicy.deploy")

    if not cfg.checkpoint:
        raise ValueError("serve: give checkpoint=<policy dir, run dir or ONNX artifact dir>")
    path = resolve_path(cfg.checkpoint)
    policy_dir = path if _is_export(path) else _resolve_policy_dir(cfg.checkpoint)
    curve = None
    if cfg.curve_secret:
        if not cfg.allowed_clients:
            raise ValueError("serve: curve_secret needs allowed_clients=<dir of client .key files>")
        curve = ServerCurve.load(resolve_path(cfg.curve_secret), resolve_path(cfg.allowed_clients),
                                 operators=resolve_path(cfg.operator_keys) if cfg.operator_keys else None)
    operator = default_operator_address(cfg.address) if cfg.operator_address == "auto" else cfg.operator_address
    adapter = load_policy_adapter(policy_dir, fps=cfg.fps, providers=list(cfg.providers), threads=cfg.threads,
                                  graph=cfg.graph, load_checkpoint=_torch_checkpoint_loader(policy_dir))
    server = serve(adapter, address=cfg.address, curve=curve,
                   max_message_bytes=cfg.max_message_bytes, status_every_s=cfg.status_every_s,
                   status_fn=partial(console.print, markup=False, highlight=False),  # "[policy server]" is not markup
                   max_runtime_s=cfg.max_runtime_s, inline_below_ms=cfg.inline_below_ms,
                   operator_address=operator or None, max_clients=cfg.max_clients)
    return server.stats.snapshot()


def cmd_run(cfg: DictConfig) -> dict:
    from robopolicy.deploy.client import ControlLoop, ControlLoopConfig
    from robopolicy.deploy.keys import ClientCurve
    from robopolicy.robots import make_robot

    curve = (ClientCurve.load(resolve_path(cfg.curve_secret), resolve_path(cfg.server_public))
             if cfg.curve_secret else None)
    fields = OmegaConf.to_container(cfg.robot, resolve=True) if cfg.robot is not None else {}
    if not isinstance(fields, dict) or "name" not in fields:
        raise ValueError("run: robot needs a name (robot=<name>, e.g. robot=sim_pusht)")
    robot = make_robot(fields.pop("name"), **fields)
    loop_cfg = ControlLoopConfig(control_hz=cfg.control_hz, blend=cfg.blend, interpolation=cfg.interpolation,
                                 watchdog_s=cfg.watchdog_s,
                                 latency_margin_s=cfg.latency_margin_s, rtc_soft_steps=cfg.rtc_soft_steps)
    with robot:
        loop = ControlLoop(robot, cfg.server, loop_cfg, curve=curve)
        try:
            summary = loop.run(cfg.duration_s)
        finally:
            loop.close()
    console.print_json(json.dumps(summary, default=str))
    return summary


def cmd_keys(cfg: DictConfig) -> dict:
    from robopolicy.deploy.keys import generate_keys

    out = generate_keys(resolve_path(cfg.dir), tuple(cfg.names))
    for name, (pub, sec) in out.items():
        console.print(f"{name}: public {pub}  secret {sec} (keep on its machine)")
    return {k: [str(p), str(s)] for k, (p, s) in out.items()}


def _record_quadrotor(cfg: DictConfig) -> dict:
    from robopolicy.experts.quadrotor import record_demonstrations
    from robopolicy.sim.quadrotor import TASKS, QuadrotorConfig

    task = cfg.task.removeprefix("quadrotor_")
    if task not in TASKS:
        raise ValueError(f"record: task={cfg.task!r} is not a quadrotor task (quadrotor_{' | quadrotor_'.join(TASKS)})")
    if cfg.device != "expert":
        raise ValueError("record: quadrotor tasks record from device=expert (the SE(3) controller); for a setpoint "
                         "stream from an operator use robopolicy.experts.quadrotor.SetpointTeleop")
    driver = None
    if cfg.dagger_policy:
        driver = _dagger_driver(resolve_path(cfg.dagger_policy))
    report = record_demonstrations(resolve_path(cfg.output), task=task, n_episodes=cfg.num_episodes, n_envs=64,
                                   seed=cfg.seed, dart_noise=cfg.dart_noise,
                                   only_successful=not cfg.keep_failures and driver is None,
                                   config=QuadrotorConfig(task=task, sim_hz=cfg.sim_hz), overwrite=cfg.overwrite,
                                   driver=driver)
    f = report["flown"]
    console.print(f"[bold]{report['root']}[/]: kept {report['episodes_kept']} of {report['episodes_run']} episodes flown "
                  f"by the {report['flown_by']}, labelled by the expert ({report['flown_by']} success "
                  f"{f['success_rate']:.1%}, crash {f['crash_rate']:.1%})")
    return report


def _dagger_driver(checkpoint: Path):
    """A trained quadrotor policy as a batched ``obs -> actions`` function for DAgger recording. Only policies
    without observation history or action queue (To = Ta = 1) fit: recording resets each drone on its own."""
    import torch

    from robopolicy.policies.registry import load_policy
    from robopolicy.sim.quadrotor import STATE_KEY

    policy = load_policy(checkpoint)
    policy.eval()
    c = policy.config
    if c.n_obs_steps != 1 or c.n_action_steps != 1:
        raise ValueError(f"dagger_policy={checkpoint}: needs a policy with n_obs_steps = n_action_steps = 1 (the hover "
                         f"MLP); this one has To={c.n_obs_steps}, Ta={c.n_action_steps}, whose queues cannot follow "
                         "drones that reset one by one")

    def driver(obs):
        with torch.no_grad():
            policy.reset()
            return policy.select_action({STATE_KEY: obs})

    return driver


def cmd_record(cfg: DictConfig) -> dict:
    """Teleoperate (or run the scripted expert on) a robosuite arm and record into a LeRobot v3.0 dataset."""
    from robopolicy.data.recorder import DatasetRecorder
    from robopolicy.sim.robosuite_env import make_robosuite_env
    from robopolicy.teleop import make_device
    from robopolicy.teleop.record import record_teleop

    if not cfg.output:
        raise ValueError("record: give output=<dataset directory> (created, or appended to when it exists)")
    if cfg.device == "lerobot":
        return _record_lerobot(cfg)
    if cfg.device == "zmq" and not cfg.address:
        raise ValueError("record: device=zmq needs address=<the leader's PUB address>")
    if cfg.task.startswith("quadrotor_"):
        return _record_quadrotor(cfg)
    env = make_robosuite_env(cfg.task, robot=cfg.robot, cameras=tuple(cfg.cameras), seed=cfg.seed)
    recorder = DatasetRecorder(resolve_path(cfg.output), fps=env.control_freq, features=env.features(),
                               robot_type=cfg.robot, overwrite=cfg.overwrite)
    # A resumed dataset continues its seed sequence (env resets and the expert's noise); cfg.seed starts a new one.
    seed = recorder.resume_seed(cfg.seed)
    if cfg.device == "expert":
        from robopolicy.experts.arm_lift import ExpertDevice, make_expert

        device = ExpertDevice(make_expert(env, noise=cfg.expert_noise, seed=seed), env)
    elif cfg.device == "zmq":
        device = make_device("zmq", address=cfg.address)
    else:
        device = make_device(cfg.device)
    realtime = cfg.device != "expert" if cfg.realtime is None else cfg.realtime
    before = recorder.num_episodes
    if cfg.device != "expert":
        console.print("recording: the device's save / discard / quit controls end an episode; "
                      "a success held for 10 steps saves it")
    try:
        summary = record_teleop(env, device, recorder, task=cfg.task, num_episodes=cfg.num_episodes,
                                max_steps=cfg.max_steps or env.horizon, keep_failures=cfg.keep_failures,
                                realtime=realtime, seed=seed)
    finally:
        recorder.close()
        device.close()
        env.close()
    report = {"dataset": str(resolve_path(cfg.output)), "episodes_before": before, "saved": len(summary.saved),
              "discarded": summary.discarded, "attempts": summary.attempts, "quit": summary.quit}
    console.print(f"[bold]{report['dataset']}[/]: saved {report['saved']} episode(s) (now "
                  f"{before + report['saved']}), discarded {summary.discarded}")
    return report


def _record_lerobot(cfg: DictConfig) -> dict:
    """A LeRobot teleoperator drives a LeRobot robot; every frame is the robot's observation and the command sent
    (observe, then act, as LeRobot records). Each finished episode is durable; Ctrl-C loses only the current one."""
    from robopolicy.data.recorder import DatasetRecorder
    from robopolicy.robots.lerobot_robot import LeRobotRobot
    from robopolicy.robots.lerobot_teleop import (
        END_EFFECTOR_TELEOPS,
        KEYBOARD_EE_BROKEN,
        EndEffectorLimits,
        LeRobotTeleoperator,
        make_end_effector_teleop,
        record_leader_follower,
    )

    arm, teleop = (OmegaConf.to_container(cfg[key], resolve=True) for key in ("arm", "teleop"))
    arm.pop("name", None)  # the robot=lerobot config group's own name
    if not arm.get("type") or not teleop.get("type"):
        raise ValueError("record device=lerobot: give the robot's and the teleoperator's LeRobot types and ports, "
                         "e.g. arm.type=so101_follower arm.port=/dev/ttyACM0 arm.id=my_arm teleop.type=so101_leader "
                         "teleop.port=/dev/ttyACM1 teleop.id=my_leader")
    if not cfg.single_task:
        raise ValueError("record device=lerobot: give single_task='<what the demonstrations do>' (stored with "
                         "every frame, as LeRobot's --dataset.single_task)")
    if teleop["type"] == "keyboard_ee":
        raise ValueError(f"record device=lerobot: {KEYBOARD_EE_BROKEN}")
    robot = LeRobotRobot(**arm)
    teleoperator = LeRobotTeleoperator(**teleop)
    recorder = DatasetRecorder(resolve_path(cfg.output), fps=cfg.fps, features=robot.features,
                               robot_type=arm["type"], overwrite=cfg.overwrite)
    before = recorder.num_episodes

    def between_episodes(e: int) -> None:
        if e > 0 and cfg.reset_s > 0:
            console.print(f"reset the scene: {cfg.reset_s:g} s")
            time.sleep(cfg.reset_s)
        console.print(f"episode {before + e}: recording {cfg.episode_s:g} s at {cfg.fps:g} fps (Ctrl-C stops; "
                      "saved episodes stay)")

    summary, interrupted = None, False
    try:
        with robot, teleoperator:
            to_joints = None
            if teleop["type"] in END_EFFECTOR_TELEOPS:
                ee = cfg.ee
                limits = EndEffectorLimits(speed=ee.speed, gripper_speed=ee.gripper_speed,
                                           bounds_min=tuple(ee.bounds_min), bounds_max=tuple(ee.bounds_max))
                to_joints = make_end_effector_teleop(teleoperator, robot, cfg.fps, model=ee.model, frame=ee.frame,
                                                     limits=limits)
                if teleop["type"] == "keyboard":
                    console.print("keyboard: w/s forward/back, a/d left/right, r/f up/down, o open, c close")
            summary = record_leader_follower(robot, teleoperator, recorder, fps=cfg.fps, num_episodes=cfg.num_episodes,
                                             episode_s=cfg.episode_s, task=cfg.single_task,
                                             between_episodes=between_episodes, to_joints=to_joints)
    except KeyboardInterrupt:
        interrupted = True  # the episode in progress is discarded by close(); saved ones are on disk
    finally:
        recorder.close()
    saved = recorder.num_episodes - before
    report = {"dataset": str(resolve_path(cfg.output)), "episodes_before": before, "saved": saved,
              "interrupted": interrupted, "fps": cfg.fps,
              "slow_episodes": summary.slow_episodes if summary else None,
              "achieved_fps": [round(f, 2) for f in summary.achieved_fps] if summary else None}
    if summary and summary.slow_episodes:
        console.print(f"[yellow]{summary.slow_episodes} episode(s) ran more than 10 % below {cfg.fps:g} fps[/]")
    console.print(f"[bold]{report['dataset']}[/]: saved {saved} episode(s) (now {before + saved})")
    return report


def _dataset_verify(cfg: DictConfig) -> dict:
    """Checksums, unlisted files and every load check; exits non-zero on any problem."""
    from robopolicy.data.verify import verify_dataset

    report = verify_dataset(resolve_path(cfg.root), decode_videos=cfg.decode_videos, write=cfg.write)
    for problem in report.problems:
        print(f"problem: {problem}")  # plain print: file names hold brackets that rich would take for markup
    for name in report.unlisted:
        print(f"not in the checksums: {name}")
    if not report.has_checksums:
        print(f"{report.root}: no meta/checksums.json; run `robopolicy dataset action=verify root={cfg.root} "
              "write=true` to record the current files")
    elif report.written:
        print(f"{report.root}: wrote meta/checksums.json ({report.checked} files)")
    print(f"{report.root}: {'OK' if report.ok else 'FAILED'} ({report.checked} files checked)")
    if not report.ok:
        raise SystemExit(1)
    return {"root": str(report.root), "ok": report.ok, "checked": report.checked, "problems": report.problems,
            "unlisted": report.unlisted}


def cmd_dataset(cfg: DictConfig) -> dict:
    """``action=info|verify|merge|split|delete-episodes``: each a call into robopolicy.data.tools or .verify."""
    from robopolicy.data import tools

    write = {"use_videos": cfg.use_videos, "overwrite": cfg.overwrite, "video_codec": cfg.video_codec,
             "video_crf": cfg.video_crf}
    needs = {"info": ["root"], "verify": ["root"], "merge": ["roots", "output"], "split": ["root", "splits", "output"],
             "delete-episodes": ["root", "episodes", "output"]}
    if cfg.action not in needs:
        raise ValueError(f"dataset: unknown action {cfg.action!r} (known: {', '.join(needs)})")
    missing = [key for key in needs[cfg.action] if not cfg[key]]
    if missing:
        raise ValueError(f"dataset action={cfg.action}: give {', '.join(f'{k}=...' for k in missing)}")
    if cfg.action == "verify":
        return _dataset_verify(cfg)
    if cfg.action == "info":
        result = tools.info(resolve_path(cfg.root))
        console.print_json(json.dumps(result))
        return result
    if cfg.action == "merge":
        out = tools.merge([resolve_path(r) for r in cfg.roots], resolve_path(cfg.output), **write)
        result = {"output": str(out)}
    elif cfg.action == "split":
        splits = OmegaConf.to_container(cfg.splits, resolve=True)
        result = {k: str(v) for k, v in tools.split(resolve_path(cfg.root), splits, resolve_path(cfg.output), **write).items()}
    else:
        out = tools.delete_episodes(resolve_path(cfg.root), list(cfg.episodes), resolve_path(cfg.output), **write)
        result = {"output": str(out)}
    console.print(f"dataset {cfg.action}: wrote {', '.join(result.values())} (camera frames, if any, re-encoded)")
    return result


def cmd_viz(cfg: DictConfig) -> dict:
    """A dataset's episodes (``root=``) saved as .rrd, or served with a saved recording (``rrd=``) to the browser."""
    from robopolicy.viz import rerun_views as views

    if bool(cfg.root) == bool(cfg.rrd):
        raise ValueError("viz: give root=<dataset> (to save or serve) or rrd=<recording> serve=true")
    episodes = list(cfg.episodes) or None
    if not cfg.serve:
        if cfg.rrd:
            raise ValueError(f"viz: {cfg.rrd} is already a recording: open it with `rerun {cfg.rrd}` or add serve=true")
        out = resolve_path(cfg.output) if cfg.output else Path.cwd() / "outputs" / "viz" / f"{Path(cfg.root).name}.rrd"
        views.save_dataset(resolve_path(cfg.root), out, episodes)
        console.print(f"wrote {out} (open it with: rerun {out})")
        return {"output": str(out)}
    ports = {"web_port": cfg.web_port, "grpc_port": cfg.grpc_port}
    rec = (views.serve_dataset(resolve_path(cfg.root), episodes, **ports) if cfg.root
           else views.serve_recording(resolve_path(cfg.rrd), **ports))
    console.print(f"serving the Rerun web viewer at http://localhost:{cfg.web_port} (Ctrl-C stops)")
    try:
        while True:
            time.sleep(1.0)
    except KeyboardInterrupt:
        rec.disconnect()
    return {"served": f"http://localhost:{cfg.web_port}"}


COMMANDS = {"convert": cmd_convert, "train": cmd_train, "eval": cmd_eval, "demo": cmd_demo, "export": cmd_export,
            "serve": cmd_serve, "run": cmd_run, "keys": cmd_keys, "record": cmd_record,
            "dataset": cmd_dataset, "viz": cmd_viz}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        console.print(USAGE)
        return 0 if argv else 2
    command, overrides = argv[0], argv[1:]
    if command not in COMMANDS:
        console.print(f"[red]unknown command {command!r}[/]\n{USAGE}")
        return 2
    print_cfg = "--cfg" in overrides
    if print_cfg:  # `--cfg` or Hydra's `--cfg job`: print the composed config and exit
        i = overrides.index("--cfg")
        del overrides[i:i + (2 if overrides[i + 1:i + 2] in (["job"], ["all"]) else 1)]
    cfg = load_config(command, overrides)
    if print_cfg:
        print(OmegaConf.to_yaml(cfg))
        return 0
    COMMANDS[command](cfg)
    return 0


if __name__ == "__main__":
    sys.exit(main())
