"""Benchmark: one GRPO step of grpo.py against TRL's GRPOTrainer, same model, same work.

    pip install -r requirements-bench.txt                     # TRL + accelerate (not in requirements.txt)
    python bench/bench_grpo_vs_trl.py                         # a random classroom-shaped model
    python bench/bench_grpo_vs_trl.py --checkpoint=out/classroom/sft/ckpt
    python bench/bench_grpo_vs_trl.py --profile=true          # + the top ops of each side (torch.profiler)
    python bench/bench_grpo_vs_trl.py --compile=true          # ours as grpo.py --compile=true runs

What is the same on both sides (issue 17, item 2):
  - the model: ours in Hugging Face layout (training.save_checkpoint), which TRL loads with
    AutoModelForCausalLM from the same folder; policy float32 (AdamW's master copy) and a
    frozen pi_ref beside it, both from the folder;
  - the prompts: 8 classroom training questions per step (the same questions, in the same order),
    G = 8 outputs each = 64 rows, BOS + our chat prompt; TRL gets the prompt text and a Hugging Face
    tokenizer built from ours (`hf_tokenizer`), and the script checks that it gives every prompt
    exactly our ids before it times anything;
  - generation: sampling at temperature 1, no top-k/top-p, at most --max_new_tokens (the
    classroom's rl_max_new_tokens, 100), stopping at EOS; TRL through transformers' generate
    (use_vllm=False, no continuous batching). Mean completion lengths are printed for both, so
    the reader sees that the same number of tokens was generated;
  - the reward: evaluate.Grader (the same worker count) on the decoded completions, as
    rewards.correctness does;
  - the objective: mu = 1 (TRL num_iterations=1, so pi_old = pi_theta.detach() on both sides, no
    extra pass), beta = 0.04 (k3 KL to pi_ref), clip epsilon 0.2, group-normalised advantages;
    TRL loss_type="grpo": per output 1/|o_i| sum_t, then the mean over outputs, which is eq. 3's
    1/G sum_i 1/|o_i| (the paper's per-sequence mean; TRL's default "dapo" is a token mean over
    the batch, see grpo.py's docstring). Two known differences: TRL normalises advantages by the
    sample std (n - 1), we by the population std (a scale of 0.94 at G = 8, no cost), and TRL
    does not clamp the log-ratios (two elementwise ops);
  - the 64 rows generated at once, then forward/backward passes over micro-batches of
    --micro_batch rows (default 16, the 7B config's rl_micro_batch), their gradients accumulated
    into one AdamW step (our rl_micro_batch; TRL per_device_train_batch_size = --micro_batch,
    gradient_accumulation_steps = 64 / --micro_batch, so its generation batch is the 64 rows).
    How the rows are grouped is each side's own: ours puts rows of similar length together and
    cuts each micro-batch to its longest row (rl_support.length_grouped_micro_batches); TRL
    shuffles the 64 rows and pads each to the longest of them (GRPOTrainer._prepare_inputs).
    --micro_batch=64 is one pass over all rows on both sides, the same work on each side.
    AdamW lr 5e-5, betas (0.9, 0.95), no weight decay,
    gradient clip 1.0; float32 on the CPU. (TRL's AdamW is torch's fused one, transformers'
    default; ours is torch's plain loop on a CPU: at 1M parameters, milliseconds.)
  - activation checkpointing (each block's activations recomputed in backward): on for both by
    default, as GRPOConfig's gradient_checkpointing defaults to True (ours:
    rl_activation_checkpointing); --activation_checkpointing=false turns it off on both sides.
    It trades the update's time for its memory, so the two must match for either figure to mean
    anything.

--compile=true times ours as `grpo.py --compile=true` runs: every model through torch.compile
(dynamic shapes), and the rollouts' decode step (model.generate(compile=True)); the compilation
falls in the warm-up step. TRL stays eager, as it is fastest here: with
GRPOConfig(torch_compile=True) its policy is compiled for training and recompiled as the
completions' lengths change, and its steps took 6-35 s against ~3.4 s eager (an Intel Xeon,
1 thread, torch 2.13).

Each side runs in its own subprocess (so its peak RSS is its own), --rounds times, alternating
ours / TRL so both see the same machine load; each round takes one warm-up step and --steps
timed steps. Printed per side: seconds per step (the mean of every timed step of every round),
its split generation / reward / log-probs (pi_ref, no gradients) / update (the policy's
forward, backward and AdamW) / other, averaged alike, mean completion length, peak RSS and its
growth after the side's set-up (without the libraries it imports: with --compile=true the set-up
loads torch.compile's own libraries by compiling a one-op function; the packages a side still
imports inside its steps are printed), and the ratios ours / TRL.
Issue 17's goal: our step <= 0.7x TRL's, with no more memory (peak and growth).

--profile=true adds, for each side, one more run (not counted in the timings or the RSS) whose
one step after the warm-up runs under torch.profiler: the ops with the most own CPU time, the
share of the wall time no op accounts for (Python and framework overhead between kernels), and
the time in the kernels both sides must run on the same shapes (matmuls, attention, the logits'
log-softmax), which bounds how far below TRL's step ours can get.

On a shared CPU set OMP_NUM_THREADS (the script defaults to --threads=1 in both subprocesses).
"""

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

