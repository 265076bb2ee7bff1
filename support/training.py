"""What every training stage (pretrain, SFT, RL) shares: the AdamW set-up, mixed precision,
checkpoints with resumable training state, and the metrics log.

A checkpoint is one folder, written under a temporary name and renamed into place:
    config.json + model.safetensors      the weights, in Hugging Face's Llama layout
    tokenizer.tiktoken (+ its sidecar)   the tokenizer the weights were trained with
    train_state.pt                       optimizer, step, RNG states, data position (resume only)
train_state.pt holds only tensors, numbers and strings, so it loads with
torch.load(weights_only=True), which cannot execute code hidden in a pickle.

Failures every stage handles the same way, with the helpers below:
- divergence: `check_finite` stops a run (Diverged, exit status 1) at the first NaN/inf loss,
  gradient norm or reward, before the update, naming the step and the last checkpoint, which
  stays as it was; `save_checkpoint` refuses non-finite weights;
- Ctrl-C / SIGTERM: `StopRequest` turns them into a flag the loop reads; the loop saves the
  whole steps done and calls `exit_interrupted` (one line, exit status 130);
- a save killed between its two renames: `fileio.recover_staged_folder`, run by
  `save_checkpoint` and at every stage's start, finishes it (or removes its leftovers).
"""

import contextlib
import json
import os
import pickle
import random
import signal
import sys
import time

import numpy as np
import torch

from model import staged_folder
from support import distributed
from support.fileio import BadInput, recover_staged_folder


# AdamW's beta1, beta2 in SFT and RL: the paper states them for pretraining (2.2.1) and names none
# for SFT or RL; our choice, the same ones (pretraining's own come from pretrain_betas)
PAPER_BETAS = (0.9, 0.95)


def make_adamw(model, lr, weight_decay, betas, device):
    """AdamW (paper 2.3: beta1 0.9, beta2 0.95, weight decay 0.1).

    Weight decay pulls the matrices (attention/MLP projections, embeddings, heads) towards 0,
    which regularises what they map; the RMSNorm gains are 1-D scales whose natural value is 1,
    so decaying them towards 0 would only fight the normalisation: they are not decayed."""
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr, betas=tuple(betas), fused=device.type == "cuda")


def clip_gradients(model, max_norm):
    """Scale the gradients so that their global norm is at most max_norm; the norm before
    clipping, as a float (under FSDP2 each rank holds a shard: the norm comes back whole).
    A NaN/inf norm leaves NaN gradients: pass it to check_finite before optimizer.step."""
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
    return float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)


class Diverged(RuntimeError):
    """A NaN/inf loss, gradient norm, reward or weight: the run stops before it spreads."""


def check_finite(step, last_checkpoint, fix="lower the learning rate", **quantities):
    """Raise Diverged, naming the step, the quantity and the last checkpoint, when any of the
    quantities (floats or tensors, e.g. loss=..., grad_norm=...) holds a NaN or inf.

    Call it with values every rank agrees on (all-reduced losses, the global gradient norm),
    so that every rank stops at the same step."""
    shown = [_describe(name, torch.as_tensor(value)) for name, value in quantities.items()]
    bad = [text for text in shown if text]
    if bad:
        raise Diverged(f"step {step}: {', '.join(bad)}: training diverged and stopped before the update; "
                       f"{last_saved(last_checkpoint)}; {fix}")


def _describe(name, value):
    """'' for an all-finite value, else e.g. "loss nan" or "rewards: 3 of 64 values NaN/inf"."""
    bad = int((~torch.isfinite(value)).sum())
    if not bad:
        return ""
    if value.numel() == 1:
        return f"{name} {value.item()}"
    return f"{name}: {bad} of {value.numel()} values NaN/inf"


def last_saved(folder):
    if not os.path.exists(os.path.join(folder, "config.json")):
        return f"no checkpoint was saved in {folder} yet"
    return f"the last checkpoint, {folder}, is untouched"


