"""Reinforcement learning of the math policy: GRPO side by side with PPO (DeepSeekMath section 4).

    python grpo.py configs/classroom.py                                   # GRPO, outcome reward
    python grpo.py configs/classroom.py --rl_algo=grpo --rl_reward=process
    python grpo.py configs/classroom.py --rl_algo=ppo                     # the PPO baseline
    python grpo.py configs/classroom.py --rl_algo=rft                     # or online_rft
    python grpo.py configs/classroom.py --rl_compare=true                 # GRPO vs PPO: table + plot
    torchrun --nproc_per_node=8 grpo.py configs/7b.py                     # the paper's run
    WORLD_SIZE=8 python grpo.py configs/7b.py --dry_run=true              # memory plan per GPU of 8 only

Every run starts from a policy checkpoint (rl_init_checkpoint, default {out_dir}/sft/ckpt) and
writes {out_dir}/rl/{method}/ (method = grpo_outcome, grpo_process, ppo, rft or online_rft):
ckpt/ (Hugging Face layout + train_state.pt, resumable with --rl_resume=true), metrics.jsonl
(one line per step) and summary.json (held-out greedy accuracy before and after, peak memory,
seconds per step, the models held in memory).

How one step goes (paper Algorithm 1), and where GRPO and PPO differ:

    1. rollouts   sample G outputs o_1..o_G per question q from pi_old (the policy now)    shared
    2. rewards    rule-based grader (outcome), per-step checker (process), or a learned
                  reward model (ORM / PRM, a scalar head trained on graded samples)        shared
    3. log-probs  pi_old(o_t|q,o_<t) and pi_ref(o_t|q,o_<t), at the sampling temperature    shared
    4. advantage  GRPO: the group's own rewards, normalised (no value model at all)
                  PPO:  GAE over a learned value model V_psi, a second trainable network
    5. update     the clipped surrogate (both); GRPO adds the k3 KL to pi_ref to the loss,
                  PPO puts the KL into the per-token reward and also fits V_psi

Why GRPO needs less memory (paper 4.1.1): PPO trains a value model as large as the policy, so it
holds two sets of weights, gradients and AdamW states (16 bytes per parameter each in fp32);
GRPO replaces the value baseline by the mean reward of the G outputs of the same question.
metrics.jsonl's model_state_mb counts these bytes; on the classroom GRPO holds 0.59x the bytes of PPO.

The unified paradigm (paper 5.2.1, eq. 5): every method's gradient is
    grad J = E[(q, o) ~ D] [ 1/|o| sum_t GC(q, o, t) * grad log pi_theta(o_t | q, o_<t) ]
and the methods differ in where the data come from and in the gradient coefficient GC:

    method       data source                      reward function     GC(q, o, t)
    SFT          q, o ~ P_sft(Q, O)               -                   1
    RFT          q ~ P_sft(Q), o ~ pi_sft(O|q)    rule (correct?)     I(o): 1 if o is correct, else 0
    Online RFT   q ~ P_sft(Q), o ~ pi_theta(O|q)  rule                I(o)
    PPO          q ~ P_sft(Q), o ~ pi_theta(O|q)  model or rule       A_t (GAE on a value model)
    GRPO         q ~ P_sft(Q), {o_i} ~ pi_theta   model or rule       A_i,t + beta (pi_ref/pi_theta - 1)

The paper's ordering on its runs: GRPO (process) > GRPO (outcome) > online RFT > RFT.

Pitfalls this file avoids (see README): log-probs are recomputed at the sampling temperature;
the k3 KL's log-ratio is clamped; groups whose rewards all agree are counted (zero_var_groups);
the truncation rate is logged; with mu = 1 the loss value is ~0 at the update while its
gradient is not (read reward, accuracy, kl and clip_frac, not the loss); the reference model
is reset to the policy every rl_iteration_steps steps, as Algorithm 1 does.

Tests: pytest -q tests/test_grpo.py
"""

import contextlib
import os
import random
import resource
import sys
import time
from bisect import bisect_right
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from tqdm import tqdm

import config
import distributed
import evaluate
import tasks
import training
from fileio import BadInput, read_json, read_jsonl, write_json
from model import Transformer, generate, padding_positions_and_mask, sequence_logprobs
from tokenizer import COT_SUFFIX, load_tokenizer

ALGOS = ("grpo", "ppo", "rft", "online_rft")
REWARDS = ("outcome", "process", "orm", "prm")  # rule-based outcome/process, or learned ORM/PRM
# The k3 KL estimator exponentiates log(pi_ref/pi_theta): clamp it as verl and OpenRLHF do, so a
# token the policy has made near-impossible under pi_ref cannot overflow the loss.
KL_LOG_RATIO_LIMIT = 20.0
KL_LIMIT = 10.0


def method_name(cfg):
    """The output folder under {out_dir}/rl/: grpo_outcome, grpo_process, ppo, rft, online_rft."""
    if cfg.rl_algo == "grpo":
        return "grpo_process" if cfg.rl_reward in ("process", "prm") else "grpo_outcome"
    return cfg.rl_algo


# =============================================================================================
# 1. Rollouts (shared): G outputs per question, sampled from pi_old with the KV cache
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


@contextlib.contextmanager
def whole_model(model):
    """The model as one module that this rank can call alone, as many times as it likes.

    generate() stops when every row of this rank is done, so ranks make different numbers of
    forward calls. DDP (which broadcasts buffers every forward) and FSDP (which all-gathers a
    block's weights every forward) would then wait on each other forever. So: DDP generates
    with the module inside (no gradients are needed), and FSDP unshards every block once,
    keeps it whole through generation, and reshards afterwards: one all-gather
    per rollout, no collective during decoding. This is also what evaluation runs on."""
    from torch.distributed.fsdp import FSDPModule

    if not isinstance(model, FSDPModule):
        yield distributed.unwrap(model)
        return
    sharded = [m for m in model.modules() if isinstance(m, FSDPModule)]
    model.set_reshard_after_forward(False)
    for module in sharded:
        module.unshard()
    try:
        yield model
    finally:
        for module in sharded:
            module.reshard()
            module.set_reshard_after_forward(module is not model, recurse=False)  # FSDP2's defaults


