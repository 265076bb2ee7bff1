"""Supervised fine-tuning: math instruction tuning of a pretrained checkpoint (DeepSeekMath 3).

DeepSeekMath-Instruct 7B is DeepSeekMath-Base 7B tuned on 776K math problems whose solutions come
in three formats (paper section 3.1): chain-of-thought ("cot"), program-of-thought ("pot": a
program that prints the answer) and tool-integrated reasoning ("tool": text interleaved with
code blocks and their outputs). Training: 500 steps of batch 256, constant learning rate 5e-5,
examples concatenated up to the 4K context. In the paper's unified paradigm (section 5.2.1,
eq. 5) SFT is the method whose gradient coefficient is 1 on every token of a human-written
solution:

    grad J_SFT = E_{(q, o) ~ P_sft} [ 1/|o| sum_t grad log pi_theta(o_t | q, o_<t) ].

What this script does, top to bottom:
1. every training problem becomes one example in a format drawn from the mixing ratio
   (sft_formats), rendered with the chat template that evaluation prompts with: the prompt
   (BOS, "User: {question}{instruction}\\n\\nAssistant:") and the response (" {solution}" EOS;
   with a model's own chat template, its header and turn end);
2. examples are packed several to a context window; a block-diagonal causal mask and RoPE
   positions that restart at 0 for each example make a packed example see exactly what it
   would see alone (the paper concatenated without masking; we pay one mask per row to keep
   examples apart);
3. the loss is the equation above: -log pi on response tokens only (prompt tokens, padding and
   the tool outputs that the runtime, not the model, writes are masked), averaged per example
   then over the batch's examples;
4. AdamW at a constant learning rate, gradient accumulation over micro-batches, DDP or FSDP2
   under torchrun, a metrics line per step, resumable checkpoints;
5. at the end: greedy accuracy and format compliance on held-out test problems (evaluate.py),
   printed and written to summary.json.

Run:
    python sft.py configs/classroom.py                    # the CPU classroom, a few minutes
    torchrun --nproc_per_node=8 sft.py configs/7b.py      # the paper's run, from {out_dir}/pretrain/ckpt
Output in {out_dir}/sft/ (sft_folder): ckpt/ (Hugging Face layout, tokenizer, train_state.pt), metrics.jsonl,
summary.json, eval-{format}.jsonl (every held-out response with its grade). A run whose ckpt/
holds a train_state.pt continues from it (--sft_resume=false starts over); the rows of step k
are a function of (seed, k), so the resumed run ends where an unbroken one would. Ctrl-C (or
SIGTERM) saves the whole steps done and exits with status 130; a NaN/inf loss or gradient norm
stops the run (status 1) before the update, the last checkpoint untouched. Every input is
checked before the previous run's summary.json or metrics are touched.
Tests: pytest -q tests/test_sft.py
"""

import hashlib
import os
import re
import sys
import time
from dataclasses import dataclass

import numpy as np
import torch
from tqdm import tqdm

import evaluate
from model import Transformer, sequence_logprobs
from support import config, distributed, tasks, training
from support.fileio import BadInput, write_json, write_jsonl
from support.tokenizer import load_tokenizer


# ---------------------------------------------------------------------------------------------
# 1. Examples: the chat template, and which tokens are trained
# ---------------------------------------------------------------------------------------------

# In the tool-integrated format the runtime, not the model, writes each code block's output: at
# inference the model stops after "```output", evaluate.py runs the block and appends
# "\n{output}\n```\n", and the model goes on. Those spans are inputs, never targets.
TOOL_OUTPUT = re.compile(f"(?<={re.escape(evaluate.OUTPUT_MARKER)})(\n.*?\n```\n)", re.DOTALL)


@dataclass
class Example:
    tokens: np.ndarray  # (L,) int32: BOS, prompt, response, EOS
    trained: np.ndarray  # (L,) bool: True where the token is a target of the loss (the model's own response)