SEED = 1234


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default="", help="a policy folder (ours, HF layout); default: a random "
                        "classroom-shaped model with a BPE trained on classroom problems")
    parser.add_argument("--questions", type=int, default=8)
    parser.add_argument("--group_size", type=int, default=8)
    parser.add_argument("--max_new_tokens", type=int, default=100)
    parser.add_argument("--micro_batch", type=int, default=16,
                        help="rows per forward/backward on both sides (gradient accumulation over the step's rows; "
                        "at most the step's rows)")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per round (after one warm-up step)")
    parser.add_argument("--rounds", type=int, default=2, help="subprocess runs per side, alternating")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--lr", type=float, default=5e-5)
    parser.add_argument("--profile", default="false", choices=("true", "false"))
    parser.add_argument("--activation_checkpointing", default="true", choices=("true", "false"),
                        help="recompute each block's activations in backward, on both sides (true: TRL's default)")
    parser.add_argument("--compile", default="false", choices=("true", "false"),
                        help="ours as grpo.py --compile=true runs (its models and the decode step through "
                        "torch.compile); TRL stays eager, its fastest here (see the module docstring)")
    parser.add_argument("--workdir", default="", help="where the model folder and results go (default: a temp dir)")
    parser.add_argument("--side", default="", choices=("", "ours", "trl"), help=argparse.SUPPRESS)
    parser.add_argument("--out", default="", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


# ---------------------------------------------------------------------------------------------
# What both sides share: the model folder, the questions, the prompt text
# ---------------------------------------------------------------------------------------------


def classroom_config(a):
    from support import config
    return config.load_config([os.path.join(ROOT, "configs", "classroom.py"), "--device=cpu",
                               f"--rl_group_size={a.group_size}", f"--rl_questions_per_step={a.questions}",
                               f"--rl_rollout_questions={a.questions}", f"--rl_micro_batch={a.micro_batch}",
                               f"--rl_max_new_tokens={a.max_new_tokens}", "--rl_mu=1", "--rl_kl_coef=0.04",
                               "--rl_clip_eps=0.2", f"--rl_lr={a.lr}", "--rl_weight_decay=0", "--rl_grad_clip=1.0",
                               "--rl_temperature=1.0", "--grader_workers=1", f"--seed={SEED}",
                               f"--rl_activation_checkpointing={a.activation_checkpointing}", f"--compile={a.compile}"])


def classroom_tokenizer(vocab_size):
    """Our BPE trained on classroom problems and their solutions (as tests/test_grpo.py trains
    its tokenizer) plus pages of the classroom web (the problems alone have too few merges for
    1,024 ids): up to 1,024 ids. A larger vocabulary (the 1.3B's 32,256, for bench/gpu.sh) is
    filled with placeholder ids between the merges and the special tokens: byte strings that
    start with 0xFF, which no UTF-8 text contains, so no text ever encodes to them; a random
    model may sample them, and they decode (to U+FFFD)."""
    import random

    from support import classroom_web, tasks
    from support.tokenizer import PAT_STR, Tokenizer, train_bpe

    problems = tasks.classroom_problems("train", 2000, SEED)
    rng = random.Random(SEED)
    styles = ("worked", "rules", "drill", "forum", "shop", "recipe", "sports", "news", "weather", "travel")
    texts = [p.question + " " + tasks.render_solution(p, "cot") for p in problems]
    texts += [classroom_web.page_text(rng, styles[i % len(styles)]) for i in range(3000)]
    tokenizer = train_bpe(texts, min(vocab_size, 1024))
    if vocab_size <= 1024:
        return tokenizer
    ranks = dict(tokenizer.mergeable_ranks)
    n_specials = len(tokenizer.special_tokens)
    for rank in range(len(ranks), vocab_size - n_specials):
        ranks[b"\xff" + rank.to_bytes(3, "big")] = rank
    specials = {token: vocab_size - n_specials + i
                for i, token in enumerate(sorted(tokenizer.special_tokens, key=tokenizer.special_tokens.get))}
    return Tokenizer(ranks, specials, PAT_STR)


def build_model_folder(folder):
    """A random model of configs/classroom.py's shape (4 layers x 128, vocabulary 1,024) with
    `classroom_tokenizer`, saved as grpo.py reads a checkpoint: Hugging Face layout +
    tokenizer.tiktoken."""
    import torch

    from model import ModelArgs, Transformer
    from support import config, training

    cfg = config.load_config([os.path.join(ROOT, "configs", "classroom.py")])
    tokenizer = classroom_tokenizer(cfg.vocab_size)
    torch.manual_seed(0)
    args = ModelArgs.from_config(cfg, bos_id=tokenizer.bos_id, eos_id=tokenizer.eos_id)
    training.save_checkpoint(folder, Transformer(args), tokenizer)


def step_questions(a, n_steps):
    """The questions of each step, [[Problem] * questions] * n_steps, the same for both sides."""
    from support import tasks
    problems = tasks.classroom_problems("train", a.questions * n_steps, SEED + 1)
    return [problems[s * a.questions:(s + 1) * a.questions] for s in range(n_steps)]


def hf_tokenizer(ours):
    """A transformers PreTrainedTokenizerFast giving our tokenizer's ids: the same byte-level BPE
    (vocabulary and merges from our ranks, as transformers' TikTokenConverter builds them), the
    same pre-tokenizer regex, our BOS/EOS/PAD as special tokens. TRL needs one to tokenize
    prompts and decode completions."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    if ours.split_patterns or ours.normalizer or ours.chat_template:
        raise SystemExit("hf_tokenizer: only our own BPE (one regex, no normalizer, no chat template) is converted")
    to_unicode = bytes_to_unicode()  # GPT-2's printable stand-in for each byte

    def text(b):
        return "".join(to_unicode[x] for x in b)

    ranks = ours.mergeable_ranks
    vocab = {text(token): rank for token, rank in ranks.items()}
    merges = []
    for token, rank in sorted(ranks.items(), key=lambda item: item[1]):
        # every split of a multi-byte token into two known tokens is a merge that can make it
        pairs = [(token[:i], token[i:]) for i in range(1, len(token)) if token[:i] in ranks and token[i:] in ranks]
        merges += [(text(l), text(r)) for l, r in sorted(pairs, key=lambda p: (ranks[p[0]], ranks[p[1]]))]
    tk = Tokenizer(models.BPE(vocab, merges, fuse_unk=False, ignore_merges=True))
    tk.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(ours.pat_str), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tk.decoder = decoders.ByteLevel()
    tk.add_special_tokens(sorted(ours.special_tokens, key=ours.special_tokens.get))
    return PreTrainedTokenizerFast(tokenizer_object=tk, bos_token=ours.bos, eos_token=ours.eos[0],
                                   pad_token=ours.pad)


def prompt_text(tokenizer, problem):
    """BOS + our chat prompt as text: the HF tokenizer reads the BOS string as the special token."""
    from support.tokenizer import COT_SUFFIX, chat_prompt
    return tokenizer.bos + chat_prompt(problem.question, COT_SUFFIX)


# ---------------------------------------------------------------------------------------------
# Measuring a side: time, memory, profile
# ---------------------------------------------------------------------------------------------


def rss_mb(field="VmRSS"):
    """This process's resident memory now (VmRSS) or at its peak (VmHWM), MB."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field)) / 1024


class Timer:
    """Seconds spent inside wrapped functions, by part; nested calls of one part count once."""

    def __init__(self):
        self.seconds, self.depth = {}, {}

    def wrap(self, part, fn, when=None):
        def timed(*args, **kwargs):
            if when is not None and not when():
                return fn(*args, **kwargs)
            self.depth[part] = self.depth.get(part, 0) + 1
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.depth[part] -= 1
                if not self.depth[part]:
                    self.seconds[part] = self.seconds.get(part, 0.0) + time.perf_counter() - start
        return timed

    def take(self):
        seconds, self.seconds = self.seconds, {}
        return seconds


# the kernels both sides run on the same shapes: matmuls, attention, the log-softmax of the logits
SHARED_KERNELS = ("aten::mm", "aten::addmm", "aten::bmm", "aten::_log_softmax", "aten::_log_softmax_backward_data")


def goal_verdict(per_round, met):
    """Whether a speed goal is met, judged round by round: each round's ratio ran its two sides
    back to back, so rounds on both sides of the goal mean the difference from it is within this
    bench's round-to-round noise. met(ratio) says whether one ratio meets the goal."""
    k = sum(map(met, per_round))
    if k == len(per_round):
        return "met in every round"
    if k == 0:
        return "not met in any round"
    return f"at its line: met in {k} of {len(per_round)} rounds, within the rounds' noise"


def top_ops(prof, wall_s, n=12):
    """The ops with the most own CPU time in a profiled step, the share of the wall time all ops
    account for (the rest is Python and framework overhead between kernels), and the seconds in
    the kernels both implementations must run (SHARED_KERNELS and attention)."""
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in events) / 1e6
    shared = sum(e.self_cpu_time_total for e in events
                 if e.key in SHARED_KERNELS or "scaled_dot_product" in e.key) / 1e6
    rows = [(e.key, e.self_cpu_time_total / 1e6, e.count) for e in events[:n]]
    return {"wall_s": wall_s, "op_self_s": total, "shared_s": shared, "top": rows}


