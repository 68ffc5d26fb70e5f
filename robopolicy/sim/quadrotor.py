"""Crazyflie quadrotor simulation on L2F ("Learning to Fly in Seconds"), single and vectorized.

Conventions (details and rationale in docs/quadrotor.md):

* World frame: z up (ENU-like, gravity -9.81 z), origin = the hover point; the ground is the plane
  ``z = -ground_depth`` (default 1 m below the origin). Units: m, m/s, rad/s, s.
* Action (4,): normalized motor commands in [-1, 1], L2F's convention: ``u = (a + 1) / 2`` is the
  commanded relative throttle in [0, 1]; each rotor's throttle follows it with first-order lag
  (rising 0.055 s, falling 0.25 s time constants); thrust per rotor = c0 + c1 u + c2 u^2 [N].
  Rotor order and positions are L2F's Crazyflie model (see :func:`crazyflie_model`).
* Observation ``observation.state`` (22,): position error p - p_target (3, world), rotation matrix
  world-from-body (9, row-major), velocity error v - v_target (3, world), body angular velocity (3),
  the rotor-state estimate (4: the executed motor commands through the rotors' first-order lag model, in
  action units; what a controller can compute from its own outputs). Errors are "state minus target", so
  hovering on target observes zeros.
* Control rate: ``sim_hz`` (default 100 Hz, L2F's training rate); one env step = one L2F step with
  integration dt = 1 / sim_hz (RK4). ``sim_hz=500`` simulates the on-board 500 Hz loop.
* Tasks: ``hover`` (recover from L2F's random initial states -- up to 0.5 m off, 90 deg tilt, 1 m/s,
  1 rad/s -- and hold the origin), ``waypoint`` (gentle start near the origin, reach a random waypoint
  in a box), ``figure8`` (track a lemniscate: target p(t), v(t), a(t); the target acceleration is in
  ``info['target_acc']`` for experts, not in the observation).
* Metrics per episode (``info`` at the end, and :class:`EpisodeStats`): ``success`` = never crashed
  and ||p - p_target|| < success_radius (0.1 m) over the whole final ``hold_s`` (1 s) window;
  ``crash`` = out of bounds (|p_i| > bound, 3 m), below the ground, tilt > tilt_limit_deg (110 deg:
  upside down), or non-finite state; ``rmse`` = root-mean-square position error over the episode
  (over the second half for hover/waypoint, whose first half is the approach).
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable
from typing import Any

import numpy as np

try:  # gymnasium is a core dependency; keep the import error readable if it is missing
    import gymnasium as gym
    from gymnasium import spaces
except ImportError:  # pragma: no cover
    gym = None  # type: ignore[assignment]

TASKS = ("hover", "waypoint", "figure8")
OBS_DIM = 22
ACTION_DIM = 4
STATE_KEY = "observation.state"
ACTION_KEY = "action"
TARGET_KEY = "observation.target"
OBS_NAMES = (["ex", "ey", "ez"] + [f"R{i}{j}" for i in range(3) for j in range(3)] + ["evx", "evy", "evz"]
             + ["wx", "wy", "wz"] + [f"rotor_est{i}" for i in range(4)])
L2F_STATE_DIM = 18  # the part of L2F's observation we use: pos(3) R(9) vel(3) angvel(3)
_NO_ROWS = np.zeros(0, dtype=np.int64)


def _l2f():
    try:
        import l2f
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("the quadrotor simulator needs L2F: pip install l2f (an sdist; builds with gcc)") from e
    return l2f


def _kernels():
    try:
        from robopolicy.sim import quadrotor_kernels
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("the quadrotor simulator needs numba: pip install 'robopolicy[quadrotor]'") from e
    return quadrotor_kernels


@dataclasses.dataclass
class QuadrotorConfig:
    task: str = "hover"
    sim_hz: float = 100.0
    episode_s: float | None = None  # default per task: hover 5 s, waypoint 5 s, figure8 one period + 2 s
    success_radius: float = 0.1
    hold_s: float = 1.0
    bound: float = 3.0
    ground_depth: float = 1.0
    tilt_limit_deg: float = 110.0
    waypoint_box: tuple[float, float, float] = (1.0, 1.0, 0.5)
    figure8_size: tuple[float, float] = (1.0, 0.5)  # x amplitude, y amplitude (m)
    figure8_period_s: float = 8.0
    figure8_ramp_s: float = 2.0  # the figure-8 speeds up smoothly over this time
    action_noise: float = 0.0  # std of gaussian noise L2F adds to the normalized action
    # hover: L2F also samples each rotor's initial speed independently (from stopped to hover); with
    # False the rotors start at the hover throttle, as a drone whose motors were running would.
    random_rotor_speeds: bool = False

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {self.task!r}")
        if self.sim_hz <= 0:
            raise ValueError("sim_hz must be positive")

    @property
    def dt(self) -> float:
        return 1.0 / self.sim_hz

    @property
    def episode_steps(self) -> int:
        s = self.episode_s
        if s is None:
            s = self.figure8_period_s + self.figure8_ramp_s + 1.0 if self.task == "figure8" else 5.0
        return int(round(s * self.sim_hz))

    @property
    def hold_steps(self) -> int:
        return max(1, int(round(self.hold_s * self.sim_hz)))


def figure8_target(t: np.ndarray, cfg: QuadrotorConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Lemniscate p(t) = (A sin(phi), B sin(2 phi) / 1, 0) with phi ramping up smoothly; (p, v, a), (N, 3) each.

    phi(t) = w (t - T_r / 2) for t > T_r (after a C1 ramp phi = w t^2 / (2 T_r) for t <= T_r), so the
    drone starts at rest at the origin.
    """
    t = np.asarray(t, dtype=np.float64)
    w = 2 * math.pi / cfg.figure8_period_s
    tr = max(cfg.figure8_ramp_s, 1e-9)
    ramp = t < tr
    phi = np.where(ramp, w * t * t / (2 * tr), w * (t - tr / 2))
    dphi = np.where(ramp, w * t / tr, w)
    ddphi = np.where(ramp, w / tr, 0.0)
    a_x, a_y = cfg.figure8_size
    p = np.stack([a_x * np.sin(phi), a_y * np.sin(2 * phi), np.zeros_like(phi)], -1)
    v = np.stack([a_x * np.cos(phi) * dphi, 2 * a_y * np.cos(2 * phi) * dphi, np.zeros_like(phi)], -1)
    acc = np.stack([a_x * (-np.sin(phi) * dphi**2 + np.cos(phi) * ddphi),
                    2 * a_y * (-2 * np.sin(2 * phi) * dphi**2 + np.cos(2 * phi) * ddphi), np.zeros_like(phi)], -1)
    return p, v, acc