def format_shares(cfg):
    """sft_formats as {format: share of examples}, checked and normalised to sum to 1."""
    shares = cfg.sft_formats
    unknown = set(shares) - set(tasks.FORMATS)
    if unknown or any(not isinstance(v, (int, float)) or v < 0 for v in shares.values()) or sum(shares.values()) <= 0:
        raise BadInput(f"sft_formats={shares!r}: give each of {', '.join(tasks.FORMATS)} a share >= 0, "
                       "not all 0, e.g. {'cot': 1.0} or {'cot': 0.5, 'pot': 0.25, 'tool': 0.25}")
    total = sum(shares.values())
    return {fmt: shares[fmt] / total for fmt in tasks.FORMATS if shares.get(fmt, 0) > 0}


def response_tokens(tokenizer, response, fmt):
    """(ids, trained) of a response: exactly the tokens the model reads at inference.

    cot and pot: tokenizer.encode_response (response_prefix + text, then EOS: " " + text with our
    template, what a chat template puts after its assistant header with another), all trained.
    tool: the same, with the model's stretches and the runtime's outputs encoded separately, as
    evaluate.respond feeds them, and the outputs not trained (ToRA does the same)."""
    if fmt != "tool":
        ids = tokenizer.encode_response(response)
        return ids, [True] * len(ids)
    ids, trained = [], []
    for i, part in enumerate(TOOL_OUTPUT.split(tokenizer.response_prefix + response)):  # model, output, ..., model
        # the model's parts as encode_response reads a response; a program's output as evaluate.py
        # inserts it, special-token strings as text (a program cannot print an EOS into the turn)
        part_ids = tokenizer.encode_with_special_tokens(part) if i % 2 == 0 else tokenizer.encode(part)
        ids += part_ids
        trained += [i % 2 == 0] * len(part_ids)
    return ids + [tokenizer.eos_id], trained + [True]


def make_example(tokenizer, problem, fmt):
    """The prompt evaluate.py would write for this format, then the reference solution."""
    prompt = tokenizer.encode_prompt(problem.question, evaluate.SUFFIXES[fmt])
    response, trained = response_tokens(tokenizer, tasks.render_solution(problem, fmt), fmt)
    return Example(np.array(prompt + response, dtype=np.int32), np.array([False] * len(prompt) + trained))


def build_examples(problems, shares, tokenizer, seed, max_len, progress=False):
    """One example per problem, its format drawn from the shares; examples longer than the
    context (max_len tokens) are dropped. Returns (examples, formats, n_dropped)."""
    rng = np.random.default_rng(seed)
    formats = rng.choice(list(shares), size=len(problems), p=list(shares.values()))
    examples, kept = [], []
    for problem, fmt in zip(tqdm(problems, desc="render", unit="example", disable=not progress), formats):
        example = make_example(tokenizer, problem, fmt)
        if len(example.tokens) <= max_len:
            examples.append(example)
            kept.append(fmt)
    return examples, kept, len(problems) - len(examples)


# ---------------------------------------------------------------------------------------------
# 2. Packing: several examples per context window, kept apart
# ---------------------------------------------------------------------------------------------


def data_digest(examples, plan):
    """A fingerprint of what a run trained on, in order (every example's tokens, the packed
    rows it has taken): a resume must find the same, or it would not end where an unbroken run
    would. More sft_steps only add rows after these (pack_rows), so a run may be extended."""
    digest = hashlib.sha256()
    for ids in [*plan, *(example.tokens for example in examples)]:
        digest.update(np.asarray(list(ids) + [-1], np.int64).tobytes())  # -1 ends each list
    return digest.hexdigest()[:16]


def pack_rows(lengths, seq_len, n_rows, seed):
    """n_rows context windows, each a list of example indices whose lengths sum to <= seq_len.

    Examples are taken in a fresh random order each epoch (epoch e shuffles with seed (seed, e))
    and put in the current row until the next one does not fit, which starts a new row. The
    plan is a pure function of its arguments: a resumed run finds its place by step alone."""
    rows, row, used, epoch = [], [], 0, 0
    while True:
        for i in np.random.default_rng([seed, epoch]).permutation(len(lengths)):
            if used + lengths[i] > seq_len:
                rows.append(row)
                if len(rows) == n_rows:
                    return rows
                row, used = [], 0
            row.append(int(i))
            used += lengths[i]
        epoch += 1