def n_steps(a):
    """Steps per round: one warm-up, a.steps timed, and one profiled when asked."""
    return 1 + a.steps + (a.profile == "true")


class profiled_step:
    """torch.profiler around the last step of a round when --profile=true (that step is not
    timed: the profiler slows what it records); otherwise nothing."""

    def __init__(self, a, step, n):
        self.on, self.prof = a.profile == "true" and step == n - 1, None

    def __enter__(self):
        if self.on:
            from torch.profiler import ProfilerActivity, profile
            self.prof = profile(activities=[ProfilerActivity.CPU])
            self.prof.__enter__()
        return self

    def __exit__(self, *exc):
        if self.prof is not None:
            self.prof.__exit__(*exc)


def finish(result, a, started_rss, modules_at_start):
    """Write a side's result, with its memory and the packages it first imported after set-up:
    an import inside the steps counts as the step's memory growth, so the table shows them."""
    new = set(sys.modules) - modules_at_start
    # inductor's generated code: a module per kernel or graph, named by a hash ("c2mb...6.kernel",
    # "torch._inductor.runtime.compile_tasks.c2q2...q")
    generated = {name for name in new if any(re.fullmatch(r"c[a-z0-9]{50,}", part) for part in name.split("."))}
    imported = {name.split(".")[0] if not name.startswith("torch.") else ".".join(name.split(".")[:2])
                for name in new - generated}
    imported |= {f"{len(generated)} modules of inductor's generated code"} if generated else set()
    result.update(rss_after_setup_mb=started_rss, peak_rss_mb=rss_mb("VmHWM"), imported_in_steps=sorted(imported))
    with open(a.out, "w") as f:
        json.dump(result, f)


