"""Reinforcement learning of the math policy: GRPO side by side with PPO (DeepSeekMath section 4).

    python grpo.py configs/classroom.py                                   # GRPO, outcome reward
    python grpo.py configs/classroom.py --rl_algo=grpo --rl_reward=process
    python grpo.py configs/classroom.py --rl_reward=orm --rl_iteration_steps=20   # learned RM, iterative
    python grpo.py configs/classroom.py --rl_algo=ppo                     # the PPO baseline
    python grpo.py configs/classroom.py --rl_algo=rft                     # or online_rft
    python grpo.py configs/classroom.py --rl_compare=true                 # GRPO vs PPO: table + plot
    python grpo.py configs/classroom.py --compile=true                    # torch.compile: 1.3x a step on a CPU
    torchrun --nproc_per_node=8 grpo.py configs/7b.py                     # the paper's run
    WORLD_SIZE=8 python grpo.py configs/7b.py --dry_run=true              # memory plan per GPU of 8 only

The file reads as the paper: first the math (section 1: GRPO's advantages, the k3 KL, the
clipped surrogate and the whole GRPO objective, eq. 3; PPO's GAE and losses and RFT's loss beside
them), then one RL step as Algorithm 1 names its parts (section 2: explore, reward, advantages,
update), then the run (section 3). What a learner does not need to learn GRPO lives in support/:
rl_support.py (the models a run holds, micro-batching, memory accounting, the guards, the run's
bookkeeping and summary, the GRPO-vs-PPO table) and rewards.py (the rule rewards, the ORM/PRM).

Every run starts from a policy checkpoint (rl_init_checkpoint, default {out_dir}/sft/ckpt) and
writes {out_dir}/rl/{method}/ (method_name: grpo_outcome, grpo_process, grpo_orm, grpo_prm, ppo,
ppo_process, ppo_orm, ppo_prm, rft, online_rft; with _iterative when the reference and reward
model are reset along the way, and -seed{N} when rl_seed is set):
ckpt/ (Hugging Face layout + train_state.pt, resumable with --rl_resume=true), metrics.jsonl (one
line per step), rollouts.jsonl (a few fixed questions' groups, token by token, for
`python -m support.viewer`) and summary.json.

How one step goes (paper Algorithm 1), and where GRPO and PPO differ:

    1. explore    sample G outputs o_1..o_G per question q from pi_old (the policy now)    shared
    2. reward     rule-based grader (outcome), per-step checker (process), or a learned
                  reward model (ORM / PRM, a scalar head trained on graded samples)        shared
    3. advantages GRPO: the group's own rewards, normalised (no value model at all)
                  PPO:  GAE over a learned value model V_psi, a second trainable network
    4. update     the clipped surrogate (both); GRPO adds the k3 KL to pi_ref to the loss,
                  PPO puts the KL into the per-token reward and also fits V_psi

GRPO's objective (paper eq. 3; `grpo_loss` computes it, `k3_kl` its KL, eq. 4), per question q:

    J = 1/G sum_i 1/|o_i| sum_t { min(r_i,t A_i,t, clip(r_i,t, 1-eps, 1+eps) A_i,t) - beta D_KL,i,t }
    r_i,t = pi_theta(o_i,t | q, o_i,<t) / pi_old(o_i,t | q, o_i,<t)
    D_KL,i,t = pi_ref/pi_theta - log(pi_ref/pi_theta) - 1      (k3, >= 0, at token o_i,t)

Why GRPO needs less memory (paper 4.1.1): PPO trains a value model as large as the policy, so it
holds two sets of weights, gradients and AdamW states (16 bytes per parameter each in fp32);
GRPO replaces the value baseline by the mean reward of the G outputs of the same question.

Sequence mean (the paper) vs token mean (verl's "token-mean", TRL's default loss). Eq. 3 averages
each output's tokens first, 1/|o_i| sum_t, then the G outputs, 1/G sum_i: every output weighs the
same, however long. A token mean divides the sum over all tokens of the group by their count.
Worked number: a group of two outputs, o_1 right with 10 tokens (A = +1), o_2 wrong with 100
tokens (A = -1). Sequence mean: each token of o_1 has weight 1/(2*10) = 0.05, each token of o_2
1/(2*100) = 0.005; both outputs weigh 1/2 in all. Token mean: every token 1/110 = 0.0091, so o_1
weighs 10/110 = 0.09 and o_2 100/110 = 0.91. Under the paper's mean a long wrong answer is
pushed down ten times more gently per token than a short right one is pushed up (the length bias
Dr. GRPO points out); under the token mean long outputs dominate the step. We follow the paper:
this file is a reference for eq. 3 as published, and on the classroom the outputs of a group are
of similar length (~55 tokens), where the two differ little.

The unified paradigm (paper 5.2.1, eq. 5): every method's gradient is
    grad J = E[(q, o) ~ D] [ 1/|o| sum_t GC(q, o, t) * grad log pi_theta(o_t | q, o_<t) ]
and the methods differ in where the data come from and in the gradient coefficient GC:

    method       data source                      reward function     GC(q, o, t)
    SFT          q, o ~ P_sft(Q, O)               -                   1
    RFT          q ~ P_sft(Q), o ~ pi_sft(O|q)    rule (correct?)     I(o): 1 if o is correct, else 0
    Online RFT   q ~ P_sft(Q), o ~ pi_theta(O|q)  rule                I(o)
    PPO          q ~ P_sft(Q), o ~ pi_theta(O|q)  model or rule       A_t (GAE on a value model)
    GRPO         q ~ P_sft(Q), {o_i} ~ pi_theta   model or rule       A_i,t + beta (pi_ref/pi_theta - 1)

The PPO and GRPO rows assume one update per exploration stage (rl_mu = 1, the paper's setting):
then pi_old = pi_theta, the ratio is 1 and the clip is inactive, so the surrogate's gradient is
A_t grad log pi_theta. GRPO's beta term is the gradient of -beta k3: d/d log pi_theta of
(pi_ref/pi_theta - log(pi_ref/pi_theta) - 1) is -(pi_ref/pi_theta - 1). Past the KL cap
(KL_LIMIT, below) a token's KL term has no gradient, so the row holds for the tokens under it.

Every hyperparameter is labelled in support/config.py with the paper's value or "not stated in
the paper: our choice"; README.md lists where this file differs from the paper and why. Pitfalls it
avoids: log-probs are recomputed at the sampling temperature; the log-ratios of the KL and of the
surrogate are clamped before exp, and a token's KL is capped (verl's values); groups whose rewards
all agree are counted (zero_var_groups); the truncation rate is logged; with mu = 1 and outcome
rewards GRPO's loss value is ~beta KL, near 0, while its gradient is not (a group's normalised
rewards sum to 0; process rewards' suffix sums do not, and PPO's logged loss adds its value
loss): read reward, accuracy, kl and clip_frac, not the loss; pi_ref is reset to the policy
every rl_iteration_steps steps, as Algorithm 1 does; a NaN reward, loss or gradient stops the
run before it reaches the weights.

Tests: pytest -q tests/test_grpo.py
"""

