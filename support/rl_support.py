"""Support for grpo.py: what an RL run holds and what it costs, and the GRPO-vs-PPO report.

Nothing here is part of the algorithm; grpo.py reads as the paper without it. This module holds

    - micro-batching (rows of similar length together) and the scalar-head / log-prob passes over
      a batch of rollouts;
    - `whole_model`: generation on a DDP- or FSDP-wrapped policy;
    - `Run`: the models one run holds (policy, pi_ref, the SFT sampler of RFT, PPO's value model,
      the learned reward model), their optimizers, and their checkpoint state;
    - a run's name, its job (what it carries from step to step), its held-out accuracy and summary,
      and the bookkeeping of its steps (question ids, the viewer's steps, the reward model's line);
    - the guards: a NaN/inf reward, a flat reward, a collapse of the held-out accuracy;
    - memory accounting: the bytes of every model's weights, gradients and AdamW states (the
      paper's argument for GRPO, section 4.1.1), and the process's peak resident memory;
    - the comparison table and plot of `grpo.py --rl_compare=true`.

Tests: pytest -q tests/test_grpo.py
"""

import contextlib
import os
import resource
from dataclasses import dataclass, field

import torch

import evaluate
from model import Transformer, padding_positions_and_mask, sequence_logprobs
from support import config, distributed, rewards, training
from support.fileio import BadInput, read_json, read_jsonl

# ---------------------------------------------------------------------------------------------
# Batches of rollouts
# ---------------------------------------------------------------------------------------------


def micro_batches(n, size):
    """Row indices [0, n) in chunks of `size`: the unit of one forward/backward pass."""
    return [list(range(s, min(n, s + size))) for s in range(0, n, size)]


def length_grouped_micro_batches(mask, size):
    """A batch of right-padded sequences (mask (N, L), True = a real token) as micro-batches of
    `size` rows, each with its width: its longest row's length. A pass over a micro-batch reads
    only its first `width` columns; every column after them is padding in each of its rows.

    With more rows than one micro-batch holds, the rows are sorted by length (longest first)
    before they are cut, so rows of similar length share a pass and little of it is padding:
    transformers' group_by_length, verl's and OpenRLHF's padding removal in spirit. On the
    classroom model's GRPO step (64 outputs, micro-batches of 16) the update's passes read 84% of
    the positions of the batch at its full width, and a step's update took 0.740 s where TRL's,
    which pads every row to the step's longest, took 1.063 (results/grpo-vs-trl-xeon.txt; in one
    pass over all 64 rows the two take the same time: results/grpo-vs-trl-one-pass-xeon.txt).
    Every quantity of the objective is a sum over rows (grpo_loss divides by the step's output
    count, not the micro-batch's), so which rows share a pass changes only the rounding. With one
    micro-batch the rows keep their order and its width is the batch's: the pass is the
    ungrouped one, bit for bit (the classroom's rl_micro_batch 64 is its whole step)."""
    lengths = mask.sum(-1).tolist()  # (N,) each row's real tokens
    n = len(lengths)
    order = sorted(range(n), key=lambda i: -lengths[i]) if n > size else list(range(n))
    chunks = [order[s:s + size] for s in range(0, n, size)]
    return [(rows, max(lengths[i] for i in rows)) for rows in chunks]


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


def scalar_outputs(model, tokens, mask):
    """A scalar-head model's output aligned with log-prob columns: column j is its value after
    reading tokens 0..j, i.e. V(q, o_<t) for the token t = j + 1 that column j scores. (n, L-1)"""
    positions, attn_mask = padding_positions_and_mask(mask)
    return model(tokens, positions, attn_mask)[:, :-1].float()


def per_column(pass_fn, rollouts, cfg):
    """pass_fn(tokens, mask) -> (n, width-1) run over the rollouts' length-grouped micro-batches,
    gathered as (N, L-1); 0 in the columns past a micro-batch's width (padding in all its rows)."""
    out = torch.zeros(rollouts.response_mask.shape, device=rollouts.tokens.device)  # (N, L-1)
    for rows, width in length_grouped_micro_batches(rollouts.mask, cfg.rl_micro_batch):
        out[rows, :width - 1] = pass_fn(rollouts.tokens[rows, :width], rollouts.mask[rows, :width])
    return out


@torch.no_grad()
def logprobs_of(model, rollouts, cfg):
    """log pi(o_t | q, o_<t) for every column, (N, L-1), at the sampling temperature."""
    logprobs = per_column(lambda tokens, mask: sequence_logprobs(model, tokens, mask, cfg.rl_temperature),
                          rollouts, cfg)
    distributed.reshard(model)
    return logprobs


