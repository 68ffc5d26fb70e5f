"""Typed configuration for every command, composed by Hydra from the YAML files beside this module.

The dataclasses are the schema: Hydra composes ``robopolicy/configs/<command>.yaml`` (shipped inside the
package, so an installed ``robopolicy`` finds them from any directory) plus command-line overrides, and the
result is validated against these types (a misspelt key or a string where a number belongs is an error naming
the key). On a robot computer's runtime install, which has no Hydra, :func:`load_config` composes the same files
with OmegaConf alone (defaults lists of schemas and config groups, ``key=value`` and ``group=option``
overrides); a test keeps the two identical for the runtime commands.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

PACKAGE_DIR = Path(__file__).resolve().parent
# The checkout (editable installs and CI), where the bundled datasets live in datasets/.
REPO_ROOT = PACKAGE_DIR.parents[1]
BUNDLED_PREFIX = "bundled:"


def config_dir() -> Path:
    """The YAML configs shipped in the package (or ``$ROBOPOLICY_CONFIG_DIR``)."""
    path = Path(os.environ.get("ROBOPOLICY_CONFIG_DIR", PACKAGE_DIR))
    if not (path / "train.yaml").is_file():
        raise FileNotFoundError(f"{path}: config directory without train.yaml (check ROBOPOLICY_CONFIG_DIR)")
    return path


def bundled_dataset(name: str) -> Path:
    """A dataset that ships with robopolicy: inside the installed package (``robopolicy/_bundled/<name>``, put
    there by the wheel build), or in a checkout's ``datasets/<name>/lerobot``."""
    for root in (PACKAGE_DIR.parent / "_bundled" / name, REPO_ROOT / "datasets" / name / "lerobot"):
        if (root / "meta" / "info.json").is_file():
            return root
    raise FileNotFoundError(f"bundled dataset {name!r} not found: this robopolicy install has no "
                            f"robopolicy/_bundled/{name}; reinstall from the wheel, or pass dataset.root=<a LeRobot "
                            f"dataset> (`robopolicy convert` makes one from the Diffusion Policy zarr)")


def resolve_path(path: str | Path) -> Path:
    """``bundled:<name>`` is a dataset shipped with robopolicy; other relative paths are relative to the
    current directory, as in any command-line tool."""
    text = os.path.expanduser(str(path))
    if text.startswith(BUNDLED_PREFIX):
        return bundled_dataset(text.removeprefix(BUNDLED_PREFIX))
    return Path(text).absolute()


def default_output_dir(command: str) -> Path:
    """``outputs/<command>/<time>`` under the current directory."""
    return Path.cwd() / "outputs" / command / datetime.now().strftime("%Y-%m-%d_%H-%M-%S")


@dataclass
class DatasetConfig:
    root: str = "bundled:pusht"  # bundled:<name> is a dataset shipped with robopolicy
    observation_keys: list[str] = field(default_factory=lambda: ["observation.state", "observation.environment_state"])
    action_key: str = "action"
    normalization: str = "min_max"  # per-feature mode for all of them: min_max | mean_std
    # Episodes held out from training (the last N), to watch for overfitting.
    val_episodes: int = 0


@dataclass
class EnvConfig:
    name: str = "pusht"
    obs_mode: str = "state"
    max_steps: int = 300


@dataclass
class EvalConfig:
    checkpoint: str = ""
    n_episodes: int = 50
    start_seed: int = 100000
    max_steps: int = 300
    n_workers: int = 2
    n_videos: int = 4
    success_threshold: float = 0.95
    # Optional sampler overrides for diffusion policies (null keeps the checkpoint's).
    noise_scheduler_type: str | None = None
    num_inference_steps: int | None = None
    n_action_steps: int | None = None  # Ta override (null keeps the checkpoint's), e.g. 12 for a Ta-8-trained ACT
    output_dir: str | None = None
    env: EnvConfig = field(default_factory=EnvConfig)
    # checkpoint=<exported ONNX artifact dir> evaluates the torch-free runtime: its engines, graph kind and threads.
    providers: list[str] = field(default_factory=lambda: ["cpu"])
    graph: str = "auto"  # auto (per_step when exported) | per_step | fused
    threads: int = 1
    viz: bool = False  # one Rerun recording per recorded episode (the first n_videos) in <output_dir>/rerun/