import os
import random
import time
from dataclasses import dataclass

import torch
from tqdm import tqdm

import evaluate
from model import generate, sequence_logprobs
from support import config, distributed, tasks, training, viewer
from support.fileio import BadInput, write_json
from support.rewards import correctness, outcome_labels, process_labels, result_columns, samples_of, split_by_question
from support.rl_support import (Job, Run, check_rl_config, copy_weights, finish, heldout_accuracy, iteration_summary,
                                iterative, length_grouped_micro_batches, logprobs_of, memory_metrics, method_name,
                                print_reward_model, print_summary, recorded_steps, report_comparison,
                                reset_peak_memory, right_padded, rows_question_ids, save, scalar_outputs,
                                stop_if_rewards_broken, values_of, watch_signal, whole_model)
from support.tokenizer import COT_SUFFIX, load_tokenizer

ALGOS = ("grpo", "ppo", "rft", "online_rft")
REWARDS = ("outcome", "process", "orm", "prm")  # rule-based outcome/process, or learned ORM/PRM
# exp() of a log-ratio overflows float32 past ~88: clamp it first, as verl and OpenRLHF do. At
# +-20 the ratio is 4.9e8 (or 2e-9): far outside any clip range, so nothing real is changed.
LOG_RATIO_LIMIT = 20.0
# Not in the paper: a token's k3 KL is capped at 10, as verl's low_var_kl is, so one token that
# drifted far cannot swamp a step's loss. The cap is reached at log(pi_ref/pi_theta) = +2.61
# (pi_ref/pi_theta = 13.6) or -11; past it that token's KL term has no gradient: it stops pulling
# that token back to pi_ref.
KL_LIMIT = 10.0


# =============================================================================================
# 1. The math: GRPO (paper 4.1), with PPO's and RFT's losses beside it
# =============================================================================================
# Shapes: N = B questions x G outputs, rows grouped by question (row = question * G + i); T
# log-prob columns, column j scoring token j + 1 of the whole sequence (prompt + output);
# response_mask (N, T) marks the columns of output tokens. A reward sits at a column: outcome
# supervision one per output (its last token), process supervision one per reasoning step (the
# step's last token); reward_mask (N, T) marks where.


def group_advantages(rewards, reward_mask, response_mask, group_size, min_std=1e-6):
    """GRPO's advantages (paper 4.1.2 outcome, 4.1.3 process supervision), (N, T).

    Process supervision: every step reward of the group's G outputs is normalised with the
    mean and std of all of them together,
        r~_i^index(j) = (r_i^index(j) - mean(R)) / std(R),
    and a token's advantage is the sum of the normalised rewards of the steps ending at or
    after it:   A_i,t = sum_{index(j) >= t} r~_i^index(j).
    Outcome supervision is the case of one "step" ending at the last token:
        A_i,t = r~_i = (r_i - mean(r)) / std(r)  for every token t of o_i.
    A group whose rewards all agree (std 0) carries no signal: its advantages are 0, not NaN.
    Not in the paper: a group whose std is under min_std is treated alike. A learned reward
    model's scores always differ a little; dividing differences of 1e-4 by their own std would
    turn its noise into advantages of +-1, the same size as a real signal's (rl_min_reward_spread).
    Returns the advantages, the group means and stds (B,), and the count of zero-variance groups."""
    N, T = rewards.shape
    r = rewards.view(-1, group_size, T)  # (B, G, T)
    m = reward_mask.view(-1, group_size, T).float()  # (B, G, T)
    count = m.sum((1, 2), keepdim=True)  # (B, 1, 1) rewards per group
    mean = (r * m).sum((1, 2), keepdim=True) / count.clamp(min=1)  # mean(R)
    # std(R): the population std (divide by the count). The paper writes std() without saying
    # which; TRL uses the sample std (n - 1), 1.07x ours at G = 8, so its advantages are 0.94x.
    std = (((r - mean) ** 2 * m).sum((1, 2), keepdim=True) / count.clamp(min=1)).sqrt()
    signal = std > min_std  # (B, 1, 1)
    normalised = torch.where(signal, (r - mean) / std.clamp(min=min_std), 0.0) * m  # r~, (B, G, T)
    # sum over steps ending at or after t: a cumulative sum from the right
    advantages = normalised.flip(-1).cumsum(-1).flip(-1).view(N, T) * response_mask
    return advantages, mean.view(-1), std.view(-1), int((~signal).sum())