@torch.no_grad()
def values_of(value_model, rollouts, cfg):
    """V_psi at every column, (N, L-1)."""
    values = per_column(lambda tokens, mask: scalar_outputs(value_model, tokens, mask), rollouts, cfg)
    distributed.reshard(value_model)
    return values


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


def copy_weights(target, source):
    """target <- source, parameter by parameter (the same layout and sharding), by name: a value
    model (trunk + score) takes those of a reward model that also has an LM head. By the inner
    models' names: under DDP the policy is wrapped and pi_ref is not. Under FSDP2 both are
    resharded first (a reward model's held-out scores leave its root unit gathered)."""
    target, source = distributed.unwrap(target), distributed.unwrap(source)
    distributed.reshard(target)
    distributed.reshard(source)
    sources = dict(source.named_parameters())
    with torch.no_grad():
        for name, t in target.named_parameters():
            t.copy_(sources[name].detach())


# ---------------------------------------------------------------------------------------------
# The models a run holds
# ---------------------------------------------------------------------------------------------


class Run:
    """Everything one RL run holds: the models (with what each is for), optimizers, grader."""

    def __init__(self, cfg, d, tokenizer, grader, init, policy_from):
        self.cfg, self.d, self.tokenizer, self.grader, self.device = cfg, d, tokenizer, grader, d.device
        algo = cfg.rl_algo

        # Trained models keep float32 weights (AdamW's master copy: at lr 1e-6 most updates would
        # vanish in bf16 rounding). Frozen ones must compute as the policy does, so that pi_ref =
        # pi_theta gives a KL of exactly 0: under FSDP2 every model is gathered in the compute
        # dtype, so bf16 shards serve; a whole model (one process, DDP) keeps float32 weights
        # under autocast, as the policy does. A bf16 copy would round its norms and residual
        # stream apart from the policy's: a KL of rounding noise, which PPO's whitening blew up
        # to advantages of std 1 when a step's rewards were flat.
        sharded = cfg.parallel == "fsdp" and d.world_size > 1
        frozen_dtype = distributed.compute_dtype(d.device, cfg.dtype) if sharded else torch.float32

        def load(head="lm", folder=init, dtype=torch.float32):
            model = Transformer.from_pretrained(folder, head=head, dtype=dtype, device=d.device)
            model.gradient_checkpointing = cfg.rl_activation_checkpointing
            if cfg.compile:  # in place (names stay); dynamic: every step's rollouts have another length
                model.compile(dynamic=True)
            return model

        def wrap(model):
            return distributed.wrap(model, cfg.parallel, d, cfg.dtype)

        def frozen(model):
            model.requires_grad_(False)
            return wrap(model.eval()) if cfg.parallel == "fsdp" else model

        policy = load(folder=policy_from)
        self.policy = wrap(policy)
        self.optimizer = self.adamw(self.policy, cfg.rl_lr)
        self.held = {"policy": "trained"}
        # pi_ref (GRPO, PPO): the KL anchor, reset to the policy every rl_iteration_steps
        self.ref = frozen(load(dtype=frozen_dtype)) if algo in ("grpo", "ppo") else None
        # RFT samples the SFT model, frozen for the whole run
        self.sft_model = frozen(load(dtype=frozen_dtype)) if algo == "rft" else None
        self.rm = None
        if cfg.rl_reward in ("orm", "prm"):
            folder = cfg.rl_rm_checkpoint or cfg.rl_rm_init or init
            model = load("reward" if cfg.rl_rm_likelihood else "scalar", folder)
            if model.args.vocab_size != policy.args.vocab_size:
                raise BadInput(f"the reward model's folder {folder} has a vocabulary of "
                               f"{model.args.vocab_size}, the policy's {policy.args.vocab_size}: give it a checkpoint "
                               "trained with the policy's tokenizer")
            if cfg.rl_rm_checkpoint and not model.score.weight.detach().abs().sum():
                raise BadInput(f"rl_rm_checkpoint={cfg.rl_rm_checkpoint}: the folder has no trained score head "
                               "(score.weight), so its rewards would all be equal; leave rl_rm_checkpoint empty to "
                               "train a reward model (from rl_rm_init)")
            if cfg.ppo_value_init == "reward" and algo == "ppo":
                shape = ("dim", "n_layer", "n_head", "n_kv_head", "intermediate_size")
                if [getattr(model.args, k) for k in shape] != [getattr(policy.args, k) for k in shape]:
                    raise BadInput(f"ppo_value_init=reward copies the reward model ({folder}) into a value model "
                                   "shaped like the policy, and their shapes differ: use ppo_value_init=policy, or "
                                   "a reward model of the policy's shape")
            model = wrap(model)
            self.rm = rewards.RewardModel(model, self.adamw(model, cfg.rl_rm_lr), cfg, tokenizer.pad_id, d)
            self.held["reward model"] = "trained on graded samples, then frozen within an iteration"
        self.value = self.value_optimizer = None
        if algo == "ppo":
            # V_psi: its own trunk + scalar head, as large as the policy: what GRPO removes. It
            # starts from the policy's trunk, or (ppo_value_init=reward) takes the reward model's
            # weights once that is trained (grpo.train).
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
        """(model, optimizer) pairs updated by grpo.update."""
        pairs = [(self.policy, self.optimizer)]
        return pairs + ([(self.value, self.value_optimizer)] if self.value is not None else [])

    def optimizer_step(self, check):
        """Clip, check(norms) (it raises on a NaN/inf gradient norm, before any weight moves),
        step, measure the live bytes (gradients still exist), free the gradients. Returns the
        gradient norms before clipping, {"policy_grad_norm": ..., "value_grad_norm": ...}."""
        norms = {f"{name}_grad_norm": training.clip_gradients(model, self.cfg.rl_grad_clip)
                 for name, (model, _) in zip(("policy", "value"), self.trained())}
        check(norms)
        for model, optimizer in self.trained():
            optimizer.step()
        self.peak_state_bytes = max(self.peak_state_bytes, self.state_bytes())
        for model, optimizer in self.trained():
            optimizer.zero_grad(set_to_none=True)
        return norms

    def state_bytes(self):
        models = [(self.policy, self.optimizer), (self.ref, None), (self.sft_model, None),
                  (self.value, self.value_optimizer)]
        if self.rm is not None:
            models.append((self.rm.model, self.rm.optimizer))
        return sum(model_state_bytes(m, o) for m, o in models if m is not None)

    # ---- checkpoint: the policy in HF layout; the other models and optimizers in train_state
    def train_state(self, step, extra):
        state = {"step": step, "optimizer": training.optimizer_state(self.optimizer, self.policy),
                 "rng": training.rng_state(), **extra}
        for name in ("ref", "value"):
            model = getattr(self, name)
            if model is not None:
                state[name] = distributed.full_state_dict(model)
        if self.value is not None:
            state["value_optimizer"] = training.optimizer_state(self.value_optimizer, self.value)
        if self.rm is not None:
            state["reward_model"] = self.rm.state()
        return state

    def load_train_state(self, state):
        training.load_optimizer_state(self.optimizer, self.policy, state["optimizer"])
        for name in ("ref", "value"):
            model = getattr(self, name)
            if model is not None:
                distributed.load_full_state_dict(model, state[name])
        if self.value is not None:
            training.load_optimizer_state(self.value_optimizer, self.value, state["value_optimizer"])
        if self.rm is not None:
            self.rm.load_state(state["reward_model"])
        training.set_rng_state(state["rng"])


