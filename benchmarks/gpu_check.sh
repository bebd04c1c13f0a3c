#!/usr/bin/env bash
# Every GPU check of storm in one short run on a lent GPU node (torch + Lightning there; no AnnData).
# Prepare first, here:  python benchmarks/gpu_check.py prepare --out .carry/gpu
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -m pytest -q -p no:cacheprovider -m gpu tests/test_*gpu*.py 2>&1 | tail -5 || true
python3 benchmarks/gpu_check.py run --data .carry/gpu --steps "${STEPS:-300}" --batch-size "${BATCH:-128}"
