#!/usr/bin/env bash
# Set up the environment (scripts/setup_env.sh) and run the test suite on the CPU (Triton kernels interpreted).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup_env.sh
python -m pytest -q "$@"
