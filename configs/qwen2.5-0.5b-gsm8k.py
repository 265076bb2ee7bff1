# GRPO on GSM8K from Qwen2.5-0.5B-Instruct, on one GPU (24 GB is enough; README "Scaling").
#
#     python -m support.memory_plan configs/qwen2.5-0.5b-gsm8k.py   # the plan, for a 24 GB and an 80 GB GPU
#     python grpo.py configs/qwen2.5-0.5b-gsm8k.py --dry_run=true   # the same plan
#     python grpo.py configs/qwen2.5-0.5b-gsm8k.py
#     python grpo.py configs/qwen2.5-0.5b-gsm8k.py --rl_init_checkpoint=/elsewhere/Qwen2.5-0.5B-Instruct
#
# Local files this config expects (README "Scaling" says how to download them):
#   checkpoints/Qwen2.5-0.5B-Instruct/   config.json, model.safetensors, tokenizer.json,
#                                        tokenizer_config.json (its chat template), generation_config.json
#   data/gsm8k/main/{train,test}-00000-of-00001.parquet   GSM8K as the hub stores it
# or --train_problems=gsm8k --test_problems=gsm8k to read GSM8K through `datasets` (with
# HF_HUB_OFFLINE=1, from the hub cache a previous load_dataset("openai/gsm8k", "main") filled).

out_dir = "out/qwen2.5-0.5b-gsm8k"
device = "cuda"
dtype = "bfloat16"  # autocast compute; trained weights and AdamW states stay fp32

# ---- model: Qwen2.5-0.5B(-Instruct) config.json (Qwen2ForCausalLM). grpo.py builds the model from
# the checkpoint's config.json; these keys are for the memory plan without the checkpoint (with it,
# support/memory_plan.py reads its config.json, q/k/v biases included).
vocab_size = 151936  # 151,665 tokens, padded
n_layer = 24
dim = 896
n_head = 14  # head dim 64
n_kv_head = 2  # grouped-query attention: 7 query heads per kv head
intermediate_size = 4864
max_seq_len = 32768
rope_theta = 1000000.0
norm_eps = 1e-6
tie_embeddings = True  # the LM head is the embedding matrix (136M of the 494M parameters)

# ---- tokenizer: the checkpoint's tokenizer.json and chat template (tokenizer_path "" finds them)
tokenizer_path = ""

# ---- problems
train_problems = "data/gsm8k/main/train-00000-of-00001.parquet"  # 7,473 questions; the paper's RL set is the CoT questions of GSM8K and MATH (section 4.2), GSM8K alone here
test_problems = "data/gsm8k/main/test-00000-of-00001.parquet"  # 1,319 questions
eval_tasks = [test_problems]
eval_n_problems = 0  # the whole test set before and after RL (paper 4.2: all of GSM8K test)

# ---- grpo.py: each RL hyperparameter, the paper's (DeepSeekMath, Shao et al. 2024) or ours
rl_init_checkpoint = "checkpoints/Qwen2.5-0.5B-Instruct"  # paper 4.2: RL starts from the instruction-tuned model (DeepSeekMath-Instruct 7B); here Qwen's instruct model
rl_algo = "grpo"  # paper 4.1
rl_reward = "outcome"  # not the paper's: it trained a reward model (4.1, 4.2), which was not released; our choice: the rule-based answer grader, GSM8K having one exact answer per question
rl_group_size = 64  # paper 4.2: 64 outputs sampled per question
rl_questions_per_step = 16  # paper 4.2: training batch size 1024 = 16 questions x 64 outputs
rl_max_new_tokens = 1024  # paper 4.2: max length 1024
rl_mu = 1  # paper 4.2: a single policy update per exploration stage
rl_lr = 1e-6  # paper 4.2: policy learning rate 1e-6
rl_kl_coef = 0.04  # paper 4.2: KL coefficient beta = 0.04
rl_clip_eps = 0.2  # not stated in the paper: our choice, because 0.2 is PPO's own (Schulman et al. 2017) and the paper's objective is PPO's clipped one
rl_temperature = 1.0  # not stated in the paper: our choice, because sampling the policy's own distribution keeps pi_old the model (no temperature correction)
rl_weight_decay = 0.0  # not stated in the paper: our choice, because at lr 1e-6 for a few hundred steps decay would only pull weights away from the start
rl_grad_clip = 1.0  # not stated in the paper for RL: our choice, DeepSeek LLM's pretraining clip
rl_iteration_steps = 0  # paper 4.2 trains one iteration (iterative RL is 5.2.1's ablation): pi_ref stays the start
rl_steps = 7473 // 16  # not stated in the paper: our choice, because one pass over GSM8K train (467 steps) sees every question once, as configs/7b.py's step count is over the paper's 144K
rl_rollout_questions = 4  # not the paper's (a memory choice): 4 questions x 64 = 256 rows per KV cache, 4.1 GiB
rl_micro_batch = 8  # not the paper's (a memory choice): 8 outputs per forward/backward, accumulated to 1024
rl_activation_checkpointing = True  # not the paper's (a memory choice): recompute each block in backward
rl_eval_every = 50  # ours: held-out greedy accuracy every 50 steps (metrics.jsonl)
rl_save_every = 50
plan_prompt_len = 384  # the plan's longest prompt: Qwen's system prompt and chat tags (~30 tokens) + the longest GSM8K question (~210 tokens), rounded up

# ---- evaluation (evaluate.py on the result): chat prompts with the CoT suffix, greedy
eval_mode = "chat"
eval_format = "cot"
eval_max_new_tokens = 1024
eval_batch_size = 64
