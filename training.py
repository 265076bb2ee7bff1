"""What every training stage (pretrain, SFT, RL) shares: the AdamW set-up, mixed precision,
checkpoints with resumable training state, and the metrics log.

A checkpoint is one folder, written under a temporary name and renamed into place:
    config.json + model.safetensors      the weights, in Hugging Face's Llama layout
    tokenizer.tiktoken (+ its sidecar)   the tokenizer the weights were trained with
    train_state.pt                       optimizer, step, RNG states, data position (resume only)
train_state.pt holds only tensors, numbers and strings, so it loads with
torch.load(weights_only=True), which cannot execute code hidden in a pickle.
"""

import contextlib
import json
import os
import random
import time

import numpy as np
import torch

import distributed
from model import staged_folder


PAPER_BETAS = (0.9, 0.95)  # AdamW's beta1, beta2 in every stage (paper 2.3; SFT and RL name no others)


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
    clipping, as a float (under FSDP2 each rank holds a shard: the norm comes back whole)."""
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
    return float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)


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
    state = {"python": list(random.getstate()[1]), "torch": torch.get_rng_state()}
    state["numpy"] = torch.from_numpy(np.random.get_state()[1].astype(np.int64))
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state):
    random.setstate((3, tuple(state["python"]), None))
    torch.set_rng_state(state["torch"])
    np.random.set_state(("MT19937", state["numpy"].numpy().astype(np.uint32), 624, 0, 0.0))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def save_checkpoint(folder, model, tokenizer, train_state=None):
    """Every rank calls this (FSDP must gather); rank 0 writes the folder atomically."""
    state_dict = distributed.full_state_dict(model)
    if not distributed.is_main_process():
        return
    inner = distributed.unwrap(model)
    with staged_folder(folder) as tmp:
        inner.save_pretrained(tmp, state_dict=state_dict, atomic=False)
        if tokenizer is not None:
            tokenizer.save(os.path.join(tmp, "tokenizer.tiktoken"))
        if train_state is not None:
            torch.save(train_state, os.path.join(tmp, "train_state.pt"))


def load_train_state(folder):
    path = os.path.join(folder, "train_state.pt")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{folder}: no train_state.pt, so this checkpoint cannot resume "
                                "training (it holds weights only); start a new run instead")
    return torch.load(path, weights_only=True)


def optimizer_state(optimizer, model):
    """The optimizer's state, whole, for train_state.pt (FSDP shards it; gather it first)."""
    if not torch.distributed.is_initialized():
        return optimizer.state_dict()
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict
    return get_optimizer_state_dict(distributed.unwrap(model), optimizer,
                                    options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def load_optimizer_state(optimizer, model, state):
    if not torch.distributed.is_initialized():
        optimizer.load_state_dict(state)
        return
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict
    set_optimizer_state_dict(distributed.unwrap(model), optimizer, state,
                             options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True))


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
