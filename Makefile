# `make demo` and `make test` work on a fresh machine: both create .venv from requirements.txt (and
# requirements-nodeps.txt, then bigvis itself) first.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
DEMO_DIR ?= runs/demo

KERNEL := bigvis/kernels/_cpu_attention.so

.PHONY: demo test bench study soak

# bigvis itself is installed editable (pyproject.toml; its dependencies are requirements.txt, already
# pinned and installed), so `python -m bigvis.tools.X`, the bigvis-* commands and `python tools/X.py`
# work from any folder.
$(VENV)/.installed: requirements.txt requirements-nodeps.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip==25.3
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps -r requirements-nodeps.txt
	$(PY) -m pip install --quiet --no-deps -e .
	touch $@

# The fused CPU attention kernel, compiled for this machine (bigvis/kernels/cpu_attention.py).
$(KERNEL): bigvis/kernels/cpu_attention.cc bigvis/kernels/cpu_attention.py $(VENV)/.installed
	$(PY) -m bigvis.kernels.cpu_attention

# The main job, start to finish, on a fresh run folder: prepare, mine labels, pretrain, fine-tune
# (and the scratch baseline), embed, index, evaluate; the report lands in $(DEMO_DIR)/report.json.
demo: $(VENV)/.installed $(KERNEL)
	rm -rf $(DEMO_DIR)
	$(PY) tools/demo.py --workdir $(DEMO_DIR)

test: $(VENV)/.installed $(KERNEL)
	$(PY) -m pytest -q tests

# Every speed benchmark in turn (~1 h here); tables land in bench/results/ (SUMMARY.md collects
# them). Benchmark-only packages (FAISS) come from bench/requirements.txt; PyTorch gets its own
# venv, made by the benchmarks that need it (bench/torch_env.py).
bench: $(VENV)/.installed $(KERNEL)
	$(PY) -m pip install --quiet -r bench/requirements.txt
	$(PY) bench/run_all.py

# SIGKILL at random moments, restart, end bit-identical (tests/soak/README.md): an opt-in soak test,
# ~3-5 minutes here; the report lands in tests/soak/kill_soak.{json,md}.
soak: $(VENV)/.installed $(KERNEL)
	$(PY) tests/soak/kill_soak.py

# The paper's findings in miniature (configs/study.py): every question's grid, 3 seeds, through the
# real command line; resumable (run it again after a kill). Writes study/STUDY.md, study.json and
# plots. Not part of `make test` or `make demo`: hours here. To add to the committed report
# without re-running its cells: tools/study.py --previous study/study.json (README).
study: $(VENV)/.installed $(KERNEL)
	$(PY) tools/study.py --root runs/study --out study
