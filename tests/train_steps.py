"""A few AdamW steps of a tiny model on fixed data, for the resume and torchrun tests.

    python tests/train_steps.py OUT --steps 6 [--stop_after 3] [--resume]
    torchrun --nproc_per_node=2 tests/train_steps.py OUT --steps 6 --parallel fsdp

The global batch of each step is a function of the step alone; each rank takes its slice.
"""

import argparse
import gc
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from model import ModelArgs, Transformer, sequence_logprobs  # noqa: E402
from support import distributed, training  # noqa: E402

parser = argparse.ArgumentParser()
parser.add_argument("out")
parser.add_argument("--steps", type=int, default=6)
parser.add_argument("--stop_after", type=int, default=0)
parser.add_argument("--resume", action="store_true")
parser.add_argument("--parallel", default="ddp")
a = parser.parse_args()

d = distributed.setup("cpu")
torch.manual_seed(0)
ckpt = os.path.join(a.out, "ckpt")
if a.resume:
    model = Transformer.from_pretrained(ckpt)
else:
    model = Transformer(ModelArgs(vocab_size=61, dim=32, n_layer=2, n_head=4, n_kv_head=2,
                                  intermediate_size=64, max_seq_len=64))
model = distributed.wrap(model, a.parallel, d)
optimizer = training.make_adamw(model, 1e-2, 0.1, training.PAPER_BETAS, d.device)
start = 0
if a.resume:
    state = training.load_train_state(ckpt)
    training.load_optimizer_state(optimizer, model, state["optimizer"])
    training.set_rng_state(state["rng"])
    start = state["step"]
for step in range(start, a.steps):
    g = torch.Generator().manual_seed(step)
    batch = torch.randint(0, 61, (4, 33), generator=g)  # the global batch of this step
    per_rank = 4 // d.world_size
    local = batch[d.rank * per_rank:(d.rank + 1) * per_rank]
    loss = -sequence_logprobs(model, local).mean()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    if a.stop_after and step + 1 == a.stop_after:
        break
state = {"step": step + 1, "optimizer": training.optimizer_state(optimizer, model), "rng": training.rng_state()}
training.save_checkpoint(ckpt, model, None, state)
# Free the DDP/FSDP model and its optimizer while the process group and the interpreter are whole.
# As module globals they would live until interpreter teardown, where freeing gloo's pending work
# can abort the process (SIGABRT, "terminate called without an active exception": seen twice in
# 2-process runs of this script under the full suite's load). The stage scripts hold theirs as
# locals of main(), freed when it returns.
del model, optimizer
gc.collect()
distributed.cleanup()