@dataclass
class TrainConfig:
    policy: Any = None  # a policy family's config; validated against its dataclass at run time
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    env: EnvConfig = field(default_factory=EnvConfig)
    steps: int = 10000
    # Stop after this many minutes even if steps remain (0 = no limit); the final checkpoint is saved.
    time_budget_min: float = 0.0
    batch_size: int = 256
    lr: float = 5e-4
    betas: list[float] = field(default_factory=lambda: [0.95, 0.999])
    weight_decay: float = 1e-6
    warmup_steps: int = 500
    # The learning rate after warm-up: cosine (decays to 0 at the last step, Diffusion Policy's) | linear (to 0) |
    # constant_with_warmup (held at lr). On PushT, constant lost 17 points to cosine (docs/benchmarks.md section 12).
    lr_schedule: str = "cosine"
    grad_clip_norm: float = 1.0
    # Gaussian noise (normalized units) added to every low-dim observation of a training batch, the actions
    # left as demonstrated: the policy sees states slightly off the demos and learns to steer back (as in DART).
    obs_noise_std: float = 0.0
    # Draw training windows whose current frame has reward >= final_approach_reward (the dataset's
    # final_approach_key column; PushT: goal coverage / 0.95) this many times as often. 1 = uniform.
    final_approach_weight: float = 1.0
    final_approach_reward: float = 0.8
    final_approach_key: str = "next.reward"
    # "bf16": forward and backward under bfloat16 autocast (weights, optimizer and EMA stay fp32; the saved policy is
    # fp32). On a CPU with AMX/AVX512-BF16 the U-Net's convolutions also take a reordered backward
    # (policies/networks/fast_ops.py): the PushT U-Net trained 1.37x faster than float32 and 1.61x the original
    # Diffusion Policy code, with the same PushT success over three seeds (docs/benchmarks.md section 9). Not the
    # default: it changes numerics, and a CPU without bf16 units emulates it, many times slower.
    precision: str = "fp32"
    # Where the policy and the (normalized, in-memory) dataset live while training: auto (the first CUDA GPU when
    # torch sees one, else the CPU) | cpu | cuda | cuda:N. Batches are still drawn by a CPU generator, so a run's
    # window order does not depend on the device; checkpoints are device-independent.
    device: str = "auto"
    # The fast path (robopolicy/train/speed.py; docs/benchmarks.md section 9). compile: torch.compile the denoising
    # network: true | false | auto (runs of >= 5,000 steps, where a compiler exists). Off by default: on the 2-core
    # CPU it gained 0-10 % (within the noise) for a 140 s cold compile. Without a compiler, true trains eagerly
    # and says so. Results are the same either way.
    compile: str = "false"
    # torch.compile's mode for train.compile: default | reduce-overhead | max-autotune | max-autotune-no-cudagraphs.
    # reduce-overhead captures the network's forward and backward as CUDA graphs on a GPU (one launch each instead
    # of hundreds of small kernels); bench/gpu_train_profile.py measures it. No effect beyond default on a CPU.
    compile_mode: str = "default"
    fused_optimizer: bool = True  # AdamW as one fused kernel (CPU and CUDA)
    ema_foreach: bool = True  # diffusers' EMA update as foreach calls instead of a loop over parameters
    # The U-Net's Mish layers train through two compiled one-exponential kernels (CPU, where a C++ compiler
    # exists; robopolicy/policies/networks/fast_ops.py): forward and backward together 1.5-2.6x faster than
    # ATen's Mish at batch 256, equal to it to float32 rounding.
    fused_activations: bool = True
    ema: bool = True
    ema_power: float = 0.75
    ema_max_decay: float = 0.9999
    seed: int = 0
    num_threads: int = 0  # 0 = all cores
    log_every: int = 50
    save_every: int = 1000  # <= 0: save only at the end
    keep_checkpoints: int = 2
    eval_every: int = 0  # 0 = no evaluation during training
    eval_episodes: int = 20
    eval_workers: int = 2
    # Under torchrun (robopolicy/train/distributed.py): how long a training collective may wait for a slow or
    # dead rank before the job fails, and how long the other ranks wait while rank 0 evaluates.
    dist_timeout_min: float = 10.0
    dist_eval_timeout_min: float = 120.0
    output_dir: str | None = None
    resume: bool = False
    progress: bool = True


