# `make demo` and `make test` each set everything up on a fresh machine, then run.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
GLUE_DIR ?= $(abspath ../shared/data/glue)
export GLUE_DIR
DEMO_DIR ?= runs/demo

.PHONY: install demo test clean node-deps

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(VENV)/.installed: $(BIN)/python pyproject.toml
	# torch first and pinned: any other spec may pull a multi-GB CUDA build
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[test,onnx,serve]'
	touch $@

install: $(VENV)/.installed

demo: install
	$(BIN)/metabert train --task sst2 --model minilm-l6 --method joint --epochs 1 \
	    --max-train-samples 16000 --output $(DEMO_DIR)/sst2
	$(BIN)/metabert evaluate --checkpoint $(DEMO_DIR)/sst2 --task sst2 \
	    --output $(DEMO_DIR)/sst2_calibrated.json
	$(BIN)/metabert evaluate --checkpoint $(DEMO_DIR)/sst2 --task sst2 \
	    --thresholds auto --output $(DEMO_DIR)/sst2_sweep.json

# tests/test_single_file.py runs the single ONNX file with onnxruntime-node: its CPU binary ships in
# the npm package; --ignore-scripts skips the postinstall that would fetch CUDA binaries
# (again only when package-lock.json is newer than the installed tree)
node-deps:
	@if ! command -v npm >/dev/null 2>&1; then echo "npm not found: the Node.js check of the single ONNX file is skipped"; \
	elif [ ! tests/node/node_modules/.package-lock.json -nt tests/node/package-lock.json ]; then \
	    cd tests/node && npm ci --ignore-scripts --no-audit --no-fund; fi

test: install node-deps
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) runs tests/node/node_modules