def sample_rollouts(model, tokenizer, problems, cfg, seed, device):
    """G = rl_group_size outputs for each problem, sampled at rl_temperature.

    rl_rollout_questions questions (x G rows) share one KV cache, which bounds its memory (the
    7B's cache is ~0.5 MB per token and row). Each such chunk draws from its own generator,
    seeded by `seed` + its first question's index, so a question's samples depend neither on
    the number of ranks nor on which rank drew them."""
    G, per_chunk = cfg.rl_group_size, cfg.rl_rollout_questions
    prompts = [tokenizer.encode_prompt(p.question, COT_SUFFIX) for p in problems for _ in range(G)]
    responses, truncated = [], []
    with whole_model(model) as m, training.autocast(device, cfg.dtype):
        was_training = m.training
        m.eval()
        for start in range(0, len(problems), per_chunk):
            generator = torch.Generator(device).manual_seed(seed + start)
            out = generate(m, prompts[start * G:(start + per_chunk) * G], cfg.rl_max_new_tokens,
                           temperature=cfg.rl_temperature, eos_id=tokenizer.eos_id, generator=generator)
            responses += [row[keep].tolist() for row, keep in zip(out.tokens, out.mask)]
            truncated.append(out.truncated)
        m.train(was_training)
    tokens, mask = right_padded([p + r for p, r in zip(prompts, responses)], tokenizer.pad_id, device)
    response_mask = torch.zeros(len(prompts), tokens.shape[1] - 1, dtype=torch.bool)
    for i, (prompt, response) in enumerate(zip(prompts, responses)):
        response_mask[i, len(prompt) - 1:len(prompt) + len(response) - 1] = True  # column j scores token j + 1
    texts = [tokenizer.decode([t for t in r if t != tokenizer.eos_id]) for r in responses]
    rows = [p for p in problems for _ in range(G)]
    return Rollouts(rows, texts, tokens, mask, response_mask.to(device), torch.cat(truncated).to(device))


def right_padded(sequences, pad_id, device):
    """Token lists as tokens (n, L) padded on the right to the longest, and mask (n, L) of the
    real tokens; built on the CPU and moved in one copy each."""
    L = max(len(s) for s in sequences)
    tokens = torch.full((len(sequences), L), pad_id, dtype=torch.long)
    mask = torch.zeros(len(sequences), L, dtype=torch.bool)
    for i, s in enumerate(sequences):
        tokens[i, :len(s)] = torch.tensor(s)
        mask[i, :len(s)] = True
    return tokens.to(device), mask.to(device)


# =============================================================================================
# 2. Rewards (shared): where each reward lands, as a per-token tensor
# =============================================================================================
# A reward is a list of (column, value) per output: outcome supervision puts one value on the
# last token; process supervision one value on the last token of every reasoning step. Both
# become `rewards` (N, L-1) with `reward_mask` marking where a reward sits, so GRPO's two
# advantages and PPO's per-token reward are computed by the same code.


def guarded(reward_fn, rollouts, rows, failures):
    """reward_fn(rows) -> one result per row. If it raises, each row is retried alone and a row
    that still raises is reported with its question and output and scores nothing (None)."""
    try:
        return reward_fn(rows)
    except Exception:
        results = []
        for row in rows:
            try:
                results += reward_fn([row])
            except Exception as e:
                failures.append(row)
                distributed.print0(
                    f"\nreward function failed ({type(e).__name__}: {e}); scoring 0 for\n"
                    f"  question: {rollouts.problems[row].question!r}\n  output:   {rollouts.texts[row]!r}")
                results.append(None)
        return results


def correctness(rollouts, grader, failures):
    """I(o): 1.0 where the output's final answer equals the gold answer (evaluate.Grader)."""
    rows = list(range(len(rollouts.texts)))
    graded = guarded(lambda rs: grader.grade([rollouts.texts[r] for r in rs],
                                             [rollouts.problems[r].answer for r in rs]),
                     rollouts, rows, failures)
    return torch.tensor([g or 0.0 for g in graded], device=rollouts.tokens.device)  # (N,)


def step_end_columns(rollouts, row, tokenizer, step_ends):
    """The log-prob column of the token that holds character `end - 1` of each step (the paper's
    'last token of each step')."""
    columns = rollouts.response_columns(row)
    ids = rollouts.tokens[row, 1:][columns].tolist()
    _, starts = tokenizer.encoding.decode_with_offsets([t for t in ids if t != tokenizer.eos_id])
    return [columns[max(0, bisect_right(starts, end - 1) - 1)] for end in step_ends]


def process_labels(rollouts, tokenizer, failures):
    """tasks.step_rewards per output: [(column, 0/1)] per step."""
    def label(rows):
        out = []
        for r in rows:
            steps = tasks.step_rewards(rollouts.problems[r], rollouts.texts[r])
            ends = step_end_columns(rollouts, r, tokenizer, [end for end, _ in steps])
            out.append(list(zip(ends, [value for _, value in steps])))
        return out
    return [labels or [] for labels in guarded(label, rollouts, list(range(len(rollouts.texts))), failures)]


def outcome_labels(rollouts, correct):
    """[(column of the last response token, I(o))] per output."""
    return [[(rollouts.response_columns(r)[-1], float(correct[r]))] for r in range(len(correct))]


