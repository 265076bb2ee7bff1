#!/usr/bin/env bash
# One SFT run, from one pretrained checkpoint, under each CPU kernel setting: what the last bits
# of a machine's rounding do to a 1M-parameter model (README, "Same command, same numbers").
#
#     bash bench/rounding.sh out/classroom            # a classroom run's out dir: its corpus/, pretrain/
#     bash bench/record.sh results/rounding-xeon.txt bash bench/rounding.sh out/classroom
#     bash bench/rounding.sh OUT_DIR --sft_steps=6 ...   # further arguments go to sft.py (the tests' tiny run)
#
# PYTHON=/path/to/python picks the interpreter (default: .venv/bin/python, else python3).
#
# Each row runs `python sft.py configs/classroom.py --out_dir=DIR` under its environment, one row
# after another, in a folder of its own holding a copy of the run's corpus, tokenizer and
# pretrained checkpoint (OUT_DIR/rounding/N; pipeline.py is not involved, so nothing else sets the
# kernels). Printed per row: the held-out greedy accuracy sft.py measured and on how many problems
# (200 in the classroom config), its seconds, and whether its checkpoint is the first row's, byte
# for byte. About 20 minutes on 2 cores.

set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -ge 1 ] && [ -d "$1/pretrain/ckpt" ] || {
    echo "usage: bash bench/rounding.sh OUT_DIR [--key=value ...] (OUT_DIR: a classroom run's, with pretrain/ckpt)" >&2
    exit 2; }
source_dir=$1
shift
PY=${PYTHON:-.venv/bin/python}  # as bench/gpu.sh picks it
command -v "$PY" > /dev/null || PY=python3
settings=(
    "ATEN_CPU_CAPABILITY=avx2 MKL_CBWR=AVX2,STRICT OMP_NUM_THREADS=1"  # pipeline.py's kernels, 1 thread
    "ATEN_CPU_CAPABILITY=avx2 MKL_CBWR=AVX2,STRICT OMP_NUM_THREADS=2"  # ... and 2 (its SFT stage)
    "ATEN_CPU_CAPABILITY=avx2 MKL_CBWR=AVX2 OMP_NUM_THREADS=1"         # MKL's AVX2 path, not strict
    "ATEN_CPU_CAPABILITY=avx2 MKL_CBWR=COMPATIBLE OMP_NUM_THREADS=1"   # MKL's path that AMD CPUs honour too
    "OMP_NUM_THREADS=1"                                                # this CPU's best kernels
    "OMP_NUM_THREADS=2"
    "ATEN_CPU_CAPABILITY=default OMP_NUM_THREADS=1"                    # no vector kernels
)
echo "SFT (python sft.py configs/classroom.py) from $source_dir/pretrain/ckpt under each setting"
echo "| environment | held-out greedy accuracy | problems | seconds | checkpoint = row 1's |"
echo "| --- | --- | --- | --- | --- |"
for i in "${!settings[@]}"; do
    dir=$source_dir/rounding/$i
    rm -rf "$dir" && mkdir -p "$dir"
    cp -r "$source_dir/corpus" "$source_dir/pretrain" "$source_dir"/tokenizer.tiktoken* "$dir/"
    # shellcheck disable=SC2086  # the setting is a list of NAME=value words
    env ${settings[$i]} "$PY" sft.py configs/classroom.py --out_dir="$dir" "$@" > "$dir.log" 2>&1 ||
        { echo "sft.py failed under ${settings[$i]}: see $dir.log" >&2; exit 1; }
    same=$(cmp -s "$source_dir/rounding/0/sft/ckpt/model.safetensors" "$dir/sft/ckpt/model.safetensors" && echo yes || echo no)
    "$PY" - "$dir/sft/summary.json" "${settings[$i]}" "$same" <<'EOF'
import json, sys
summary = json.load(open(sys.argv[1]))
print(f"| `{sys.argv[2]}` | {100 * summary['accuracy']:.1f}% | {summary['eval_problems']} | {summary['seconds']:.0f} | "
      f"{sys.argv[3]} |")
EOF
done