def k3_kl(logp, ref_logp):
    """The unbiased estimator of KL(pi_theta || pi_ref) (paper eq. 4, Schulman 2020), >= 0:
        D_KL = pi_ref/pi_theta - log(pi_ref/pi_theta) - 1.   (N, T)
    Capped at KL_LIMIT (not in the paper; see there): a capped token adds 10 and no gradient."""
    log_ratio = (ref_logp - logp).clamp(-LOG_RATIO_LIMIT, LOG_RATIO_LIMIT)  # log(pi_ref/pi_theta)
    return (torch.exp(log_ratio) - log_ratio - 1).clamp(max=KL_LIMIT)


def clipped_surrogate(logp, old_logp, advantages, clip_eps):
    """min(r_t A_t, clip(r_t, 1 - eps, 1 + eps) A_t), r_t = pi_theta(o_t|q,o_<t) / pi_old(o_t|q,o_<t):
    PPO's and GRPO's shared core (paper eq. 1 and 3). Returns it, the ratio, and where the clip
    bit (the gradient of those tokens is zero), all (N, T)."""
    ratio = torch.exp((logp - old_logp).clamp(-LOG_RATIO_LIMIT, LOG_RATIO_LIMIT))  # r_t
    unclipped = ratio * advantages
    clipped = ratio.clamp(1 - clip_eps, 1 + clip_eps) * advantages
    return torch.minimum(unclipped, clipped), ratio, clipped < unclipped


def per_output_mean(per_token, response_mask):
    """1/|o_i| sum_t x_i,t for each output, (N,): every output weighs the same, short or long."""
    m = response_mask.float()
    return (per_token * m).sum(-1) / m.sum(-1).clamp(min=1)


def grpo_loss(logp, old_logp, ref_logp, advantages, response_mask, clip_eps, beta, n_outputs):
    """-J_GRPO (paper eq. 3), the whole objective, averaged over the step's B questions:

        J = 1/B sum_q  1/G sum_i  1/|o_i| sum_t { min(r_it A_it, clip(r_it, 1-eps, 1+eps) A_it)
                                                  - beta D_KL(pi_theta || pi_ref)_it }

    1/B * 1/G = 1/n_outputs (the step's N outputs). The rows given may be a micro-batch of the
    step: each contributes its share, and the micro-batches' losses add up to the step's -J.
    The KL is a loss term, not part of the reward, so it does not disturb the advantage."""
    surrogate, ratio, clipped = clipped_surrogate(logp, old_logp, advantages, clip_eps)  # (n, T)
    kl = k3_kl(logp, ref_logp)  # (n, T)
    objective = per_output_mean(surrogate - beta * kl, response_mask)  # (n,) 1/|o_i| sum_t {...}
    return -objective.sum() / n_outputs, {"kl": kl, "ratio": ratio, "clipped": clipped}


def ppo_token_rewards(rewards, old_logp, ref_logp, response_mask, beta):
    """PPO's per-token reward (paper eq. 2), (N, T):
        r_t = r_phi(q, o_<=t) - beta log(pi_theta(o_t | q, o_<t) / pi_ref(o_t | q, o_<t))
    r_phi is the reward model's (or grader's) score, nonzero only where `rewards` holds one (the
    last token for outcome supervision). pi_theta here is the policy that sampled the outputs,
    pi_old: the penalty is part of the reward, fixed before the update, not a loss term."""
    return rewards - beta * (old_logp - ref_logp) * response_mask


def gae(rewards, values, response_mask, gamma, lam):
    """Generalized Advantage Estimation (Schulman et al. 2016), PPO's advantage (paper eq. 1):
        delta_t = r_t + gamma V(s_t+1) - V(s_t),   A_t = sum_l (gamma lambda)^l delta_t+l,
    V = 0 after the last token (the episode ends). Returns (advantages, returns = A + V), (N, T)."""
    N, T = rewards.shape
    m = response_mask.float()
    advantages = torch.zeros_like(rewards)
    next_value = torch.zeros(N, device=rewards.device)  # (N,) V(s_t+1)
    next_advantage = torch.zeros(N, device=rewards.device)
    for t in reversed(range(T)):
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        advantage = delta + gamma * lam * next_advantage
        advantages[:, t] = advantage * m[:, t]
        # outside the response (prompt, padding), carry nothing across
        next_value = torch.where(response_mask[:, t], values[:, t], 0.0)
        next_advantage = advantages[:, t]
    return advantages, (advantages + values) * m