@dataclass
class ConvertConfig:
    source: str = "pusht_zarr"  # pusht_zarr | robomimic_hdf5
    input: str = "../shared/data/pusht/pusht_cchi_v7_replay.zarr"
    output: str = "datasets/pusht/lerobot"
    max_episodes: int | None = None
    with_images: bool = True
    overwrite: bool = False
    video_codec: str = "libx264"
    video_crf: int = 18
    # pusht_zarr only: also write every episode's mirror image across the goal T's symmetry axis (twice the demos).
    mirror: bool = False


@dataclass
class DemoConfig:
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    # After evaluation: export to ONNX and drive the simulated robot through the ZeroMQ server + control loop
    # (real time, up to 30 s per episode) with the exported artifact. 0 skips the control-loop stage.
    control_episodes: int = 2
    output_dir: str | None = None


@dataclass
class ServeConfig:
    checkpoint: str = ""  # torch policy dir / run dir, or ONNX artifact dir (manifest.json)
    address: str = "tcp://127.0.0.1:5555"
    fps: float | None = None  # action rate; default: the checkpoint's (its dataset's), else 10
    curve_secret: str | None = None  # server .key_secret; enables CURVE
    allowed_clients: str | None = None  # dir of allowed client *.key files
    # E-stop authority (docs/protocol.md): CURVE public keys that may clear an e-stop (dir or .key file), and the
    # local operator socket (ipc:// in a directory only this user can enter; auto: one per address; null: none).
    operator_keys: str | None = None
    operator_address: str | None = "auto"
    max_clients: int = 8  # clients served round robin at once; more get `busy`
    max_message_bytes: int = 16 * 1024 * 1024
    status_every_s: float = 5.0
    max_runtime_s: float | None = None
    # Policies whose last 20 inferences all took less than this run on the socket thread (no worker hop); 0 = never
    inline_below_ms: float = 1.0
    # ONNX artifacts only: engines in priority order (cpu, cuda, tensorrt, or openvino alone) and their threads.
    providers: list[str] = field(default_factory=lambda: ["cpu"])
    threads: int = 1
    graph: str = "auto"  # ONNX artifacts: auto (per_step when exported) | per_step | fused


@dataclass
class RunConfig:
    # The robot: ``name`` (robopolicy.robots.available_robots()) and that robot's own fields, from the config
    # group robopolicy/configs/robot/<name>.yaml; make_robot checks them against the robot's constructor.
    robot: Any = None
    server: str = "tcp://127.0.0.1:5555"
    duration_s: float = 60.0
    control_hz: float = 100.0
    blend: str = "rtc"  # rtc | ensemble | replace
    interpolation: str = "linear"  # linear | hold: hold each action until the next, as the demos commanded the arm
    watchdog_s: float = 0.1
    latency_margin_s: float = 0.0
    rtc_soft_steps: int = 0
    curve_secret: str | None = None  # client .key_secret
    server_public: str | None = None  # server .key


@dataclass
class KeysConfig:
    dir: str = "keys"
    names: list[str] = field(default_factory=lambda: ["server", "client"])


