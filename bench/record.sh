#!/usr/bin/env bash
# Run one benchmark and keep what it printed as a results file: the source of the README's
# performance figures (tests/test_stats.py checks every figure of a performance row against the
# files the row names, so a rerun that changes a file fails there until the row is updated).
#
#     bash bench/record.sh results/grader-xeon.txt python bench/bench_grader.py
#
# The file starts with the command, then when and where it ran, then the command's stdout; its
# stderr (progress bars, library warnings) goes to the terminal. `python` is .venv's where there
# is one. A command that fails leaves the old file as it was, and this script exits with its status.

set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -ge 2 ] || { echo "usage: bash bench/record.sh results/NAME.txt COMMAND [ARG ...]" >&2; exit 2; }
out=$1
shift
[ -d .venv/bin ] && PATH="$PWD/.venv/bin:$PATH"
python=$(command -v python || command -v python3)
new=$(mktemp)
trap 'rm -f "$new"' EXIT
cpu=$("$python" -c "from support import report; print(report.cpu_name())")
{
    echo "$*"
    echo "($(date -u '+%Y-%m-%d %H:%M') UTC, $cpu, $(nproc) cores, 1-minute load $(cut -d' ' -f1 /proc/loadavg) at the start; stdout)"
    echo
    "$@"
} > "$new"
chmod 644 "$new"
mv "$new" "$out"
echo "bench/record.sh: $out"
