"""Causal-LM pretraining on the selected math corpus: DeepSeekMath section 2.3.

    python pretrain.py configs/classroom.py                     # the CPU classroom, a few minutes
    torchrun --nproc_per_node=8 pretrain.py configs/7b.py       # DDP, or --parallel=fsdp (FSDP2)
    python pretrain.py configs/classroom.py --pretrain_resume=false   # start over

What the paper does, and where it happens below:
- Data: a mixture of token sources sampled by weight. DeepSeekMath-Base 7B saw 500B tokens:
  56% DeepSeekMath Corpus, 4% AlgebraicStack, 10% arXiv, 20% GitHub code, 10% Common Crawl
  natural language. Each source is a folder of token shards (support/shards.py; corpus.py
  writes ours to {out_dir}/corpus/tokens); a training row is a random window of max_seq_len + 1
  tokens from a source drawn by weight (`Mixture`). Documents inside a window are separated by
  the EOS token corpus.py ends each one with.
- Optimizer: AdamW, beta1 0.9, beta2 0.95, weight decay 0.1 (training.make_adamw: matrices
  are decayed, the 1-D RMSNorm gains are not), gradients clipped to a global norm.
- Learning rate: the multi-step schedule (`learning_rate`): linear warm-up (2,000 steps in the
  paper) to the peak, 31.6% of the peak after 80% of the tokens, 10% after 90%.
- Batch size in tokens (10M for the 7B, 4M for the 1.3B runs): pretrain_tokens_per_step =
  pretrain_batch_size x max_seq_len x world_size x accumulation; the accumulation is derived.
- The 7B continues from DeepSeek-Coder-Base-v1.5 (pretrain_init = its folder); the classroom
  model starts from random weights.

Outputs in {out_dir}/pretrain/: ckpt/ (Hugging Face Llama layout + tokenizer + train_state.pt,
every pretrain_ckpt_every steps and at the end), metrics.jsonl (one line per step: loss, lr,
grad_norm, tokens_per_s, mfu on GPU; val_loss every pretrain_eval_every steps), summary.json
(steps, tokens, train_loss = the mean of the last 20 steps, val_loss, unigram_entropy, seconds,
parameters, checkpoint), written last: ckpt/ + summary.json mean the stage is done.

Resume: a run whose {out_dir}/pretrain/ckpt holds a train_state.pt continues from it (unless
--pretrain_resume=false) and is exact: the rows of step k are a function of (seed, k) alone, so
the resumed run sees the same next batch, the same learning rate, and ends with the same
weights as a run that never stopped. Ctrl-C (or SIGTERM) drops the step in progress, saves the
whole steps done and exits with status 130; a NaN/inf loss or gradient norm stops the run
(status 1) naming the step, before the update, leaving the last checkpoint as it was. Every
input is checked before the previous run's summary.json or metrics are touched.
"""

import os
import time
from glob import glob

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from model import ModelArgs, Transformer
from support import config, distributed, training
from support.fileio import BadInput, write_json
from support.shards import read_shard
from support.tokenizer import load_tokenizer


# ----------------------------------------------------------------------------- data
class TokenSource:
    """The shards of one source and split, e.g. {out_dir}/corpus/tokens/train-*.bin, read through
    memmap. Window i (of `n_windows`) is tokens [offset, offset + length) of one shard; the
    windows of all shards are numbered one after the other, so a uniform i is a uniform window."""

    def __init__(self, name, folder, split, length):
        paths = sorted(glob(os.path.join(folder, f"{split}-*.bin")))
        if not paths:
            raise BadInput(f"source '{name}': no {split}-*.bin token shards in {folder}; run "
                           "corpus.py first, or fix pretrain_sources")
        self.name, self.folder, self.split = name, folder, split
        self.shards = [read_shard(p) for p in paths]  # memmaps: the OS pages in only the windows read
        self.tokens = sum(len(s) for s in self.shards)
        windows = [max(len(s) - length + 1, 0) for s in self.shards]  # start offsets: none straddles two shards
        self.unread = sum(len(s) for s in self.shards if len(s) < length)  # shards too short for one window
        self.first_window = np.cumsum([0] + windows)  # window number where each shard begins
        self.n_windows = int(self.first_window[-1])
        self.length = length
        if self.n_windows == 0:
            raise BadInput(f"source '{name}': no {split} shard in {folder} holds {length} tokens "
                           "(max_seq_len + 1); give it more text or lower max_seq_len")

    def check_ids(self, vocab_size):
        """A BadInput when the source's first 10M tokens hold an id the model has no row for
        (shards written by another tokenizer): an embedding lookup would fail mid-run."""
        top = int(self.head(10_000_000).max())
        if top >= vocab_size:
            raise BadInput(f"source '{self.name}': its {self.split} shards in {self.folder} hold token id {top}, "
                           f"beyond the model's vocabulary of {vocab_size}: tokenize them with the model's "
                           "tokenizer (corpus.py with its tokenizer_path), or raise vocab_size")

    def head(self, n):
        """The first n tokens (or all, if fewer), shard after shard."""
        parts, left = [], n
        for shard in self.shards:
            parts.append(shard[:left])
            left -= len(parts[-1])
            if left == 0:
                break
        return np.concatenate(parts)

    def window(self, i):
        """Window i, (length,) tokens: find its shard, then the offset inside it."""
        shard = int(np.searchsorted(self.first_window, i, side="right")) - 1  # the last shard starting <= i
        offset = i - int(self.first_window[shard])
        return self.shards[shard][offset:offset + self.length]