# ---------------------------------------------------------------------------------------------
# The run's configuration and its report
# ---------------------------------------------------------------------------------------------


def check_rl_config(cfg, world_size, algos, rewards):
    """Choices that cannot work together, before any model is loaded."""
    if cfg.rl_algo not in algos:
        raise BadInput(f"rl_algo={cfg.rl_algo!r}: choose one of {', '.join(algos)}")
    if cfg.rl_reward not in rewards:
        raise BadInput(f"rl_reward={cfg.rl_reward!r}: choose one of {', '.join(rewards)}")
    learned_rm = cfg.rl_reward in ("orm", "prm")  # only a learned reward model draws rl_rm_questions
    for key in ["rl_questions_per_step"] + (["rl_rm_questions"] if learned_rm else []):
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


def print_summary(summary, out):
    print(f"\n{summary['method']}: held-out greedy accuracy {100 * summary['accuracy_before']:.1f}% -> "
          f"{100 * summary['accuracy_after']:.1f}% ({summary['heldout_problems']} problems), "
          f"{summary['seconds_per_step']:.2f} s/step, model state {summary['model_state_mb']:.1f} MB, "
          f"peak RSS {summary['peak_rss_mb']:.0f} MB\n  holds: "
          f"{', '.join(f'{k} ({v})' for k, v in summary['models_held'].items())}", flush=True)
    for row in summary.get("iterations", []):
        auc = "n/a" if row["rm_heldout_auc"] is None else f"{row['rm_heldout_auc']:.3f}"
        print(f"  iteration {row['iteration']} (to step {row['end_step']}): held-out greedy "
              f"{100 * row['heldout_greedy']:.1f}%, reward model held-out AUC {auc}")
    print(f"  {out}/", flush=True)


