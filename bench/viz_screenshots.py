"""Screenshots of the Rerun web viewer, made headlessly: docs/img/viz_dataset.png and docs/img/viz_rollout.png.

    python bench/viz_screenshots.py --checkpoint <policy dir>   # needs `chromium` (apt) and the viz + sim extras

1. Saves a .rrd of a bundled PushT episode (``robopolicy.viz.rerun_views.save_dataset``) and one of an
   evaluation rollout of the given policy (the evaluator's ``rollout_recorder``, as ``eval viz=true``).
2. Serves Rerun's web viewer (``rr.serve_web_viewer``) and the .rrd files over HTTP, and points
   headless Chromium at ``viewer/?url=<rrd>``. Chromium renders WebGL with SwiftShader (software), so
   no GPU is needed. Its ``--screenshot`` fires at the page's load event, before the viewer's wasm has
   drawn anything, so the viewer sits in an iframe of a wrapper page whose load is held back ``--wait``
   seconds by one slow image.
"""

from __future__ import annotations

import argparse
import http.server
import subprocess
import tempfile
import threading
import time
import urllib.parse
from functools import partial
from pathlib import Path

import rerun as rr

from robopolicy.data.reader import LeRobotDataset
from robopolicy.policies import load_policy
from robopolicy.sim.evaluate import evaluate
from robopolicy.sim.pusht import make_pusht_env
from robopolicy.viz import rerun_views as views

REPO = Path(__file__).resolve().parents[1]


class Files(http.server.SimpleHTTPRequestHandler):
    """Serves the .rrd files (with CORS, the viewer is on another port) and the wrapper page."""

    wait_s = 60.0
    viewer = ""

    def end_headers(self) -> None:
        self.send_header("Access-Control-Allow-Origin", "*")
        super().end_headers()

    def do_GET(self) -> None:
        if self.path.startswith("/slow"):
            time.sleep(self.wait_s)
            self.send_response(200)
            self.send_header("Content-Type", "image/gif")
            self.end_headers()
            self.wfile.write(b"GIF89a\x01\x00\x01\x00\x00\x00\x00;")
            return
        if self.path.startswith("/page"):
            rrd = urllib.parse.parse_qs(urllib.parse.urlparse(self.path).query)["rrd"][0]
            src = f"{self.viewer}/?url={urllib.parse.quote(rrd, safe='')}"
            body = (f'<html><body style="margin:0;overflow:hidden"><iframe src="{src}" style="border:0;width:100vw;'
                    f'height:100vh"></iframe><img src="/slow" style="display:none"></body></html>').encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.end_headers()
            self.wfile.write(body)
            return
        super().do_GET()

    def log_message(self, *args: object) -> None:
        pass


def screenshot(page: str, out: Path, size: str, timeout_s: float) -> None:
    cmd = ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--use-gl=angle", "--use-angle=swiftshader",
           "--enable-unsafe-swiftshader", "--hide-scrollbars", f"--window-size={size}", f"--screenshot={out}", page]
    subprocess.run(cmd, check=True, timeout=timeout_s, capture_output=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True, help="a trained PushT state policy directory")
    parser.add_argument("--dataset", default=str(REPO / "datasets/pusht/lerobot"))
    parser.add_argument("--episode", type=int, default=0)
    parser.add_argument("--seed", type=int, default=100000)
    parser.add_argument("--out", default=str(REPO / "docs/img"))
    parser.add_argument("--wait", type=float, default=60.0, help="seconds the viewer gets to load and draw")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="viz-shots-") as tmp:
        work = Path(tmp)
        views.save_dataset(args.dataset, work / "dataset.rrd", [args.episode])
        writer = views.RolloutRecordingWriter(work, action_extent=512.0, info={"policy": Path(args.checkpoint).name})
        result = evaluate(partial(load_policy, args.checkpoint), env_factory=partial(make_pusht_env, obs_mode="state"),
                          n_episodes=1, start_seed=args.seed, n_workers=1, n_videos=1, output_dir=work / "eval",
                          progress=False, rollout_recorder=writer)
        print(f"rollout seed {args.seed}: max coverage {result.episodes[0].max_coverage:.3f}, "
              f"{result.episodes[0].steps} steps; dataset episode {args.episode} of "
              f"{LeRobotDataset(args.dataset).num_episodes}")
        rr.serve_web_viewer(web_port=9090, open_browser=False)
        Files.wait_s, Files.viewer = args.wait, "http://127.0.0.1:9090"
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 8765), partial(Files, directory=str(work)))
        threading.Thread(target=server.serve_forever, daemon=True).start()
        for rrd, name in (("dataset.rrd", "viz_dataset.png"), (f"episode_{args.seed}.rrd", "viz_rollout.png")):
            page = f"http://127.0.0.1:8765/page?rrd={urllib.parse.quote(f'http://127.0.0.1:8765/{rrd}')}"
            screenshot(page, out / name, "1600,900", timeout_s=args.wait + 120)
            print(f"wrote {out / name}")
        server.shutdown()


if __name__ == "__main__":
    main()