def whiten(x, mask, d):
    """(x - mean) / std over every masked token of every rank. Not in the paper: PPO
    implementations (TRL, OpenRLHF, InstructGPT's) whiten GAE advantages, so the policy's step
    size does not depend on the reward's scale; our PPO baseline does the same."""
    stats = torch.stack([(x * mask).sum(), mask.sum(), (x * x * mask).sum()]).double()
    if d.world_size > 1:
        torch.distributed.all_reduce(stats)
    mean = stats[0] / stats[1]
    var = stats[2] / stats[1] - mean ** 2
    return ((x - mean) / var.clamp(min=1e-12).sqrt()).float() * mask


def ppo_losses(logp, old_logp, advantages, values, old_values, returns, response_mask, clip_eps, value_clip,
               n_outputs):
    """-J_PPO (paper eq. 1) and the value model's clipped regression loss, averaged over the
    step's n_outputs outputs like grpo_loss:
        J = 1/|o| sum_t min(r_t A_t, clip(r_t, 1-eps, 1+eps) A_t)      (A_t from GAE; the KL
        to pi_ref is already inside A_t, through the per-token reward)
        L_V = 1/|o| sum_t 1/2 max((V_t - R_t)^2, (clip(V_t, V_old - c, V_old + c) - R_t)^2)."""
    surrogate, ratio, clipped = clipped_surrogate(logp, old_logp, advantages, clip_eps)
    clipped_values = old_values + (values - old_values).clamp(-value_clip, value_clip)
    value_loss = 0.5 * torch.maximum((values - returns) ** 2, (clipped_values - returns) ** 2)
    return (-per_output_mean(surrogate, response_mask).sum() / n_outputs,
            per_output_mean(value_loss, response_mask).sum() / n_outputs, {"ratio": ratio, "clipped": clipped})


def rft_loss(logp, correct, response_mask, n_outputs):
    """RFT and online RFT (paper 5.1): supervised fine-tuning on the correct outputs only,
    GC = I(o):  -1/N sum_o I(o) 1/|o| sum_t log pi_theta(o_t | q, o_<t)."""
    return -(correct * per_output_mean(logp, response_mask)).sum() / n_outputs


# =============================================================================================
# 2. One RL step, as Algorithm 1 names it: explore, reward, advantages, update
# =============================================================================================


@dataclass
class Rollouts:
    """N = questions x G outputs, rows grouped by question (row = question * G + i).

    tokens/mask are whole sequences (prompt + response), right-padded to one length L; every
    per-token tensor of the RL math lives in log-prob space (N, L-1), where column j scores
    token j+1 given tokens 0..j, and response_mask marks the columns of response tokens."""
    problems: list  # (N,) the Problem of each row
    texts: list  # (N,) the decoded responses
    tokens: torch.Tensor  # (N, L) prompt + response (+ EOS when it stopped), then padding
    mask: torch.Tensor  # (N, L) bool, real tokens
    response_mask: torch.Tensor  # (N, L-1) bool, columns scoring a response token
    truncated: torch.Tensor  # (N,) bool, hit max_new_tokens without stopping

    def response_columns(self, row):
        """The log-prob columns of row's response tokens, in order."""
        return self.response_mask[row].nonzero().squeeze(-1).tolist()


def explore(model, tokenizer, problems, cfg, seed, device):
    """Algorithm 1's "sample G outputs {o_i} ~ pi_old(.|q) for each question q", at rl_temperature.

    rl_rollout_questions questions (x G rows) share one KV cache, which bounds its memory (the
    7B's cache is ~0.5 MB per token and row). Each such chunk draws from its own generator,
    seeded by `seed` + its first question's index. When each rank's share of the step's
    questions is a whole number of chunks, a question's samples depend neither on the number of
    ranks nor on which rank drew them; otherwise the chunks hold other questions on other rank
    counts, and the draws differ (the same distribution, other samples). The G copies of a
    question's prompt are prefilled once (model.generate shares the prefill of identical prompts)."""
    G, per_chunk = cfg.rl_group_size, cfg.rl_rollout_questions
    prompts = [tokenizer.encode_prompt(p.question, COT_SUFFIX) for p in problems for _ in range(G)]
    responses, truncated = [], []
    with whole_model(model) as m, training.autocast(device, cfg.dtype):
        was_training = m.training
        m.eval()
        for start in range(0, len(problems), per_chunk):
            generator = torch.Generator(device).manual_seed(seed + start)
            out = generate(m, prompts[start * G:(start + per_chunk) * G], cfg.rl_max_new_tokens,
                           temperature=cfg.rl_temperature, eos_id=tokenizer.eos_ids, generator=generator,
                           compile=cfg.compile)
            responses += [row[keep].tolist() for row, keep in zip(out.tokens, out.mask)]
            truncated.append(out.truncated)
        m.train(was_training)
    tokens, mask = right_padded([p + r for p, r in zip(prompts, responses)], tokenizer.pad_id, device)
    response_mask = torch.zeros(len(prompts), tokens.shape[1] - 1, dtype=torch.bool)
    for i, (prompt, response) in enumerate(zip(prompts, responses)):
        response_mask[i, len(prompt) - 1:len(prompt) + len(response) - 1] = True  # column j scores token j + 1
    texts = [tokenizer.decode([t for t in r if t not in tokenizer.eos_ids]) for r in responses]
    rows = [p for p in problems for _ in range(G)]
    return Rollouts(rows, texts, tokens, mask, response_mask.to(device), torch.cat(truncated).to(device))