def reward_tensors(rollouts, labels):
    """rewards (N, L-1) and reward_mask (N, L-1) from [(column, value)] per output."""
    rewards = torch.zeros(rollouts.response_mask.shape, device=rollouts.tokens.device)
    reward_mask = torch.zeros_like(rollouts.response_mask)
    for row, row_labels in enumerate(labels):
        for column, value in row_labels:
            rewards[row, column] = value
            reward_mask[row, column] = True
    return rewards, reward_mask


@torch.no_grad()
def reward_model_scores(reward_model, rollouts, labels, cfg):
    """A learned reward: sigmoid of the reward model's score at each labelled position (ORM:
    the last token; PRM: each step's last token); the rule labels only say where to read."""
    scores = []
    for rows in micro_batches(len(labels), cfg.rl_micro_batch):
        scores.append(scalar_outputs(reward_model, rollouts.tokens[rows], rollouts.mask[rows]).sigmoid())
    scores = torch.cat(scores)  # (N, L-1)
    return [[(column, float(scores[row, column])) for column, _ in row_labels]
            for row, row_labels in enumerate(labels)]


# =============================================================================================
# 3. Log-probs and values (shared), in micro-batches of rows
# =============================================================================================


def micro_batches(n, size):
    return [list(range(s, min(n, s + size))) for s in range(0, n, size)]


def scalar_outputs(model, tokens, mask):
    """A scalar-head model's output aligned with log-prob columns: column j is its value after
    reading tokens 0..j, i.e. V(q, o_<t) for the token t = j + 1 that column j scores. (n, L-1)"""
    positions, attn_mask = padding_positions_and_mask(mask)
    return model(tokens, positions, attn_mask)[:, :-1].float()


@torch.no_grad()
def logprobs_of(model, rollouts, cfg):
    """log pi(o_t | q, o_<t) for every column, (N, L-1), at the sampling temperature."""
    return torch.cat([sequence_logprobs(model, rollouts.tokens[rows], rollouts.mask[rows], cfg.rl_temperature)
                      for rows in micro_batches(len(rollouts.texts), cfg.rl_micro_batch)])


@torch.no_grad()
def values_of(value_model, rollouts, cfg):
    return torch.cat([scalar_outputs(value_model, rollouts.tokens[rows], rollouts.mask[rows])
                      for rows in micro_batches(len(rollouts.texts), cfg.rl_micro_batch)])


# =============================================================================================
# 4. Advantages: GRPO from the group, PPO from a value model
# =============================================================================================


def group_advantages(rewards, reward_mask, response_mask, group_size):
    """GRPO's advantages (paper 4.1.2 outcome, 4.1.3 process supervision), (N, T).

    Process supervision: every step reward of the group's G outputs is normalised with the
    mean and std of all of them together,
        r~_i^index(j) = (r_i^index(j) - mean(R)) / std(R),
    and a token's advantage is the sum of the normalised rewards of the steps ending at or
    after it:   A_i,t = sum_{index(j) >= t} r~_i^index(j).
    Outcome supervision is the case of one "step" ending at the last token:
        A_i,t = r~_i = (r_i - mean(r)) / std(r)  for every token t of o_i.
    A group whose rewards all agree (std 0) carries no signal: its advantages are 0, not NaN.
    Returns the advantages and the number of such zero-variance groups."""
    N, T = rewards.shape
    r = rewards.view(-1, group_size, T)  # (B, G, T)
    m = reward_mask.view(-1, group_size, T).float()  # (B, G, T)
    count = m.sum((1, 2), keepdim=True)  # (B, 1, 1) rewards per group
    mean = (r * m).sum((1, 2), keepdim=True) / count.clamp(min=1)  # mean(R)
    std = (((r - mean) ** 2 * m).sum((1, 2), keepdim=True) / count.clamp(min=1)).sqrt()  # std(R)
    signal = std > 1e-6  # (B, 1, 1)
    normalised = torch.where(signal, (r - mean) / std.clamp(min=1e-6), 0.0) * m  # r~, (B, G, T)
    # sum over steps ending at or after t: a cumulative sum from the right
    advantages = normalised.flip(-1).cumsum(-1).flip(-1).view(N, T) * response_mask
    return advantages, int((~signal).sum())


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
    """(x - mean) / std over every masked token of every rank (PPO's advantage whitening)."""
    stats = torch.stack([(x * mask).sum(), mask.sum(), (x * x * mask).sum()]).double()
    if d.world_size > 1:
        dist.all_reduce(stats)
    mean = stats[0] / stats[1]
    var = stats[2] / stats[1] - mean ** 2
    return ((x - mean) / var.clamp(min=1e-12).sqrt()).float() * mask


# =============================================================================================
# 5. The losses, side by side
# =============================================================================================


def per_output_mean(per_token, response_mask):
    """1/|o_i| sum_t x_i,t for each output, (N,): every output weighs the same, short or long."""
    m = response_mask.float()
    return (per_token * m).sum(-1) / m.sum(-1).clamp(min=1)


def clipped_surrogate(logp, old_logp, advantages, clip_eps):
    """min(r_t A_t, clip(r_t, 1 - eps, 1 + eps) A_t), with r_t = pi_theta(o_t|q,o_<t) / pi_old(o_t|q,o_<t).
    PPO's and GRPO's shared core (paper eq. 1 and 3). Returns it and where clipping bit, (N, T)."""
    ratio = torch.exp(logp - old_logp)  # r_t
    unclipped = ratio * advantages
    clipped = ratio.clamp(1 - clip_eps, 1 + clip_eps) * advantages
    return torch.minimum(unclipped, clipped), (clipped < unclipped)