@dataclasses.dataclass
class CrazyflieModel:
    """The rigid-body and rotor parameters the simulator uses (read from L2F's parameters JSON)."""

    mass: float
    gravity: float
    J: np.ndarray  # (3, 3)
    rotor_positions: np.ndarray  # (4, 3)
    rotor_torque_directions: np.ndarray  # (4, 3)
    thrust_coefficients: np.ndarray  # (4, 3): thrust = c0 + c1 u + c2 u^2, u in [0, 1]
    torque_constants: np.ndarray  # (4,): yaw torque = k * thrust
    time_constant_rising: float
    time_constant_falling: float
    action_min: float
    action_max: float

    def thrust_to_action(self, thrust: np.ndarray) -> np.ndarray:
        """Per-rotor thrust [N] -> normalized action in [-1, 1] (inverting the quadratic curve)."""
        c0, c1, c2 = self.thrust_coefficients[0]
        f = np.maximum(np.asarray(thrust, dtype=np.float64) - c0, 0.0)
        u = (-c1 + np.sqrt(c1 * c1 + 4 * c2 * f)) / (2 * c2)
        u = np.clip(u, self.action_min, self.action_max)
        half = (self.action_max - self.action_min) / 2
        return (u - self.action_min - half) / half

    def action_to_thrust(self, action: np.ndarray) -> np.ndarray:
        half = (self.action_max - self.action_min) / 2
        u = np.clip(np.asarray(action, dtype=np.float64), -1, 1) * half + self.action_min + half
        c0, c1, c2 = self.thrust_coefficients[0]
        return c0 + c1 * u + c2 * u * u

    @property
    def hover_action(self) -> float:
        return float(self.thrust_to_action(np.array([self.mass * self.gravity / 4]))[0])


