#!/usr/bin/env bash
# One GPU check for issue 18, under 8 minutes on one GPU: CIFAR-10 (JPEG q75 copy) step times of DM/DC/DSA/MTT at
# IPC 10 and 50, and DM's IPC-10 accuracy after 2,000 steps (benchmarks/device_check.py says how).
# On a machine without CUDA it prints that no GPU is present and exits 0.
#   DISTILL_APPS_DATA=<datasets folder holding cifar10-jpg/> bash benchmarks/device_check.sh [--steps 5]
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
PY="${PYTHON:-python}"
if [ -x .venv/bin/python ] && [ -z "${PYTHON:-}" ]; then PY=.venv/bin/python; fi
exec timeout --signal=INT --kill-after=20 470 "$PY" benchmarks/device_check.py "$@"
