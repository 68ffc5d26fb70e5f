#!/usr/bin/env bash
# The project's pure-Python dependencies that the lent GPU machines lack, as wheels for their Python (3.12 on the
# H200 of 2026-12-04, which reaches no package index; docs/benchmarks.md section 6). Run here, then carry the folder:
#     bash bench/gpu_wheels.sh [DIR]         # DIR defaults to .gpu_wheels (ignored by git, ~41 MiB)
#     run: carry [".gpu_wheels"], command "bash bench/gpu_checks.sh $OUT/gpu"  (gpu_checks.sh installs them)
# PYTHON_VERSION=3.13 picks another interpreter. antlr4-python3-runtime 4.9.3 (omegaconf's pin) is an sdist only,
# so it is built into a wheel here (pure Python).
set -eu
dir=${1:-.gpu_wheels}
py=${PYTHON_VERSION:-3.12}
mkdir -p "$dir"
python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$py" --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d "$dir" \
  av==18.1.0 diffusers==0.42.1 hydra-core==1.3.8 omegaconf==2.3.1 importlib_metadata==10.2.0 lazy-importer==0.1.0 \
  zipp==4.1.2
python3 -m pip wheel -q --no-deps -w "$dir" antlr4-python3-runtime==4.9.3
ls -1 "$dir"
du -sh "$dir"
