"""The plumbing of the recipe: what the stage scripts at the top level (corpus.py, pretrain.py,
sft.py, grpo.py, evaluate.py, pipeline.py, with model.py) need but a learner can skip.

    from support import config, training          # as the stages import it
    python -m support.viewer out/classroom         # the modules with a command, run from the repository root

    config.py         every config key with its default and meaning; loads configs/*.py and --key=value
    distributed.py    torchrun set-up: process group, devices, DDP / FSDP2, rank-0 printing
    training.py       AdamW, mixed precision, checkpoints with resumable train state, metrics, guards
    fileio.py         JSONL / Parquet records, atomic writes, BadInput (a one-line error for bad files)
    shards.py         token shard files (corpus.py writes them, pretrain.py memory-maps them)
    tokenizer.py      byte-level BPE served by tiktoken, Hugging Face tokenizer.json, the chat template
    classroom_web.py  the generated offline "web" the corpus loop mines (math pages, others, mirrors)
    tasks.py          the math problems: classroom, GSM8K, MATH; CoT / PoT / tool solutions; step checks
    grading.py        answer extraction (linear time) and equivalence (exact numbers, math-verify LaTeX)
    sandbox.py        model-written programs run locked down (namespaces, rlimits, Landlock, seccomp)
    rewards.py        RL's rewards: the grader's outcome, the step checker's process labels, ORM / PRM
    rl_support.py     what grpo.py needs but a learner does not: models held, micro-batches, memory, reports
    memory_plan.py    the per-GPU memory plan of GRPO vs PPO on the meta device (grpo.py --dry_run=true)
    viewer.py         the static HTML page of the recorded rollouts, tokens coloured by advantage
    stats.py          Wilson intervals and the paired two-level bootstrap over seeds and problems
    report.py         results.md: the findings table and the paper's claims as verdicts
"""
