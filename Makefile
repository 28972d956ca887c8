# Everything a fresh Debian machine needs: `make demo` and `make test` install first.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.clipatlas-installed
EXTRAS := demo,clip,diffusion,atlas,interp,evaluate,web,ray,ann,share,dev
WORKSPACE ?= demo-atlas
PORT ?= 8000
# The exact CPU wheel first: a bare `torch` requirement would pull a multi-GB CUDA build.
TORCH_SPEC := $(if $(filter Linux-x86_64,$(shell uname -s)-$(shell uname -m)),torch==2.13.0,torch)
APT_PACKAGES := tuxpaint-stamps-default fonts-noto-color-emoji unicode-data chromium

.PHONY: install demo demo-data bench-data lint test bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	@$(MAKE) --no-print-directory demo-data
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet "$(TORCH_SPEC)"
	$(PIP) install --quiet -e ".[$(EXTRAS)]"
	touch $(STAMP)

# Demo images (Tux Paint stamps, Noto Color Emoji and the Unicode emoji groups that label them) and
# Chromium for the browser tests.
# Without root or apt we say so and go on: the demo uses whatever image sets are present.
demo-data:
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -z "$$missing" ]; then echo "Debian packages present:$(APT_PACKAGES)"; \
	elif command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
	  echo "installing Debian packages:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	else echo "NOTE: cannot install$$missing (needs root and apt-get); the demo will use the image sets that are present, browser tests will be skipped."; fi

# Fashion-MNIST (70k real images) for `bench/train.py --data fashion-mnist`.
bench-data:
	@dpkg -s dataset-fashion-mnist >/dev/null 2>&1 || { if command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends dataset-fashion-mnist >/dev/null; \
	else echo "NOTE: install dataset-fashion-mnist (Debian) for the Fashion-MNIST training benchmark"; fi; }

demo: install
	$(VENV)/bin/clipatlas demo -w $(WORKSPACE) --port $(PORT)

# Lint and format checks first: they take a second and name the exact line.
lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

test: lint
	OMP_NUM_THREADS=1 $(PY) -m pytest -q

PEERS_VENV := bench/.venv-peers
# The peers' own trainers, pinned, in their own environment (bench/train.py runs them side by side).
PEERS := overcomplete==0.3.0 sae-lens==6.54.12
# The constraint keeps the peers' dependencies from replacing the torch the bench states (and
# bench/train.py checks in every worker); without it sae-lens's dependencies pulled torch 2.14.1.
# PyPI's torchvision wheel does not load beside the CPU torch build ("operator torchvision::nms does
# not exist") and no trainer uses it, so it goes: transformers then sees no torchvision at all.
$(PEERS_VENV)/bin/python:
	$(PYTHON) -m venv $(PEERS_VENV)
	echo "$(TORCH_SPEC)" > $(PEERS_VENV)/torch-constraint.txt
	$(PEERS_VENV)/bin/pip install --quiet "$(TORCH_SPEC)" \
	  && $(PEERS_VENV)/bin/pip install --quiet --constraint $(PEERS_VENV)/torch-constraint.txt $(PEERS) \
	  && $(PEERS_VENV)/bin/pip uninstall --quiet --yes torchvision \
	  || { rm -rf $(PEERS_VENV); exit 1; }

bench: install bench-data $(PEERS_VENV)/bin/python
	$(PY) bench/embed.py && $(PY) bench/train.py && $(PY) bench/atlas.py && $(PY) bench/steer.py && $(PY) bench/web.py && $(PY) bench/evaluate.py && $(PY) bench/scale.py

clean:
	rm -rf $(VENV) $(WORKSPACE) test-artifacts .pytest_cache