# ---------------------------------------------------------------------------------------------
# Ours: grpo.rl_step, with its four parts timed
# ---------------------------------------------------------------------------------------------


def run_ours(a, folder):
    import torch

    import evaluate
    import grpo
    from support import distributed, rl_support
    from support.tokenizer import load_tokenizer

    torch.set_num_threads(a.threads)
    cfg = classroom_config(a)
    d = distributed.setup("cpu")
    tokenizer = load_tokenizer(cfg, folder)
    questions = step_questions(a, n_steps(a))
    timer = Timer()
    # rl_step looks these up in grpo's namespace when it runs: wrapped, each part is timed
    for part, name in (("generation", "explore"), ("reward", "reward"), ("log-probs", "advantages"),
                       ("update", "update")):
        setattr(grpo, name, timer.wrap(part, getattr(grpo, name)))
    positions = {"read": 0, "padded": 0}  # the update's passes: positions read, and at the batch's full width

    def counted_micro_batches(mask, size):
        batches = rl_support.length_grouped_micro_batches(mask, size)
        positions["read"] += sum(len(rows) * width for rows, width in batches)
        positions["padded"] += mask.numel()
        return batches
    grpo.length_grouped_micro_batches = counted_micro_batches
    steps, lengths, profile = [], [], None
    with evaluate.Grader(cfg.grader_workers, cfg.grader_timeout) as grader:
        run = grpo.Run(cfg, d, tokenizer, grader, folder, folder)
        run.last_checkpoint = folder
        if a.compile == "true":
            # torch.compile's libraries (dynamo, inductor, sympy, ...: ~116 MB of RSS on an Intel
            # Xeon, torch 2.13) are imported at the first compiled call and would count as the
            # step's growth, where TRL's libraries are all imported before its set-up ends. A
            # one-op function compiled here loads them; our model's graphs still compile in the
            # warm-up step, and their memory counts.
            torch.compile(torch.neg)(torch.ones(2))
        started_rss, modules_at_start = rss_mb(), set(sys.modules)
        for step, qs in enumerate(questions):
            profiler = profiled_step(a, step, len(questions))
            with profiler:
                start = time.perf_counter()
                metrics = grpo.rl_step(run, qs, 0, cfg, step)
                total = time.perf_counter() - start
            parts = timer.take()
            if profiler.prof is not None:
                profile = top_ops(profiler.prof, total)
            elif step:  # step 0 warms up
                steps.append({"total": total, **parts})
                lengths.append(metrics["response_len"])
    finish({"side": "ours", "steps": steps, "completion_len": statistics.mean(lengths) if lengths else None,
            "profile": profile, "positions_read": positions["read"] / positions["padded"],
            "threads": torch.get_num_threads()}, a, started_rss, modules_at_start)


