#!/usr/bin/env bash
# Every GPU figure of the README in one run, on one GPU, in at most 8 minutes (issue 17, item 4):
#
#   1. pretraining MFU in bf16 of a 373.9M-parameter shape (24 layers x 1024, vocabulary 32,000,
#      context 2,048), ours and transformers', eager then compiled: bench/bench_pretrain.py
#      (issue 4's goal: >= 45% on one H100)
#   2. decoding a 7B-shaped model (configs/7b.py, random bf16 weights) at batch 1 and 64, eager
#      then compiled (generate(compile=True)), against the memory bandwidth a device copy
#      measures: bench/bench_generate.py's gpu_7b
#      (issue 9's goal: >= 0.6 of the bandwidth limit at batch 1)
#   3. GRPO vs PPO at 1.3B (configs/1.3b.py shapes, random weights, classroom questions):
#      seconds per step and peak GPU memory over 3 steps each, through grpo.rl_step as grpo.py
#      runs it (2 questions x 64 outputs x 256 new tokens a step: the paper's step is 16 x 64 x
#      1,024, far beyond 8 minutes)
#
#     bash bench/gpu.sh                      # everything; the summary goes to out/gpu/summary.txt
#     bash bench/gpu.sh --dry_run            # no GPU needed: each part's commands, shapes and memory
#     bash bench/gpu.sh --out=FILE           # another summary file (each part's full log beside it)
#
# Each part runs under its own time limit (40 + 150 + 160 + 130 s = 8 minutes at most). On an
# H100 parts 1a, 1b and 3 took 26, 124 and 101 s (results/gpu-h100.txt); part 2 ran past its
# then limit of 120 s while compiling for batch 64, and alone, with batch 1's kernels already
# compiled, took 113 s (results/gpu-h100-decode-7b.txt), of which batch 1's compilation was
# 8 s against 33 s cold. A part that fails or runs out of time is marked so in the summary and
# the next one still runs. On a machine without CUDA the script says so, runs every part's dry
# run (which builds nothing big: models on the meta device, support/memory_plan.py, the
# commands) and exits 0.
# PYTHON=/path/to/python picks the interpreter (default: .venv/bin/python, else python).

set -u
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
command -v "$PY" > /dev/null || PY=python
DRY=0
OUT=out/gpu/summary.txt
for arg in "$@"; do
    case "$arg" in
        --dry_run|--dry_run=true) DRY=1 ;;
        --out=*) OUT=${arg#--out=} ;;
        *) echo "usage: bash bench/gpu.sh [--dry_run] [--out=FILE]" >&2; exit 2 ;;
    esac
done
WORK=$(dirname "$OUT")/work
mkdir -p "$WORK"
: > "$OUT"
export TOKENIZERS_PARALLELISM=false
export PYTHONUNBUFFERED=1  # a part stopped at its time limit still shows what it printed

# The 373.9M pretraining shape of the README (bench/bench_pretrain.py's docstring).
MFU_ARGS="configs/1.3b.py --n_layer=24 --dim=1024 --n_head=16 --n_kv_head=16 --intermediate_size=2816
          --vocab_size=32000 --max_seq_len=2048 --batch=8"
# Part 3's step: configs/1.3b.py with fewer, shorter rollouts (same per-step structure).
RL_ARGS="--train_problems=classroom --test_problems=classroom --rl_questions_per_step=2 --rl_rollout_questions=1
         --rl_group_size=64 --rl_max_new_tokens=256 --rl_micro_batch=8 --rl_activation_checkpointing=true
         --grader_workers=2"

say() { echo "$*" | tee -a "$OUT"; }

# run NAME SECONDS CMD...: the command's stdout into the summary (and the part's log), its stderr
# into the log only; a time limit; the status and wall time into the summary.
run() {
    local name=$1 limit=$2 log="$WORK/$1.log" start rc
    shift 2
    say ""
    say "== $name (limit ${limit} s): $*"
    start=$(date +%s)
    timeout --signal=INT --kill-after=15 "$limit" "$@" 2> "$log.err" | tee "$log" | grep -v "^\s*$" | tee -a "$OUT"
    rc=${PIPESTATUS[0]}
    case $rc in
        0) say "-- $name: ok in $(( $(date +%s) - start )) s" ;;
        124|137) say "-- $name: TIMED OUT after $limit s (what it printed is above; stderr: $log.err)" ;;
        *) say "-- $name: FAILED with status $rc in $(( $(date +%s) - start )) s; the last lines of $log.err:"
           tail -n 5 "$log.err" | tee -a "$OUT" ;;
    esac
}