@dataclass
class Batch:
    tokens: torch.Tensor  # (B, T) the packed rows, padded with pad_id to the longest row
    positions: torch.Tensor  # (B, T) RoPE positions, 0 at each example's BOS
    attn_mask: torch.Tensor  # (B, 1, T, T) bool: causal and within the same example
    weights: torch.Tensor  # (B, T-1) 1/|o_i| where tokens[:, 1:] is a trained token of example i, else 0


def collate(rows, pad_id, device):
    """Tensors of packed rows (each a list of Examples)."""
    T = max(sum(len(e.tokens) for e in row) for row in rows)
    tokens = torch.full((len(rows), T), pad_id, dtype=torch.long)
    positions = torch.zeros(len(rows), T, dtype=torch.long)
    segment = torch.full((len(rows), T), -1, dtype=torch.long)  # example number; -1 = padding
    weights = torch.zeros(len(rows), T)
    for b, row in enumerate(rows):
        start = 0
        for n, example in enumerate(row):
            end = start + len(example.tokens)
            tokens[b, start:end] = torch.from_numpy(example.tokens)
            positions[b, start:end] = torch.arange(end - start)
            segment[b, start:end] = n
            trained = torch.from_numpy(example.trained)
            weights[b, start:end] = trained / trained.sum()  # the 1/|o| of eq. 5
            start = end
    causal = torch.ones(T, T, dtype=torch.bool).tril()
    # query t may see key s <= t of its own example; padding sees padding (never an empty row)
    attn_mask = causal & (segment[:, :, None] == segment[:, None, :])  # (B, T, T)
    return Batch(tokens.to(device), positions.to(device), attn_mask[:, None].to(device),
                 weights[:, 1:].to(device))  # the weight of a token sits where it is the target


def packed_nll(model, batch):
    """sum_i 1/|o_i| sum_t -log pi(o_it | q_i, o_i<t) over the examples of a batch: (), with grad."""
    logp = sequence_logprobs(model, batch.tokens, positions=batch.positions, attn_mask=batch.attn_mask)  # (B, T-1)
    return -(logp * batch.weights).sum()


# ---------------------------------------------------------------------------------------------
# 3. Held-out evaluation
# ---------------------------------------------------------------------------------------------


def follows_format(record, fmt):
    """Whether a greedy response answers in its format: a \\boxed{} answer (cot, tool) or a
    program that runs and prints an answer (pot)."""
    if fmt == "pot":
        return record["greedy"]["answer"] is not None
    return tasks.last_boxed(record["greedy"]["text"]) is not None


def held_out_results(model, tokenizer, problems, fmt, cfg, grader):
    """Greedy accuracy and format compliance in one format (chat prompts); the graded records."""
    eval_cfg = config.with_keys(cfg, eval_mode="chat", eval_format=fmt, eval_k=1)
    result = evaluate.evaluate_model(model, tokenizer, problems, eval_cfg, cfg.test_problems, grader)
    format_rate = float(np.mean([follows_format(r, fmt) for r in result.records]))
    return {"accuracy": result.metrics["greedy"], "format_rate": format_rate,
            "truncated": result.metrics["truncated"]}, result.records


# ---------------------------------------------------------------------------------------------
# 4. The run
# ---------------------------------------------------------------------------------------------


def check_config(cfg, world_size):
    if cfg.sft_steps < 1 or cfg.sft_batch_size < 1 or cfg.sft_micro_batch_size < 1:
        raise BadInput("sft_steps, sft_batch_size and sft_micro_batch_size must be at least 1")
    if cfg.sft_batch_size % world_size:
        raise BadInput(f"sft_batch_size={cfg.sft_batch_size} does not split over {world_size} processes; "
                       f"use a multiple of {world_size}")