class Mixture:
    """Rows of length + 1 tokens drawn from several sources, each with probability `weight`.

    `rows(key, n, start, stop)` draws the sources and windows of n rows from a generator seeded
    by `key`, then reads rows [start, stop) only. A step's whole global batch is thus a function
    of (seed, step): each rank and each accumulation micro-step reads its own slice of it, and
    the batch does not depend on the number of ranks or on a resume."""

    def __init__(self, sources, weights):
        self.sources = sources
        self.weights = np.asarray(weights, np.float64) / sum(weights)  # the paper's 56/4/10/20/10 work as given

    def rows(self, key, n, start, stop):
        rng = np.random.default_rng(key)
        which = rng.choice(len(self.sources), size=n, p=self.weights)  # (n,) source per row
        where = rng.random(n)  # (n,) uniform in [0, 1): the window, as a share of the source's windows
        # The paper does not say how it walks its data. Here a row is a window at a uniform random
        # offset within one shard, drawn with replacement: no epochs, no state to save for a resume,
        # and a token in the middle of a shard is seen about weight x training tokens / source size
        # times. A window never straddles two shards, so the first and last max_seq_len tokens of a
        # shard are read less often, and a shard shorter than a window never (main prints how many
        # tokens that leaves out): cut sources into shards much longer than max_seq_len.
        # Every rank draws all n rows and reads only its slice [start, stop).
        rows = [self.sources[s].window(int(u * self.sources[s].n_windows))
                for s, u in zip(which[start:stop], where[start:stop])]
        return torch.from_numpy(np.stack(rows).astype(np.int64))  # (stop - start, length + 1)

    def unigram_entropy(self):
        """H(p) = -sum_v p_v log p_v in nats of the mixture's token distribution, p = sum_s w_s p_s
        (counted on the first 10M tokens of each source): the loss of a model that ignores
        context, the line a trained model's validation loss must fall well below."""
        counts = [np.bincount(s.head(10_000_000)) for s in self.sources]  # per source, (largest id + 1,)
        p = np.zeros(max(len(c) for c in counts))
        for weight, c in zip(self.weights, counts):
            p[:len(c)] += weight * c / c.sum()  # p = sum_s w_s p_s
        p = p[p > 0]  # 0 log 0 = 0
        return float(-(p * np.log(p)).sum())


def load_mixture(cfg, split, length):
    """The sources of pretrain_sources (folders relative to out_dir, or absolute), weighted by
    pretrain_weights."""
    if set(cfg.pretrain_sources) != set(cfg.pretrain_weights):
        raise BadInput(f"pretrain_sources names {sorted(cfg.pretrain_sources)} but pretrain_weights "
                       f"names {sorted(cfg.pretrain_weights)}: give every source one weight")
    if any(w <= 0 for w in cfg.pretrain_weights.values()):
        raise BadInput(f"pretrain_weights {cfg.pretrain_weights}: every weight must be > 0 "
                       "(drop a source from both dicts to leave it out)")
    names = sorted(cfg.pretrain_sources)
    sources = [TokenSource(n, os.path.join(cfg.out_dir, cfg.pretrain_sources[n]), split, length) for n in names]
    return Mixture(sources, [cfg.pretrain_weights[n] for n in names])


# ----------------------------------------------------------------------------- schedule
def learning_rate(step, total_steps, peak, warmup_steps):
    """The multi-step schedule of DeepSeek LLM / DeepSeekMath (paper 2.2.1, kept in 2.3) at 0-based `step`:
    linear warm-up to `peak` over warmup_steps, the peak until 80% of training, then 31.6% of
    it (about 1/sqrt(10)) until 90%, then 10%."""
    if step < warmup_steps:
        return peak * (step + 1) / warmup_steps  # step 0 already moves: a step at lr 0 would be wasted
    # Shares of the steps are shares of the tokens (the paper's terms): every step has tokens_per_step.
    if step < 0.8 * total_steps:
        return peak
    if step < 0.9 * total_steps:
        return 0.316 * peak  # 1/sqrt(10): two equal steps down in log lr, to 10%
    return 0.1 * peak