def k3_kl(logp, ref_logp):
    """The unbiased estimator of KL(pi_theta || pi_ref) (paper eq. 4, Schulman 2020), >= 0:
        D_KL = pi_ref/pi_theta - log(pi_ref/pi_theta) - 1."""
    log_ratio = (ref_logp - logp).clamp(-KL_LOG_RATIO_LIMIT, KL_LOG_RATIO_LIMIT)  # log(pi_ref/pi_theta)
    return (torch.exp(log_ratio) - log_ratio - 1).clamp(max=KL_LIMIT)


def grpo_loss(logp, old_logp, ref_logp, advantages, response_mask, clip_eps, beta):
    """-J_GRPO (paper eq. 3), averaged over the questions:
        J = 1/G sum_i 1/|o_i| sum_t { min(r_it A_it, clip(r_it, 1-eps, 1+eps) A_it) - beta D_KL,it }.
    The KL is a loss term, not part of the reward, so it does not disturb the advantage."""
    surrogate, clipped = clipped_surrogate(logp, old_logp, advantages, clip_eps)  # (N, T)
    kl = k3_kl(logp, ref_logp)  # (N, T)
    objective = per_output_mean(surrogate - beta * kl, response_mask)  # (N,) 1/|o_i| sum_t {...}
    return -objective, {"kl": kl, "clipped": clipped}


def ppo_losses(logp, old_logp, advantages, values, old_values, returns, response_mask, clip_eps, value_clip):
    """-J_PPO (paper eq. 1) and the value model's clipped regression loss, per output (N,):
        J = 1/|o| sum_t min(r_t A_t, clip(r_t, 1-eps, 1+eps) A_t)      (A_t from GAE; the KL
        to pi_ref is already inside A_t, through the per-token reward)
        L_V = 1/|o| sum_t 1/2 max((V_t - R_t)^2, (clip(V_t, V_old - c, V_old + c) - R_t)^2)."""
    surrogate, clipped = clipped_surrogate(logp, old_logp, advantages, clip_eps)
    clipped_values = old_values + (values - old_values).clamp(-value_clip, value_clip)
    value_loss = 0.5 * torch.maximum((values - returns) ** 2, (clipped_values - returns) ** 2)
    return -per_output_mean(surrogate, response_mask), per_output_mean(value_loss, response_mask), {"clipped": clipped}


def rft_loss(logp, correct, response_mask):
    """RFT and online RFT (paper 5.1): supervised fine-tuning on the correct outputs only,
    GC = I(o):  -1/|o| sum_t I(o) log pi_theta(o_t | q, o_<t), per output (N,)."""
    return -correct * per_output_mean(logp, response_mask)


# =============================================================================================
# 6. The learned reward model (ORM / PRM) and its continual training (Algorithm 1)
# =============================================================================================
# A scalar head on the policy's trunk, trained with binary cross-entropy to predict the rule
# grader's labels: the outcome (ORM, read at the last token) or each step's correctness (PRM,
# read at each step's last token). Iterative RL retrains it on new policy samples with a
# replay of rl_rm_replay (10% in the paper) of all earlier samples.


def rm_samples(rollouts, labels):
    """Training samples for the reward model: (token ids, labelled columns, labels) per output."""
    samples = []
    for row, row_labels in enumerate(labels):
        n = int(rollouts.mask[row].sum())
        samples.append({"tokens": rollouts.tokens[row, :n].tolist(),
                        "columns": [c for c, _ in row_labels], "labels": [v for _, v in row_labels]})
    return samples


def train_reward_model(run, new_samples, cfg):
    """rl_rm_epochs passes over the new samples plus a replay of earlier ones (BCE loss)."""
    history = run.rm_history
    replay = random.Random(cfg.seed + len(history)).sample(history, int(cfg.rl_rm_replay * len(history)))
    data = new_samples + replay
    device = run.device
    order = random.Random(cfg.seed + len(history) + 1)
    loss = torch.zeros(())
    for _ in range(cfg.rl_rm_epochs):
        order.shuffle(data)
        for rows in micro_batches(len(data), cfg.rl_micro_batch):
            batch = [data[i] for i in rows]
            tokens, mask = right_padded([s["tokens"] for s in batch], run.tokenizer.pad_id, device)
            with training.autocast(device, cfg.dtype):
                scores = scalar_outputs(run.reward_model, tokens, mask)  # (n, L-1)
            picked = torch.cat([scores[i, s["columns"]] for i, s in enumerate(batch)])
            labels = torch.tensor([v for s in batch for v in s["labels"]], device=device)
            loss = F.binary_cross_entropy_with_logits(picked, labels)
            loss.backward()
            training.clip_gradients(run.reward_model, cfg.rl_grad_clip)
            run.rm_optimizer.step()
            run.rm_optimizer.zero_grad(set_to_none=True)
    history.extend(new_samples)
    return float(loss.detach())


# =============================================================================================
# 7. One RL step: explore, reward, advantage, update
# =============================================================================================


