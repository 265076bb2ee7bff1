"""The per-GPU memory plan of an RL run: GRPO against PPO (DeepSeekMath section 4.1.1, figure 4).

    python -m support.memory_plan configs/7b.py --world_size=8
    python grpo.py configs/7b.py --dry_run=true                # the same plan; world size from WORLD_SIZE

The paper's memory argument: PPO trains a value model "of comparable size as the policy model",
which GRPO drops, taking the mean reward of G outputs of the same question as its baseline. So
PPO holds one more trained model: weights, gradients and AdamW states. This script builds the
model of a config on the meta device (shapes, no memory), counts its parameters (6.91B for
configs/7b.py) and prints what one GPU holds with W ranks, for both algorithms.

The precision is the one distributed.wrap sets up: FSDP2 (parallel="fsdp") with bf16 compute and
fp32 master weights (MixedPrecisionPolicy(param_dtype=bf16, reduce_dtype=fp32)). Each rank then
keeps 1/W of every fp32 weight (the master copy AdamW updates), of its fp32 gradient and of
AdamW's two fp32 moments: 16 bytes per trained parameter, over W. bf16 weights exist only while
gathered: the whole policy during generation (grpo.py unshards it once per rollout), a few FSDP
units at a time during training. The frozen pi_ref keeps bf16 shards only (whole, it keeps
float32 weights, as the policy computes from); a learned reward model (rl_reward orm/prm, in
both algorithms, as in the paper) is retrained between iterations, so it counts as a trained
model (its gradients live while it trains, between steps: not here).
One process, or DDP (parallel="ddp"), keeps every model whole on every GPU, autocast's bf16
copies of the weights while they compute, and under DDP a bucket copy of the gradients.

A run goes through two phases, and the plan prints each one's peak:
    held throughout   the model states above: fp32 weights, AdamW m and v, pi_ref
    rollout           + the policy gathered whole (bf16) + the KV cache of one generate call
                        (rl_rollout_questions x G outputs) + one layer of it copied when
                        finished rows leave the batch (model.KVCache.take_rows)
    update            + the trained models' fp32 gradients (from the first backward to the
                        optimizer step, whose zero_grad(set_to_none=True) frees them) +
                        gathered weights + activations of one micro-batch + the log-prob
                        logits buffer (+ for PPO the value model's gathered weights and
                        activations, summed as if live at once: an upper bound)
Rows are in GiB; a phase's peak is the held total plus that phase's rows.
"""

import argparse
import inspect
import math
import os
import sys
from dataclasses import dataclass

import torch

from model import ModelArgs, Transformer, sequence_logprobs
from support import config
from support.fileio import read_json

GiB = 2**30
BF16, FP32 = 2, 4
# GPUs the plan is checked against (GiB), and what a run needs beyond the plan's rows: the CUDA
# context, cuBLAS workspaces, the caching allocator's fragmentation (our estimate, not measured)
GPUS = {"24 GB": 24, "80 GB": 80}
RESERVE_GIB = 2.0


@dataclass
class Row:
    name: str
    bytes: float


@dataclass
class Plan:
    rows: dict  # phase ("held", "rollout", "update") -> [Row]

    def total(self, phase):
        return sum(r.bytes for r in self.rows[phase])

    def peak(self, phase):
        return self.total("held") + self.total(phase)


def parameter_counts(args, head="lm"):
    """Parameters of a model with this head (the policy's "lm"; "scalar", a value model: the same
    trunk; "reward": both heads, rl_rm_likelihood's reward model), one block and the FSDP root
    unit (embeddings, final norm, head), counted on the meta device."""
    with torch.device("meta"):
        model = Transformer(args, head=head)
    block = sum(p.numel() for p in model.layers[0].parameters())
    return model.num_params(), block, model.num_params() - args.n_layer * block


def per(shards):
    return " (1/W)" if shards > 1 else ""


def trained_rows(name, n, shards, ddp):
    """What a trained model holds throughout: 1/shards of its fp32 master weights and of AdamW's
    m and v; under DDP also the reducer's fp32 bucket copy of its gradients."""
    rows = [Row(f"{name}: weights, fp32 master{per(shards)}", n * FP32 / shards),
            Row(f"{name}: AdamW m and v, 2 x fp32{per(shards)}", 2 * n * FP32 / shards)]
    return rows + ([Row(f"{name}: DDP gradient buckets, fp32", n * FP32)] if ddp else [])


def gradient_row(name, n, shards):
    return Row(f"{name}: gradients, fp32{per(shards)}", n * FP32 / shards)


def frozen_rows(name, n, shards):
    """A frozen model: bf16 shards under FSDP2, else float32 weights, as the policy computes from
    (rl_support.Run: so that pi_ref = pi_theta gives a KL of exactly 0)."""
    if shards > 1:
        return [Row(f"{name}: weights, bf16{per(shards)}", n * BF16 / shards)]
    return [Row(f"{name}: weights, fp32", n * FP32)]