@dataclass
class Rewards:
    correct: torch.Tensor  # (N,) I(o) from the grader: the accuracy metric, and RFT's coefficient
    rewards: torch.Tensor  # (N, T) a reward value at each column where reward_mask is set
    reward_mask: torch.Tensor  # (N, T) bool
    labels: list  # [(column, 0/1)] per output from the rule grader or step checker
    failures: int  # outputs the reward function could not score: 0 as outcome; no step reward (advantage 0) as process
    results: list = None  # with a learned RM: per output, the columns of the values it states (rewards.result_columns)


def reward(run, rollouts, cfg):
    """Algorithm 1's "compute rewards {r_i} for each sampled output o_i by running r_phi": the rule
    grader (outcome), the per-step checker (process), or the learned ORM / PRM reading the
    same positions the rule labels mark."""
    failures = []
    correct = correctness(rollouts, run.grader, failures)  # (N,)
    labels = process_labels(rollouts, run.tokenizer, failures) if cfg.rl_reward in ("process", "prm") \
        else outcome_labels(rollouts, correct)
    values, results = labels, None
    if run.rm is not None:
        results = result_columns(rollouts, run.tokenizer)
        with training.autocast(run.device, cfg.dtype):
            values = run.rm.rewards(rollouts.tokens, rollouts.mask, labels, results)
    rewards = torch.zeros(rollouts.response_mask.shape, device=rollouts.tokens.device)
    reward_mask = torch.zeros_like(rollouts.response_mask)
    for row, row_values in enumerate(values):
        for column, value in row_values:
            rewards[row, column], reward_mask[row, column] = value, True
    return Rewards(correct, rewards, reward_mask, labels, len(failures), results)


@dataclass
class Targets:
    advantages: torch.Tensor  # (N, T) GRPO: group-normalised; PPO: whitened GAE; RFT: I(o)
    old_logp: torch.Tensor  # (N, T) log pi_old, or None when pi_old = pi_theta at the one update
    ref_logp: torch.Tensor  # (N, T) log pi_ref (GRPO, PPO)
    group_mean: torch.Tensor  # (B,) each question's mean reward
    group_std: torch.Tensor  # (B,) and its std
    zero_var: int  # groups whose rewards all agree
    old_values: torch.Tensor = None  # (N, T) PPO: V_psi before the update
    returns: torch.Tensor = None  # (N, T) PPO: GAE's returns, V_psi's regression targets


def advantages(run, rollouts, scored, cfg):
    """Algorithm 1's "compute A_i,t for the t-th token of o_i through group relative advantage
    estimation" (GRPO), or GAE on the value model (PPO), with the log-probs they need."""
    algo, m = cfg.rl_algo, rollouts.response_mask
    # pi_old and pi_ref log-probs at the sampling temperature. With rl_mu = 1 the one update
    # starts at pi_old itself, so GRPO takes pi_old = pi_theta.detach() there and saves a pass;
    # PPO needs pi_old before the update, for its per-token reward.
    with training.autocast(run.device, cfg.dtype):
        old_logp = logprobs_of(run.policy, rollouts, cfg) if algo == "ppo" or (algo == "grpo" and cfg.rl_mu > 1) else None
        ref_logp = logprobs_of(run.ref, rollouts, cfg) if algo in ("grpo", "ppo") else None
        old_values = values_of(run.value, rollouts, cfg) if algo == "ppo" else None
    group_adv, mean, std, zero_var = group_advantages(scored.rewards, scored.reward_mask, m, cfg.rl_group_size,
                                                      cfg.rl_min_reward_spread)
    targets = Targets(group_adv, old_logp, ref_logp, mean, std, zero_var)
    if algo == "ppo":
        token_rewards = ppo_token_rewards(scored.rewards, old_logp, ref_logp, m, cfg.rl_kl_coef)  # eq. 2, (N, T)
        gae_advantages, targets.returns = gae(token_rewards, old_values, m, cfg.ppo_gamma, cfg.ppo_lambda)
        targets.advantages, targets.old_values = whiten(gae_advantages, m.float(), run.d), old_values
    elif algo in ("rft", "online_rft"):
        targets.advantages = scored.correct[:, None] * m  # GC = I(o) on every token
    return targets


