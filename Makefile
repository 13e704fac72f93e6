# `make demo` and `make test` work on a fresh machine: both create .venv from requirements.txt first.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
DEMO_DIR ?= runs/demo

.PHONY: demo test clean-demo

$(VENV)/.installed: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip==25.3
	$(PY) -m pip install --quiet -r requirements.txt
	touch $@

# The main job, start to finish, on a fresh run folder.
demo: $(VENV)/.installed
	rm -rf $(DEMO_DIR)
	$(PY) tools/prepare.py emoji --out $(DEMO_DIR)/data/emoji
	$(PY) tools/mine_labels.py --corpus $(DEMO_DIR)/data/emoji --out $(DEMO_DIR)/data/emoji_mined
	$(PY) -m bigvis.train --config configs/pretrain.py:runlocal \
	  --config.input.data_dir=$(DEMO_DIR)/data/emoji_mined --workdir $(DEMO_DIR)/pretrain
	@echo "Metrics: $(DEMO_DIR)/pretrain/metrics.jsonl; checkpoints: $(DEMO_DIR)/pretrain/checkpoints"

test: $(VENV)/.installed
	$(PY) -m pytest -q tests