# Part 3's script: build a random 1.3B checkpoint, or measure one algorithm's steps, or (dry) check
# every shape and key on the meta device. Written out so that each algorithm runs in its own
# process and its peak GPU memory is its own.
RL13=$WORK/rl13.py
cat > "$RL13" <<'EOF'
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.getcwd())
sys.path.insert(0, os.path.join(os.getcwd(), "bench"))
from support import config  # noqa: E402

mode, work, overrides = sys.argv[1], sys.argv[2], sys.argv[3:]
cfg = config.load_config(["configs/1.3b.py", *overrides])
ckpt = os.path.join(work, "ckpt-1.3b")
GiB = 2**30


def tokenizer():
    from bench_grpo_vs_trl import classroom_tokenizer
    return classroom_tokenizer(cfg.vocab_size)


def model_args(tok):
    from model import ModelArgs
    return ModelArgs.from_config(cfg, bos_id=tok.bos_id, eos_id=tok.eos_id)


if mode == "dry":
    from model import Transformer
    from support import memory_plan
    tok = tokenizer()
    with torch.device("meta"):
        model = Transformer(model_args(tok))
    assert tok.n_vocab == cfg.vocab_size, (tok.n_vocab, cfg.vocab_size)
    prompt = tok.encode_prompt("Maya has 3 apples and buys 4 more. How many apples does she have now?")
    print(f"1.3B: {cfg.n_layer} layers x {cfg.dim}, {cfg.n_head} heads, vocabulary {cfg.vocab_size}: "
          f"{model.num_params() / 1e9:.2f}B parameters (meta device); tokenizer {tok.n_vocab} ids, a prompt "
          f"of {len(prompt)} tokens; a step: {cfg.rl_questions_per_step} questions x {cfg.rl_group_size} outputs "
          f"x <= {cfg.rl_max_new_tokens} new tokens, micro-batch {cfg.rl_micro_batch}")
    memory_plan.print_plan(cfg, 1)
elif mode == "build":
    from model import Transformer
    from support import training
    tok = tokenizer()
    torch.manual_seed(0)
    torch.set_default_dtype(torch.bfloat16)  # weights made in bf16 on the device: 2.7 GB on disk
    with torch.device(cfg.device):
        model = Transformer(model_args(tok))
    torch.set_default_dtype(torch.float32)
    training.save_checkpoint(ckpt, model, tok)
    print(f"random {model.num_params() / 1e9:.2f}B checkpoint in {ckpt}")
else:
    import evaluate
    import grpo
    from support import distributed, rl_support, tasks
    from support.tokenizer import load_tokenizer
    cfg = config.with_keys(cfg, rl_algo=mode)
    d = distributed.setup(cfg.device)
    cuda = d.device.type == "cuda"
    tok = load_tokenizer(cfg, ckpt)
    n_steps, per_step = 3, cfg.rl_questions_per_step
    problems = tasks.classroom_problems("train", n_steps * per_step, cfg.seed)
    seconds = []
    with evaluate.stage_grader(cfg, d) as grader:
        run = grpo.Run(cfg, d, tok, grader, ckpt, ckpt)
        run.last_checkpoint = ckpt
        if cuda:
            torch.cuda.reset_peak_memory_stats(d.device)
        for step in range(n_steps):
            if cuda:
                torch.cuda.synchronize()
            start = time.perf_counter()
            metrics = grpo.rl_step(run, problems[step * per_step:(step + 1) * per_step], 0, cfg, step)
            if cuda:
                torch.cuda.synchronize()
            seconds.append(time.perf_counter() - start)
        memory = rl_support.memory_metrics(run)
    peak = f"{torch.cuda.max_memory_allocated(d.device) / GiB:.1f} GiB" if cuda else "n/a (no CUDA)"
    print(f"{mode}: {statistics.mean(seconds[1:]):.2f} s/step (steps: {', '.join(f'{s:.2f}' for s in seconds)} s; "
          f"the first warms up), peak GPU memory {peak}, model state {memory['model_state_mb'] / 1024:.1f} GiB, "
          f"mean response {metrics['response_len']:.0f} tokens, holds {', '.join(run.held)}")
EOF