def train(cfg, d, out):
    """The SFT steps; returns the number of steps done and the training seconds."""
    ckpt = os.path.join(out, "ckpt")
    training.recover_checkpoint(ckpt, d)
    resume = cfg.sft_resume and os.path.exists(os.path.join(ckpt, "train_state.pt"))
    init = ckpt if resume else (cfg.sft_init or os.path.join(cfg.out_dir, "pretrain", "ckpt"))
    if not os.path.isdir(init):
        raise BadInput(f"{init}: no checkpoint to tune; run pretrain.py first or set --sft_init=FOLDER "
                       "(ours, or a Hugging Face Llama folder such as deepseek-math-7b-base)")
    tokenizer = load_tokenizer(cfg, init)
    model = Transformer.from_pretrained(init, dtype=torch.float32, device=d.device)  # AdamW updates float32 weights
    seq_len = model.args.max_seq_len  # the paper packs to its 4K context
    if tokenizer.n_vocab > model.args.vocab_size:
        raise BadInput(f"{init}: the tokenizer has {tokenizer.n_vocab} tokens but the model only "
                       f"{model.args.vocab_size} embeddings; set tokenizer_path to the checkpoint's tokenizer")

    problems = tasks.load_problems(cfg.train_problems, "train", cfg)
    examples, formats, dropped = build_examples(problems, format_shares(cfg), tokenizer, cfg.seed, seq_len, d.is_main)
    if not examples:
        raise BadInput(f"every training example is longer than the model's {seq_len} positions")
    plan = pack_rows([len(e.tokens) for e in examples], seq_len, cfg.sft_steps * cfg.sft_batch_size, cfg.seed)
    distributed.print0(f"sft: {len(examples)} examples ({', '.join(f'{f} {formats.count(f)}' for f in sorted(set(formats)))}"
                       f"{f'; {dropped} longer than {seq_len} tokens dropped' if dropped else ''}), "
                       f"{cfg.sft_steps} steps of {cfg.sft_batch_size} rows of {seq_len} tokens, from {init}")

    model.train()
    if cfg.compile:
        model.compile()  # in place, as pretrain.py: parameter names (and so checkpoints) stay the same
    model = distributed.wrap(model, cfg.parallel, d, cfg.dtype)
    optimizer = training.make_adamw(model, cfg.sft_lr, cfg.sft_weight_decay, training.PAPER_BETAS, d.device)
    start, seconds = 0, 0.0
    if resume:
        state = training.load_train_state(ckpt)
        if state["batch_size"] != cfg.sft_batch_size:
            raise BadInput(f"{ckpt} was trained with sft_batch_size={state['batch_size']}; resume with that, "
                           "or start over with --sft_resume=false")
        done = plan[:state["step"] * cfg.sft_batch_size]
        if state.get("data", None) not in (None, data_digest(examples, done)):  # older checkpoints have none
            raise BadInput(f"{ckpt} was trained on other examples or in another order (seed, sft_formats, "
                           "train_problems or max_seq_len changed): resume with the settings it started "
                           "with, or start over with --sft_resume=false")
        training.load_optimizer_state(optimizer, model, state["optimizer"])
        training.set_rng_state(state["rng"])
        start, seconds = state["step"], state["seconds"]
        distributed.print0(f"sft: resuming {ckpt} at step {start}")
    training.unmark_done(out, d)
    log = training.MetricsLog(os.path.join(out, "metrics.jsonl"), resume_step=start)

    def save(step):
        state = {"step": step, "seconds": seconds, "batch_size": cfg.sft_batch_size,
                 "data": data_digest(examples, plan[:step * cfg.sft_batch_size]),
                 "optimizer": training.optimizer_state(optimizer, model), "rng": training.rng_state()}
        training.save_checkpoint(ckpt, model, tokenizer, state)

    bar = tqdm(range(start, cfg.sft_steps), desc="sft", unit="step", disable=not d.is_main,
               initial=start, total=cfg.sft_steps)
    with training.StopRequest() as stop, bar:
        for step in bar:
            began = time.time()
            rows = [[examples[i] for i in row] for row in plan[step * cfg.sft_batch_size:(step + 1) * cfg.sft_batch_size]]
            n_examples = sum(map(len, rows))  # N: the loss is a mean over every example of the global batch
            mine = rows[d.rank::d.world_size]
            loss = 0.0
            for s in range(0, len(mine), cfg.sft_micro_batch_size):
                if stop.agreed(d):  # drop this step: the weights and optimizer are as step - 1 left them
                    save(step)
                    training.exit_interrupted(step, ckpt)
                batch = collate(mine[s:s + cfg.sft_micro_batch_size], tokenizer.pad_id, d.device)
                with distributed.gradient_sync(model, s + cfg.sft_micro_batch_size >= len(mine)):
                    with training.autocast(d.device, cfg.dtype):
                        nll = packed_nll(model, batch) / n_examples
                    # DDP and FSDP average gradients over ranks; our sum over the global batch needs x world
                    (nll * d.world_size).backward()
                loss += nll.item()
            grad_norm = training.clip_gradients(model, cfg.sft_grad_clip)
            loss = distributed.all_reduce_mean(loss, d) * d.world_size
            training.check_finite(step + 1, ckpt, "lower sft_lr", loss=loss, grad_norm=grad_norm)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            seconds += time.time() - began
            filled = sum(len(e.tokens) for row in rows for e in row) / (len(rows) * seq_len)
            log.log(step + 1, loss=loss, lr=cfg.sft_lr, grad_norm=grad_norm, examples=n_examples,
                    trained_tokens=int(sum(e.trained.sum() for row in rows for e in row)), fill=round(filled, 4))
            bar.set_postfix(loss=f"{loss:.3f}")
            if (step + 1) % cfg.sft_save_every == 0 or step + 1 == cfg.sft_steps:
                save(step + 1)
    return max(start, cfg.sft_steps), seconds


