"""Configuration: one set of keys for every stage, plain Python files to set them.

    python STAGE.py configs/NAME.py --key=value --other_key=value
    torchrun --nproc_per_node=2 STAGE.py configs/NAME.py --key=value

Every key that exists, with its default and its meaning, is written below in DEFAULTS (grouped
by stage). A config file in configs/ is plain assignments (`n_layer = 30`) and may do
arithmetic, as nanoGPT's do. `--key=value` on the command line overrides the file. A key that
is not in DEFAULTS, or a value whose type differs from the default's, is an error that names
the key and lists the valid ones: a typo never silently trains the wrong model. A value out of
its key's range (RULES: counts >= 1, rates > 0, shares in [0, 1), ...) is an error naming it too.
"""

import ast
import difflib
import fnmatch
import re
import sys
import traceback
from types import SimpleNamespace

DEFAULTS = dict(
    # ---------------------------------------------------------------- run
    out_dir="out/classroom",  # every stage writes below this folder (its own sub-folder)
    seed=1337,
    device="auto",  # "auto" = cuda when available, else cpu
    dtype="auto",  # "auto" = bfloat16 autocast on cuda, float32 on cpu; or float32 / bfloat16
    compile=False,  # torch.compile: the trained models (pretrain, sft, grpo) and generation's decode step (other rounding than eager)
    parallel="ddp",  # how a multi-process run shares the model: "ddp" or "fsdp" (FSDP2 fully_shard)
    dry_run=False,  # grpo.py: build the model on the meta device and print the per-GPU memory plan, no training
    # ---------------------------------------------------------------- model (Llama layout)
    vocab_size=4096,
    n_layer=4,
    n_head=4,
    n_kv_head=4,  # < n_head gives grouped-query attention; the 7B uses plain multi-head (32/32)
    dim=128,
    intermediate_size=352,  # SwiGLU hidden width; Llama's rule is about 8/3 * dim
    max_seq_len=512,
    rope_theta=10000.0,
    norm_eps=1e-6,
    tie_embeddings=False,
    init_std=0.02,
    # ---------------------------------------------------------------- tokenizer
    tokenizer_path="",  # a .tiktoken ranks file, or a Hugging Face tokenizer.json; "" = ours in out_dir
    # ---------------------------------------------------------------- tasks (math problems)
    train_problems="classroom",  # SFT/RL problems: "classroom", "gsm8k" / "math" (hub, online) or a .jsonl/.parquet file; "a+b" joins sources (the paper's RL: "gsm8k+math")
    test_problems="classroom",  # held-out problems, same choices (the paper: GSM8K and MATH test sets)
    classroom_seed=1234,  # seed of the generated problems, apart from `seed` so every run sees the same splits
    classroom_train_size=20000,  # generated training problems
    classroom_test_size=500,  # generated held-out problems (disjoint from train by construction)
    classroom_min_steps=2,  # fewest equations in a solution
    classroom_max_steps=3,  # most equations in a solution
    classroom_max_number=99,  # bound on every number in a question and every intermediate result
    classroom_ops="+-",  # step operations: "+" and any of "-", "*" ("*": a one-digit count of groups, 2 steps)
    # ---------------------------------------------------------------- corpus.py
    corpus_seed_files=[],  # seed math pages: .jsonl/.parquet with 'text' (OpenWebMath), WET files, or "hf:NAME"; [] with no pool = the classroom web
    corpus_seed_max_pages=0,  # most seed pages read, 0 = all (the paper: 500K OpenWebMath pages)
    corpus_pool_files=[],  # the page pool: WET files (.warc.wet[.gz], Common Crawl) or page .jsonl/.parquet; globs; [] = the classroom web
    corpus_benchmarks=["classroom"],  # test sets to decontaminate against: "classroom", "gsm8k", "math" or problem files (tasks.load_problems)
    corpus_shingle_words=5,  # MinHash shingle length in words
    corpus_minhash_perms=128,  # MinHash signature length (hash functions)
    corpus_lsh_bands=16,  # LSH bands; rows per band = perms / bands; candidates from about (1/bands)^(1/rows) similarity
    corpus_dup_jaccard=0.8,  # estimated Jaccard similarity at or above which a page is a near duplicate of an earlier one
    fasttext_dim=32,  # classifier embedding size (paper: 256; smaller is faster and enough for the classroom)
    fasttext_lr=0.1,  # learning rate (paper: 0.1)
    fasttext_word_ngrams=3,  # word n-gram features (paper: 3)
    fasttext_min_count=3,  # words seen fewer times are dropped (paper: 3)
    fasttext_epoch=10,  # passes over the training lines (paper: 3, over 1M lines; the classroom's few thousand need more)
    fasttext_bucket=100000,  # hash buckets for the n-gram features (fastText default 2,000,000)
    fasttext_threads=1,  # training threads; 1 makes training deterministic
    corpus_iterations=4,  # most collection iterations (the paper ran 4)
    corpus_negative_ratio=1.0,  # negatives sampled from the pool per positive (paper: 500K vs 500K)
    corpus_min_score=0.5,  # ours: P(math) at or above which a page is collected (the paper keeps the top-scored pages up to a token budget)
    corpus_domain_share=0.1,  # a domain with more than this share of its pages collected is math-related (paper: 10%)
    corpus_url_prefix_depth=1,  # URL path segments that make a page's prefix in domain discovery (/questions/...)
    corpus_url_patterns="",  # a file of URL globs ("host/path*") a person marked as math: pool pages matching them are seeds
    corpus_stop_new_share=0.02,  # stop when an iteration collects fewer new pages than this share of all collected (from paper 2.1: ~98% was collected by the 3rd iteration)
    corpus_decontam_ngram=10,  # a page holding any n-gram of a benchmark question/answer is removed (paper: 10)
    corpus_decontam_min_ngram=3,  # benchmark texts of this many to n-1 words are matched whole (paper: 3)
    corpus_val_share=0.02,  # share of selected pages whose tokens go to the validation shards
    corpus_train_tokenizer=True,  # train the BPE on the selected corpus and save {out_dir}/tokenizer.tiktoken (tokenizer_path must be "")
    corpus_tokenizer_extra=["classroom"],  # problem sources whose prompts and solutions also train the BPE (SFT formats)
    web_pool_pages=30000,  # classroom web: pages in the crawl, ~13% math (plus ~4% URL repeats and mirrors)
    web_seed_pages=1500,  # classroom web: seed math pages (worked examples only)
    web_shards=4,  # classroom web: pool files (the unit of work of a torchrun rank)
    web_contaminated_pages=12,  # classroom web: forum pages quoting a held-out test problem verbatim
    # ---------------------------------------------------------------- pretrain.py
    pretrain_sources={"math": "corpus/tokens"},  # name -> folder of train-*.bin / val-*.bin token shards (relative to out_dir, or absolute)
    pretrain_weights={"math": 1.0},  # name -> sampling weight, normalised (paper 7B: corpus .56, AlgebraicStack .04, arXiv .10, GitHub .20, CC .10)
    pretrain_init="",  # HF checkpoint folder to continue from (paper 7B: DeepSeek-Coder-Base-v1.5); "" = random init
    pretrain_steps=1000,  # optimizer steps (paper 7B: 500B tokens / 10M = 50,000)
    pretrain_tokens_per_step=65536,  # global batch in tokens (paper: 10M for 7B, 4M for 1.3B); a multiple of batch x max_seq_len x ranks
    pretrain_batch_size=16,  # rows of max_seq_len tokens per device per micro-step; accumulation makes up the rest
    pretrain_lr=1e-3,  # peak learning rate (paper: 4.2e-4 for 7B, 5.3e-4 for 1.3B)
    pretrain_warmup_steps=100,  # linear warm-up steps to the peak (paper: 2,000)
    pretrain_weight_decay=0.1,  # AdamW weight decay on matrices (paper: 0.1)
    pretrain_betas=[0.9, 0.95],  # AdamW beta1, beta2 (paper: 0.9, 0.95)
    pretrain_grad_clip=1.0,  # clip the global gradient norm to this (DeepSeek LLM: 1.0)
    pretrain_eval_every=100,  # steps between validation losses (and one at the end)
    pretrain_eval_batches=8,  # validation micro-batches per rank (the same rows every time)
    pretrain_ckpt_every=500,  # steps between checkpoints (and one at the end)
    pretrain_resume=True,  # continue from {out_dir}/pretrain/ckpt when it holds a train_state.pt; false = start over
    # ---------------------------------------------------------------- sft.py
    sft_folder="sft",  # the folder under out_dir that sft.py writes (pipeline.py's reward-model trunk: sft_rm)
    sft_init="",  # checkpoint folder to tune (ours or a Hugging Face Llama folder); "" = {out_dir}/pretrain/ckpt
    sft_formats={"cot": 1.0},  # share of examples per solution format: "cot", "pot", "tool" (paper: all three; GSM8K/MATH rows have cot only)
    sft_steps=500,  # optimizer steps (paper: 500)
    sft_batch_size=256,  # packed context windows per step, all ranks together (paper: 256 of 4K tokens; the window is the model's max_seq_len)
    sft_micro_batch_size=4,  # windows per forward/backward on one rank; gradients accumulate up to sft_batch_size
    sft_lr=5e-5,  # constant learning rate (paper: 5e-5)
    sft_weight_decay=0.1,  # AdamW weight decay (paper: not stated for SFT; pretraining's 0.1)
    sft_grad_clip=1.0,  # largest global gradient norm (paper: not stated)
    sft_save_every=100,  # steps between resumable checkpoints in {out_dir}/sft/ckpt (and after the last step)
    sft_eval_problems=200,  # held-out test problems for the final greedy accuracy and format compliance; 0 = all
    sft_resume=True,  # continue from {out_dir}/sft/ckpt when it holds a train_state.pt; false = start over
    # ---------------------------------------------------------------- evaluate.py
    grader_workers=0,  # answer-grading processes (evaluation and RL rewards); 0 = one per CPU core, at most 8
    grader_timeout=3,  # seconds math-verify may spend on one parse or comparison (an int: signal.alarm)
    eval_checkpoint="",  # the checkpoint folder evaluate.py evaluates (ours, or a Hugging Face Llama folder)
    eval_tasks=[],  # problem sources to evaluate, split "test" ("classroom", "gsm8k", "math", files); [] = [test_problems]
    eval_n_problems=0,  # the first N problems of each task; 0 = all (the paper: GSM8K's 1,319, MATH's 5,000)
    eval_mode="chat",  # "chat": the chat template (tuned models); "fewshot": few-shot prompts (base models)
    eval_format="cot",  # "cot" chain-of-thought, "pot" a program prints the answer, "tool" tool-integrated
    eval_shots=0,  # few-shot examples; 0 = the paper's 8 (GSM8K) / 4 (MATH), 3 for the classroom
    eval_k=1,  # samples per problem for maj@k and pass@k (paper figure 7: K up to 64); 1 = greedy only
    eval_k_problems=0,  # maj@k and pass@k on the first N problems only (their k samples cost k greedy answers each); 0 = all
    eval_temperature=0.7,  # sampling temperature of the k samples (paper section 5.2.2: 0.7)
    eval_max_new_tokens=512,  # most tokens per response (tool-integrated: per round)
    eval_batch_size=32,  # responses generated together (rows of one KV cache)
    eval_tool_rounds=4,  # most code executions in one tool-integrated response
    eval_program_timeout=10.0,  # wall-clock seconds for a sandboxed program (its CPU limit too)
    eval_program_memory_mb=2048,  # address-space limit of a sandboxed program, MiB
    # ---------------------------------------------------------------- grpo.py
    # Each RL value: "paper" = DeepSeekMath's own (its section), or "ours" = not stated in the
    # paper, our choice, with the reason. README.md, "Where this differs from the paper", lists all.
    rl_algo="grpo",  # "grpo", "ppo" (value model + GAE), "rft" (samples of the SFT model), "online_rft"
    rl_reward="outcome",  # "outcome" (grader), "process" (per-step checker), "orm" / "prm" (learned reward model)
    rl_init_checkpoint="",  # the starting policy folder; "" = {out_dir}/sft/ckpt
    rl_resume=False,  # continue {out_dir}/rl/{method}/ckpt from its train_state.pt
    rl_compare=False,  # run GRPO and PPO from the same start; print one table, write rl/compare.png
    rl_seed=0,  # the RL run's own seed (sampling, question order, reward model); 0 = seed. Output: rl/{method}-seed{N}
    rl_steps=100,  # exploration stages (each: sample, reward, rl_mu policy updates); paper: not stated
    rl_questions_per_step=16,  # questions per step, split across ranks (paper 4.2: batch 1024 and G = 64, so 16 questions)
    rl_group_size=64,  # G, outputs sampled per question (paper 4.2: 64)
    rl_temperature=1.0,  # ours (paper: not stated): sample the policy as it is; log-probs are taken at the same one
    rl_max_new_tokens=1024,  # most tokens per output (paper 4.2: max length 1024)
    rl_rollout_questions=1,  # questions whose G outputs are generated together (one KV cache of this x G rows)
    rl_micro_batch=16,  # outputs per forward/backward pass (gradient accumulation over the step; outputs of similar length share one)
    rl_mu=1,  # policy updates per exploration stage (paper 4.2: 1)
    rl_lr=1e-6,  # policy AdamW learning rate, constant (paper 4.2: 1e-6)
    rl_weight_decay=0.0,  # ours (paper: not stated): no decay, so the KL to pi_ref is the only pull on the policy
    rl_grad_clip=1.0,  # ours (paper: not stated): the usual 1.0, a guard against one bad batch
    rl_clip_eps=0.2,  # ours (paper: not stated): PPO's usual epsilon (Schulman et al. 2017), as TRL and verl
    rl_kl_coef=0.04,  # beta (paper 4.2: 0.04 for GRPO); ours: PPO's per-token KL penalty reuses it (not stated)
    rl_iteration_steps=0,  # iterative RL (paper 4.1.4, Alg. 1): reset pi_ref (and retrain the RM) every N steps; 0 = never
    rl_activation_checkpointing=False,  # recompute each block's activations in backward (7B: saves memory)
    rl_eval_every=0,  # held-out greedy accuracy every N steps (metrics.jsonl heldout_greedy); 0 = only before/after
    rl_eval_problems=0,  # held-out problems of grpo.py's own accuracy checks; 0 = eval_n_problems
    rl_save_every=50,  # checkpoint every N steps (and at the end)
    rl_viewer_questions=2,  # fixed training questions whose groups rollouts.jsonl records for viewer.py
    rl_viewer_steps=[],  # steps (0-based) recorded for viewer.py; [] = the first, the middle and the last
    rl_min_reward_spread=0.01,  # ours: a group whose reward std is under this has advantages 0 (a learned RM's noise is no signal) ...
    rl_flat_reward_steps=10,  # ... and when the mean within-group std stays under it this many steps in a row: a loud warning
    rl_collapse_drop=0.25,  # ours: stop when held-out greedy accuracy falls this far below the start (a collapse)
    rl_rm_checkpoint="",  # a trained reward model folder (scalar head, + LM head with rl_rm_likelihood); "" = train one (from rl_rm_init)
    rl_rm_init="",  # the checkpoint a new reward model starts from (the policy's tokenizer); "" = the policy's starting checkpoint
    rl_rm_likelihood=True,  # ours: the RM's log-odds add its LM's log-probs of the stated results (support/rewards.py); false = the paper's scalar head alone
    rl_rm_questions=64,  # questions whose G graded samples first train the reward model
    rl_rm_heldout=0.2,  # ours: share of the reward model's new questions held out to measure its accuracy and AUC
    rl_rm_epochs=2,  # passes over the reward model's new samples (+ replay) per training round
    rl_rm_lr=2e-5,  # reward model AdamW learning rate (paper 4.2: 2e-5)
    rl_rm_replay=0.1,  # share of all earlier samples replayed when the reward model retrains (paper 4.1.4: 10%)
    ppo_value_init="policy",  # the value model starts from the "policy" trunk or the "reward" model
    ppo_value_lr=1e-6,  # ours (paper: not stated): the policy's lr
    ppo_value_clip=0.2,  # ours (paper: not stated): the value loss clips V to V_old +- this, PPO's usual 0.2
    ppo_gamma=1.0,  # GAE discount; ours (paper: not stated): 1, an episode is one answer, no reason to discount
    ppo_lambda=0.95,  # GAE lambda; ours (paper: not stated): the common 0.95, between TD (0) and Monte Carlo (1)
    # ---------------------------------------------------------------- pipeline.py
    cpu_kernels="",  # pipeline.py on x86: run every stage with these CPU kernels ("avx2"), the same on every machine; "" = torch's choice
    cpu_threads=2,  # pipeline.py with cpu_kernels: threads of a stage; corpus, pretraining and SFT get pipeline_jobs x this under MKL's strict mode (avx2, avx512), where the count changes no bit
    pipeline_jobs=1,  # pipeline.py: stages after SFT run this many at once, each when its inputs are done (logs in {out_dir}/logs)
    learned_rewards=True,  # pipeline.py: also GRPO on a learned ORM, PRM and iterated PRM (each trains its reward model)
    pipeline_rm_sft_steps=0,  # pipeline.py with learned_rewards: > 0 = the reward models start from a longer SFT run of this many steps ({out_dir}/sft_rm, rl_rm_init) than the policy's
    seeds=1,  # RL runs per method, from the same SFT checkpoint with rl_seed 2..N beside the first; the table pairs them
    chains=1,  # whole runs of the recipe (corpus to RL), with seed, seed+1, ...: intervals over their SFT checkpoints ({out_dir}/chain-seed{S})
    results_file="",  # also write results.md there, with the run's wall time, timings.md beside it as X-timings.md and the stages' output as X-log.txt (results/classroom.md: the README's findings)
    # ---------------------------------------------------------------- memory_plan.py
    plan_prompt_len=512,  # longest RL prompt (tokens) the memory plan assumes: rows are this + rl_max_new_tokens long
)


