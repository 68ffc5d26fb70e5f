#!/usr/bin/env bash
# Everything a lent CUDA machine is for, in one short run (docs/benchmarks.md, "GPU"): what the machine has,
# the GPU-only tests, torch-on-GPU batch-1 latency next to ONNX Runtime on its CPU, and training throughput.
#     bench/gpu_checks.sh OUT_DIR                       # every stage
#     STAGES="profile" bench/gpu_checks.sh OUT_DIR      # some of: tests latency train ddp profile
# Each stage has its own time limit and writes to OUT_DIR as it goes, so a stage that overruns costs only itself.
# Their limits add up to more than one device call may run (600 s): with little device time, pick the stages.
# The machine summary (what the GPU, torch, ONNX Runtime and TensorRT are) always runs first, in seconds.
set -u
out=${1:-gpu_checks}
mkdir -p "$out"
stages=" ${STAGES:-tests latency train ddp profile} "
for stage in $stages; do
  case $stage in tests|latency|train|ddp|profile) ;; *) echo "gpu_checks: unknown stage $stage" >&2; exit 2 ;; esac
done
want() { [[ $stages == *" $1 "* ]]; }
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
# Wheels carried from the workstation (bench/gpu_wheels.sh), for the packages the machine lacks: on PYTHONPATH,
# so they would take precedence over a copy the machine has of the same package
wheels=${WHEELS:-.gpu_wheels}
if compgen -G "$wheels/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --target /tmp/robopolicy_deps "$wheels"/*.whl 2>&1 | tail -3
  export PYTHONPATH="$PYTHONPATH:/tmp/robopolicy_deps"
fi
{
  date -u
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
  python3 -c "import sys, torch, onnxruntime as o; print(sys.version.split()[0], 'torch', torch.__version__,
'cuda', torch.cuda.is_available(), 'onnxruntime', o.__version__, o.get_available_providers())"
  python3 -c "import tensorrt; print('tensorrt', tensorrt.__version__)" 2>&1 | tail -1
  python3 -c "from cuda.bindings import runtime as r; print('cuda-python runtime, devices:', r.cudaGetDeviceCount())" 2>&1 | tail -1
  echo "libnvinfer: $( (ldconfig -p; find /usr /opt -name 'libnvinfer*' 2>/dev/null) | grep -c nvinfer) files"
  python3 -c "import robopolicy.train.trainer, robopolicy.export; print('robopolicy training and export import')"
} 2>&1 | tee "$out/machine.txt"
if want tests; then
  timeout 300 python3 -m pytest -q -p no:cacheprovider -rfEs tests/test_tensorrt.py tests/test_policy.py \
    -k "real or cuda or generator or device" 2>&1 | tee "$out/gpu_tests.txt"
fi
if want latency; then
  timeout 200 python3 bench/export_latency.py --families diffusion,flow_unet,sfp_d_e1,act,mlp --seconds 1.5 \
    --torch-cuda --out /tmp/export_latency 2>&1 | tee "$out/latency.md"
fi
if want train; then
  timeout 200 python3 bench/train_throughput.py --runs cpu:fp32,cuda:fp32,cuda:bf16 --steps 200 --cpu-steps 30 \
    --out /tmp/train_throughput 2>&1 | tail -8 | tee "$out/train_throughput.md"
fi
if want ddp; then
  timeout 200 python3 bench/ddp_throughput.py --steps 200 --out /tmp/ddp_throughput 2>&1 | tail -6 \
    | tee "$out/ddp_throughput.md"
fi
# Issue 33: where a GPU training step goes (torch.profiler), and eager vs compiled vs CUDA graphs (reduce-overhead)
if want profile; then
  timeout 400 python3 bench/gpu_train_profile.py --steps 100 --out "$out/gpu_train_profile" 2>&1 | tail -12 \
    | tee "$out/gpu_train_profile.md"
fi
