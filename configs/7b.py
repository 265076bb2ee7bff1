# DeepSeekMath 7B: the paper's numbers for every stage (Shao et al. 2024, sections 2-4).
#
#     python -m support.memory_plan configs/7b.py --world_size=8      # per-GPU memory, GRPO vs PPO
#     torchrun --nproc_per_node=8 grpo.py configs/7b.py --dry_run=True
#     torchrun --nproc_per_node=8 grpo.py configs/7b.py               # GRPO from DeepSeekMath-Instruct
#     torchrun --nproc_per_node=8 evaluate.py configs/7b.py --eval_checkpoint=out/7b/rl/grpo_outcome/ckpt
#
# Local files this config expects (override any of them with --key=value):
#   checkpoints/deepseek-math-7b-instruct/   the Hugging Face folder (config.json, two bf16
#                                            safetensors shards, tokenizer.json)
#   data/common_crawl/*.warc.wet.gz          the page pool of corpus.py (Common Crawl WET files)
# GSM8K, MATH and OpenWebMath come from the Hugging Face hub (or pass local .jsonl/.parquet files).

out_dir = "out/7b"
device = "cuda"
dtype = "bfloat16"
parallel = "fsdp"  # FSDP2: 1/world of every parameter, gradient and optimizer state per GPU

# ---- model: deepseek-math-7b-base config.json (LlamaForCausalLM), the DeepSeek-LLM 7B shape
vocab_size = 102400  # 100,015 tokens of DeepSeek's tokenizer, padded to a multiple of 1,024
n_layer = 30
dim = 4096
n_head = 32  # head dim 4096 / 32 = 128
n_kv_head = 32  # plain multi-head attention (no GQA in the 7B)
intermediate_size = 11008  # SwiGLU width: 8/3 * 4096 = 10,923, rounded up to a multiple of 256
max_seq_len = 4096  # the 4K context of pretraining and SFT
rope_theta = 10000.0
norm_eps = 1e-6
tie_embeddings = False
# 30 x (4 x 4096^2 + 3 x 4096 x 11008 + 2 x 4096) + 2 x 102400 x 4096 + 4096 = 6.91B parameters

# ---- tokenizer: DeepSeek's own (byte-level BPE, bos id 100000, eos id 100001), read from the
# checkpoint's tokenizer.json; our BPE is trained only for the classroom
tokenizer_path = "checkpoints/deepseek-math-7b-instruct/tokenizer.json"

# ---- problems: SFT and RL train on GSM8K/MATH training questions, evaluation on their test sets
train_problems = "gsm8k+math"  # the hub's GSM8K and MATH training splits: 7,473 + 7,500 = 14,973 questions
test_problems = "gsm8k"

# ---- corpus.py (paper 2.1): 500K OpenWebMath pages vs 500K Common Crawl pages, fastText
# dim 256 / lr 0.1 / word 3-grams / min count 3 / 3 epochs, 4 iterations, 10% domain rule,
# 10-gram decontamination against the benchmarks
corpus_seed_files = ["hf:open-web-math/open-web-math"]
corpus_seed_max_pages = 500_000
corpus_pool_files = ["data/common_crawl/*.warc.wet.gz"]
corpus_benchmarks = ["gsm8k", "math"]
corpus_negative_ratio = 1.0  # 500K negatives for 500K positives
fasttext_dim = 256
fasttext_lr = 0.1
fasttext_word_ngrams = 3
fasttext_min_count = 3
fasttext_epoch = 3
fasttext_bucket = 2_000_000  # fastText's default: the paper's pool is 40B pages
fasttext_threads = 16
corpus_iterations = 4
corpus_domain_share = 0.1
corpus_decontam_ngram = 10
corpus_decontam_min_ngram = 3
corpus_train_tokenizer = False  # keep DeepSeek's tokenizer (tokenizer_path above)

# ---- pretrain.py (paper 2.3): DeepSeekMath-Base 7B continues DeepSeek-Coder-Base-v1.5 7B for
# 500B tokens: 56% DeepSeekMath Corpus, 4% AlgebraicStack, 10% arXiv, 20% GitHub code, 10% Common
# Crawl natural language; each source a folder of token shards (support/shards.py) under out_dir
pretrain_init = "checkpoints/deepseek-coder-7b-base-v1.5"
pretrain_sources = {"math": "corpus/tokens", "algebraic_stack": "algebraic_stack/tokens",
                    "arxiv": "arxiv/tokens", "github": "github/tokens", "common_crawl": "common_crawl/tokens"}