dry_parts() {
    run "1-pretrain-mfu-dry" 120 "$PY" - $MFU_ARGS <<'EOF'
import sys
import torch
sys.path.insert(0, ".")
from model import ModelArgs, Transformer
from pretrain import flops_per_token
from support import config
argv = [a for a in sys.argv[1:] if not a.startswith("--batch")]
batch = int(next(a.split("=")[1] for a in sys.argv[1:] if a.startswith("--batch")))
cfg = config.load_config(argv)
args = ModelArgs.from_config(cfg)
with torch.device("meta"):
    model = Transformer(args)
n = model.num_params()
f = flops_per_token(args, cfg.max_seq_len)
print(f"pretraining shape: {args.n_layer} layers x {args.dim}, vocabulary {args.vocab_size}, context "
      f"{cfg.max_seq_len}: {n / 1e6:.1f}M parameters (meta device); {f / 1e9:.2f} GFLOP per token; a step of "
      f"{batch} x {cfg.max_seq_len} tokens = {f * batch * cfg.max_seq_len / 1e12:.1f} TFLOP, 45% MFU on a "
      f"989 TFLOP/s H100/H200 = {f * batch * cfg.max_seq_len / (0.45 * 989e12) * 1e3:.0f} ms; weights + grads + "
      f"AdamW {16 * n / 2**30:.1f} GiB per model (the benchmark holds 3 eager, 4 compiled)")
EOF
    say "   would run: $PY bench/bench_pretrain.py $(echo $MFU_ARGS) --steps=10   (then with --compile=true)"
    run "2-decode-7b-dry" 120 "$PY" - <<'EOF'
import sys
import torch
sys.path.insert(0, ".")
sys.path.insert(0, "bench")
from bench_generate import generation_bytes
from model import ModelArgs, Transformer
from support import config
args = ModelArgs.from_config(config.load_config(["configs/7b.py"]))
with torch.device("meta"):
    model = Transformer(args)
print(f"7B shape: {args.n_layer} layers x {args.dim}, {args.n_head} heads ({args.n_kv_head} kv), vocabulary "
      f"{args.vocab_size}: {model.num_params() / 1e9:.2f}B parameters (meta device), {model.num_params() * 2 / 2**30:.1f} "
      f"GiB in bf16")
for batch in (1, 64):
    b = generation_bytes(model, batch, 32, 512)
    print(f"  batch {batch:3d}, prompt 32, 512 new tokens: {b / 2**30:.0f} GiB read in all, so >= {b / 512 / 4.8e12 * 1e3:.2f} "
          f"ms/step at an H200's 4.8 TB/s ({b / 512 / 3.35e12 * 1e3:.2f} at an H100's 3.35 TB/s); KV cache "
          f"{batch * 544 * args.n_layer * 2 * args.n_kv_head * args.head_dim * 2 / 2**30:.1f} GiB")
EOF
    say "   would run: $PY -c \"import sys; sys.path[:0] = ['.', 'bench']; import bench_generate; bench_generate.gpu_7b(512, 32)\""
    run "3-grpo-vs-ppo-1.3b-dry" 120 "$PY" "$RL13" dry "$WORK" $RL_ARGS
    say "   would run: $PY $RL13 build|grpo|ppo $WORK $(echo $RL_ARGS)"
}

say "bench/gpu.sh $(date -u '+%Y-%m-%d %H:%M UTC') on $(hostname)"
# the host's CPU as well: the figures that run on it (data loading, Python between kernels) move
# with it, and an AMD host would also serve the classroom run's other-CPU check (issue 15)
say "host CPU: $("$PY" -c 'import os; from support import report; print(report.cpu_name() + ",", os.cpu_count(), "cores")')"
if [ "$DRY" = 1 ] || ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
    if [ "$DRY" = 1 ]; then
        say "dry run: commands, shapes and memory only; nothing is measured"
    else
        say "no CUDA device here (torch $("$PY" -c 'import torch; print(torch.__version__)' 2>/dev/null)):" \
            "every GPU figure is BLOCKED; running each part's dry run instead"
    fi
    dry_parts
    say ""
    say "summary: $OUT"
    exit 0
fi

say "GPU: $("$PY" -c 'import torch; print(torch.cuda.get_device_name(0), torch.__version__, "CUDA", torch.version.cuda)')"
run "1a-pretrain-mfu-eager" 40 "$PY" bench/bench_pretrain.py $MFU_ARGS --steps=10
run "1b-pretrain-mfu-compiled" 150 "$PY" bench/bench_pretrain.py $MFU_ARGS --steps=10 --compile=true
run "2-decode-7b" 160 "$PY" -c "import sys; sys.path[:0] = ['.', 'bench']; import bench_generate; bench_generate.gpu_7b(512, 32)"
run "3-grpo-vs-ppo-1.3b" 130 bash -c "
    set -e
    [ -f '$WORK/ckpt-1.3b/config.json' ] || '$PY' '$RL13' build '$WORK' $(echo $RL_ARGS)
    '$PY' '$RL13' grpo '$WORK' $(echo $RL_ARGS)
    '$PY' '$RL13' ppo '$WORK' $(echo $RL_ARGS)"
say ""
say "summary: $OUT"