# ---------------------------------------------------------------------------------------------
# TRL: GRPOTrainer, the same parts timed from outside its methods
# ---------------------------------------------------------------------------------------------


def trl_args(a, output_dir, max_steps):
    """GRPOConfig for the same step as ours (see the module docstring)."""
    from trl import GRPOConfig
    rows = a.questions * a.group_size
    # generation_batch_size = per_device_train_batch_size x steps_per_generation (its default:
    # gradient_accumulation_steps) = all the step's rows, generated at once as ours are
    return GRPOConfig(
        output_dir=output_dir, use_cpu=True, bf16=False, fp16=False, seed=SEED, max_steps=max_steps,
        per_device_train_batch_size=a.micro_batch, gradient_accumulation_steps=rows // a.micro_batch,
        num_generations=a.group_size, max_completion_length=a.max_new_tokens, temperature=1.0, top_p=1.0,
        top_k=0, num_iterations=1, beta=0.04, epsilon=0.2, loss_type="grpo", scale_rewards="group",
        use_vllm=False, learning_rate=a.lr, lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0,
        adam_beta1=0.9, adam_beta2=0.95, max_grad_norm=1.0, shuffle_dataset=False,
        logging_steps=1, report_to="none", save_strategy="no", disable_tqdm=True, log_completions=False,
        dataloader_num_workers=0, gradient_checkpointing=a.activation_checkpointing == "true")