def micro_batch_loss(run, rollouts, scored, targets, rows, width, cfg):
    """The loss of one micro-batch of rows, cut to its first `width` tokens (its share of the
    step's objective), and the per-token quantities it computed: ratio, clipped, kl, entropy;
    PPO adds its value loss."""
    N, cols = len(rollouts.texts), slice(0, width - 1)  # cols: the log-prob columns of tokens 0..width-1
    tokens, mask, mb = rollouts.tokens[rows, :width], rollouts.mask[rows, :width], rollouts.response_mask[rows, cols]
    logp, entropy = sequence_logprobs(run.policy, tokens, mask, cfg.rl_temperature, with_entropy=True)  # (n, width-1)
    old = targets.old_logp[rows, cols] if targets.old_logp is not None else logp.detach()  # log pi_old
    info = {"entropy": entropy}
    if cfg.rl_algo == "grpo":
        loss, more = grpo_loss(logp, old, targets.ref_logp[rows, cols], targets.advantages[rows, cols], mb,
                               cfg.rl_clip_eps, cfg.rl_kl_coef, N)
    elif cfg.rl_algo == "ppo":
        values = scalar_outputs(run.value, tokens, mask)
        loss, value_loss, more = ppo_losses(logp, old, targets.advantages[rows, cols], values,
                                            targets.old_values[rows, cols], targets.returns[rows, cols], mb,
                                            cfg.rl_clip_eps, cfg.ppo_value_clip, N)
        more.update(kl=k3_kl(logp, targets.ref_logp[rows, cols]), value_loss=value_loss)
        loss = loss + value_loss  # V_psi's loss reaches only V_psi's weights, and its own optimizer
    else:
        loss, more = rft_loss(logp, scored.correct[rows], mb, N), {}
    return loss, {**info, **more}


def update(run, rollouts, scored, targets, cfg, step):
    """Algorithm 1's "for GRPO iteration = 1..mu: update pi_theta by maximizing the GRPO
    objective": rl_mu gradient steps on this batch (PPO's value model steps with it). Returns
    the sums the step's metrics are made of."""
    m = rollouts.response_mask
    sums = dict.fromkeys(("loss", "value_loss", "kl", "clip_frac", "entropy", "grad_norm"), 0.0)
    for _ in range(cfg.rl_mu):
        # gradient accumulation over micro-batches of rl_micro_batch rows; rows of similar length
        # share one, cut to its longest row, so little of each pass is padding (not in the paper:
        # speed only, the objective is the same sum over rows)
        for rows, width in length_grouped_micro_batches(rollouts.mask, cfg.rl_micro_batch):
            with training.autocast(run.device, cfg.dtype):
                loss, info = micro_batch_loss(run, rollouts, scored, targets, rows, width, cfg)
            loss.backward()  # a NaN loss makes a NaN gradient norm, which optimizer_step stops at
            mb = m[rows, :width - 1]
            sums["loss"] += float(loss.detach())
            sums["value_loss"] += float(info.get("value_loss", torch.zeros(())).detach())
            sums["entropy"] += float((info["entropy"].detach() * mb).sum())
            sums["kl"] += float((info["kl"].detach() * mb).sum()) if "kl" in info else 0.0
            sums["clip_frac"] += float((info["clipped"] & mb).sum()) if "clipped" in info else 0.0
        norms = run.optimizer_step(lambda norms: stop_if_not_finite(run, step, **norms))
        sums["grad_norm"] += norms["policy_grad_norm"]
    return sums


def rl_step(run, questions, first_index, cfg, step):
    """One exploration stage and its rl_mu updates on this rank's questions (the step's questions
    first_index, first_index + 1, ...). Returns this rank's metrics. With rl_algo=rft, reward and
    accuracy are the frozen SFT model's samples', flat by design; heldout_greedy shows the policy."""
    # RFT samples the frozen SFT model, every other method the current policy
    sampler = run.sft_model if cfg.rl_algo == "rft" else run.policy
    rollouts = explore(sampler, run.tokenizer, questions, cfg, cfg.seed + 7919 * step + first_index, run.device)
    scored = reward(run, rollouts, cfg)
    if run.rm is not None and iterative(cfg):  # kept for the reward model's next retraining
        run.rm.pending += samples_of(rollouts, scored.labels, rows_question_ids(rollouts, cfg, step, first_index),
                                     scored.results)
    stop_if_rewards_broken(run, scored.rewards[scored.reward_mask], step)  # a NaN/inf reward stops every rank
    targets = advantages(run, rollouts, scored, cfg)
    sums = update(run, rollouts, scored, targets, cfg, step)
    m, mu, n_tokens = rollouts.response_mask, cfg.rl_mu, max(1, int(rollouts.response_mask.sum()))
    return {
        "reward": float(per_output_mean(scored.rewards, scored.reward_mask).mean()),
        "accuracy": float(scored.correct.mean()),
        "reward_spread": float(targets.group_std.mean()),  # mean within-group std: GRPO's signal
        "loss": sums["loss"] / mu,
        "kl": sums["kl"] / (n_tokens * mu),
        "clip_frac": sums["clip_frac"] / (n_tokens * mu),
        "entropy": sums["entropy"] / (n_tokens * mu),
        "grad_norm": sums["grad_norm"] / mu,
        "response_len": float(m.sum(-1).float().mean()),
        "truncated": float(rollouts.truncated.float().mean()),
        "zero_var_groups": targets.zero_var / len(questions),
        "reward_errors": float(scored.failures),
        **({"value_loss": sums["value_loss"] / mu} if cfg.rl_algo == "ppo" else {}),
    }


def stop_if_not_finite(run, step, **quantities):
    """A NaN or inf reward, loss or gradient norm ends the run before it reaches the weights
    (training.Diverged names the step, the quantity and the last good checkpoint)."""
    training.check_finite(step + 1, run.last_checkpoint, **quantities)


# =============================================================================================
# 3. The run: iterations, checkpoints, the rollout record, the summary
# =============================================================================================