def layer_activation_bytes(args):
    """Bytes autograd saves per token in one block (bf16 compute; tests/test_memory_plan.py
    measures this with saved_tensors_hooks):
        2 RMSNorms      x 2 x (fp32 input copy 4D + normalised 2D + scaled output 2D)  = 16D
        attention       q 2D, k and v 2 x 2Kd (after RoPE), output 2D, log-sum-exp 4H  = 4D + 4Kd + 4H
        SwiGLU          gate, up, silu(gate), their product: 4 x 2I                    = 8I
        1/rms per norm  2 x 4 bytes"""
    D, K, d, H, I = args.dim, args.n_kv_head, args.head_dim, args.n_head, args.intermediate_size
    return 20 * D + 4 * K * d + 4 * H + 8 * I + 8


def outside_layers_bytes(args):
    """Bytes saved per token outside the blocks: token ids (8), RoPE cos/sin (2 x 2d), the final
    RMSNorm (4D + 4 + 2D) and its output, the head's input (2D)."""
    return 8 + 4 * args.head_dim + 8 * args.dim + 4


def activation_bytes(args, tokens, checkpointing):
    """Activations of one forward/backward over `tokens` tokens. With activation checkpointing
    each block keeps only its input (2D per token) and recomputes the rest in backward, one
    block at a time; without, every block keeps everything."""
    if checkpointing:
        per_token = args.n_layer * 2 * args.dim + layer_activation_bytes(args)
    else:
        per_token = args.n_layer * layer_activation_bytes(args)
    return tokens * (per_token + outside_layers_bytes(args))


def model_args(cfg):
    """The planned model: the RL start checkpoint's config.json when it is there (exactly its
    model: Qwen2's biases, a tied head), else the config's model keys."""
    path = os.path.join(cfg.rl_init_checkpoint, "config.json")
    if cfg.rl_init_checkpoint and os.path.isfile(path):
        return ModelArgs.from_hf(read_json(path), path)
    return ModelArgs.from_config(cfg)


def memory_plans(cfg, world_size):
    """{"GRPO": Plan, "PPO": Plan} per GPU, and the parameter counts."""
    args = model_args(cfg)
    n_policy, n_block, n_root = parameter_counts(args)
    n_scalar, _, n_scalar_root = parameter_counts(args, "scalar")
    n_reward = parameter_counts(args, "reward" if cfg.rl_rm_likelihood else "scalar")[0]
    W = world_size
    shards = W if cfg.parallel == "fsdp" else 1  # FSDP2 shards every model over the W ranks
    ddp = W > 1 and cfg.parallel == "ddp"
    length = cfg.plan_prompt_len + cfg.rl_max_new_tokens  # tokens per row (prompt + output)
    # grpo.py generates this rank's questions rl_rollout_questions at a time, G rows each, and
    # one KV cache serves each such chunk
    rollout_rows = min(cfg.rl_rollout_questions, math.ceil(cfg.rl_questions_per_step / W)) * cfg.rl_group_size
    micro_tokens = cfg.rl_micro_batch * length
    chunk = inspect.signature(sequence_logprobs).parameters["chunk_size"].default
    checkpointing = cfg.rl_activation_checkpointing
    reward_model = cfg.rl_reward in ("orm", "prm")  # a learned reward model (trained between iterations)

    # KV cache: rows x positions x layers x (k, v) x kv heads x head dim, bf16
    kv_cache = rollout_rows * length * args.n_layer * 2 * args.n_kv_head * args.head_dim * BF16
    # when a quarter of the rows have finished, the rest are copied a layer at a time: the new
    # copy of one layer (at most 3/4 of its rows) is live beside the whole old cache
    kv_copy = 0.75 * kv_cache / args.n_layer

    def gathered(n_model, n_model_root):
        """bf16 weights live in a micro-batch's pass: under FSDP2 one block runs while the next is
        prefetched and the root unit (embeddings, head) stays gathered through forward and
        backward; whole, autocast's bf16 copies of all of them."""
        return (n_model_root + 2 * n_block) * BF16 if shards > 1 else n_model * BF16
    # the chunked log-probs (model.chunked_logprobs): at the backward peak of one chunk, three
    # fp32 (micro-batch, chunk, V) tensors: log_softmax's output, its gradient, the logits' gradient
    logits_buffer = 3 * cfg.rl_micro_batch * min(chunk, length) * args.vocab_size * FP32
    acts = "checkpointed" if checkpointing else "no checkpointing"

    in_flight = "FSDP units in flight" if shards > 1 else "autocast's copies"
    plans = {}
    for algo in ("GRPO", "PPO"):
        held = trained_rows("policy", n_policy, shards, ddp) + frozen_rows("reference pi_ref", n_policy, shards)
        if algo == "PPO":
            held += trained_rows("value model", n_scalar, shards, ddp)
        if reward_model:
            held += trained_rows("reward model", n_reward, shards, ddp)
        rollout = [Row("policy gathered whole, bf16 (generation)", n_policy * BF16),
                   Row(f"KV cache: {rollout_rows} outputs x {length} tokens", kv_cache),
                   Row("KV cache: one layer's copy as finished rows leave", kv_copy)]
        update = [gradient_row("policy", n_policy, shards),
                  Row(f"policy gathered weights, bf16 ({in_flight})", gathered(n_policy, n_root)),
                  Row(f"policy activations, {cfg.rl_micro_batch} x {length} tokens ({acts})",
                      activation_bytes(args, micro_tokens, checkpointing)),
                  Row(f"log-prob logits buffer, 3 x {cfg.rl_micro_batch} x {min(chunk, length)} x {args.vocab_size} fp32",
                      logits_buffer)]
        if algo == "PPO":
            update += [gradient_row("value model", n_scalar, shards),
                       Row(f"value model gathered weights, bf16 ({in_flight})", gathered(n_scalar, n_scalar_root)),
                       Row(f"value model activations ({acts})", activation_bytes(args, micro_tokens, checkpointing))]
        plans[algo] = Plan({"held": held, "rollout": rollout, "update": update})
    return plans, (n_policy, n_scalar)