@dataclass
class ExportConfig:
    checkpoint: str = ""
    # onnx | tensorrt (ONNX, then TensorRT engines from it; needs tensorrt + a CUDA GPU) | c (C99 sources: mlp, flow
    # with the mlp backbone, sfp; for microcontrollers, and for robopolicy.runtime.CPolicy on a host)
    format: str = "onnx"
    output: str | None = None  # default outputs/export/<time>
    graph_kinds: list[str] = field(default_factory=lambda: ["per_step", "fused"])
    opset: int = 18
    fused_steps: int | None = None  # steps unrolled into fused.onnx (default: the policy's)
    exporter: str = "legacy"  # legacy | dynamo
    fps: float | None = None  # ONNX: for checkpoints that record no rate; one contradicting the policy's is refused
    noise_scheduler_type: str | None = None  # sampler overrides applied before export
    num_inference_steps: int | None = None
    n_action_steps: int | None = None  # Ta written to the manifest (null keeps the checkpoint's)
    precision: str = "fp32"  # tensorrt: fp32 | fp16; c: fp32 | int8 (int8 weights, one scale per row)
    max_batch: int = 8  # tensorrt optimization profile: batch 1..max_batch


@dataclass
class EndEffectorTeleopConfig:
    """``record device=lerobot teleop.type=keyboard|gamepad``: how the gripper follows the keys or sticks."""

    model: str | None = None  # the arm's MJCF (or URDF, through LeRobot's placo kinematics); SO-100/101: built in
    frame: str | None = None  # its end-effector site (MJCF) or link (URDF); SO-101 built in: gripperframe
    speed: float = 0.1  # m/s with a key held or a stick at full travel
    gripper_speed: float = 100.0  # gripper units per second (SO arms: 0..100)
    bounds_min: list[float] = field(default_factory=lambda: [0.05, -0.35, 0.0])  # workspace box, metres, model frame
    bounds_max: list[float] = field(default_factory=lambda: [0.45, 0.35, 0.40])


@dataclass
class RecordConfig:
    """Record arm demonstrations (robosuite) with a teleop device or the scripted expert, quadrotor
    demonstrations (L2F) from the SE(3) expert with DART noise, or a real arm through LeRobot's drivers
    (``device=lerobot``: a LeRobot teleoperator, e.g. a leader arm, drives a LeRobot robot)."""

    output: str = ""  # dataset root: created, or appended to when it exists (crash-safe, resumable)
    task: str = "Lift"  # Lift | PickPlaceCan | quadrotor_hover | quadrotor_waypoint | quadrotor_figure8
    robot: str = "Panda"
    device: str = "keyboard"  # keyboard | gamepad | spacemouse | zmq | expert | lerobot
    # device=lerobot: the follower's fields (robot=lerobot's: type, port, id, calibration_dir, max_velocity, ...)
    # and the teleoperator's (LeRobot's: type=so101_leader|keyboard|gamepad|<plugin>, port, id, ...)
    arm: dict[str, Any] = field(default_factory=dict)
    teleop: dict[str, Any] = field(default_factory=dict)
    single_task: str = ""  # device=lerobot: the task description stored with every frame ("pick the cube")
    fps: float = 30.0  # device=lerobot: the recording rate (LeRobot's default)
    episode_s: float = 20.0  # device=lerobot: length of each episode
    reset_s: float = 5.0  # device=lerobot: pause between episodes to reset the scene
    ee: EndEffectorTeleopConfig = field(default_factory=EndEffectorTeleopConfig)  # keyboard/gamepad teleoperators
    address: str | None = None  # zmq: the leader's PUB address, e.g. tcp://192.168.1.5:5560
    num_episodes: int = 10  # episodes to save in this session
    max_steps: int | None = None  # default: the task's horizon
    cameras: list[str] = field(default_factory=list)  # e.g. [agentview]; needs an offscreen renderer
    seed: int = 0
    keep_failures: bool = False  # save episodes that end without success
    realtime: bool | None = None  # pace at the control rate (default: on for human devices, off for expert)
    expert_noise: float = 0.002
    overwrite: bool = False  # delete an existing dataset at output first
    # quadrotor tasks (device=expert only): executed action = expert + N(0, dart_noise^2), label = the clean expert
    dart_noise: float = 0.05
    sim_hz: float = 100.0  # control and dataset rate; 500 for the on-board loop
    # quadrotor DAgger: this trained policy (To = Ta = 1) flies, the expert labels every state it visits; crashed
    # episodes are kept (the states before a crash are the ones to learn from)
    dagger_policy: str | None = None


