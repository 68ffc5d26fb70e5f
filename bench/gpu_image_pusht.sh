#!/usr/bin/env bash
# Issue 31 item 2 on a lent GPU: the image PushT recipe of bench/pusht_image_curve.py trained on the GPU for the
# minutes the loan allows, its checkpoints flown on the validation seeds by the machine's CPU cores, and the same
# learning-curve fit as the CPU run (docs/benchmarks.md section 13). One device call:
#     bench/gpu_image_pusht.sh OUT_DIR            # MINUTES=7 EPISODES=100 WORKERS=14 DEVICE=cuda by default
# The run folder (checkpoints, 41 MB each) stays in /tmp; OUT_DIR gets the curve's JSON, the fit and the figure.
# Checked on the CPU with DEVICE=cpu MINUTES=0.5 SAVE_EVERY=20 EPISODES=2 WORKERS=2.
set -eu
out=${1:-gpu_image_pusht}
minutes=${MINUTES:-7}
episodes=${EPISODES:-100}
workers=${WORKERS:-14}
device=${DEVICE:-cuda}
save_every=${SAVE_EVERY:-2000}
run=${RUN_DIR:-/tmp/gpu_image_pusht/run}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
python3 bench/pusht_image_curve.py train --minutes "$minutes" --device "$device" --threads 4 \
  --save-every "$save_every" --run "$run" 2>&1 | tail -5 | tee "$out/train.txt"
cp "$run/train_summary.json" "$run/train_log.csv" "$out/"
python3 bench/pusht_image_curve.py curve --run "$run" --results "$out/curve" --episodes "$episodes" \
  --threads "$workers" 2>&1 | grep -v "it/s" | tee "$out/curve.txt"
python3 bench/pusht_image_curve.py fit --run "$run" --results "$out/curve" --figure "$out/curve.png" \
  --bootstrap 200 2>&1 | tail -20 | tee "$out/fit.txt" || echo "fit needs 3 checkpoints; the curve points stand alone"
