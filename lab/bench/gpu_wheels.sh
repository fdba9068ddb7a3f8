#!/usr/bin/env bash
# Download, into .whl/, the wheels the GPU check needs beyond what a CUDA PyTorch image usually holds
# (torch, transformers, accelerate, pyarrow, pandas): cropi's grader (math-verify) and the TRL check.
# For a GPU machine without network: copy .whl/ there with the tree; gpu_check.sh installs them into a temporary folder.
# Ray (a 79 MB wheel for CPython 3.12) and vLLM (hundreds of MB, with its own CUDA torch) are left out: their
# checks run only where they are already installed.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PY_VERSION:-3.12}
mkdir -p .whl
python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$PY" --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
  math-verify==0.9.0 latex2sympy2_extended==1.11.0 antlr4-python3-runtime==4.13.2 \
  trl==1.16.0 datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19 xxhash==3.6.0
du -sh .whl