def autocast(device, dtype_choice):
    """bfloat16 autocast on GPU (weights and optimizer stay float32), plain float32 on CPU."""
    dtype = distributed.compute_dtype(device, dtype_choice)
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def seed_everything(seed):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def rng_state():
    """Every generator's whole state, as tensors and plain numbers (train_state.pt loads with
    weights_only): Python's (its 624 words and position, and the cached gauss), NumPy's (the
    same, and its cached gaussian), torch's."""
    _, words, gauss_next = random.getstate()
    _, keys, position, has_gauss, cached_gaussian = np.random.get_state()
    state = {"python": list(words), "python_gauss": gauss_next, "torch": torch.get_rng_state(),
             "numpy": torch.from_numpy(keys.astype(np.int64)), "numpy_rest": [int(position), int(has_gauss),
                                                                              float(cached_gaussian)]}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state):
    random.setstate((3, tuple(state["python"]), state.get("python_gauss")))
    torch.set_rng_state(state["torch"])
    position, has_gauss, cached_gaussian = state.get("numpy_rest", [624, 0, 0.0])  # older files: a fresh block
    np.random.set_state(("MT19937", state["numpy"].numpy().astype(np.uint32), position, has_gauss, cached_gaussian))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def save_checkpoint(folder, model, tokenizer, train_state=None):
    """Every rank calls this (FSDP must gather); rank 0 writes the folder atomically. Weights
    holding a NaN/inf are never saved: Diverged, on every rank, and the folder stays as it was."""
    if not finite_weights(model):
        step = f"step {train_state['step']}: " if train_state and "step" in train_state else ""
        raise Diverged(f"{step}the weights hold NaN/inf, so they were not saved; {last_saved(folder)}; "
                       "lower the learning rate")
    state_dict = distributed.full_state_dict(model)
    if not distributed.is_main_process():
        return
    recover_staged_folder(folder)
    inner = distributed.unwrap(model)
    with staged_folder(folder) as tmp:
        inner.save_pretrained(tmp, state_dict=state_dict, atomic=False)
        if tokenizer is not None:
            tokenizer.save(os.path.join(tmp, "tokenizer.tiktoken"))
        if train_state is not None:
            torch.save(train_state, os.path.join(tmp, "train_state.pt"))


def unmark_done(folder, d):
    """Remove {folder}/summary.json, the mark of a finished stage. Call it once every input is
    read and checked, just before the first output is touched: a run that fails on a bad input
    leaves the previous run's outputs whole, and one that fails later never looks done."""
    summary = os.path.join(folder, "summary.json")
    if d.is_main and os.path.exists(summary):
        os.remove(summary)


def recover_checkpoint(folder, d):
    """At a stage's start, before it looks for `folder`: finish a save that a kill interrupted
    between its renames, and remove the temporary folders of killed saves (rank 0 does it)."""
    if d.is_main:
        recovered = recover_staged_folder(folder)
        if recovered:
            print(recovered, flush=True)
    distributed.barrier(d)


def finite_weights(model):
    """Whether every parameter is finite, agreed by every rank (each checks its own FSDP2 shard)."""
    local = [p.to_local() if hasattr(p, "to_local") else p for p in model.parameters()]
    finite = torch.stack([torch.isfinite(p).all() for p in local]).all().float()
    if torch.distributed.is_initialized():
        torch.distributed.all_reduce(finite, op=torch.distributed.ReduceOp.MIN)
    return bool(finite)


def load_train_state(folder):
    path = os.path.join(folder, "train_state.pt")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{folder}: no train_state.pt, so this checkpoint cannot resume "
                                "training (it holds weights only); start a new run instead")
    try:
        state = torch.load(path, weights_only=True)
    except (RuntimeError, EOFError, pickle.UnpicklingError, ValueError) as e:
        raise BadInput(f"{path}: truncated or corrupt ({str(e).splitlines()[0]}); this checkpoint cannot "
                       f"resume: restore it from a copy, or delete {folder} (or turn the stage's *_resume "
                       "off) to start over")
    if not isinstance(state, dict) or "step" not in state:
        raise BadInput(f"{path}: not a train state (no step in it); delete {folder} to start over")
    return state