def run_trl(a, folder):
    import torch
    from datasets import Dataset
    from transformers import PrinterCallback, TrainerCallback
    from trl import GRPOTrainer

    import evaluate
    from support.tokenizer import load_tokenizer

    torch.set_num_threads(a.threads)
    cfg = classroom_config(a)
    ours = load_tokenizer(cfg, folder)
    hf = hf_tokenizer(ours)
    questions = [q for qs in step_questions(a, n_steps(a)) for q in qs]
    prompts = [prompt_text(ours, q) for q in questions]
    for q, text in zip(questions, prompts):  # the same token ids, or nothing is compared
        if hf(text)["input_ids"] != ours.encode_prompt(q.question):
            raise SystemExit(f"the HF tokenizer's prompt ids differ from ours for {q.question!r}")
    dataset = Dataset.from_list([{"prompt": p, "answer": q.answer} for p, q in zip(prompts, questions)])
    timer = Timer()
    grader = evaluate.Grader(cfg.grader_workers, cfg.grader_timeout)

    def correctness(prompts, completions, answer, **kwargs):  # rewards.correctness, for TRL
        return grader.grade(completions, answer)

    class Timed(GRPOTrainer):
        pass

    # the parts, as in ours: generation; reward; log-probs without gradients (pi_ref); the rest of
    # _generate_and_score_completions (tokenising, decoding, advantages) is "other"; update =
    # the step's wall time minus _prepare_inputs (what runs before the policy's forward).
    Timed._generate_single_turn = timer.wrap("generation", GRPOTrainer._generate_single_turn)
    Timed._calculate_rewards = timer.wrap("reward", GRPOTrainer._calculate_rewards)
    Timed._get_per_token_logps_and_entropies = timer.wrap(
        "log-probs", GRPOTrainer._get_per_token_logps_and_entropies, when=lambda: not torch.is_grad_enabled())
    Timed._prepare_inputs = timer.wrap("prepare", GRPOTrainer._prepare_inputs)

    steps, lengths, profile = [], [], None
    total_steps = n_steps(a)

    class StepClock(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            timer.take()
            self.profiler = profiled_step(a, state.global_step, total_steps).__enter__()
            self.start = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            nonlocal profile
            total = time.perf_counter() - self.start
            self.profiler.__exit__(None, None, None)
            parts = timer.take()
            parts["update"] = total - parts.pop("prepare", 0.0)
            parts["other"] = total - sum(parts.values())  # inside _prepare_inputs, outside the parts
            if self.profiler.prof is not None:
                profile = top_ops(self.profiler.prof, total)
            elif state.global_step > 1:  # the first step warms up
                steps.append({"total": total, **parts})

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "completions/mean_length" in logs and 1 < state.global_step <= 1 + a.steps:
                lengths.append(logs["completions/mean_length"])

    with tempfile.TemporaryDirectory() as out:
        trainer = Timed(model=folder, reward_funcs=correctness, args=trl_args(a, out, total_steps),
                        train_dataset=dataset, processing_class=hf, callbacks=[StepClock()])
        trainer.remove_callback(PrinterCallback)  # its log dicts (StepClock reads them) would fill our stdout
        started_rss, modules_at_start = rss_mb(), set(sys.modules)
        trainer.train()
    grader.close()
    finish({"side": "trl", "steps": steps, "completion_len": statistics.mean(lengths) if lengths else None,
            "profile": profile, "threads": torch.get_num_threads()}, a, started_rss, modules_at_start)


# ---------------------------------------------------------------------------------------------
# The parent: both sides in turn, then the table
# ---------------------------------------------------------------------------------------------

PARTS = ("generation", "reward", "log-probs", "update", "other")


def summarise(runs):
    """A side's step: the mean of every timed step of every round, and its split into parts
    averaged the same way, so the parts add up to the step. Every round takes the same steps
    (the same questions, seeds on our side), some with longer outputs than others: a mean
    weighs each as often as it occurs, where a median would pick the side's lighter steps.
    Memory: the highest peak RSS of the rounds, and the most a round grew after its set-up
    (the step's own memory, without the libraries each side imports)."""
    steps = [s for r in runs for s in r["steps"]]
    split = {p: statistics.mean(s.get(p, 0.0) for s in steps) for p in PARTS}
    if "other" not in steps[0]:  # ours: whatever rl_step does outside its four parts
        split["other"] = statistics.mean(s["total"] for s in steps) - sum(split[p] for p in PARTS[:-1])
    return {"step_s": statistics.mean(s["total"] for s in steps), "split": split,
            "all_steps": [round(s["total"], 3) for s in steps],
            "round_means": [statistics.mean(s["total"] for s in r["steps"]) for r in runs],
            "completion_len": statistics.mean(r["completion_len"] or 0 for r in runs),
            "peak_rss_mb": max(r["peak_rss_mb"] for r in runs),
            "rss_after_setup_mb": min(r["rss_after_setup_mb"] for r in runs),
            "growth_mb": max(r["peak_rss_mb"] - r["rss_after_setup_mb"] for r in runs),
            "threads": runs[0]["threads"], "positions_read": runs[0].get("positions_read"),
            "imported_in_steps": sorted({m for r in runs for m in r["imported_in_steps"]})}


def machine():
    from support import report
    return f"{report.cpu_name()}, {os.cpu_count()} cores, load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}"


def print_report(a, results):
    ours, trl = results["ours"], results["trl"]
    rows = a.questions * a.group_size
    print(f"\nGRPO step: {a.questions} questions x {a.group_size} outputs = {rows} rows, <= {a.max_new_tokens} new "
          f"tokens, micro-batches of {a.micro_batch} rows, mu 1, beta 0.04, clip 0.2, float32, {ours['threads']} "
          f"thread(s), activation checkpointing {a.activation_checkpointing} on both sides, grpo.py "
          f"--compile={a.compile} (TRL eager); {machine()}")
    print(f"means over every timed step of every round ({len(ours['all_steps'])} a side):")
    print(f"{'':12s}{'s/step':>8s}" + "".join(f"{p:>12s}" for p in PARTS) + f"{'len':>7s}{'peak RSS MB':>13s}"
          f"{'RSS at start':>14s}{'growth MB':>11s}")
    for name, r in (("grpo.py", ours), ("TRL", trl)):
        print(f"{name:12s}{r['step_s']:8.3f}" + "".join(f"{r['split'][p]:12.3f}" for p in PARTS)
              + f"{r['completion_len'] or 0:7.1f}{r['peak_rss_mb']:13.0f}{r['rss_after_setup_mb']:14.0f}"
              + f"{r['growth_mb']:11.0f}")
    ratio = ours["step_s"] / trl["step_s"]
    print(f"every timed step, s: grpo.py {ours['all_steps']}; TRL {trl['all_steps']}")
    print(f"the update's passes: ours read {100 * ours['positions_read']:.0f}% of the positions of the rows padded to "
          f"the step's longest (rows of similar length share a micro-batch, cut to its longest row); TRL pads every "
          f"row to the step's longest prompt and longest completion")
    print("first imported inside the steps (counted in the growth): "
          + "; ".join(f"{name} {', '.join(r['imported_in_steps']) or 'nothing'}" for name, r in (("grpo.py", ours), ("TRL", trl))))
    per_round = [o / t for o, t in zip(ours["round_means"], trl["round_means"])]  # each round's pair ran back to back
    peak, growth = ours["peak_rss_mb"] / trl["peak_rss_mb"], ours["growth_mb"] / trl["growth_mb"]
    print(f"ours / TRL: step {ratio:.2f}x (rounds {min(per_round):.2f}-{max(per_round):.2f}x; goal <= 0.70x: "
          f"{goal_verdict(per_round, lambda r: r <= 0.7)}); "
          + ", ".join(f"{p} {ours['split'][p] / trl['split'][p]:.2f}x" for p in PARTS[:4] if trl['split'][p] > 0)
          + f"; peak RSS {peak:.2f}x, growth after set-up {growth:.2f}x (goal <= 1.00x on both: "
          f"{'met' if max(peak, growth) <= 1 else 'not met'})")
    for name, r in (("grpo.py", ours), ("TRL", trl)):
        p = r.get("profile")
        if p:
            print(f"\n{name}, one profiled step: {p['wall_s']:.3f} s wall; ops' own CPU time {p['op_self_s']:.3f} s "
                  f"({100 * p['op_self_s'] / p['wall_s']:.0f}%; the rest is Python between ops); matmuls, attention "
                  f"and log-softmax {p['shared_s']:.3f} s ({100 * p['shared_s'] / p['wall_s']:.0f}%)")
            for key, s, count in p["top"]:
                print(f"  {key:58s}{s:8.3f} s {count:8d} calls")
    p = ours.get("profile")
    if p and a.compile == "true":
        print("\nceiling: not computed with --compile=true (a compiled graph's kernels are one opaque call to the profiler)")
    elif p:
        # TRL runs the same matmuls and attention on the same shapes: even with every other op of
        # ours free, our step could not fall below these kernels' time
        floor = p["shared_s"] / p["wall_s"] * ours["step_s"]
        print(f"\nceiling: with every op of ours but matmuls, attention and log-softmax free, our step would "
              f"take >= {floor:.2f} s = {floor / trl['step_s']:.2f}x TRL's")


def main(argv=None):
    a = parse_args(argv)
    if a.side:
        os.environ.setdefault("OMP_NUM_THREADS", str(a.threads))
        (run_ours if a.side == "ours" else run_trl)(a, a.checkpoint)
        return
    a.micro_batch = min(a.micro_batch, a.questions * a.group_size)  # a step of fewer rows is one micro-batch
    if (a.questions * a.group_size) % a.micro_batch:
        sys.exit(f"--micro_batch={a.micro_batch} must divide the step's {a.questions * a.group_size} rows "
                 "(TRL accumulates whole micro-batches)")
    try:
        import trl  # noqa: F401
    except ImportError:
        sys.exit("TRL is not installed: pip install -r requirements-bench.txt (TRL and accelerate, pinned)")
    workdir = a.workdir or tempfile.mkdtemp(prefix="bench_grpo_vs_trl-")
    os.makedirs(workdir, exist_ok=True)
    folder = a.checkpoint
    if not folder:
        folder = os.path.join(workdir, "model")
        if not os.path.exists(os.path.join(folder, "config.json")):
            print(f"building a random classroom-shaped model in {folder}", flush=True)
            build_model_folder(folder)
    env = {**os.environ, "OMP_NUM_THREADS": str(a.threads), "TOKENIZERS_PARALLELISM": "false",
           "TRANSFORMERS_VERBOSITY": "error"}
    runs, profiles = {"ours": [], "trl": []}, {}
    # timed rounds, alternating sides; then, with --profile=true, one more run per side whose
    # only timed step is profiled (the profiler slows the step and fills memory: not counted)
    plan = [(r, side, False) for r in range(a.rounds) for side in ("ours", "trl")]
    plan += [(a.rounds, side, True) for side in ("ours", "trl") if a.profile == "true"]
    for round_, side, profiled in plan:
        out = os.path.join(workdir, f"{side}-{round_}.json")
        cmd = [sys.executable, os.path.abspath(__file__), f"--side={side}", f"--checkpoint={folder}", f"--out={out}",
               f"--questions={a.questions}", f"--group_size={a.group_size}", f"--max_new_tokens={a.max_new_tokens}",
               f"--micro_batch={a.micro_batch}",
               f"--steps={0 if profiled else a.steps}", f"--threads={a.threads}", f"--lr={a.lr}",
               f"--profile={'true' if profiled else 'false'}", f"--activation_checkpointing={a.activation_checkpointing}",
               f"--compile={a.compile}"]
        started = time.perf_counter()
        subprocess.run(cmd, check=True, env=env, cwd=ROOT)
        with open(out) as f:
            result = json.load(f)
        if profiled:
            profiles[side] = result["profile"]
            print(f"{side}: profiled one step ({time.perf_counter() - started:.0f} s with start-up)", flush=True)
            continue
        runs[side].append(result)
        print(f"round {round_ + 1}/{a.rounds} {side}: steps {[round(s['total'], 3) for s in result['steps']]} s "
              f"({time.perf_counter() - started:.0f} s with start-up)", flush=True)
    results = {side: {**summarise(r), "profile": profiles.get(side)} for side, r in runs.items()}
    print_report(a, results)
    with open(os.path.join(workdir, "results.json"), "w") as f:
        json.dump({"args": vars(a), "machine": machine(), **results}, f, indent=1)
    print(f"\n{os.path.join(workdir, 'results.json')}")


if __name__ == "__main__":
    main()