@dataclass
class DatasetToolConfig:
    """``robopolicy dataset action=info|verify|merge|split|delete-episodes``: dataset tools that need no LeRobot.

    ``action=verify`` checks every file against meta/checksums.json and loads the dataset with all checks
    (``write=true`` records checksums for a dataset that has none, e.g. one LeRobot wrote)."""

    action: str = "info"
    root: str = ""  # the dataset to read (info, verify, split, delete-episodes)
    roots: list[str] = field(default_factory=list)  # merge: datasets in order
    output: str = ""  # merge/delete-episodes: the new dataset; split: the folder that gets one dataset per split
    episodes: list[int] = field(default_factory=list)  # delete-episodes: which to drop
    splits: Any = None  # split: {train: 0.8, val: 0.2} or {val: [0, 5]}
    use_videos: bool | None = None  # null keeps the first input's camera storage; false stores PNG images
    video_codec: str = "libx264"
    video_crf: int = 18
    overwrite: bool = False
    write: bool = False  # verify: record checksums for a dataset that has none
    decode_videos: bool = True  # verify: decode every episode's frames too


@dataclass
class VizConfig:
    """``robopolicy viz``: a dataset on Rerun, saved as .rrd or served to the web viewer."""

    root: str = ""  # the dataset to show
    episodes: list[int] = field(default_factory=lambda: [0])  # [] = all
    rrd: str = ""  # instead of root: a saved recording (e.g. from ``eval viz=true``) to serve
    output: str = ""  # the .rrd to write (default outputs/viz/<dataset name>.rrd)
    serve: bool = False  # serve the web viewer at http://localhost:<web_port> until Ctrl-C
    web_port: int = 9090
    grpc_port: int = 9876


SCHEMAS = {"train": TrainConfig, "export": ExportConfig, "eval": EvalConfig, "convert": ConvertConfig, "demo": DemoConfig,
           "serve": ServeConfig, "run": RunConfig, "keys": KeysConfig, "record": RecordConfig,
           "dataset": DatasetToolConfig, "viz": VizConfig}


def register_schemas() -> None:
    from hydra.core.config_store import ConfigStore

    cs = ConfigStore.instance()
    for name, schema in SCHEMAS.items():
        cs.store(name=f"{name}_schema", node=schema)


def hydra_available() -> bool:
    try:
        import hydra  # noqa: F401
    except ImportError:
        return False
    return True


def load_config(command: str, overrides: list[str] | None = None, use_hydra: bool | None = None) -> DictConfig:
    """Compose ``<command>.yaml`` with overrides and type-check it against the schema.

    Hydra composes when it is installed (the training stack); a runtime-only install composes with OmegaConf
    (:func:`compose_without_hydra`). ``use_hydra`` forces one or the other (tests compare them).
    """
    if command not in SCHEMAS:
        raise ValueError(f"unknown command {command!r} (known: {', '.join(SCHEMAS)})")
    overrides = list(overrides or [])
    if use_hydra if use_hydra is not None else hydra_available():
        from hydra import compose, initialize_config_dir

        register_schemas()
        with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
            cfg = compose(config_name=command, overrides=overrides)
    else:
        cfg = compose_without_hydra(command, overrides)
    OmegaConf.set_struct(cfg, False)
    return cfg