def rl_step(run, step_problems, first_index, cfg, step):
    """One exploration stage and its rl_mu policy updates, on this rank's questions (the
    step's questions first_index, first_index + 1, ...). Returns this rank's metrics."""
    d, tokenizer, device = run.d, run.tokenizer, run.device
    algo = cfg.rl_algo
    # 1. rollouts: RFT samples the frozen SFT model, every other method the current policy
    sampler = run.sft_model if algo == "rft" else run.policy
    rollouts = sample_rollouts(sampler, tokenizer, step_problems, cfg, cfg.seed + 7919 * step + first_index, device)
    m = rollouts.response_mask

    # 2. rewards
    failures = []
    correct = correctness(rollouts, run.grader, failures)  # (N,) I(o), always: the accuracy metric
    labels = process_labels(rollouts, tokenizer, failures) if cfg.rl_reward in ("process", "prm") \
        else outcome_labels(rollouts, correct)
    if run.reward_model is not None:
        if cfg.rl_iteration_steps:  # kept for the reward model's next training round
            run.rm_pending += rm_samples(rollouts, labels)
        with training.autocast(device, cfg.dtype):
            labels = reward_model_scores(run.reward_model, rollouts, labels, cfg)
    rewards, reward_mask = reward_tensors(rollouts, labels)  # (N, T), (N, T)

    # 3. pi_old and pi_ref log-probs, recomputed at the sampling temperature. With rl_mu = 1 the
    # one update starts at pi_old itself, so GRPO takes pi_old = pi_theta.detach() there and saves
    # a pass; PPO needs pi_old before the update, for its per-token reward.
    with training.autocast(device, cfg.dtype):
        old_logp = logprobs_of(run.policy, rollouts, cfg) if algo == "ppo" or (algo == "grpo" and cfg.rl_mu > 1) else None
        ref_logp = logprobs_of(run.ref, rollouts, cfg) if algo in ("grpo", "ppo") else None
        old_values = values_of(run.value, rollouts, cfg) if algo == "ppo" else None

    # 4. advantages
    group_advantage, zero_var = group_advantages(rewards, reward_mask, m, cfg.rl_group_size)  # (N, T)
    if algo == "grpo":
        advantages = group_advantage
    elif algo == "ppo":
        # per-token reward r_t = r_phi(q, o_<=t) - beta log(pi_old(o_t|...) / pi_ref(o_t|...))
        token_rewards = rewards - cfg.rl_kl_coef * (old_logp - ref_logp) * m  # (N, T)
        advantages, returns = gae(token_rewards, old_values, m, cfg.ppo_gamma, cfg.ppo_lambda)
        advantages = whiten(advantages, m.float(), d)

    # 5. rl_mu updates of the policy (and of PPO's value model) on this batch
    N = len(rollouts.texts)
    sums = {"kl": 0.0, "clip_frac": 0.0, "entropy": 0.0, "value_loss": 0.0, "loss": 0.0}
    tokens_seen = 0
    for _ in range(cfg.rl_mu):
        for rows in micro_batches(N, cfg.rl_micro_batch):
            mb = m[rows]
            with training.autocast(device, cfg.dtype):
                logp, entropy = sequence_logprobs(run.policy, rollouts.tokens[rows], rollouts.mask[rows],
                                                  cfg.rl_temperature, with_entropy=True)  # (n, T)
                old = old_logp[rows] if old_logp is not None else logp.detach()  # log pi_old
                if algo == "grpo":
                    loss, info = grpo_loss(logp, old, ref_logp[rows], advantages[rows], mb,
                                           cfg.rl_clip_eps, cfg.rl_kl_coef)
                elif algo == "ppo":
                    values = scalar_outputs(run.value, rollouts.tokens[rows], rollouts.mask[rows])
                    loss, value_loss, info = ppo_losses(logp, old, advantages[rows], values,
                                                        old_values[rows], returns[rows], mb,
                                                        cfg.rl_clip_eps, cfg.ppo_value_clip)
                    info["kl"] = k3_kl(logp, ref_logp[rows])
                    (value_loss.sum() / N).backward()  # V_psi's own loss, own optimizer
                    sums["value_loss"] += float(value_loss.detach().sum())
                else:
                    loss, info = rft_loss(logp, correct[rows], mb), {}
            (loss.sum() / N).backward()  # the mean over all N outputs: 1/G and the mean over questions
            n_tokens = int(mb.sum())
            tokens_seen += n_tokens
            sums["loss"] += float(loss.detach().sum())
            sums["entropy"] += float((entropy.detach() * mb).sum())
            if "kl" in info:
                sums["kl"] += float((info["kl"].detach() * mb).sum())
            if "clipped" in info:
                sums["clip_frac"] += float((info["clipped"] & mb).sum())
        run.optimizer_step()
    updates = cfg.rl_mu
    return {
        "reward": float(per_output_mean(rewards, reward_mask).mean()),
        "accuracy": float(correct.mean()),
        "loss": sums["loss"] / (N * updates),
        "kl": sums["kl"] / tokens_seen,
        "clip_frac": sums["clip_frac"] / tokens_seen,
        "entropy": sums["entropy"] / tokens_seen,
        "response_len": float(m.sum(-1).float().mean()),
        "truncated": float(rollouts.truncated.float().mean()),
        "zero_var_groups": zero_var / len(step_problems),
        "reward_errors": float(len(failures)),
        **({"value_loss": sums["value_loss"] / (N * updates)} if algo == "ppo" else {}),
    }


# =============================================================================================
# 8. The models a run holds, and what they cost
# =============================================================================================


def local_bytes(tensor):
    local = tensor.to_local() if hasattr(tensor, "to_local") else tensor  # an FSDP shard
    return local.numel() * local.element_size()


def model_state_bytes(model, optimizer=None):
    """Bytes of a model's parameters, gradients and optimizer state on this rank."""
    total = sum(local_bytes(p) + (local_bytes(p.grad) if p.grad is not None else 0) for p in model.parameters())
    if optimizer is not None:
        total += sum(local_bytes(v) for state in optimizer.state.values() for v in state.values()
                     if torch.is_tensor(v) and v.dim() > 0)
    return total


def peak_rss_bytes():
    """The process's peak resident memory: VmHWM (resettable per run), else ru_maxrss."""
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM"))
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def reset_peak_memory(device):
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    with contextlib.suppress(OSError):
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # Linux: reset VmHWM, so each run of --rl_compare measures its own peak