def _keys(*patterns):
    """The keys of DEFAULTS that match the patterns ("*_lr": every learning rate)."""
    return [key for pattern in patterns for key in DEFAULTS if fnmatch.fnmatchcase(key, pattern)]


_AT_LEAST_1 = (lambda v: v >= 1, "at least 1")
_AT_LEAST_0 = (lambda v: v >= 0, "at least 0")
_POSITIVE = (lambda v: v > 0, "above 0")
_SHARE = (lambda v: 0 <= v < 1, "in [0, 1)")
_PROBABILITY = (lambda v: 0 <= v <= 1, "in [0, 1]")
_DEVICE = (lambda v: re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", v), "auto, cpu, cuda, cuda:N or mps")

# key -> (test, what a value must be): checked for every value a file or the command line sets.
# Keys not named here are checked by the stage that reads them (formats, algorithms, paths).
RULES = {
    **dict.fromkeys(_keys(
        "vocab_size", "n_layer", "n_head", "n_kv_head", "dim", "intermediate_size", "max_seq_len",
        "classroom_train_size", "classroom_test_size", "classroom_min_steps", "classroom_max_steps",
        "classroom_max_number", "corpus_shingle_words", "corpus_minhash_perms", "corpus_lsh_bands",
        "fasttext_dim", "fasttext_word_ngrams", "fasttext_min_count", "fasttext_epoch", "fasttext_bucket",
        "fasttext_threads", "corpus_iterations", "corpus_decontam_ngram", "corpus_decontam_min_ngram",
        "web_pool_pages", "web_seed_pages", "web_shards", "pretrain_steps", "pretrain_tokens_per_step",
        "pretrain_batch_size", "pretrain_eval_every", "pretrain_eval_batches", "pretrain_ckpt_every",
        "sft_steps", "sft_batch_size", "sft_micro_batch_size", "sft_save_every", "grader_timeout",
        "eval_k", "eval_max_new_tokens", "eval_batch_size", "eval_program_memory_mb", "rl_steps",
        "rl_questions_per_step", "rl_group_size", "rl_max_new_tokens", "rl_rollout_questions",
        "rl_micro_batch", "rl_mu", "rl_save_every", "rl_rm_questions", "rl_rm_epochs", "plan_prompt_len",
        "rl_flat_reward_steps", "seeds", "chains", "cpu_threads", "pipeline_jobs"), _AT_LEAST_1),
    **dict.fromkeys(_keys(
        "seed", "classroom_seed", "corpus_seed_max_pages", "corpus_url_prefix_depth", "web_contaminated_pages",
        "pretrain_warmup_steps", "sft_eval_problems", "grader_workers", "eval_n_problems", "eval_shots",
        "eval_tool_rounds", "rl_iteration_steps", "rl_eval_every", "rl_kl_coef", "*weight_decay", "rl_seed",
        "rl_eval_problems", "rl_viewer_questions", "eval_k_problems", "rl_min_reward_spread",
        "pipeline_rm_sft_steps"), _AT_LEAST_0),
    **dict.fromkeys(_keys(
        "rope_theta", "norm_eps", "init_std", "fasttext_lr", "corpus_negative_ratio", "*_lr", "*grad_clip",
        "eval_temperature", "eval_program_timeout", "rl_temperature", "rl_clip_eps", "ppo_value_clip"), _POSITIVE),
    **dict.fromkeys(_keys("corpus_domain_share", "corpus_stop_new_share", "rl_rm_heldout"), _SHARE),
    **dict.fromkeys(_keys("corpus_dup_jaccard", "corpus_min_score", "rl_rm_replay", "ppo_gamma", "ppo_lambda"),
                    _PROBABILITY),
    "corpus_val_share": (lambda v: 0 < v < 1, "in (0, 1): pretrain.py validates on these pages' tokens"),
    "rl_collapse_drop": (lambda v: 0 < v <= 1, "in (0, 1]: an absolute drop of held-out accuracy"),
    "rl_viewer_steps": (lambda v: all(isinstance(s, int) and s >= 0 for s in v), "a list of steps >= 0"),
    "pretrain_betas": (lambda v: len(v) == 2 and all(0 <= b < 1 for b in v), "two numbers in [0, 1)"),
    "device": _DEVICE,
    "dtype": (lambda v: v in ("auto", "float32", "bfloat16"), "auto, float32 or bfloat16"),
    "cpu_kernels": (lambda v: v in ("", "default", "avx2", "avx512"), "'', default, avx2 or avx512"),
    "parallel": (lambda v: v in ("ddp", "fsdp"), "ddp or fsdp"),
}

# (key, key): the first may not exceed the second.
ORDERED = [("classroom_min_steps", "classroom_max_steps"), ("corpus_decontam_min_ngram", "corpus_decontam_ngram"),
           ("corpus_lsh_bands", "corpus_minhash_perms")]


def _check_range(key, value, where):
    test, allowed = RULES.get(key, (lambda v: True, ""))
    try:
        ok = test(value)
    except TypeError:
        ok = False
    if not ok:
        raise ConfigError(f"{where}: {key} = {value!r} is out of range: {key} must be {allowed}")


def _check_order(values):
    for low, high in ORDERED:
        if values[low] > values[high]:
            raise ConfigError(f"{low} = {values[low]!r} exceeds {high} = {values[high]!r}: "
                              f"make {low} at most {high}")


def _parse_value(key, text, default):
    """Turn the command-line text for `key` into the type of its default."""
    if isinstance(default, bool):
        if text.lower() in ("true", "1", "yes"):
            return True
        if text.lower() in ("false", "0", "no"):
            return False
        raise ConfigError(f"--{key}={text}: expected true or false")
    if isinstance(default, str):
        return text
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        raise ConfigError(f"--{key}={text}: expected a {type(default).__name__} like {default!r}")
    return value


# What a list's elements, or a dict's values, must be (a dict's keys are names: str).
ELEMENT_TYPES = {"corpus_seed_files": str, "corpus_pool_files": str, "corpus_benchmarks": str,
                 "corpus_tokenizer_extra": str, "eval_tasks": str, "pretrain_sources": str,
                 "pretrain_weights": float, "pretrain_betas": float, "sft_formats": float, "rl_viewer_steps": int}


def _check_type(key, value, default, where):
    ok = type(value) is type(default) or (isinstance(default, float) and type(value) is int)
    if isinstance(default, (list, tuple)) and isinstance(value, (list, tuple)):
        ok = True
    if not ok:
        raise ConfigError(
            f"{where}: {key} = {value!r} is a {type(value).__name__}, but {key} takes a "
            f"{type(default).__name__} (default {default!r})"
        )
    kind = ELEMENT_TYPES.get(key)
    if kind is not None:
        items = list(value.values()) if isinstance(value, dict) else list(value)
        fits = [(type(x) is kind or (kind is float and type(x) is int)) for x in items]
        names = all(isinstance(k, str) for k in value) if isinstance(value, dict) else True
        if not (all(fits) and names):
            what = "names to " if isinstance(value, dict) else ""
            raise ConfigError(f"{where}: {key} = {value!r}: it takes {what}{kind.__name__} values "
                              f"(default {default!r})")
    return float(value) if isinstance(default, float) else value


def _unknown(key, where):
    close = difflib.get_close_matches(key, DEFAULTS, n=3)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    valid = ", ".join(sorted(DEFAULTS))
    return ConfigError(f"{where}: unknown config key '{key}'.{hint}\nValid keys: {valid}")


class ConfigError(ValueError):
    pass


def _line_of(error, path):
    """The line of `path` an exception raised while the config file ran came from."""
    frames = [f for f in traceback.extract_tb(error.__traceback__) if f.filename == path]
    return frames[-1].lineno if frames else "?"


def load_config(argv=None):
    """Defaults <- config file (first positional argument) <- --key=value overrides."""
    argv = sys.argv[1:] if argv is None else argv
    values = dict(DEFAULTS)
    files = [a for a in argv if not a.startswith("--")]
    if len(files) > 1:
        raise ConfigError(f"expected one config file, got {files}")
    for path in files:
        try:
            source = open(path).read()
        except OSError as e:
            raise ConfigError(f"cannot read config file {path}: {e.strerror}; "
                              "pass a file from configs/, e.g. configs/classroom.py")
        scope = {}  # one namespace, as nanoGPT's configurator: a comprehension sees the file's names
        try:
            exec(compile(source, path, "exec"), scope)
        except Exception as e:  # a syntax error, a name the file never set: the file's line, not a traceback
            line = getattr(e, "lineno", None) or _line_of(e, path)
            close = difflib.get_close_matches(getattr(e, "name", None) or "", list(DEFAULTS), n=1)
            raise ConfigError(f"{path}:{line}: {type(e).__name__}: {e}"
                              + (f" (did you mean {close[0]}?)" if close else "")) from None
        for key, value in scope.items():
            if key.startswith("_") or isinstance(value, type(sys)) or callable(value):  # helpers, imports
                if key in DEFAULTS:  # else `rl_lr = f` would leave the default in place without a word
                    raise ConfigError(f"{path}: {key} is bound to {type(value).__name__} {value!r}, not a value; "
                                      f"write {key} = {DEFAULTS[key]!r} or another value of that kind")
                continue
            if key not in DEFAULTS:
                raise _unknown(key, path)
            values[key] = _check_type(key, value, DEFAULTS[key], path)
            _check_range(key, values[key], path)
    for arg in argv:
        if not arg.startswith("--"):
            continue
        if "=" not in arg:
            raise ConfigError(f"{arg}: write overrides as --key=value")
        key, text = arg[2:].split("=", 1)
        if key not in DEFAULTS:
            raise _unknown(key, "command line")
        value = _parse_value(key, text, DEFAULTS[key])
        values[key] = _check_type(key, value, DEFAULTS[key], "command line")
        _check_range(key, values[key], "command line")
    _check_order(values)
    return SimpleNamespace(**values)


def main_config(argv=None):
    """load_config for a script's entry point: a bad config ends the run with its message only."""
    try:
        return load_config(argv)
    except ConfigError as e:
        sys.exit(f"config error: {e}")


def with_keys(cfg, **keys):
    """A copy of a loaded config with some keys set otherwise (cfg itself is left as it was)."""
    return SimpleNamespace(**{**vars(cfg), **keys})