# ---------------------------------------------------------------------------------------------
# A run's name, its job, its held-out accuracy, its summary
# ---------------------------------------------------------------------------------------------


def method_name(cfg):
    """The output folder under {out_dir}/rl/: one per algorithm, reward and iteration scheme, so
    no run replaces another's (grpo_outcome, grpo_prm_iterative, ppo, ppo_orm, rft, ...)."""
    name = f"grpo_{cfg.rl_reward}" if cfg.rl_algo == "grpo" else cfg.rl_algo
    if cfg.rl_algo == "ppo" and cfg.rl_reward != "outcome":
        name += f"_{cfg.rl_reward}"
    return name + ("_iterative" if iterative(cfg) else "") + (f"-seed{cfg.rl_seed}" if cfg.rl_seed else "")


def iterative(cfg):
    return 0 < cfg.rl_iteration_steps < cfg.rl_steps


@dataclass
class Job:
    """What one run works on and carries from step to step (saved with its checkpoints)."""
    out: str  # {out_dir}/rl/{method}
    train_problems: list
    test_problems: list
    probe: list  # the viewer's fixed questions
    accuracy_before: float = None
    heldout: dict = field(default_factory=dict)  # {steps done: held-out greedy accuracy} measured in the run
    iterations: list = field(default_factory=list)  # iterative RL: one row per iteration
    step_times: list = field(default_factory=list)
    spreads: list = field(default_factory=list)  # mean within-group reward std, per step

    @property
    def ckpt(self):
        return os.path.join(self.out, "ckpt")


def heldout_accuracy(run, problems, cfg):
    """Greedy accuracy on the held-out problems (evaluate.evaluate_model with eval_k = 1)."""
    with whole_model(run.policy) as model:
        result = evaluate.evaluate_model(model, run.tokenizer, problems, config.with_keys(cfg, eval_k=1),
                                         cfg.test_problems, run.grader)
    return result.metrics["greedy"]


def finish(run, job, cfg):
    """The held-out accuracy after, and the run's summary."""
    accuracy_after = heldout_accuracy(run, job.test_problems, cfg)
    if iterative(cfg):
        job.iterations.append(iteration_summary(run, job, cfg, cfg.rl_steps, accuracy_after))
    return {
        "method": method_name(cfg), "algo": cfg.rl_algo, "reward": cfg.rl_reward, "steps": cfg.rl_steps,
        "seed": cfg.seed, "world_size": run.d.world_size, "heldout_problems": len(job.test_problems),
        "accuracy_before": job.accuracy_before, "accuracy_after": accuracy_after,
        "seconds_per_step": sum(job.step_times) / max(1, len(job.step_times)),
        "models_held": run.held, **memory_metrics(run),
        **({"reward_model": run.rm.evaluations} if run.rm is not None else {}),
        **({"iterations": job.iterations} if job.iterations else {}),
    }


