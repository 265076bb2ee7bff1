# A 1.3B model on one GPU: the paper's corpus-comparison scale (section 2.2), whole recipe.
#
#     python -m support.memory_plan configs/1.3b.py        # what one GPU holds, GRPO vs PPO
#     python corpus.py configs/1.3b.py                      # select pages, train a 32K BPE, tokenize
#     python pretrain.py configs/1.3b.py
#     python sft.py configs/1.3b.py
#     python grpo.py configs/1.3b.py --rl_compare=true      # GRPO and PPO from the same start
#
# The paper's 1.3B runs (DeepSeek-LLM 1.3B on each candidate corpus): 150B tokens, AdamW 0.9/0.95,
# weight decay 0.1, the multi-step schedule with peak 5.3e-4, 4M-token batches of 4K context.
# Every stage keeps the paper's numbers; one GPU reaches the large batches by accumulation
# (pretraining, SFT) and by generating one question's outputs at a time (RL), as written out below.
# Expects data/common_crawl/*.warc.wet.gz (the page pool); OpenWebMath, GSM8K, MATH come from the hub.

out_dir = "out/1.3b"
device = "cuda"
dtype = "bfloat16"

# ---- model: the DeepSeek 1.3B Llama shape (deepseek-coder-1.3b-base config.json)
vocab_size = 32256  # our BPE, trained by corpus.py on the selected pages (corpus_train_tokenizer)
n_layer = 24
dim = 2048
n_head = 16  # head dim 2048 / 16 = 128, as in the 7B
n_kv_head = 16
intermediate_size = 5504  # 8/3 * 2048 = 5,461, rounded up to a multiple of 128
max_seq_len = 4096
rope_theta = 10000.0
norm_eps = 1e-6
# 24 x (4 x 2048^2 + 3 x 2048 x 5504 + 2 x 2048) + 2 x 32256 x 2048 + 2048 = 1.35B parameters

# ---- problems: SFT and RL train on GSM8K training questions, evaluation on the test set
train_problems = "gsm8k"
test_problems = "gsm8k"

# ---- corpus.py (paper 2.1): the same fastText loop as configs/7b.py
corpus_seed_files = ["hf:open-web-math/open-web-math"]
corpus_seed_max_pages = 500_000
corpus_pool_files = ["data/common_crawl/*.warc.wet.gz"]
corpus_benchmarks = ["gsm8k", "math"]
fasttext_dim = 256
fasttext_epoch = 3
fasttext_bucket = 2_000_000
corpus_iterations = 4
corpus_tokenizer_extra = ["gsm8k"]  # the SFT/RL prompt and solution formats also train the BPE

# ---- pretrain.py (paper 2.2): 150B tokens in 4M-token batches, peak 5.3e-4
pretrain_batch_size = 4  # rows of 4,096 tokens per micro-step (~34 GiB of activations)
pretrain_tokens_per_step = 1024 * 4096  # 4.19M ~ the paper's 4M: 1,024 rows = 256 micro-steps of 4
pretrain_steps = 150_000_000_000 // pretrain_tokens_per_step  # 150B tokens = 35,762 steps
pretrain_lr = 5.3e-4
pretrain_warmup_steps = 2000
pretrain_weight_decay = 0.1
pretrain_betas = [0.9, 0.95]
pretrain_grad_clip = 1.0
pretrain_eval_every = 1000
pretrain_ckpt_every = 1000

# ---- sft.py (paper 3.2): 500 steps x 256 windows of 4K, constant 5e-5 (on GSM8K's 7,473 problems,
# chain-of-thought only, where the paper's 7B had 776K in three formats: see configs/7b.py)
sft_steps = 500
sft_batch_size = 256
sft_micro_batch_size = 4  # 64 accumulation steps on one GPU
sft_lr = 5e-5
sft_save_every = 100

# ---- grpo.py (paper 4.2): the paper's step, 16 questions x G = 64 = 1,024 outputs, lr 1e-6,
# beta 0.04, max length 1024, mu = 1. One GPU generates one question's 64 outputs at a time: a
# KV cache of 64 x 1,536 positions x 24 layers x 2 x 2,048 x 2 bytes = 18 GiB.
# support/memory_plan.py gives a peak of ~41 GiB for GRPO and ~55 GiB for PPO (its value model);
# with two questions per cache (36 GiB), ~60 and ~74 GiB: both under 80 GB by the plan, not yet
# measured on a GPU
rl_algo = "grpo"
rl_reward = "outcome"
rl_questions_per_step = 1024 // 64  # 16
rl_rollout_questions = 1
rl_group_size = 64
rl_max_new_tokens = 1024
rl_mu = 1
rl_lr = 1e-6
rl_kl_coef = 0.04
rl_steps = 1000  # not stated in the paper: our choice, ~2.1 passes over GSM8K's 7,473 questions
rl_micro_batch = 8
rl_activation_checkpointing = True
rl_eval_every = 100
rl_save_every = 100

# ---- evaluate.py (as paper 3.2 and 4.2 evaluate the 7B): greedy chain-of-thought on the GSM8K and MATH test sets
eval_tasks = ["gsm8k", "math"]
eval_max_new_tokens = 1024
eval_batch_size = 64
grader_workers = 8
