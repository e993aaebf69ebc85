#!/usr/bin/env bash
# The GPU checks in one go (never part of CI): the CUDA tests (tests/gpu), then bench/throughput.py for
# bert-base at seq 128 and 512 in bf16 (ours, ours + torch.compile, Hugging Face), then bert-large
# at 128. Logs go to $1 (default work/gpu). The results of a run are in docs/BENCHMARKS.md.
#   bash bench/gpu.sh [LOG_DIR]
set -uo pipefail
cd "$(dirname "$0")/.."
logs=${1:-work/gpu}
mkdir -p "$logs"
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false HF_DATASETS_DISABLE_PROGRESS_BARS=1
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  python3 -c "import torch, lightning, transformers; print('torch', torch.__version__, 'lightning', lightning.__version__, 'transformers', transformers.__version__)"
} 2>&1 | tee "$logs/machine.txt"

timeout 180 python3 -m pytest -m gpu tests/gpu -v -p no:cacheprovider 2>&1 | tee "$logs/tests.log"

bench() { timeout 130 python3 bench/throughput.py --device cuda --precisions bf16 --rounds 5 --steps 10 --warmup 3 "$@"; }
bench --models bert-base --seqs 128 --batch 128 --peers ours ours-compile hf 2>&1 | tee "$logs/bench_base_128.log"
bench --models bert-base --seqs 512 --batch 32 --peers ours ours-compile hf 2>&1 | tee "$logs/bench_base_512.log"
bench --models bert-large --seqs 128 --batch 64 --peers ours hf 2>&1 | tee "$logs/bench_large_128.log"