def main():
    cfg = config.main_config()
    out = os.path.join(cfg.out_dir, cfg.sft_folder)
    try:
        d = distributed.setup(cfg.device)
        check_config(cfg, d.world_size)
        shares = format_shares(cfg)
        test = tasks.load_problems(cfg.test_problems, "test", cfg)
        test = test[:cfg.sft_eval_problems or len(test)]
        with evaluate.stage_grader(cfg, d) as grader:  # forked before the model fills memory
            steps, seconds = train(cfg, d, out)
            distributed.barrier(d)  # rank 0 has written the checkpoint the others read
            # Evaluate the checkpoint as written, whole on every rank (an FSDP model is sharded).
            ckpt = os.path.join(out, "ckpt")
            model = Transformer.from_pretrained(ckpt, device=d.device)
            tokenizer = load_tokenizer(cfg, ckpt)
            results = {}
            for fmt in shares:
                results[fmt], records = held_out_results(model, tokenizer, test, fmt, cfg, grader)
                if d.is_main:
                    write_jsonl(os.path.join(out, f"eval-{fmt}.jsonl"), records)
    except (BadInput, training.Diverged, FileNotFoundError, KeyError, ValueError) as e:
        sys.exit(f"sft.py: {e}")
    main_format = max(shares, key=shares.get)
    summary = {"steps": steps, "seconds": round(seconds, 1), **results[main_format], "format": main_format,
               "eval_problems": len(test), "formats": results}
    if d.is_main:
        write_json(os.path.join(out, "summary.json"), summary)
        for fmt, r in results.items():
            print(f"sft: {steps} steps in {seconds:.0f} s; held-out {fmt} ({len(test)} {cfg.test_problems} problems): "
                  f"greedy accuracy {100 * r['accuracy']:.1f}%, format compliance {100 * r['format_rate']:.1f}%")
        print(f"checkpoint {os.path.join(out, 'ckpt')}, summary {os.path.join(out, 'summary.json')}")
    distributed.cleanup()


if __name__ == "__main__":
    training.run_main("sft.py", main)