def iteration_summary(run, job, cfg, step, accuracy=None):
    """One row of the iterative run's table: the policy's held-out accuracy at the end of an
    iteration, and the reward model's held-out AUC during it."""
    rm = run.rm.evaluations[-1] if run.rm is not None and run.rm.evaluations else {}
    return {"iteration": -(-step // cfg.rl_iteration_steps), "end_step": step,
            "heldout_greedy": accuracy if accuracy is not None else
            job.heldout.get(step) or heldout_accuracy(run, job.test_problems, cfg),
            "rm_heldout_auc": rm.get("heldout_auc"), "rm_heldout_accuracy": rm.get("heldout_accuracy")}


def save(run, job, step):
    extra = {"accuracy_before": job.accuracy_before, "iterations": job.iterations}
    training.save_checkpoint(job.ckpt, run.policy, run.tokenizer, run.train_state(step, extra))


def rows_question_ids(rollouts, cfg, step, first_index):
    """A question id per row (its index in the run's question stream), for by-question splits."""
    return [step * cfg.rl_questions_per_step + first_index + row // cfg.rl_group_size
            for row in range(len(rollouts.texts))]


def recorded_steps(cfg):
    """The steps whose probe groups are recorded: rl_viewer_steps, or the first, middle and last."""
    return set(cfg.rl_viewer_steps) if cfg.rl_viewer_steps else {0, cfg.rl_steps // 2, cfg.rl_steps - 1}


def print_reward_model(result, n_train, cfg, step):
    """One line on a (re)trained reward model: its training loss and held-out accuracy and AUC."""
    auc, accuracy = ("n/a" if result[key] is None else f"{result[key]:.3f}" for key in ("heldout_auc", "heldout_accuracy"))
    distributed.print0(f"\nreward model ({cfg.rl_reward}) at step {step}: trained on {n_train} samples "
                       f"(+ replay), loss {result['loss']:.3f}; held-out ({result['heldout_positions']} "
                       f"positions): accuracy {accuracy}, AUC {auc}")


# ---------------------------------------------------------------------------------------------
# Guards: a broken reward, a flat reward, a collapse
# ---------------------------------------------------------------------------------------------


def stop_if_rewards_broken(run, rewards, step):
    """A NaN/inf reward is a broken reward function or reward model: every rank counts them, and
    all stop together, before the update."""
    broken = distributed.all_reduce_mean(float((~rewards.isfinite()).sum()), run.d)
    if broken:
        raise training.Diverged(f"step {step + 1}: {broken * run.d.world_size:.0f} rewards are NaN/inf: the reward "
                                f"is broken and the run stopped before the update; {training.last_saved(run.last_checkpoint)}")


def watch_signal(history, accuracy, accuracy_before, cfg, step, last_checkpoint):
    """Loud warnings when the learning signal is gone: the reward's spread within groups near zero
    for rl_flat_reward_steps steps in a row (GRPO's normalised advantages are then noise; other
    methods do not normalise within groups, and a group of one output has no spread), or the
    held-out accuracy far below the start (a collapse). The collapse stops the run."""
    flat = history[-cfg.rl_flat_reward_steps:]
    if cfg.rl_algo == "grpo" and len(flat) == cfg.rl_flat_reward_steps and max(flat) < cfg.rl_min_reward_spread:
        distributed.print0(f"\nWARNING step {step + 1}: the reward's mean within-group std has been under "
                           f"{cfg.rl_min_reward_spread} for {len(flat)} steps: the reward no longer tells the "
                           f"outputs of a question apart, and GRPO learns from noise.")
    if accuracy is not None and accuracy < accuracy_before - cfg.rl_collapse_drop:
        raise training.Diverged(f"step {step + 1}: held-out greedy accuracy fell from {100 * accuracy_before:.1f}% "
                                f"to {100 * accuracy:.1f}% (more than rl_collapse_drop={cfg.rl_collapse_drop}): "
                                f"the policy collapsed; {training.last_saved(last_checkpoint)}")


# ---------------------------------------------------------------------------------------------
# Memory: what each method costs (paper 4.1.1)
# ---------------------------------------------------------------------------------------------


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


def memory_metrics(run):
    """Peak memory: live bytes of every model's weights, gradients and optimizer state (this
    rank), the process's peak resident memory, and on GPU the allocator's peak."""
    metrics = {"model_state_mb": max(run.peak_state_bytes, run.state_bytes()) / 2**20,
               "peak_rss_mb": peak_rss_bytes() / 2**20}
    if run.device.type == "cuda":
        metrics["cuda_peak_mb"] = torch.cuda.max_memory_allocated(run.device) / 2**20
    return metrics


# ---------------------------------------------------------------------------------------------
# GRPO vs PPO on equal terms: one table, one plot
# ---------------------------------------------------------------------------------------------


def comparison_table(summaries):
    rows = [["method", "accuracy before", "accuracy after", "model state MB", "peak RSS MB",
             "s/step", "models held"]]
    for s in summaries:
        rows.append([s["method"], f"{100 * s['accuracy_before']:.1f}%", f"{100 * s['accuracy_after']:.1f}%",
                     f"{s['model_state_mb']:.1f}", f"{s['peak_rss_mb']:.0f}", f"{s['seconds_per_step']:.2f}",
                     ", ".join(s["models_held"])])
    widths = [max(len(row[c]) for row in rows) for c in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)) for row in rows)


def report_comparison(cfg, summaries):
    """grpo.py --rl_compare=true's ending: the table and the plot of GRPO's and PPO's runs."""
    if distributed.is_main_process():
        path = os.path.join(cfg.out_dir, "rl", "compare.png")
        plot_comparison(cfg.out_dir, [s["method"] for s in summaries], path)
        ratio = summaries[0]["model_state_mb"] / summaries[1]["model_state_mb"]
        print(f"\n{comparison_table(summaries)}\nGRPO's model state is {ratio:.2f}x PPO's.  plot: {path}")


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
