"""torchrun set-up shared by every stage: process group, devices, DDP / FSDP2, rank-0 printing.

    python STAGE.py configs/classroom.py                       # one process
    torchrun --nproc_per_node=2 STAGE.py configs/classroom.py  # two processes (gloo on CPU)
    torchrun --nproc_per_node=8 grpo.py configs/7b.py          # eight GPUs (nccl)

torchrun is the only launcher: it sets RANK, LOCAL_RANK and WORLD_SIZE, and `setup` reads them.
Models that fit one device are replicated with DDP (gradients all-reduced); the 7B is sharded
with FSDP2 (`fully_shard` per block, then the root), which keeps 1/world of every parameter,
gradient and optimizer state on each rank and gathers a block's weights only while it runs.
"""

import contextlib
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from support.fileio import BadInput


@dataclass
class Dist:
    rank: int
    local_rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self):
        return self.rank == 0


def setup(device_choice="auto"):
    """Start the process group when launched by torchrun; pick this rank's device."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    device = pick_device(device_choice, local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", device_id=
                                device if device.type == "cuda" else None)
    return Dist(rank, local_rank, world_size, device)


def pick_device(choice, local_rank=0):
    """The device of `choice` (auto, cpu, cuda, cuda:N, mps) for this rank, or a BadInput saying
    why this machine has none: "cuda" is GPU local_rank, "auto" cuda when there is one, else cpu."""
    if choice == "auto":
        choice = "cuda" if torch.cuda.is_available() else "cpu"
    if choice == "mps" and not torch.backends.mps.is_available():
        raise BadInput("device='mps': this machine has no Apple GPU (MPS); use --device=cpu or auto")
    if not choice.startswith("cuda"):
        return torch.device(choice)
    if not torch.cuda.is_available():
        why = (f"this torch build ({torch.__version__}) has no CUDA" if torch.version.cuda is None
               else "no CUDA GPU is visible (check nvidia-smi and CUDA_VISIBLE_DEVICES)")
        raise BadInput(f"device={choice!r} needs a GPU, and {why}: GPU configs such as configs/7b.py need "
                       "GPUs; here, run grpo.py with --dry_run=true for the memory plan, or use "
                       "configs/classroom.py (or --device=cpu)")
    index = int(choice[5:]) if choice.startswith("cuda:") else local_rank
    if index >= torch.cuda.device_count():
        raise BadInput(f"device={choice!r} on rank {local_rank} needs GPU {index}, but {torch.cuda.device_count()} "
                       "are visible; launch at most that many processes per node (--nproc_per_node)")
    return torch.device("cuda", index)


def compute_dtype(device, choice):
    """The dtype a run computes in: config's dtype, where "auto" is bfloat16 on a GPU (autocast;
    weights and optimizer stay float32) and float32 on a CPU."""
    if choice == "auto":
        choice = "bfloat16" if device.type == "cuda" else "float32"
    if choice not in ("float32", "bfloat16"):
        raise ValueError(f"dtype={choice!r}: choose auto, float32 or bfloat16")
    return getattr(torch, choice)


def cleanup():
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def is_main_process():
    """Rank 0 of a torchrun job, or the one process of a plain run (no process group needed)."""
    return int(os.environ.get("RANK", "0")) == 0


def print0(*args, **kwargs):
    if is_main_process():
        print(*args, **kwargs, flush=True)


def wrap(model, parallel, d, dtype="auto"):
    """DDP or FSDP2 for a multi-process run; the bare model for one process.

    FSDP2 keeps each rank's shard in float32 (the master weights AdamW updates) and, when the
    run computes in bfloat16 (dtype "auto" on GPU, or "bfloat16"), gathers the weights as
    bfloat16 and reduces gradients in float32: half the bytes moved and held for a block
    while it runs, no precision lost in the update."""
    if d.world_size == 1:
        return model
    if parallel == "ddp":
        from torch.nn.parallel import DistributedDataParallel
        return DistributedDataParallel(model, device_ids=[d.device] if d.device.type == "cuda" else None)  # this rank's GPU
    if parallel == "fsdp":
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
        mesh = init_device_mesh(d.device.type, (d.world_size,))
        policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) \
            if compute_dtype(d.device, dtype) == torch.bfloat16 else MixedPrecisionPolicy()
        for block in model.layers:  # one all-gather per block: only one block is whole at a time
            fully_shard(block, mesh=mesh, mp_policy=policy)
        fully_shard(model, mesh=mesh, mp_policy=policy)  # the rest: embeddings, final norm, head
        return model
    raise ValueError(f"parallel={parallel!r}: choose 'ddp' or 'fsdp'")


def gradient_sync(model, enabled):
    """Under DDP, the accumulation micro-steps before the last skip the all-reduce of gradients
    (no_sync) and the last one all-reduces their sum once. FSDP2 reduce-scatters at every
    micro-step on purpose: skipping it would keep a whole unsharded fp32 gradient on every GPU
    (4 bytes per parameter whatever the world size, 28 GB for the 7B) instead of 1/W of it."""
    if enabled or not hasattr(model, "no_sync"):
        return contextlib.nullcontext()
    return model.no_sync()


def unwrap(model):
    """The Transformer inside a DDP wrapper (FSDP2 shards in place and needs no unwrapping)."""
    return model.module if hasattr(model, "module") else model


def reshard(model):
    """Reshard an FSDP2 model after a forward without a backward, which leaves its root unit
    (embeddings, final norm, head) gathered: whole weights held until its next pass (1.6 GB of
    bf16 a GPU for the 7B), no longer the shards its optimizer updates, and beside another
    model's shards in a copy. Any other model is left as it is."""
    if hasattr(model, "reshard"):
        model.reshard()


def full_state_dict(model):
    """The whole, unsharded state dict on rank 0 (CPU), for saving; every rank must call this."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
    if not dist.is_initialized():
        return unwrap(model).state_dict()
    return get_model_state_dict(unwrap(model), options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def load_full_state_dict(model, state_dict):
    """full_state_dict's inverse: every rank calls it, and each takes its shard of the whole."""
    if not dist.is_initialized():
        unwrap(model).load_state_dict(state_dict)
        return
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict
    set_model_state_dict(unwrap(model), state_dict,
                         options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True))


def all_gather(obj, d):
    """[obj of rank 0, obj of rank 1, ...] for any picklable obj ([obj] in a one-process run)."""
    if d.world_size == 1:
        return [obj]
    out = [None] * d.world_size
    dist.all_gather_object(out, obj)
    return out


def barrier(d):
    if d.world_size > 1:
        dist.barrier()


def all_reduce_mean(value, d):
    """Mean of a float over ranks (for logging: every rank logs the same numbers)."""
    if d.world_size == 1:
        return float(value)
    t = torch.tensor(float(value), dtype=torch.float64, device=d.device)
    dist.all_reduce(t)
    return t.item() / d.world_size