PHASES = (("held", "held throughout", "total held"),
          ("rollout", "rollout: generation", "peak in rollout (held + these)"),
          ("update", "update: one micro-batch forward/backward", "peak in update (held + these)"))


def print_plan(cfg, world_size):
    plans, (n_policy, n_scalar) = memory_plans(cfg, world_size)
    args = model_args(cfg)
    print(f"model: {args.n_layer} layers x {args.dim}, {args.n_head} heads ({args.n_kv_head} kv), "
          f"vocab {args.vocab_size}: {n_policy:,} parameters ({n_policy / 1e9:.2f}B); value model "
          f"(scalar head) {n_scalar:,}")
    sharding = ("one process, no sharding" if world_size == 1 else "FSDP2" if cfg.parallel == "fsdp"
                else "DDP: every model whole on every GPU")
    print(f"per GPU with W={world_size} ({sharding}, bf16 compute, fp32 master weights); RL step: "
          f"{cfg.rl_questions_per_step} questions x G={cfg.rl_group_size}, rows of {cfg.plan_prompt_len} "
          f"prompt + {cfg.rl_max_new_tokens} output tokens, micro-batch {cfg.rl_micro_batch}")
    for algo, plan in plans.items():
        print(f"\n{algo:<68}GiB")
        for phase, title, total_label in PHASES:
            print(f"  {title}")
            for row in plan.rows[phase]:
                print(f"    {row.name:<64}{row.bytes / GiB:8.2f}")
            total = plan.total("held") if phase == "held" else plan.peak(phase)
            print(f"    {'= ' + total_label:<64}{total / GiB:8.2f}")
    grpo, ppo = plans["GRPO"], plans["PPO"]
    peak = {algo: max(plan.peak("rollout"), plan.peak("update")) for algo, plan in plans.items()}
    print(f"\npeak per GPU: GRPO {peak['GRPO'] / GiB:.2f} GiB, PPO {peak['PPO'] / GiB:.2f} GiB "
          f"(PPO / GRPO = {peak['PPO'] / peak['GRPO']:.2f}); held throughout: PPO / GRPO = "
          f"{ppo.total('held') / grpo.total('held'):.2f}")
    for gpu, size in GPUS.items():
        verdicts = ", ".join(f"{algo} {'fits' if p / GiB + RESERVE_GIB <= size else 'does not fit'}"
                             for algo, p in peak.items())
        print(f"GPU of {gpu} ({size} GiB, {RESERVE_GIB:g} of them for the CUDA context and allocator): {verdicts}")
    flipped = not cfg.rl_activation_checkpointing
    tokens = cfg.rl_micro_batch * (cfg.plan_prompt_len + cfg.rl_max_new_tokens)
    print(f"policy activations with --rl_activation_checkpointing={flipped}: "
          f"{activation_bytes(args, tokens, flipped) / GiB:.2f} GiB")


def main():
    usage = "python -m support.memory_plan configs/NAME.py [--world_size=8] [--key=value ...]"
    parser = argparse.ArgumentParser(description="per-GPU memory plan of GRPO vs PPO", usage=usage)
    parser.add_argument("--world_size", type=int, default=int(os.environ.get("WORLD_SIZE", "1")))
    opts, rest = parser.parse_known_args()
    if opts.world_size < 1:
        sys.exit(f"--world_size={opts.world_size}: give the number of GPUs, at least 1")
    print_plan(config.main_config(rest), opts.world_size)


if __name__ == "__main__":
    main()