def _read_yaml(path: Path) -> tuple[list[Any], DictConfig]:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: config not found")
    node = OmegaConf.load(path)
    defaults = list(node.pop("defaults", []) or [])
    return defaults, node


def _group_options(group: str) -> list[str]:
    return sorted(p.stem for p in (config_dir() / group).glob("*.yaml"))


def _load_group_option(group: str, option: str) -> DictConfig:
    path = config_dir() / group / f"{option}.yaml"
    if not path.is_file():
        raise ValueError(f"{group}={option}: no such option (available: {', '.join(_group_options(group))})")
    defaults, node = _read_yaml(path)
    if [d for d in defaults if d != "_self_"]:
        raise ValueError(f"{path}: nested defaults lists need Hydra (pip install 'robopolicy[train]')")
    return node


def compose_without_hydra(command: str, overrides: list[str]) -> DictConfig:
    """Hydra's composition for the subset the configs use, with OmegaConf only (a runtime install has no Hydra).

    Defaults entries: ``<command>_schema``, ``group: option`` and ``/group@target: option``, ``_self_``.
    Overrides: ``group=option`` selects a config group's file, ``a.b=value`` (value parsed as YAML, as Hydra
    does for plain values) sets a key, ``+a.b=value`` adds one. The result is merged onto the typed schema, so
    unknown keys and wrong types fail as they do under Hydra.
    """
    defaults, own = _read_yaml(config_dir() / f"{command}.yaml")
    selections: dict[str, tuple[str, str]] = {}  # group -> (target key, option)
    for entry in defaults:
        if isinstance(entry, str) or entry is None:
            continue  # the schema and _self_
        ((key, option),) = entry.items()
        group, _, target = str(key).lstrip("/").partition("@")
        selections[group] = (target or group, str(option))
    plain: list[str] = []
    for override in overrides:
        key, sep, value = override.lstrip("+").partition("=")
        if not sep:
            raise ValueError(f"override {override!r}: expected key=value")
        if key in selections or (config_dir() / key).is_dir():
            selections[key] = (selections.get(key, (key, ""))[0], value)
        else:
            plain.append(f"{key}={_hydra_flow_to_yaml(value)}")
    cfg = OmegaConf.structured(SCHEMAS[command])
    for group, (target, option) in selections.items():
        cfg = OmegaConf.merge(cfg, _at(target, _load_group_option(group, option)))
    cfg = OmegaConf.merge(cfg, own)
    try:
        return OmegaConf.merge(cfg, OmegaConf.from_dotlist(plain))
    except Exception as e:  # OmegaConf's validation errors name the key; say which command
        raise ValueError(f"{command}: {e}") from e


_FLOW_KEY = re.compile(r"([{,]\s*)([^\s:{}\[\],]+):(?!\s)")


def _hydra_flow_to_yaml(value: str) -> str:
    """Hydra writes a dict override as ``{a:1,b:{c:x}}``; YAML needs a space after each key's colon (without it,
    ``a:1`` is one string). Only keys that open a dict or follow a comma are touched, so ``tcp://host:5555``
    values stay as they are."""
    return _FLOW_KEY.sub(r"\1\2: ", value) if value.lstrip().startswith(("{", "[")) else value


def _at(dotted: str, node: DictConfig) -> DictConfig:
    """``node`` placed at the dotted key ``dotted`` (``train.policy`` -> ``{train: {policy: node}}``)."""
    for part in reversed(dotted.split(".")):
        node = OmegaConf.create({part: node})
    return node


def policy_config_from(cfg: DictConfig | dict[str, Any], **extra: Any):
    """The typed config of the family ``cfg.type`` names, from a (possibly partial) mapping."""
    from robopolicy.policies.registry import get_policy_class

    raw = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)
    raw.update(extra)
    if "type" not in raw:
        raise ValueError("policy config needs a 'type' (the policy family)")
    return get_policy_class(raw["type"]).config_class.from_dict(raw)