class Run:
    """Everything one RL run holds: the models (with what each is for), optimizers, grader."""

    def __init__(self, cfg, d, tokenizer, grader, init, policy_from):
        self.cfg, self.d, self.tokenizer, self.grader, self.device = cfg, d, tokenizer, grader, d.device
        algo = cfg.rl_algo

        # Trained models keep float32 weights (AdamW's master copy: at lr 1e-6 most updates would
        # vanish in bf16 rounding); frozen ones only run forward, in the compute dtype.
        frozen_dtype = distributed.compute_dtype(d.device, cfg.dtype)

        def load(head="lm", folder=init, dtype=torch.float32):
            model = Transformer.from_pretrained(folder, head=head, dtype=dtype, device=d.device)
            model.gradient_checkpointing = cfg.rl_activation_checkpointing
            return model

        def wrap(model):
            return distributed.wrap(model, cfg.parallel, d, cfg.dtype)

        def frozen(model):
            model.requires_grad_(False)
            return wrap(model.eval()) if cfg.parallel == "fsdp" else model

        self.policy = wrap(load(folder=policy_from))
        self.optimizer = self.adamw(self.policy, cfg.rl_lr)
        self.held = {"policy": "trained"}
        # pi_ref (GRPO, PPO): the KL anchor, reset to the policy every rl_iteration_steps
        self.ref = frozen(load(dtype=frozen_dtype)) if algo in ("grpo", "ppo") else None
        # RFT samples the SFT model, frozen for the whole run
        self.sft_model = frozen(load(dtype=frozen_dtype)) if algo == "rft" else None
        self.reward_model = self.rm_optimizer = None
        self.rm_history, self.rm_pending = [], []
        if cfg.rl_reward in ("orm", "prm"):
            self.reward_model = wrap(load("scalar", cfg.rl_rm_checkpoint or init))
            self.rm_optimizer = self.adamw(self.reward_model, cfg.rl_rm_lr)
            self.held["reward model"] = "trained on graded samples, then frozen within an iteration"
        self.value = self.value_optimizer = None
        if algo == "ppo":
            # V_psi: its own trunk + scalar head, as large as the policy: what GRPO removes. It
            # starts from the policy's trunk, or (ppo_value_init=reward) takes the reward model's
            # weights once that is trained (train()).
            self.value = wrap(load("scalar"))
            self.value_optimizer = self.adamw(self.value, cfg.ppo_value_lr)
            self.held["value model"] = "trained"
        if self.ref is not None:
            self.held["reference"] = "frozen"
        if self.sft_model is not None:
            self.held["SFT sampler"] = "frozen"
        self.peak_state_bytes = 0

    def adamw(self, model, lr):
        return training.make_adamw(model, lr, self.cfg.rl_weight_decay, training.PAPER_BETAS, self.device)

    def trained(self):
        """(model, optimizer) pairs updated by rl_step."""
        pairs = [(self.policy, self.optimizer)]
        return pairs + ([(self.value, self.value_optimizer)] if self.value is not None else [])

    def optimizer_step(self):
        """Clip, step, measure the live bytes (gradients still exist), free the gradients."""
        for model, optimizer in self.trained():
            training.clip_gradients(model, self.cfg.rl_grad_clip)
            optimizer.step()
        self.peak_state_bytes = max(self.peak_state_bytes, self.state_bytes())
        for model, optimizer in self.trained():
            optimizer.zero_grad(set_to_none=True)

    def state_bytes(self):
        models = [(self.policy, self.optimizer), (self.ref, None), (self.sft_model, None),
                  (self.value, self.value_optimizer), (self.reward_model, self.rm_optimizer)]
        return sum(model_state_bytes(m, o) for m, o in models if m is not None)

    # ---- checkpoint: the policy in HF layout; the other models and optimizers in train_state
    def train_state(self, step, extra):
        state = {"step": step, "optimizer": training.optimizer_state(self.optimizer, self.policy),
                 "rng": training.rng_state(), **extra}
        for name in ("ref", "value", "reward_model"):
            model = getattr(self, name)
            if model is not None:
                state[name] = distributed.full_state_dict(model)
        if self.value is not None:
            state["value_optimizer"] = training.optimizer_state(self.value_optimizer, self.value)
        if self.reward_model is not None:
            state["rm_optimizer"] = training.optimizer_state(self.rm_optimizer, self.reward_model)
            state["rm_history"] = self.rm_history
            state["rm_pending"] = self.rm_pending
        return state

    def load_train_state(self, state):
        training.load_optimizer_state(self.optimizer, self.policy, state["optimizer"])
        for name in ("ref", "value", "reward_model"):
            model = getattr(self, name)
            if model is not None:
                distributed.load_full_state_dict(model, state[name])
        if self.value is not None:
            training.load_optimizer_state(self.value_optimizer, self.value, state["value_optimizer"])
        if self.reward_model is not None:
            training.load_optimizer_state(self.rm_optimizer, self.reward_model, state["rm_optimizer"])
            self.rm_history, self.rm_pending = state["rm_history"], state["rm_pending"]
        training.set_rng_state(state["rng"])


# =============================================================================================
# 9. The run: start, loop, checkpoint, summary
# =============================================================================================