def crazyflie_model(parameters_json: str | dict | None = None) -> CrazyflieModel:
    """The Crazyflie model of L2F (parameters JSON of a fresh environment unless given)."""
    if parameters_json is None:
        parameters_json = _Backend(1).parameters_json()
    p = json.loads(parameters_json) if isinstance(parameters_json, str) else parameters_json
    d = p["dynamics"]
    return CrazyflieModel(
        mass=float(d["mass"]), gravity=float(-d["gravity"][2]), J=np.asarray(d["J"], dtype=np.float64),
        rotor_positions=np.asarray(d["rotor_positions"], dtype=np.float64),
        rotor_torque_directions=np.asarray(d["rotor_torque_directions"], dtype=np.float64),
        thrust_coefficients=np.asarray(d["rotor_thrust_coefficients"], dtype=np.float64),
        torque_constants=np.asarray(d["rotor_torque_constants"], dtype=np.float64),
        time_constant_rising=float(d["rotor_time_constants_rising"][0]),
        time_constant_falling=float(d["rotor_time_constants_falling"][0]),
        action_min=float(d["action_limit"]["min"]), action_max=float(d["action_limit"]["max"]))


class _Backend:
    """N L2F drones stepping together through L2F's vectorized API (vectorN, N a power of two).

    ``n`` drones run in the smallest compiled vector size >= n; the extra slots step with a hover
    command and are never reported.
    """

    def __init__(self, n: int, seed: int = 0, sim_hz: float = 100.0, init: dict[str, float] | None = None,
                 action_noise: float = 0.0):
        l2f = _l2f()
        sizes = sorted(l2f.vector_selector)
        size = next((s for s in sizes if s >= n), None)
        if size is None:
            raise ValueError(f"at most {sizes[-1]} drones per vectorized env, got {n}")
        self.l2f, self.n, self.size = l2f, n, size
        self.v = l2f.vector_selector[size]
        self.device = l2f.Device()
        self.rng = self.v.VectorRng()
        self.env = self.v.VectorEnvironment()
        self.params = self.v.VectorParameters()
        self.state = self.v.VectorState()
        self.next_state = self.v.VectorState()
        self.v.initialize_rng(self.device, self.rng, int(seed))
        self.v.initialize_environment(self.device, self.env)
        self.v.initial_parameters(self.device, self.env, self.params)
        self.obs_dim = int(self.env.OBSERVATION_DIM)
        self.obs = np.zeros((size, self.obs_dim), dtype=np.float32)
        self.actions = np.zeros((size, ACTION_DIM), dtype=np.float32)
        self._single_env = l2f.Environment()
        l2f.initialize_environment(self.device, self._single_env)
        self.configure(sim_hz=sim_hz, init=init, action_noise=action_noise)

    def parameters_json(self) -> str:
        p = self.params.parameters[0]
        return self.l2f.parameters_to_json(self.device, self._single_env, p)

    def configure(self, sim_hz: float, init: dict[str, float] | None, action_noise: float) -> None:
        """Integration step, initial-state distribution and action noise, through L2F's parameters JSON."""
        p = json.loads(self.parameters_json())
        p["integration"]["dt"] = 1.0 / sim_hz
        p["mdp"]["action_noise"]["normalized_rpm"] = float(action_noise)
        p["mdp"]["termination"]["enabled"] = False  # crashes are ours to define
        if init:
            p["mdp"]["init"].update(init)
        text = json.dumps(p)
        plist = self.params.parameters
        for q in plist:
            self.l2f.parameters_from_json(self.device, self._single_env, text, q)
        self.params.parameters = plist
        self.parameters = p

    def reset(self, mask: np.ndarray | None = None) -> None:
        """Sample initial states (for the slots where ``mask`` is True, or all) and observe."""
        if mask is None:
            self.v.sample_initial_state(self.device, self.env, self.params, self.state, self.rng)
        else:
            full = np.zeros(self.size, dtype=bool)
            full[: self.n] = mask
            self.v.sample_initial_state_if_truncated(self.device, self.env, self.params, self.state, full, self.rng)
        self.v.observe(self.device, self.env, self.params, self.state, self.obs, self.rng)

    def step(self, actions: np.ndarray) -> None:
        if self.n == self.size and actions.dtype == np.float32 and actions.flags.c_contiguous:
            batch = actions  # no copy when every slot is ours
        else:
            self.actions[: self.n] = actions
            batch = self.actions
        self.v.step(self.device, self.env, self.params, self.state, batch, self.next_state, self.rng)
        self.state, self.next_state = self.next_state, self.state
        self.v.observe(self.device, self.env, self.params, self.state, self.obs, self.rng)