def train_reward_model(run, problems, cfg, step):
    """The reward model's data, graded by the rule grader (ORM) or step checker (PRM): at the
    start rl_rm_questions x G samples of the starting policy; at each new iteration the policy's
    samples of the iteration just ended (run.rm.pending). A share of the questions (rl_rm_heldout)
    is held out to measure it after training."""
    d = run.d
    if step == 0:
        if cfg.rl_rm_questions > len(problems):
            raise BadInput(f"rl_rm_questions={cfg.rl_rm_questions} exceeds the {len(problems)} training problems: "
                           "lower it, or raise classroom_train_size")
        share = cfg.rl_rm_questions // d.world_size
        picked = random.Random(cfg.seed + 1).sample(problems, cfg.rl_rm_questions)[d.rank * share:(d.rank + 1) * share]
        rollouts = explore(run.policy, run.tokenizer, picked, cfg, cfg.seed - 7919 + d.rank * share, run.device)
        failures = []
        labels = process_labels(rollouts, run.tokenizer, failures) if cfg.rl_reward == "prm" else \
            outcome_labels(rollouts, correctness(rollouts, run.grader, failures))
        samples = samples_of(rollouts, labels, [d.rank * share + row // cfg.rl_group_size for row in range(len(labels))],
                             result_columns(rollouts, run.tokenizer))
    else:
        samples, run.rm.pending = run.rm.pending, []
    train, heldout = split_by_question(samples, cfg.rl_rm_heldout, cfg.seed + step)
    result = run.rm.fit(train, heldout, step, run.last_checkpoint)
    print_reward_model(result, len(train), cfg, step)
    return result


def new_iteration(run, train_problems, cfg, step):
    """Algorithm 1, each iteration: pi_ref <- pi_theta; the reward model continues training on
    the policy's new samples with a replay of rl_rm_replay (10%) of the earlier ones."""
    if run.ref is not None:
        copy_weights(run.ref, run.policy)
    if run.rm is not None:
        train_reward_model(run, train_problems, cfg, step)


def record_rollouts(run, probe, cfg, step, path):
    """The viewer's record: the fixed probe questions' groups, explored, rewarded and given
    advantages exactly as a step would (seeded alike at every recorded step, so the change is
    the policy's), with the per-token ratio, clip and KL of the policy now. Not trained on."""
    rollouts = explore(run.policy if cfg.rl_algo != "rft" else run.sft_model, run.tokenizer, probe, cfg,
                       cfg.seed + 104729, run.device)
    scored = reward(run, rollouts, cfg)
    targets = advantages(run, rollouts, scored, cfg)
    with torch.no_grad(), training.autocast(run.device, cfg.dtype):
        logp = logprobs_of(run.policy, rollouts, cfg)
        old = targets.old_logp if targets.old_logp is not None else logp
        _, ratio, clipped = clipped_surrogate(logp, old, targets.advantages, cfg.rl_clip_eps)
        kl = k3_kl(logp, targets.ref_logp) if targets.ref_logp is not None else torch.zeros_like(logp)
    if run.d.is_main:
        viewer.record_rollouts(path, method_name(cfg), step, rollouts, run.tokenizer, rewards=scored.rewards,
                               reward_mask=scored.reward_mask, correct=scored.correct,
                               advantages=targets.advantages, ratio=ratio, clipped=clipped, kl=kl,
                               group_mean=targets.group_mean, group_std=targets.group_std,
                               values=targets.old_values, returns=targets.returns)


def train(cfg):
    """One RL run (rl_algo with rl_reward); returns its summary (rank 0 also writes it)."""
    d = distributed.setup(cfg.device)
    check_rl_config(cfg, d.world_size, ALGOS, REWARDS)
    out = os.path.join(cfg.out_dir, "rl", method_name(cfg))
    cfg = config.with_keys(cfg, seed=cfg.rl_seed or cfg.seed)  # every random choice of the run follows it
    init = cfg.rl_init_checkpoint or os.path.join(cfg.out_dir, "sft", "ckpt")
    train_problems = tasks.load_problems(cfg.train_problems, "train", cfg)
    test_problems = tasks.load_problems(cfg.test_problems, "test", cfg)
    job = Job(out, train_problems,
              test_problems[: cfg.rl_eval_problems or cfg.eval_n_problems or len(test_problems)],
              random.Random(cfg.seed + 2).sample(train_problems, cfg.rl_viewer_questions))
    training.recover_checkpoint(job.ckpt, d)
    for folder in [init] + ([job.ckpt] if cfg.rl_resume else []):
        if not os.path.exists(os.path.join(folder, "config.json")):
            raise BadInput(f"{folder}: no checkpoint (config.json) there; run sft.py first, set "
                           "--rl_init_checkpoint=FOLDER, or drop --rl_resume=true to start afresh")
    training.seed_everything(cfg.seed)
    reset_peak_memory(d.device)
    tokenizer = load_tokenizer(cfg, init)
    with evaluate.stage_grader(cfg, d) as grader:  # forked before models fill memory
        run = Run(cfg, d, tokenizer, grader, init, job.ckpt if cfg.rl_resume else init)
        run.last_checkpoint = job.ckpt
        start = resume(run, job, cfg)  # a checkpoint that cannot be resumed fails before the outputs are touched
        training.unmark_done(job.out, d)  # every input is loaded: from here on this run is not done
        begin(run, job, cfg, start)
        log = training.MetricsLog(os.path.join(job.out, "metrics.jsonl"), start)
        order = random.Random(cfg.seed).sample(range(len(train_problems)), len(train_problems))
        bar = tqdm(range(start, cfg.rl_steps), desc=f"rl {method_name(cfg)}", disable=not d.is_main)
        with training.StopRequest() as stop:
            for step in bar:
                if stop.agreed(d):  # Ctrl-C: keep the steps done, drop the one not yet taken
                    save(run, job, step)
                    training.exit_interrupted(step, job.ckpt)
                questions = [train_problems[order[(step * cfg.rl_questions_per_step + j) % len(order)]]
                             for j in range(cfg.rl_questions_per_step)]
                metrics = logged_step(run, job, questions, cfg, step)
                log.log(step + 1, **metrics)
                bar.set_postfix(reward=f"{metrics['reward']:.2f}", acc=f"{metrics['accuracy']:.2f}",
                                kl=f"{metrics['kl']:.3f}")
        summary = finish(run, job, cfg)
    if d.is_main:
        write_json(os.path.join(job.out, "summary.json"), summary)
        print_summary(summary, job.out)
    return summary


def resume(run, job, cfg):
    """With rl_resume, the saved run's models, optimizers and bookkeeping put back; returns the
    first step to take (0 for a fresh start)."""
    if not cfg.rl_resume:
        return 0
    state = training.load_train_state(job.ckpt)
    run.load_train_state(state)
    job.accuracy_before, job.iterations = state["accuracy_before"], state["iterations"]
    return state["step"]


def begin(run, job, cfg, start):
    """What a run does before its first step: the held-out accuracy before (unless resumed),
    and, on a fresh start, the first reward model."""
    if job.accuracy_before is None:
        job.accuracy_before = heldout_accuracy(run, job.test_problems, cfg)
    if start == 0:
        rollout_log = os.path.join(job.out, "rollouts.jsonl")
        if run.d.is_main and os.path.exists(rollout_log):
            os.remove(rollout_log)
        if run.rm is not None and not cfg.rl_rm_checkpoint:
            train_reward_model(run, job.train_problems, cfg, 0)
        if run.value is not None and cfg.ppo_value_init == "reward":
            copy_weights(run.value, run.rm.model)


def logged_step(run, job, questions, cfg, step):
    """Algorithm 1's outer loop around rl_step: a new iteration when one is due, the viewer's
    record, this rank's share of the questions, the metrics of every rank, the guards, saves."""
    d, t0 = run.d, time.time()
    if iterative(cfg) and step and step % cfg.rl_iteration_steps == 0:
        job.iterations.append(iteration_summary(run, job, cfg, step))
        new_iteration(run, job.train_problems, cfg, step)
    share = len(questions) // d.world_size  # this rank's questions: a contiguous share of the step's
    try:
        if step in recorded_steps(cfg) and job.probe:  # rl_viewer_questions=0: nothing recorded
            record_rollouts(run, job.probe, cfg, step, os.path.join(job.out, "rollouts.jsonl"))
        metrics = rl_step(run, questions[d.rank * share:(d.rank + 1) * share], d.rank * share, cfg, step)
    except FloatingPointError as e:  # finite weights can still be too large: the sampler's logits overflow
        raise training.Diverged(f"step {step + 1}: {e}; {training.last_saved(run.last_checkpoint)}") from None
    metrics = {k: distributed.all_reduce_mean(v, d) for k, v in metrics.items()}
    accuracy = None
    if cfg.rl_eval_every and (step + 1) % cfg.rl_eval_every == 0 and step + 1 < cfg.rl_steps:
        accuracy = metrics["heldout_greedy"] = job.heldout[step + 1] = heldout_accuracy(run, job.test_problems, cfg)
    if run.rm is not None and run.rm.evaluations and run.rm.evaluations[-1]["step"] == step:  # (re)trained now
        latest = run.rm.evaluations[-1]
        metrics.update(rm_heldout_auc=latest["heldout_auc"], rm_heldout_accuracy=latest["heldout_accuracy"])
    job.step_times.append(time.time() - t0)
    job.spreads.append(metrics["reward_spread"])
    watch_signal(job.spreads, accuracy, job.accuracy_before, cfg, step, run.last_checkpoint)
    if (step + 1) % cfg.rl_save_every == 0 or step + 1 == cfg.rl_steps:
        save(run, job, step + 1)
    return {**metrics, "step_seconds": job.step_times[-1], **memory_metrics(run)}


def compare(cfg):
    """GRPO (cfg.rl_reward) and PPO from the same start, on the same questions and budget."""
    report_comparison(cfg, [train(config.with_keys(cfg, rl_algo=algo)) for algo in ("grpo", "ppo")])


def main():
    cfg = config.main_config()
    if cfg.dry_run:
        from support import memory_plan
        memory_plan.print_plan(cfg, int(os.environ.get("WORLD_SIZE", "1")))
        return
    training.run_main("grpo.py", lambda: compare(cfg) if cfg.rl_compare else train(cfg),
                      errors=(BadInput, FileNotFoundError, training.Diverged))
    distributed.cleanup()


if __name__ == "__main__":
    main()