def check_rl_config(cfg, world_size):
    if cfg.rl_algo not in ALGOS:
        raise BadInput(f"rl_algo={cfg.rl_algo!r}: choose one of {', '.join(ALGOS)}")
    if cfg.rl_reward not in REWARDS:
        raise BadInput(f"rl_reward={cfg.rl_reward!r}: choose one of {', '.join(REWARDS)}")
    for key in ("rl_questions_per_step", "rl_rm_questions"):
        if getattr(cfg, key) % world_size or getattr(cfg, key) < world_size:
            raise BadInput(f"{key}={getattr(cfg, key)} does not split over {world_size} ranks: "
                           f"use a multiple of {world_size}")
    if cfg.rl_group_size < 2 and cfg.rl_algo == "grpo":
        raise BadInput(f"rl_group_size={cfg.rl_group_size}: GRPO compares outputs within a group; use 2 or more")
    if cfg.ppo_value_init not in ("policy", "reward"):
        raise BadInput(f"ppo_value_init={cfg.ppo_value_init!r}: choose 'policy' or 'reward'")
    if cfg.rl_algo == "ppo" and cfg.ppo_value_init == "reward" and cfg.rl_reward not in ("orm", "prm"):
        raise BadInput("ppo_value_init=reward needs a learned reward model: set rl_reward=orm or prm")
    if cfg.rl_algo in ("rft", "online_rft") and cfg.rl_reward != "outcome":
        raise BadInput(f"rl_algo={cfg.rl_algo} fine-tunes on correct outputs (the outcome grader): "
                       "leave rl_reward=outcome")


def copy_weights(target, source):
    """target <- source, parameter by parameter (the same layout and sharding)."""
    with torch.no_grad():
        for t, s in zip(target.parameters(), source.parameters()):
            t.copy_(s.detach())


def heldout_accuracy(run, problems, cfg):
    """Greedy accuracy on the held-out problems (evaluate.evaluate_model with eval_k = 1)."""
    with whole_model(run.policy) as model:
        result = evaluate.evaluate_model(model, run.tokenizer, problems, config.with_keys(cfg, eval_k=1),
                                         cfg.test_problems, run.grader)
    return result.metrics["greedy"]


def pretrain_reward_model(run, train_problems, cfg):
    """The reward model's first data: rl_rm_questions x G samples of the starting policy,
    labelled by the rule-based grader (ORM) or step checker (PRM)."""
    d = run.d
    share = cfg.rl_rm_questions // d.world_size
    picked = random.Random(cfg.seed + 1).sample(train_problems, cfg.rl_rm_questions)[d.rank * share:(d.rank + 1) * share]
    rollouts = sample_rollouts(run.policy, run.tokenizer, picked, cfg, cfg.seed - 7919 + d.rank * share, run.device)
    failures = []
    labels = process_labels(rollouts, run.tokenizer, failures) if cfg.rl_reward == "prm" else \
        outcome_labels(rollouts, correctness(rollouts, run.grader, failures))
    loss = train_reward_model(run, rm_samples(rollouts, labels), cfg)
    distributed.print0(f"reward model ({cfg.rl_reward}) trained on {len(rollouts.texts) * d.world_size} "
                       f"graded samples: loss {loss:.3f}")


def new_iteration(run, cfg):
    """Algorithm 1, each iteration: pi_ref <- pi_theta; the reward model continues training on
    the policy's new samples with a replay of earlier ones."""
    if run.ref is not None:
        copy_weights(run.ref, run.policy)
    if run.reward_model is not None:
        train_reward_model(run, run.rm_pending, cfg)
        run.rm_pending = []


def memory_metrics(run):
    """Peak memory: live bytes of every model's weights, gradients and optimizer state (this
    rank), the process's peak resident memory, and on GPU the allocator's peak."""
    metrics = {"model_state_mb": max(run.peak_state_bytes, run.state_bytes()) / 2**20,
               "peak_rss_mb": peak_rss_bytes() / 2**20}
    if run.device.type == "cuda":
        metrics["cuda_peak_mb"] = torch.cuda.max_memory_allocated(run.device) / 2**20
    return metrics