# ----------------------------------------------------------------------------- loss and FLOPs
def lm_loss(model, rows):
    """Next-token cross-entropy, mean over every position: -1/(B T) sum_t log p(x_t+1 | x_<=t).

    rows (B, T+1). The logits (B, T, V) are made whole and handed to F.cross_entropy, whose fused
    log-softmax + NLL kernel saves only the log-probs for backward. model.py's chunked log-prob
    path (RL's) checkpoints each chunk and so runs the LM head twice; measured, the two cost about
    the same (bench/bench_pretrain.py's "ours / ours, chunked": 0.99x at V = 1,024 on the
    classroom CPU, results/pretrain-xeon.txt; 1.01x at V = 32,000 on an H100,
    results/gpu-h100.txt), so pretraining keeps the plainer whole-logits loss.
    Memory is no obstacle for pretraining: at the 7B's V = 102,400, T = 4,096 a row's float32
    logits take 1.7 GB, next to tens of GB of activations."""
    logits = model(rows[:, :-1])  # (B, T, V) from inputs x_0 .. x_T-1
    # targets x_1 .. x_T, (B T,); float32 logits: under bf16 autocast a log-softmax over V loses digits
    return F.cross_entropy(logits.flatten(0, 1).float(), rows[:, 1:].flatten())


def flops_per_token(args, seq_len):
    """Training FLOPs per token (PaLM appendix B): 6N for the matmuls of N weights (forward 2N,
    backward 4N; the embedding lookup is no matmul) plus 12 L D T for attention's scores and
    weighted sums over a context of T."""
    # per layer: q and o (D x H d each), k and v (D x K d each), gate, up and down (D x I each); lm_head D x V
    n_matmul = args.n_layer * (2 * args.dim * args.n_head * args.head_dim
                               + 2 * args.dim * args.n_kv_head * args.head_dim
                               + 3 * args.dim * args.intermediate_size) + args.dim * args.vocab_size
    return 6 * n_matmul + 12 * args.n_layer * args.dim * seq_len


# dense, per GPU; "H100 PCIe" comes before "H100" because the first key found in the device name wins
PEAK_BF16_FLOPS = {"H100 PCIe": 756e12, "H100": 989e12, "H200": 989e12, "A100": 312e12}