def optimizer_state(optimizer, model):
    """The optimizer's state, whole, for train_state.pt (FSDP shards it; gather it first)."""
    if not torch.distributed.is_initialized():
        return optimizer.state_dict()
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict
    return get_optimizer_state_dict(distributed.unwrap(model), optimizer,
                                    options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def load_optimizer_state(optimizer, model, state, lr_scheduled=False):
    """Load a saved optimizer state into `optimizer`, made from the config. Its settings would
    come back with it and silently override the config's, so settings that differ are a
    BadInput instead: learning rate (unless the caller sets it every step), weight decay, betas."""
    keys = ("weight_decay", "betas") if lr_scheduled else ("lr", "weight_decay", "betas")
    configured = [{key: tuple(g[key]) if key == "betas" else g[key] for key in keys} for g in optimizer.param_groups]
    if not torch.distributed.is_initialized():
        optimizer.load_state_dict(state)
    else:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict
        set_optimizer_state_dict(distributed.unwrap(model), optimizer, state,
                                 options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True))
    for now, group in zip(configured, optimizer.param_groups):
        saved = {key: tuple(group[key]) if key == "betas" else group[key] for key in keys}
        if saved != now:
            raise BadInput(f"resuming: the run was trained with optimizer settings {saved}, the config now "
                           f"gives {now}: resume with the settings it started with, or start a new run")


class StopRequest:
    """Ctrl-C / SIGTERM set a flag that the training loop reads between (micro-)steps: the loop
    drops the step in progress (weights and optimizer are untouched until optimizer.step),
    saves the whole steps done and calls exit_interrupted, before torchrun's agent, which
    answers Ctrl-C by sending its workers SIGTERM, kills them 30 s later. A second Ctrl-C
    stops at once (KeyboardInterrupt). Use it as a context manager around the loop: outside
    it, Ctrl-C is Python's again.

        with training.StopRequest() as stop:
            for step in range(start, steps):
                if stop.agreed(d):
                    save(step)  # the steps done so far
                    training.exit_interrupted(step, ckpt)
                ...
    """

    def __init__(self):
        self.requested = self.ctrl_c = False
        self.previous = {s: signal.signal(s, self.handle) for s in (signal.SIGINT, signal.SIGTERM)}

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.restore()
        return False

    def handle(self, signum, frame):
        if signum == signal.SIGINT and self.ctrl_c:
            raise KeyboardInterrupt
        self.ctrl_c |= signum == signal.SIGINT
        self.requested = True

    def agreed(self, d):
        """Whether any rank was asked to stop (every rank must answer the same, or they would
        part ways at the next collective)."""
        return distributed.all_reduce_mean(float(self.requested), d) > 0

    def restore(self):
        for s, handler in self.previous.items():
            signal.signal(s, handler)


INTERRUPTED = 130  # the exit status of a run stopped by Ctrl-C: 128 + SIGINT, as shells report it


def exit_interrupted(step, checkpoint):
    """End a run that StopRequest stopped, after it saved `step` to `checkpoint` (every rank)."""
    distributed.print0(f"\ninterrupted: saved step {step} to {checkpoint}; run the same command to resume")
    distributed.cleanup()
    sys.exit(INTERRUPTED)


def run_main(script, main, errors=(BadInput, Diverged)):
    """A stage's entry point: an input error, a divergence or a failed torch.compile ends it
    with one line naming the script (exit status 1), a Ctrl-C outside the training loop with one
    line (status 130)."""
    try:
        main()
    except errors as e:
        sys.exit(f"{script}: {e}")
    except torch._dynamo.exc.BackendCompilerFailed as e:  # --compile=true without a working C++ compiler...
        inner = e.inner_exception
        first_line = (str(inner).splitlines() or [""])[0]
        sys.exit(f"{script}: torch.compile failed ({type(inner).__name__}: {first_line}); "
                 "run without --compile=true")
    except KeyboardInterrupt:
        print(f"\n{script}: interrupted; what it saved before is kept, nothing half-written; run the "
              "same command to go on", file=sys.stderr)
        sys.exit(INTERRUPTED)


class MetricsLog:
    """Appends one JSON object per step to metrics.jsonl (rank 0); plots are drawn from it."""

    def __init__(self, path, resume_step=0):
        self.path = path
        self.main = distributed.is_main_process()
        if self.main:
            os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
            kept = []
            if resume_step and os.path.exists(path):  # resuming: keep the log up to the checkpoint
                with open(path) as f:
                    kept = [line for line in f if json.loads(line).get("step", 0) <= resume_step]
            with open(path, "w") as f:
                f.writelines(kept)
        self.start = time.time()

    def log(self, step, **values):
        if self.main:
            record = {"step": step, "time": round(time.time() - self.start, 3), **values}
            with open(self.path, "a") as f:
                f.write(json.dumps(record) + "\n")