pretrain_weights = {"math": 0.56, "algebraic_stack": 0.04, "arxiv": 0.10, "github": 0.20, "common_crawl": 0.10}
pretrain_batch_size = 1  # rows of 4,096 tokens per GPU per micro-step
pretrain_tokens_per_step = 2432 * 4096  # 9.96M ~ the paper's 10M, in rows that split over 1, 2, 4, ..., 128 GPUs
pretrain_steps = 500_000_000_000 // pretrain_tokens_per_step  # 500B tokens = 50,193 steps
pretrain_lr = 4.2e-4  # peak; 31.6% of it after 80% of the tokens, 10% after 90% (pretrain.py)
pretrain_warmup_steps = 2000
pretrain_weight_decay = 0.1
pretrain_betas = [0.9, 0.95]
pretrain_grad_clip = 1.0
pretrain_eval_every = 1000
pretrain_ckpt_every = 1000

# ---- sft.py (paper 3.2): DeepSeekMath-Instruct 7B = Base 7B tuned 500 steps x 256 windows of 4K
# tokens at a constant 5e-5. The paper's data (3.1) is 776K problems in three formats; ours is the
# 14,973 training problems above, chain-of-thought only (sft_formats): 500 x 256 windows of 4K are
# ~524M tokens, many passes over them (their text is a few million tokens). For the paper's run, point train_problems at a file of
# its kind (--train_problems=FILE.jsonl, sft_formats with pot and tool).
sft_init = "checkpoints/deepseek-math-7b-base"
sft_steps = 500
sft_batch_size = 256
sft_micro_batch_size = 1  # one 4K window per GPU per micro-step: 256 / 8 GPUs = 32 accumulation steps
sft_lr = 5e-5
sft_save_every = 100

# ---- grpo.py (paper 4.2): DeepSeekMath-RL 7B = GRPO from DeepSeekMath-Instruct 7B. One step
# samples 16 questions x G = 64 outputs = 1,024 outputs (the paper's batch size), then makes
# one policy update (mu = 1) at lr 1e-6 with KL coefficient beta = 0.04
rl_init_checkpoint = "checkpoints/deepseek-math-7b-instruct"
rl_algo = "grpo"
rl_reward = "outcome"  # the rule-based grader (the paper's reward model was not released)
rl_questions_per_step = 1024 // 64  # 16
rl_group_size = 64
rl_max_new_tokens = 1024
rl_mu = 1
rl_lr = 1e-6
rl_kl_coef = 0.04
rl_steps = 144_000 // rl_questions_per_step  # the paper gives no step count: one pass over its ~144K RL questions
# (4.2: the chain-of-thought GSM8K and MATH questions of its SFT data). Over the 14,973 above, 9,000
# steps x 16 questions are ~9.6 passes (grpo.py starts the list again); --train_problems=FILE for the paper's
rl_rollout_questions = 1  # one question's 64 outputs per KV cache: 45 GiB per GPU
# support/memory_plan.py at W=8: GRPO peaks at ~70 GiB per GPU, PPO (+ value model) at ~79 GiB
rl_micro_batch = 16  # outputs per forward/backward
rl_activation_checkpointing = True  # without it one micro-batch's activations are ~129 GiB per GPU
rl_eval_every = 500
rl_save_every = 100
# Learned reward models (--rl_reward=orm / prm, and iterative RL with --rl_iteration_steps):
rl_rm_lr = 2e-5  # paper 4.2: the reward models' learning rate
rl_rm_likelihood = False  # the paper's reward models: a scalar head on the trunk (the classroom adds its LM's surprise)
rl_rm_replay = 0.1  # paper 4.1.4: each retraining replays 10% of the historical data
rl_rm_questions = 1024  # ours (paper: its RM data was its own, not stated as a count): 1,024 x G = 65,536 graded outputs
rl_rm_epochs = 1  # ours: one pass, as reward models are usually trained (InstructGPT), to avoid overfitting
# rl_iteration_steps: the paper runs 2 iterations (Fig. 6) without saying their length; set it to half of rl_steps

# ---- evaluate.py (paper 3.2 and 4.2): chat prompts with the chain-of-thought suffix, greedy, the full
# GSM8K (1,319) and MATH (5,000) test sets
eval_tasks = ["gsm8k", "math"]
eval_n_problems = 0
eval_mode = "chat"
eval_format = "cot"
eval_k = 1
eval_temperature = 0.7  # for maj@k / pass@k runs (--eval_k=64, paper figure 7)
eval_max_new_tokens = 1024  # the RL stage's max output length
eval_batch_size = 64
grader_workers = 8
