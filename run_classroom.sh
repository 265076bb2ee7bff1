#!/usr/bin/env bash
# Sets up a virtual environment (.venv) with the pinned requirements and runs the whole recipe
# on the classroom world: corpus -> pretrain -> SFT -> RL -> evaluation -> results.md and plots.
# Extra arguments are config overrides for every stage, e.g. `bash run_classroom.sh --out_dir=out/b`.
set -euo pipefail
cd "$(dirname "$0")"
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/pip install -q -r requirements.txt
HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 .venv/bin/python pipeline.py configs/classroom.py "$@"