def train(cfg):
    """One RL run (rl_algo with rl_reward); returns its summary (rank 0 also writes it)."""
    d = distributed.setup(cfg.device)
    check_rl_config(cfg, d.world_size)
    method = method_name(cfg)
    out = os.path.join(cfg.out_dir, "rl", method)
    ckpt = os.path.join(out, "ckpt")
    init = cfg.rl_init_checkpoint or os.path.join(cfg.out_dir, "sft", "ckpt")
    for folder in [init] + ([ckpt] if cfg.rl_resume else []):
        if not os.path.exists(os.path.join(folder, "config.json")):
            raise BadInput(f"{folder}: no checkpoint (config.json) there; run sft.py first, set "
                           "--rl_init_checkpoint=FOLDER, or drop --rl_resume=true to start afresh")
    training.seed_everything(cfg.seed)
    reset_peak_memory(d.device)
    tokenizer = load_tokenizer(cfg, init)
    train_problems = tasks.load_problems(cfg.train_problems, "train", cfg)
    test_problems = tasks.load_problems(cfg.test_problems, "test", cfg)
    test_problems = test_problems[: cfg.eval_n_problems or len(test_problems)]
    with evaluate.stage_grader(cfg, d) as grader:  # forked before models fill memory
        run = Run(cfg, d, tokenizer, grader, init, ckpt if cfg.rl_resume else init)
        start, accuracy_before = 0, None
        if cfg.rl_resume:
            state = training.load_train_state(ckpt)
            run.load_train_state(state)
            start, accuracy_before = state["step"], state["accuracy_before"]
        if accuracy_before is None:
            accuracy_before = heldout_accuracy(run, test_problems, cfg)
        log = training.MetricsLog(os.path.join(out, "metrics.jsonl"), start)
        if run.reward_model is not None and not cfg.rl_resume and not cfg.rl_rm_checkpoint:
            pretrain_reward_model(run, train_problems, cfg)
        if run.value is not None and cfg.ppo_value_init == "reward" and not cfg.rl_resume:
            copy_weights(run.value, run.reward_model)
        order = random.Random(cfg.seed).sample(range(len(train_problems)), len(train_problems))
        Q = cfg.rl_questions_per_step
        step_times = []
        bar = tqdm(range(start, cfg.rl_steps), desc=f"rl {method}", disable=not d.is_main)
        for step in bar:
            t0 = time.time()
            if cfg.rl_iteration_steps and step and step % cfg.rl_iteration_steps == 0:
                new_iteration(run, cfg)
            questions = [train_problems[order[(step * Q + j) % len(order)]] for j in range(Q)]
            share = Q // d.world_size  # this rank's questions: a contiguous share of the step's
            metrics = rl_step(run, questions[d.rank * share:(d.rank + 1) * share], d.rank * share, cfg, step)
            metrics = {k: distributed.all_reduce_mean(v, d) for k, v in metrics.items()}
            if cfg.rl_eval_every and (step + 1) % cfg.rl_eval_every == 0 and step + 1 < cfg.rl_steps:
                metrics["heldout_greedy"] = heldout_accuracy(run, test_problems, cfg)
            step_times.append(time.time() - t0)
            metrics.update(step_seconds=step_times[-1], **memory_metrics(run))
            log.log(step + 1, **metrics)
            bar.set_postfix(reward=f"{metrics['reward']:.2f}", acc=f"{metrics['accuracy']:.2f}",
                            kl=f"{metrics['kl']:.3f}")
            if (step + 1) % cfg.rl_save_every == 0 or step + 1 == cfg.rl_steps:
                training.save_checkpoint(ckpt, run.policy, tokenizer,
                                         run.train_state(step + 1, {"accuracy_before": accuracy_before}))
        accuracy_after = heldout_accuracy(run, test_problems, cfg)
        summary = {
            "method": method, "algo": cfg.rl_algo, "reward": cfg.rl_reward, "steps": cfg.rl_steps,
            "world_size": d.world_size, "heldout_problems": len(test_problems),
            "accuracy_before": accuracy_before, "accuracy_after": accuracy_after,
            "seconds_per_step": sum(step_times) / max(1, len(step_times)),
            "models_held": run.held, **memory_metrics(run),
        }
    if d.is_main:
        write_json(os.path.join(out, "summary.json"), summary)
        print(f"\n{method}: held-out greedy accuracy {100 * accuracy_before:.1f}% -> "
              f"{100 * accuracy_after:.1f}% ({len(test_problems)} problems), "
              f"{summary['seconds_per_step']:.2f} s/step, model state {summary['model_state_mb']:.1f} MB, "
              f"peak RSS {summary['peak_rss_mb']:.0f} MB\n  holds: "
              f"{', '.join(f'{k} ({v})' for k, v in run.held.items())}\n  {out}/", flush=True)
    return summary


# =============================================================================================
# 10. GRPO vs PPO on equal terms: one table, one plot
# =============================================================================================


def comparison_table(summaries):
    rows = [["method", "accuracy before", "accuracy after", "model state MB", "peak RSS MB",
             "s/step", "models held"]]
    for s in summaries:
        rows.append([s["method"], f"{100 * s['accuracy_before']:.1f}%", f"{100 * s['accuracy_after']:.1f}%",
                     f"{s['model_state_mb']:.1f}", f"{s['peak_rss_mb']:.0f}", f"{s['seconds_per_step']:.2f}",
                     ", ".join(s["models_held"])])
    widths = [max(len(row[c]) for row in rows) for c in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)) for row in rows)


def plot_comparison(out_dir, methods, path):
    """Reward and rollout accuracy per step (and held-out greedy accuracy) for each method."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for method in methods:
        records = list(read_jsonl(os.path.join(out_dir, "rl", method, "metrics.jsonl")))
        summary = read_json(os.path.join(out_dir, "rl", method, "summary.json"))
        steps = [r["step"] for r in records]
        for ax, key in zip(axes, ("reward", "accuracy")):
            values = [r[key] for r in records]
            line, = ax.plot(steps, values, alpha=0.25)
            # a step sees only rl_questions_per_step questions: a moving mean shows the trend
            smooth = [sum(values[max(0, i - 4):i + 1]) / len(values[max(0, i - 4):i + 1]) for i in range(len(values))]
            ax.plot(steps, smooth, color=line.get_color(), label=f"{method} (rollouts, mean of 5 steps)")
            if key == "accuracy":
                held = [(0, summary["accuracy_before"])] + [(r["step"], r["heldout_greedy"]) for r in records
                                                            if "heldout_greedy" in r]
                held.append((summary["steps"], summary["accuracy_after"]))
                ax.plot(*zip(*held), "o--", color=line.get_color(), label=f"{method} (held-out greedy)")
    for ax, title in zip(axes, ("mean reward", "accuracy")):
        ax.set_xlabel("RL step")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def compare(cfg):
    """GRPO (cfg.rl_reward) and PPO from the same start, on the same questions and budget."""
    summaries = [train(config.with_keys(cfg, rl_algo=algo)) for algo in ("grpo", "ppo")]
    if distributed.is_main_process():
        path = os.path.join(cfg.out_dir, "rl", "compare.png")
        plot_comparison(cfg.out_dir, [s["method"] for s in summaries], path)
        ratio = summaries[0]["model_state_mb"] / summaries[1]["model_state_mb"]
        print(f"\n{comparison_table(summaries)}\nGRPO's model state is {ratio:.2f}x PPO's.  plot: {path}")


def main():
    cfg = config.main_config()
    if cfg.dry_run:
        import memory_plan
        memory_plan.print_plan(cfg, int(os.environ.get("WORLD_SIZE", "1")))
        return
    try:
        compare(cfg) if cfg.rl_compare else train(cfg)
    except (BadInput, FileNotFoundError) as e:
        sys.exit(f"grpo.py: {e}")
    distributed.cleanup()


if __name__ == "__main__":
    main()