@dataclasses.dataclass
class EpisodeStats:
    success: bool
    crash: bool
    rmse: float
    final_error: float
    steps: int
    crash_reason: str = ""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# Gentle initial states (waypoint and figure-8 tasks): near the origin, nearly level, nearly at rest.
# Rotors start at the hover throttle (L2F's default samples them below it, in [0, 0.5]).
GENTLE_INIT = {"guidance": 0.0, "max_position": 0.05, "max_angle": 0.1, "max_linear_velocity": 0.1,
               "max_angular_velocity": 0.1, "relative_rpm": True}


class QuadrotorVecEnv:
    """``n`` Crazyflies stepping together; numpy in, numpy out, auto-reset.

    ``reset(seed)`` -> obs (n, 22). ``step(actions (n, 4))`` -> obs, reward, terminated, truncated, infos,
    where ``infos`` holds arrays ``target_pos``, ``target_vel``, ``target_acc`` (n, 3), ``error`` (n,) and,
    for the slots whose episode just ended, ``final`` = list of (index, EpisodeStats). Ended slots are
    reset at once and the returned obs is already the new episode's first observation
    (``infos['final_obs']`` holds the last observation of the ended ones).
    """

    def __init__(self, n: int = 1, config: QuadrotorConfig | None = None, seed: int = 0, **overrides: Any):
        self.config = cfg = dataclasses.replace(config or QuadrotorConfig(), **overrides)
        self.n = n
        self.backend = _Backend(n, seed=seed, sim_hz=cfg.sim_hz, action_noise=cfg.action_noise)
        self.model = crazyflie_model(self.backend.parameters)
        hover = self.model.hover_action
        if cfg.task != "hover":
            self.backend.configure(cfg.sim_hz, {**GENTLE_INIT, "min_rpm": hover, "max_rpm": hover}, cfg.action_noise)
        elif not cfg.random_rotor_speeds:
            self.backend.configure(cfg.sim_hz, {"relative_rpm": True, "min_rpm": hover, "max_rpm": hover}, cfg.action_noise)
        # Privileged: each rotor's throttle at the start of the episode (for experts, never in the observation).
        self._initial_throttle = np.zeros((n, ACTION_DIM))
        self._throttle_stale = np.ones(n, dtype=bool)
        self.np_random = np.random.default_rng(seed)
        self.t = np.zeros(n, dtype=np.int64)
        self.target_pos = np.zeros((n, 3))
        self.target_vel = np.zeros((n, 3))
        self.target_acc = np.zeros((n, 3))
        self.prev_action = np.zeros((n, ACTION_DIM), dtype=np.float32)
        # Rotor-state estimate: the commands sent so far through the rotors' first-order model (what any
        # controller can compute from its own outputs; the Crazyflie does not measure rotor speed).
        self.rotor_estimate = np.zeros((n, ACTION_DIM), dtype=np.float32)
        self._k_rise = np.float32(1.0 - math.exp(-cfg.dt / self.model.time_constant_rising))
        self._k_fall = np.float32(1.0 - math.exp(-cfg.dt / self.model.time_constant_falling))
        self._sq_err = np.zeros(n)
        self._n_err = np.zeros(n, dtype=np.int64)
        self._in_radius_run = np.zeros(n, dtype=np.int64)
        self._cos_tilt_limit = math.cos(math.radians(cfg.tilt_limit_deg))
        self.observation = np.zeros((n, OBS_DIM), dtype=np.float32)
        self._episode_steps = cfg.episode_steps
        self._rmse_from_step = 0 if cfg.task == "figure8" else cfg.episode_steps // 2
        self._kernels = _kernels()
        self._all_rows = np.arange(n)
        self._done = np.zeros(n, dtype=np.int64)
        # Compile (or load from numba's cache) now, on zero drones, not on the first step of a real-time loop.
        self._kernels.clip_commands(self.prev_action[:0], self.prev_action[:0])
        self._advance(0)

    # ---- targets ------------------------------------------------------------------------------
    # Target arrays are copy-on-write: the env never writes into an array it has handed out in ``infos``,
    # so ``infos`` can carry them without a copy per step.
    def set_targets(self, pos: np.ndarray, vel: np.ndarray, acc: np.ndarray) -> None:
        """Replace the targets (n, 3) each; the next observation is relative to them (teleop setpoints)."""
        self.target_pos, self.target_vel, self.target_acc = (np.array(v, dtype=np.float64).reshape(self.n, 3)
                                                              for v in (pos, vel, acc))

    def _new_targets(self, idx: np.ndarray) -> None:
        cfg = self.config
        pos, vel, acc = self.target_pos.copy(), self.target_vel.copy(), self.target_acc.copy()
        if cfg.task == "waypoint":
            box = np.asarray(cfg.waypoint_box)
            pos[idx] = self.np_random.uniform(-box, box, size=(len(idx), 3))
        else:
            pos[idx] = 0.0
        vel[idx] = 0.0
        acc[idx] = 0.0
        self.set_targets(pos, vel, acc)

    def _update_moving_targets(self) -> None:
        if self.config.task == "figure8":
            self.set_targets(*figure8_target(self.t * self.config.dt, self.config))

    # ---- observation / metrics ----------------------------------------------------------------
    def _observe(self) -> np.ndarray:
        """A fresh (n, 22) array (callers may keep it): L2F's state minus the targets, and the rotor estimate."""
        o = np.empty((self.n, OBS_DIM), dtype=np.float32)
        self._kernels.observe_rows(self.backend.obs, self.rotor_estimate, self.target_pos, self.target_vel, o,
                                   self._all_rows)
        self.observation = o
        return o

    def positions(self) -> np.ndarray:
        """World positions (n, 3) (L2F's observed position: the origin is the hover point)."""
        return self.backend.obs[: self.n, 0:3].astype(np.float64)

    def _crash_reason(self, i: int) -> str:
        r = self.backend.obs[i]
        if not np.isfinite(r[:L2F_STATE_DIM]).all():
            return "nonfinite"
        if (np.abs(r[0:3]) > self.config.bound).any():
            return "out_of_bounds"
        if r[2] < -self.config.ground_depth:
            return "ground"
        return "tilt" if r[11] < self._cos_tilt_limit else ""

    # ---- API ----------------------------------------------------------------------------------
    def reset(self, seed: int | None = None) -> np.ndarray:
        if seed is not None:
            self.np_random = np.random.default_rng(seed)
            self.backend.v.initialize_rng(self.backend.device, self.backend.rng, int(seed))
        all_idx = np.arange(self.n)
        self.backend.reset()
        self._reset_slots(all_idx)
        return self._observe()

    def rotor_throttle(self) -> np.ndarray:
        """Privileged (n, 4) rotor throttles in [0, 1] (reads every L2F state: O(n) Python, use sparingly)."""
        states = self.backend.state.states
        return np.array([np.asarray(states[i].rpm, dtype=np.float64) for i in range(self.n)])

    @property
    def initial_throttle(self) -> np.ndarray:
        """Privileged (n, 4) rotor throttles at each episode's start, read lazily (L2F hands out all
        states at once, O(n) Python), so runs that never ask for it pay nothing."""
        if self._throttle_stale.any():
            stale = self._throttle_stale
            self._initial_throttle[stale] = self.rotor_throttle()[stale]
            stale[:] = False
        return self._initial_throttle

    def _reset_slots(self, idx: np.ndarray) -> None:
        self._throttle_stale[idx] = True  # valid until the first step: read before stepping
        self.t[idx] = 0
        self._sq_err[idx] = 0.0
        self._n_err[idx] = 0
        self._in_radius_run[idx] = 0
        self._new_targets(idx)
        self._update_moving_targets()
        self.prev_action[idx] = self.model.hover_action
        self.rotor_estimate[idx] = self.model.hover_action  # rotors start at hover (random_rotor_speeds=False)

    def _advance(self, rows: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, int]:
        """The compiled bookkeeping after L2F's step, for the first ``rows`` drones (all but at warm-up)."""
        cfg = self.config
        obs = np.empty((rows, OBS_DIM), dtype=np.float32)
        err = np.empty(rows, dtype=np.float32)
        crash = np.empty(rows, dtype=bool)
        truncated = np.empty(rows, dtype=bool)
        reward = np.empty(rows)
        n_done = self._kernels.advance(
            self.backend.obs, self.prev_action, self.rotor_estimate, self._k_rise, self._k_fall, self.target_pos,
            self.target_vel, self.t, self._rmse_from_step, self._sq_err, self._n_err, self._in_radius_run,
            cfg.success_radius, cfg.bound, cfg.ground_depth, self._cos_tilt_limit, self._episode_steps,
            obs, err, crash, truncated, reward, self._done)
        return obs, err, crash, truncated, reward, n_done

    def step(self, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        # Everything after L2F's step runs in one compiled pass (quadrotor_kernels): as numpy calls it
        # cost more than half of L2F's own time at 1,024 drones.
        n, cfg = self.n, self.config
        a = self.prev_action
        self._kernels.clip_commands(np.reshape(np.asarray(actions, dtype=np.float32), (n, ACTION_DIM)), a)
        self.backend.step(a)
        self.t += 1
        if cfg.task == "figure8":
            self._update_moving_targets()
        obs, err, crash, truncated, reward, n_done = self._advance(n)
        self.observation = obs
        terminated = crash
        infos: dict[str, Any] = {"target_pos": self.target_pos, "target_vel": self.target_vel,
                                 "target_acc": self.target_acc, "error": err, "final": []}
        done = self._done[:n_done].copy() if n_done else _NO_ROWS
        if n_done:
            infos["final_obs"] = obs[done]
            for i in done:
                rmse = math.sqrt(self._sq_err[i] / max(self._n_err[i], 1))
                success = bool(not crash[i] and self._in_radius_run[i] >= cfg.hold_steps)
                reason = self._crash_reason(int(i)) if crash[i] else ""
                infos["final"].append((int(i), EpisodeStats(success, bool(crash[i]), rmse, float(err[i]),
                                                            int(self.t[i]), reason)))
            mask = np.zeros(self.n, dtype=bool)
            mask[done] = True
            self.backend.reset(mask)
            self._reset_slots(done)
            obs = self._observe()
        return obs, reward, terminated, truncated, infos


if gym is not None:

    class QuadrotorEnv(gym.Env):
        """One Crazyflie as a gymnasium env: Dict observation {"observation.state": (22,)}, Box action (4,) in [-1, 1].

        ``info`` carries ``target_pos``/``target_vel``/``target_acc`` (3,), ``error`` and, at the end of an
        episode, ``episode`` = EpisodeStats as a dict (``success``, ``crash``, ``rmse``, ...).
        """

        metadata = {"render_modes": []}

        def __init__(self, config: QuadrotorConfig | None = None, **overrides: Any):
            self.vec = QuadrotorVecEnv(1, config, **overrides)
            self.config = self.vec.config
            self.observation_space = spaces.Dict(
                {STATE_KEY: spaces.Box(-np.inf, np.inf, shape=(OBS_DIM,), dtype=np.float32)})
            self.action_space = spaces.Box(-1.0, 1.0, shape=(ACTION_DIM,), dtype=np.float32)
            self.model = self.vec.model
            self.fps = self.config.sim_hz

        def _info(self, infos: dict[str, Any] | None = None) -> dict[str, Any]:
            v = self.vec
            info = {"target_pos": v.target_pos[0].copy(), "target_vel": v.target_vel[0].copy(),
                    "target_acc": v.target_acc[0].copy(), "position": v.positions()[0]}
            if infos is not None:
                info["error"] = float(infos["error"][0])
                if infos["final"]:
                    info["episode"] = infos["final"][0][1].to_dict()
                    info["success"] = info["episode"]["success"]
            return info

        def reset(self, *, seed: int | None = None, options: dict | None = None):
            super().reset(seed=seed)
            obs = self.vec.reset(seed=seed)
            return {STATE_KEY: obs[0]}, self._info()

        def step(self, action):
            obs, reward, terminated, truncated, infos = self.vec.step(np.asarray(action)[None])
            info = self._info(infos)
            if infos["final"]:
                # auto-reset happened inside the vec env: report the episode's last observation
                obs = infos["final_obs"]
                # the single env does not auto-reset: restore the ended episode's view for this return
            return {STATE_KEY: obs[0]}, float(reward[0]), bool(terminated[0]), bool(truncated[0]), info


def make_quadrotor_env(task: str = "hover", **kw: Any) -> QuadrotorEnv:
    return QuadrotorEnv(QuadrotorConfig(task=task, **kw))


def rollout(controller: Callable[[np.ndarray, dict[str, Any]], np.ndarray], n_episodes: int, task: str = "hover",
            n_envs: int = 16, seed: int = 0, config: QuadrotorConfig | None = None,
            record: Callable[[int, np.ndarray, np.ndarray, dict[str, Any]], None] | None = None) -> list[EpisodeStats]:
    """Run ``n_episodes`` episodes with a batched controller ``controller(obs (n, 22), infos) -> actions (n, 4)``.

    ``record(slot, obs, action, infos)`` (optional) sees every executed step before it is applied.
    Episodes are counted in the order they end; the seed fixes everything.
    """
    cfg = dataclasses.replace(config or QuadrotorConfig(), task=task)
    n_envs = max(1, min(n_envs, n_episodes))
    env = QuadrotorVecEnv(n_envs, cfg, seed=seed)
    obs = env.reset(seed=seed)
    infos = {"target_pos": env.target_pos.copy(), "target_vel": env.target_vel.copy(),
             "target_acc": env.target_acc.copy(), "final": [], "reset": np.ones(n_envs, dtype=bool),
             "initial_throttle": env.initial_throttle}
    results: list[EpisodeStats] = []
    started = n_envs
    active = np.ones(n_envs, dtype=bool)
    while len(results) < n_episodes:
        actions = np.asarray(controller(obs, infos), dtype=np.float32)
        if record is not None:
            for i in np.flatnonzero(active):
                record(int(i), obs[i], actions[i], {k: (v[i] if isinstance(v, np.ndarray) else v) for k, v in infos.items()})
        obs, _, _, _, infos = env.step(actions)
        reset = np.zeros(n_envs, dtype=bool)
        for i, stats in infos["final"]:
            if active[i]:
                results.append(stats)
                if record is not None:
                    record(i, None, None, {"episode_end": stats})
            if started >= n_episodes:
                active[i] = False
            else:
                started += 1
            reset[i] = True
        infos["reset"] = reset
        if reset.any():
            infos["initial_throttle"] = env.initial_throttle
    return results[:n_episodes]


def evaluate_policy(policy: Any, task: str = "hover", n_episodes: int = 1024, n_envs: int = 1024, seed: int = 0,
                    config: QuadrotorConfig | None = None, progress: bool = False) -> list[EpisodeStats]:
    """``n_episodes`` episodes of a trained policy (anything with ``reset()`` and a batched
    ``select_action({"observation.state": (n, 22)}) -> (n, 4)``), ``n_envs`` drones at a time.

    Every drone of a batch flies exactly one episode and all start together, so the policy's batched
    observation history and action queue stay aligned (a crashed drone is auto-reset by the env and
    keeps flying, but only its first episode counts). Episode ``k`` starts from L2F's draw for seed
    ``seed + k``: L2F seeds drone ``i`` of a batch seeded ``s`` as ``s + i``, so each batch is seeded with
    the index of its first episode. (Seeding batch ``b`` with ``seed + b`` repeated 1,023 of the previous
    batch's 1,024 starts: 2,048 episodes were 1,025 distinct ones.) The episodes do not depend on ``n_envs``.
    """
    cfg = dataclasses.replace(config or QuadrotorConfig(), task=task)
    results: list[EpisodeStats] = []
    bar = None
    if progress:
        from rich.progress import Progress

        bar = Progress(transient=True)
        bar.start()
        bar_task = bar.add_task(f"quadrotor {task}", total=n_episodes)
    try:
        while len(results) < n_episodes:
            n = min(n_envs, n_episodes - len(results))
            first_episode = seed + len(results)
            env = QuadrotorVecEnv(n, cfg, seed=first_episode)
            obs = env.reset(seed=first_episode)
            policy.reset()
            stats: list[EpisodeStats | None] = [None] * n
            while any(s is None for s in stats):
                # observation.target (position, velocity, acceleration of the target; recorded in the demos)
                # for policies trained to read the feed-forward the expert gets
                target = np.concatenate([env.target_pos, env.target_vel, env.target_acc], axis=1).astype(np.float32)
                observation = {STATE_KEY: obs, TARGET_KEY: target}
                action = np.asarray(policy.select_action(observation), dtype=np.float32).reshape(n, ACTION_DIM)
                obs, _, _, _, infos = env.step(action)
                for i, st in infos["final"]:
                    if stats[i] is None:
                        stats[i] = st
            results.extend(s for s in stats if s is not None)
            if bar is not None:
                bar.update(bar_task, completed=len(results))
    finally:
        if bar is not None:
            bar.stop()
    return results


def summarize(results: list[EpisodeStats]) -> dict[str, Any]:
    """Success and crash rates with Wilson 95% intervals, mean RMSE."""
    from robopolicy.sim.evaluate import wilson_interval

    n = len(results)
    s = sum(r.success for r in results)
    c = sum(r.crash for r in results)
    rmse = [r.rmse for r in results if not r.crash]
    return {"episodes": n, "success_rate": s / n, "success_ci95": wilson_interval(s, n),
            "crash_rate": c / n, "crash_ci95": wilson_interval(c, n),
            "rmse_mean": float(np.mean(rmse)) if rmse else float("nan")}


__all__ = ["ACTION_DIM", "CrazyflieModel", "EpisodeStats", "OBS_DIM", "OBS_NAMES", "QuadrotorConfig", "QuadrotorEnv",
           "QuadrotorVecEnv", "STATE_KEY", "TASKS", "crazyflie_model", "evaluate_policy", "figure8_target", "make_quadrotor_env",
           "rollout", "summarize"]