def peak_flops(device):
    """The GPU's dense bf16 peak (the denominator of MFU), or None for a CPU or an unlisted GPU."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((flops for key, flops in PEAK_BF16_FLOPS.items() if key in name), None)


# ----------------------------------------------------------------------------- the run
@torch.no_grad()
def validation_loss(model, val, cfg, d):
    """Mean loss over the same pretrain_eval_batches x batch x ranks validation rows every time."""
    model.eval()
    B, n = cfg.pretrain_batch_size, cfg.pretrain_eval_batches * cfg.pretrain_batch_size * d.world_size
    losses = []
    for b in range(cfg.pretrain_eval_batches):
        start = (b * d.world_size + d.rank) * B  # this rank's slice of the n rows
        # key (seed, 1), not (seed, 0, step): the same rows at every evaluation, so losses compare
        rows = val.rows((cfg.seed, 1), n, start, start + B).to(d.device)
        with training.autocast(d.device, cfg.dtype):
            losses.append(lm_loss(model, rows).item())
    distributed.reshard(model)
    model.train()
    return distributed.all_reduce_mean(sum(losses) / len(losses), d)


def accumulation_steps(cfg, d):
    """Micro-steps per optimizer step: tokens_per_step / (batch x max_seq_len x world_size), whole."""
    if cfg.pretrain_steps < 1 or cfg.pretrain_batch_size < 1:
        raise BadInput(f"pretrain_steps={cfg.pretrain_steps}, pretrain_batch_size={cfg.pretrain_batch_size}: "
                       "both must be at least 1")
    tokens_per_micro_step = cfg.pretrain_batch_size * cfg.max_seq_len * d.world_size
    if cfg.pretrain_tokens_per_step % tokens_per_micro_step:
        raise BadInput(f"pretrain_tokens_per_step={cfg.pretrain_tokens_per_step} is not a multiple of "
                       f"pretrain_batch_size x max_seq_len x world_size = {cfg.pretrain_batch_size} x "
                       f"{cfg.max_seq_len} x {d.world_size} = {tokens_per_micro_step}; change one of them")
    return cfg.pretrain_tokens_per_step // tokens_per_micro_step


def build_model(cfg, tokenizer, resume_from, d):
    """The model to train: the checkpoint being resumed, else pretrain_init (the 7B starts from
    DeepSeek-Coder-Base-v1.5), else random weights from the config. Same seed on every rank."""
    training.seed_everything(cfg.seed)
    if resume_from or cfg.pretrain_init:
        # straight onto this rank's device: eight ranks each holding a 7B in host memory would need 220 GB
        model = Transformer.from_pretrained(resume_from or cfg.pretrain_init, dtype=torch.float32, device=d.device)
    else:
        model = Transformer(ModelArgs.from_config(cfg, bos_id=tokenizer.bos_id, eos_id=tokenizer.eos_id))
    if model.args.vocab_size < tokenizer.n_vocab:
        raise BadInput(f"the model's vocab_size {model.args.vocab_size} is smaller than the tokenizer's "
                       f"{tokenizer.n_vocab} ids; set vocab_size >= {tokenizer.n_vocab}")
    if model.args.max_seq_len < cfg.max_seq_len:
        raise BadInput(f"max_seq_len={cfg.max_seq_len} exceeds the checkpoint's {model.args.max_seq_len}")
    model.to(d.device)
    if cfg.compile:
        model.compile()  # in place: parameter names (and so checkpoints) stay the same
    return distributed.wrap(model, cfg.parallel, d, cfg.dtype)


def main(argv=None):
    cfg = config.main_config(argv)
    d = distributed.setup(cfg.device)
    folder = os.path.join(cfg.out_dir, "pretrain")
    ckpt = os.path.join(folder, "ckpt")
    training.recover_checkpoint(ckpt, d)
    resume = cfg.pretrain_resume and os.path.exists(os.path.join(ckpt, "train_state.pt"))

    tokenizer = load_tokenizer(cfg, cfg.pretrain_init)
    train = load_mixture(cfg, "train", cfg.max_seq_len + 1)  # T + 1 tokens a row: T inputs, T next tokens
    val = load_mixture(cfg, "val", cfg.max_seq_len + 1)
    accumulation = accumulation_steps(cfg, d)
    model = build_model(cfg, tokenizer, ckpt if resume else "", d)
    args = distributed.unwrap(model).args
    for source in train.sources + val.sources:
        source.check_ids(args.vocab_size)
    # paper 2.2.1 (kept in 2.3): AdamW, beta1 0.9, beta2 0.95, weight decay 0.1 (the config's defaults)
    optimizer = training.make_adamw(model, cfg.pretrain_lr, cfg.pretrain_weight_decay, cfg.pretrain_betas, d.device)
    start, seconds_before, recent = 0, 0.0, []
    if resume:
        state = training.load_train_state(ckpt)
        if state["tokens_per_step"] != cfg.pretrain_tokens_per_step or state["steps"] != cfg.pretrain_steps:
            raise BadInput(f"{ckpt} was trained with pretrain_tokens_per_step={state['tokens_per_step']}, "
                           f"pretrain_steps={state['steps']}; resume with those, or --pretrain_resume=false")
        training.load_optimizer_state(optimizer, model, state["optimizer"], lr_scheduled=True)
        start, seconds_before, recent = state["step"], state["seconds"], state["recent_losses"].tolist()

    B, T, steps = cfg.pretrain_batch_size, cfg.max_seq_len, cfg.pretrain_steps
    rows_per_step = B * d.world_size * accumulation  # the global batch in rows (configs/7b.py: 2,432 rows ~ 10M tokens)
    flops, peak = flops_per_token(args, T), peak_flops(d.device)
    entropy = val.unigram_entropy()
    distributed.print0(
        f"pretrain: {distributed.unwrap(model).num_params():,} parameters, {steps} steps of "
        f"{cfg.pretrain_tokens_per_step:,} tokens = {B} rows x {T} tokens x {d.world_size} ranks x "
        f"{accumulation} accumulation steps ({steps * cfg.pretrain_tokens_per_step:,} tokens)\n"
        + "".join(f"  source {s.name}: weight {w:.3f}, {s.tokens:,} train tokens, {v.tokens:,} val tokens"
                  + "".join(f"; {x.unread:,} {x.split} tokens in shards shorter than a row, never read"
                            for x in (s, v) if x.unread) + "\n"
                  for s, w, v in zip(train.sources, train.weights, val.sources))
        + f"  unigram entropy of the val data {entropy:.3f} nats; "
        + (f"resuming from {ckpt} at step {start}" if resume else "starting from step 0"))

    training.unmark_done(folder, d)
    log = training.MetricsLog(os.path.join(folder, "metrics.jsonl"), resume_step=start)
    val_loss, clock = None, time.time()
    bar = tqdm(range(start, steps), initial=start, total=steps, desc="pretrain", disable=not d.is_main)
    with training.StopRequest() as stop, bar:
        for step in bar:
            lr = learning_rate(step, steps, cfg.pretrain_lr, cfg.pretrain_warmup_steps)
            # set by hand, no LR scheduler object: a resume needs the step and nothing else
            for group in optimizer.param_groups:
                group["lr"] = lr
            started = time.time()
            loss_sum = torch.zeros((), device=d.device)  # summed on the device: no host sync per micro-step
            for micro in range(accumulation):
                if stop.agreed(d):  # all ranks stop at the same micro-step, or a collective would hang
                    save(ckpt, model, optimizer, tokenizer, cfg, step, seconds_before + time.time() - clock, recent)
                    training.exit_interrupted(step, ckpt)
                first = (micro * d.world_size + d.rank) * B  # this rank's rows of the step's batch
                rows = train.rows((cfg.seed, 0, step), rows_per_step, first, first + B).to(d.device)  # (B, T+1)
                # gradients are all-reduced once per step, on its last micro-step
                with distributed.gradient_sync(model, micro == accumulation - 1):
                    with training.autocast(d.device, cfg.dtype):
                        loss = lm_loss(model, rows) / accumulation  # the mean over the step's rows
                    loss.backward()
                loss_sum += loss.detach()
            # clipping: not stated in DeepSeekMath; DeepSeek LLM clips at 1.0. Returns the norm before it.
            grad_norm = training.clip_gradients(model, cfg.pretrain_grad_clip)
            loss_value = distributed.all_reduce_mean(loss_sum.item(), d)  # the global batch's mean loss
            # before optimizer.step: a NaN never reaches the weights or a checkpoint
            training.check_finite(step + 1, ckpt, "lower pretrain_lr or raise pretrain_warmup_steps",
                                  loss=loss_value, grad_norm=grad_norm)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            tokens_per_s = cfg.pretrain_tokens_per_step / (time.time() - started)
            recent = (recent + [loss_value])[-20:]
            record = dict(loss=round(loss_value, 5), lr=lr, grad_norm=round(grad_norm, 5),
                          tokens_per_s=round(tokens_per_s, 1))
            if peak:
                record["mfu"] = round(flops * tokens_per_s / (peak * d.world_size), 4)  # FLOP/s done / all GPUs' peak
            done = step + 1
            if done % cfg.pretrain_eval_every == 0 or done == steps:
                record["val_loss"] = val_loss = round(validation_loss(model, val, cfg, d), 5)
            log.log(done, **record)
            bar.set_postfix(loss=f"{loss_value:.3f}", lr=f"{lr:.2e}", **({"val": val_loss} if val_loss else {}))
            if done % cfg.pretrain_ckpt_every == 0 or done == steps:
                save(ckpt, model, optimizer, tokenizer, cfg, done, seconds_before + time.time() - clock, recent)

    if val_loss is None:  # a resumed run that had already finished
        val_loss = round(validation_loss(model, val, cfg, d), 5)
    summary = dict(steps=steps, tokens=steps * cfg.pretrain_tokens_per_step, train_loss=round(sum(recent) / len(recent), 5),
                   val_loss=val_loss, unigram_entropy=round(entropy, 5),
                   seconds=round(seconds_before + time.time() - clock, 1),
                   parameters=distributed.unwrap(model).num_params(), checkpoint=ckpt)
    if d.is_main:
        write_json(os.path.join(folder, "summary.json"), summary)
    distributed.print0(f"pretrain: {steps} steps, {summary['tokens']:,} tokens in {summary['seconds']} s; "
                       f"train loss {summary['train_loss']:.3f}, val loss {val_loss:.3f} "
                       f"(unigram entropy {entropy:.3f}); checkpoint {ckpt}")
    distributed.cleanup()
    return summary


def save(ckpt, model, optimizer, tokenizer, cfg, done, seconds, recent):
    """The weights, plus what resuming needs: the optimizer, the step, the schedule's shape."""
    state = dict(step=done, optimizer=training.optimizer_state(optimizer, model), seconds=seconds,
                 tokens_per_step=cfg.pretrain_tokens_per_step, steps=cfg.pretrain_steps,
                 recent_losses=torch.tensor(recent, dtype=torch.float64))
    training.save_checkpoint(ckpt, model, tokenizer, state)


if __name__ == "__main__":
    training.run_main("pretrain.py", main)
