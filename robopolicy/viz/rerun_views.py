"""Datasets and rollouts on Rerun: .rrd recordings to open with ``rerun file.rrd``, or a served web viewer.

A dataset view shows, on the ``frame`` timeline (the dataset's global frame index) and ``time``:
``cameras/<key>`` images, ``observation/<key>`` and ``action/<key>`` curves (one series per named
dimension), ``episode/task`` text and ``episode/boundaries`` log lines where each episode starts.

A rollout view shows, on the ``step`` timeline: ``env/frame`` (the env's render), the executed
trajectory and the latest predicted chunk in action space (``action_space/...``, and drawn over the
frame when the action is a position in it), ``metrics/coverage`` against the success threshold,
``metrics/latency_ms`` of every ``select_action`` call with the inference calls marked, and
``episode/summary``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import rerun as rr
import rerun.blueprint as rrb

from robopolicy.data import format as fmt
from robopolicy.data.reader import LeRobotDataset
from robopolicy.viz.trace import RolloutTrace

APP_ID = "robopolicy"
EXECUTED_COLOR = (40, 120, 255)
PREDICTED_COLOR = (255, 140, 0)


def entity(*parts: str) -> str:
    """An entity path from raw names (feature keys contain dots)."""
    return "/".join(rr.escape_entity_path_part(p) for p in parts)


def _dimension_names(feature: dict[str, Any], size: int) -> list[str]:
    names = feature.get("names")
    if isinstance(names, dict):  # LeRobot sometimes nests: {"motors": [...]}
        names = next(iter(names.values()), None)
    if isinstance(names, list) and len(names) == size and all(isinstance(n, str) for n in names):
        return names
    return [str(i) for i in range(size)]


def _image(frame: np.ndarray) -> Any:
    """Camera frames as JPEG above 128x128 (recordings stay small), raw below (exact pixels)."""
    image = rr.Image(frame)
    return image.compress(jpeg_quality=90) if frame.shape[0] * frame.shape[1] > 128 * 128 else image


# ---- datasets ---------------------------------------------------------------------------------------


def _numeric_keys(ds: LeRobotDataset) -> list[str]:
    return [k for k, ft in ds.features.items() if ft["dtype"] in fmt.NUMERIC_DTYPES and k not in fmt.DEFAULT_FEATURES]


def dataset_blueprint(ds: LeRobotDataset) -> rrb.Blueprint:
    cameras = [rrb.Spatial2DView(origin=entity("cameras", k), name=k) for k in ds.camera_keys]
    curves = [rrb.TimeSeriesView(origin=_curve_entity(k), name=k) for k in _numeric_keys(ds)
              if k.startswith(("observation", "action"))]
    text = [rrb.TextDocumentView(origin="episode/task", name="task"),
            rrb.TextLogView(origin="episode/boundaries", name="episodes")]
    columns = ([rrb.Vertical(*cameras)] if cameras else []) + [rrb.Vertical(*curves), rrb.Vertical(*text, row_shares=[1, 2])]
    return rrb.Blueprint(rrb.Horizontal(*columns), collapse_panels=True)


def log_dataset(rec: rr.RecordingStream, ds: LeRobotDataset, episodes: Sequence[int] | None = None) -> None:
    """Log the given episodes (all by default) into ``rec``."""
    episodes = list(range(ds.num_episodes)) if episodes is None else list(episodes)
    bad = [e for e in episodes if not 0 <= e < ds.num_episodes]
    if bad:
        raise ValueError(f"{ds.root}: no episodes {bad} (it has episodes 0..{ds.num_episodes - 1})")
    numeric = _numeric_keys(ds)
    for key in numeric:
        size = int(np.prod(ds.features[key]["shape"]))
        rec.log(_curve_entity(key), rr.SeriesLines(names=_dimension_names(ds.features[key], size)), static=True)
    for e in episodes:
        start, stop = (int(x) for x in ds.episode_bounds[e])
        task = ds.tasks.get(int(ds.column("task_index")[start, 0]), "")
        cameras = {key: ds.camera_frames(key, e) for key in ds.camera_keys}
        for i in range(start, stop):
            rec.set_time("frame", sequence=i)
            rec.set_time("time", duration=i / ds.fps)
            if i == start:
                rec.log("episode/task", rr.TextDocument(f"**episode {e}** ({stop - start} frames)\n\n{task}",
                                                        media_type=rr.MediaType.MARKDOWN))
                rec.log("episode/boundaries", rr.TextLog(f"episode {e} starts at frame {start}: {task}"))
                rec.log("episode/index", rr.Scalars(float(e)))
            for key, frames in cameras.items():
                rec.log(entity("cameras", key), _image(frames[i - start]))
            for key in numeric:
                rec.log(_curve_entity(key), rr.Scalars(ds.column(key)[i].reshape(-1).astype(np.float64)))


def _curve_entity(key: str) -> str:
    head, _, rest = key.partition(".")
    if head in ("observation", "action") and rest:
        return entity(head, rest)
    return entity("action") if key == "action" else entity("data", key)


def save_dataset(root: str | Path, path: str | Path, episodes: Sequence[int] | None = None) -> Path:
    """A .rrd file of the dataset's episodes."""
    ds = LeRobotDataset(root)
    rec = rr.RecordingStream(APP_ID, recording_id=f"dataset-{Path(root).name}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rec.save(path, default_blueprint=dataset_blueprint(ds))
    log_dataset(rec, ds, episodes)
    rec.flush()
    rec.disconnect()
    return path


# ---- rollouts ---------------------------------------------------------------------------------------


def rollout_blueprint() -> rrb.Blueprint:
    return rrb.Blueprint(
        rrb.Horizontal(
            rrb.Vertical(rrb.Spatial2DView(origin="env", name="env"),
                         rrb.Spatial2DView(origin="action_space", name="action space (dims 0, 1)")),
            rrb.Vertical(rrb.TimeSeriesView(origin="metrics/coverage", name="coverage"),
                         rrb.TimeSeriesView(origin="metrics/latency_ms", name="latency (ms)"),
                         rrb.TimeSeriesView(origin="actions", name="executed actions")),
            rrb.TextDocumentView(origin="episode/summary", name="summary"),
            column_shares=[3, 3, 1],
        ),
        collapse_panels=True,
    )


def log_rollout(rec: rr.RecordingStream, trace: RolloutTrace, pixels_per_action_unit: float | None = None) -> None:
    """Log one evaluation episode. ``pixels_per_action_unit``: when actions are positions in the rendered frame
    (PushT: frame side / 512), the executed trajectory and the predicted chunks are drawn over it too."""
    actions = np.asarray(trace.actions, dtype=np.float64).reshape(trace.steps, -1)
    dims = actions.shape[1] if trace.steps else 0
    rec.log("actions", rr.SeriesLines(names=[f"a{i}" for i in range(dims)]), static=True)
    rec.log("metrics/coverage/value", rr.SeriesLines(names="coverage"), static=True)
    rec.log("metrics/coverage/threshold", rr.SeriesLines(names="success threshold", colors=[(160, 160, 160)]), static=True)
    rec.log("metrics/latency_ms/select_action", rr.SeriesLines(names="select_action"), static=True)
    rec.log("metrics/latency_ms/inference", rr.SeriesPoints(names="inference call", colors=[PREDICTED_COLOR],
                                                            marker_sizes=[4.0]), static=True)
    chunks_at = {step: (chunk, offset) for step, chunk, offset in trace.chunks}
    inference = set(trace.inference_steps)
    overlay = pixels_per_action_unit if pixels_per_action_unit and dims >= 2 else None
    for k in range(len(trace.frames)):
        rec.set_time("step", sequence=k)
        rec.set_time("time", duration=k / trace.fps)
        rec.log("env/frame", _image(trace.frames[k]))
        if k >= trace.steps:
            continue
        if k in chunks_at:  # the plan made at this step, from the row aligned with it onwards
            chunk, offset = chunks_at[k]
            plan = chunk[offset:, :2].astype(np.float64)
            rec.log("action_space/predicted_chunk", rr.LineStrips2D([plan], colors=[PREDICTED_COLOR], radii=[0.5]))
            rec.log("action_space/predicted_points", rr.Points2D(plan, colors=[PREDICTED_COLOR], radii=[1.5]))
            if overlay:
                rec.log("env/frame/predicted_chunk", rr.LineStrips2D([plan * overlay], colors=[PREDICTED_COLOR],
                                                                     radii=[1.5]))
        if dims >= 2:
            done = actions[: k + 1, :2]
            rec.log("action_space/executed", rr.LineStrips2D([done], colors=[EXECUTED_COLOR], radii=[0.5]))
            if overlay:
                rec.log("env/frame/executed", rr.LineStrips2D([done * overlay], colors=[EXECUTED_COLOR], radii=[1.0]))
        rec.log("actions", rr.Scalars(actions[k]))
        rec.log("metrics/coverage/value", rr.Scalars(trace.coverages[k]))
        rec.log("metrics/coverage/threshold", rr.Scalars(trace.success_threshold))
        rec.log("metrics/latency_ms/select_action", rr.Scalars(trace.latencies_ms[k]))
        if k in inference:
            rec.log("metrics/latency_ms/inference", rr.Scalars(trace.latencies_ms[k]))
    latency = np.asarray(trace.latencies_ms) if trace.latencies_ms else np.zeros(1)
    infer = np.asarray([trace.latencies_ms[s] for s in trace.inference_steps]) if trace.inference_steps else latency
    lines = [f"**seed {trace.seed}**: {'success' if trace.success else 'failure'}",
             f"max coverage {max(trace.coverages, default=0.0):.3f} (threshold {trace.success_threshold})",
             f"{trace.steps} steps, {len(trace.chunks)} chunks predicted",
             f"select_action p50 {np.percentile(latency, 50):.2f} ms, inference calls p50 "
             f"{np.percentile(infer, 50):.2f} ms, max {infer.max():.2f} ms"]
    lines += [f"{k}: {v}" for k, v in trace.info.items()]
    rec.log("episode/summary", rr.TextDocument("\n\n".join(lines), media_type=rr.MediaType.MARKDOWN), static=True)


def save_rollout(trace: RolloutTrace, path: str | Path, pixels_per_action_unit: float | None = None) -> Path:
    rec = rr.RecordingStream(APP_ID, recording_id=f"rollout-{trace.seed}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rec.save(path, default_blueprint=rollout_blueprint())
    log_rollout(rec, trace, pixels_per_action_unit)
    rec.flush()
    rec.disconnect()
    return path


class RolloutRecordingWriter:
    """The evaluator's ``rollout_recorder``: one ``<directory>/episode_<seed>.rrd`` per recorded episode.

    ``action_extent``: when actions are positions spanning the rendered frame (PushT: 512), the side of that
    square in action units; the trajectory and chunks are then drawn over the frame. A plain class, so it
    pickles to evaluation workers.
    """

    def __init__(self, directory: str | Path, action_extent: float | None = None, info: dict | None = None):
        self.directory = Path(directory)
        self.action_extent = action_extent
        self.info = dict(info or {})

    def __call__(self, trace: RolloutTrace) -> None:
        trace.info.update(self.info)
        scale = trace.frames[0].shape[1] / self.action_extent if self.action_extent and trace.frames else None
        save_rollout(trace, self.directory / f"episode_{trace.seed}.rrd", scale)


# ---- reading recordings back ------------------------------------------------------------------------


def recording_rows(path: str | Path, timeline: str) -> dict[str, int]:
    """Rows per entity path on ``timeline`` in a saved .rrd, read with Rerun's own reader (``rerun.chunk``)."""
    from rerun.chunk import RrdReader

    rows: dict[str, int] = {}
    for chunk in RrdReader(Path(path)).stream().to_chunks():
        if not chunk.is_static and timeline in chunk.timeline_names:
            rows[chunk.entity_path] = rows.get(chunk.entity_path, 0) + chunk.num_rows
    return rows


def serve(log: Any, blueprint: rrb.Blueprint, web_port: int = 9090, grpc_port: int = 9876,
          open_browser: bool = False) -> rr.RecordingStream:
    """Serve a recording to the web viewer at http://localhost:<web_port>; ``log(rec)`` logs the data.

    Returns at once with the live stream: the caller keeps the process (and the stream) alive.
    """
    rec = rr.RecordingStream(APP_ID)
    uri = rec.serve_grpc(grpc_port=grpc_port, default_blueprint=blueprint)
    rr.serve_web_viewer(web_port=web_port, open_browser=open_browser, connect_to=uri)
    log(rec)
    return rec


def serve_dataset(root: str | Path, episodes: Sequence[int] | None = None, **kw: Any) -> rr.RecordingStream:
    ds = LeRobotDataset(root)
    return serve(lambda rec: log_dataset(rec, ds, episodes), dataset_blueprint(ds), **kw)


def serve_recording(path: str | Path, **kw: Any) -> rr.RecordingStream:
    """Serve a saved .rrd (a dataset view or an eval rollout) with its matching layout."""
    from rerun.chunk import RrdReader

    chunks = RrdReader(Path(path)).stream().to_chunks()
    is_rollout = any(c.entity_path.startswith("/env") for c in chunks)
    if is_rollout:
        blueprint = rollout_blueprint()
    else:
        cameras = sorted({c.entity_path for c in chunks if c.entity_path.startswith("/cameras/")})
        blueprint = rrb.Blueprint(rrb.Horizontal(
            rrb.Vertical(*[rrb.Spatial2DView(origin=c) for c in cameras]) if cameras else rrb.Spatial2DView(origin="/"),
            rrb.Vertical(rrb.TimeSeriesView(origin="observation"), rrb.TimeSeriesView(origin="action")),
            rrb.Vertical(rrb.TextDocumentView(origin="episode/task"), rrb.TextLogView(origin="episode/boundaries"))),
            collapse_panels=True)
    return serve(lambda rec: rr.send_chunks(chunks, recording=rec), blueprint, **kw)
