# Two commands do all the set-up on a fresh machine (Python 3.11 with pip):
#   make demo   # environment + install + the main job on the bundled PushT demos
#   make test   # environment + install + the full test suite
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
QUADROTOR_STAMP := $(VENV)/.installed-quadrotor

.PHONY: setup demo test bench-pusht clean

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# The CPU build of torch first, so nothing later reaches for CUDA wheels.
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[all]'
	# LeRobot's robot drivers and HF datasets without their pins (torch<2.11, CUDA torchvision/torchcodec), then what
	# their robot, motor and teleoperator modules really import (the lerobot extra).
	$(PY) -m pip install --quiet --no-deps lerobot==0.4.4 datasets==4.8.5
	$(PY) -m pip install --quiet -e '.[all,lerobot]'
	# robosuite without its mink pin (numpy<2 breaks pyarrow); the Panda OSC controllers don't use mink.
	$(PY) -m pip install --quiet --no-deps 'robosuite==1.5.*'
	@if $(PY) -m pip list 2>/dev/null | grep -qi '^nvidia-'; then echo "CUDA wheels were installed; refusing" >&2; exit 1; fi
	touch $(STAMP)

# The quadrotor tests need L2F, which PyPI ships only as an sdist: its first build compiles for about 15 minutes on
# one core (pip caches the wheel afterwards). The demo does not need it, so only `make test` pays for it.
$(QUADROTOR_STAMP): $(STAMP)
	$(PY) -m pip install --quiet -e '.[all,quadrotor]'
	@if $(PY) -m pip list 2>/dev/null | grep -qi '^nvidia-'; then echo "CUDA wheels were installed; refusing" >&2; exit 1; fi
	touch $(QUADROTOR_STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/robopolicy demo

# Warp (Newton's tests) compiles its kernels once, ~40 s, into WARP_CACHE_PATH; kept with the venv unless set.
test: $(QUADROTOR_STAMP)
	WARP_CACHE_PATH="$${WARP_CACHE_PATH:-$(abspath $(VENV))/warp-cache}" $(PY) -m pytest -q

bench-pusht: $(STAMP)
	$(PY) bench/pusht_diffusion.py all

clean:
	rm -rf $(VENV) outputs
