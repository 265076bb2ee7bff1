"""Evaluation: greedy accuracy, maj@k and pass@k of a checkpoint, graded in a pool of processes.

DeepSeekMath (Shao et al., 2024) reports accuracy on GSM8K and MATH with chain-of-thought
(section 3.2.1, tables 3-5), with programs (program-of-thought, tool-integrated reasoning), and
compares Maj@K with Pass@K (section 5.2.2, figure 7) to show that RL sharpens the output
distribution (Maj@K rises) rather than adding new abilities (Pass@K does not). This file holds
the evaluation itself:

1. a pool of grading processes (`Grader`), which is also the RL reward function of grpo.py; it
   grades with support/grading.py (answer extraction, equivalence through math-verify);
2. the metrics: `pass_at_k` (the unbiased estimator) and `majority_answer` (maj@k);
3. prompts (few-shot for base models, the chat template for tuned ones);
4. decoding (greedy and k samples; programs and tool-integrated rounds, run by
   support/sandbox.py);
5. `evaluate_model` (which sft.py and grpo.py call for their held-out accuracy) and the script:
   a results table, every response with its grade on disk.

Run it (eval_mode fewshot|chat, eval_format cot|pot|tool, eval_k samples for maj@k / pass@k):
    python evaluate.py configs/classroom.py --eval_checkpoint=out/classroom/sft --eval_k=8
    torchrun --nproc_per_node=8 evaluate.py configs/7b.py --eval_mode=fewshot
        --eval_checkpoint=deepseek-math-7b-base --eval_tasks="['data/gsm8k.jsonl', 'data/math.jsonl']"
Answers graded per second: python bench/bench_grader.py. Tests: pytest -q tests/test_evaluate.py
"""

import decimal
import itertools
import math
import multiprocessing
import multiprocessing.connection
import os
import re
import signal
import sys
import time
from collections import deque
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
from tqdm import tqdm

from model import Transformer, generate
from support import config, distributed, tasks, training
from support.fileio import BadInput, write_json, write_jsonl
from support.grading import answers_equal, as_text, extract_answer, last_boxed, needs_math_verify
from support.sandbox import SandboxError, run_programs, sandbox_layers
from support.tasks import POT_SUFFIX
from support.tokenizer import COT_SUFFIX, TOOL_SUFFIX, load_tokenizer

# ---------------------------------------------------------------------------------------------
# 1. The Grader: a pool of grading processes (also the RL reward function)
# ---------------------------------------------------------------------------------------------


def _grading_worker(conn, parent_end, timeout):
    """Worker process: receives lists of (index, answer, gold), sends back (index, equal) each."""
    parent_end.close()  # our fork's copy of the parent's end: held open, we would never see EOF
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    while True:
        try:
            jobs = conn.recv()
        except EOFError:  # the parent closed the pipe or died: nothing left to grade
            return
        for index, answer, gold in jobs:
            # one reply per answer: the parent sees progress answer by answer, and which one stalled
            conn.send((index, answers_equal(answer, gold, timeout)))


class Grader:
    """Grades many answers at once in worker processes; a context manager owning them.

        with Grader() as grader:
            rewards = grader.grade(responses, golds)   # [1.0, 0.0, ...]

    Why processes: math-verify's time limit is signal.alarm, main-thread only, and sympy holds
    the GIL, so threads would neither bound nor parallelise it. Plain numbers and fractions are
    decided here in the parent (microseconds); only LaTeX and the like go to the workers, in chunks.

    Two time limits: math-verify's own `timeout` (seconds per parse or comparison) inside the
    worker, and, for a computation that never returns to Python to see the alarm (a huge
    integer power in C), the parent kills a worker that makes no progress for
    2 * timeout + 1 seconds, scores that answer 0 and restarts the worker.

    Start method: fork. The workers only run math-verify/sympy, never torch, so the threads that
    torch may have started in the parent (and whose locks a forked child inherits) are never
    touched; spawn and forkserver would instead re-import the calling script in every worker.
    A worker exits when its pipe closes, also when the parent is killed.
    """

    def __init__(self, n_workers=0, timeout=3):
        self.timeout = timeout
        # answers_equal's two parses and up to four comparisons (verify compares each pair of the
        # two parses' results), each at its limit, plus 1 s
        self.stall_limit = 6 * timeout + 1
        self.context = multiprocessing.get_context("fork")
        n_workers = n_workers or min(8, os.cpu_count() or 1)  # most answers never reach a worker: 8 are plenty
        self.workers = [self._start_worker() for _ in range(n_workers)]

    def _start_worker(self):
        conn, worker_conn = self.context.Pipe()
        process = self.context.Process(target=_grading_worker, args=(worker_conn, conn, self.timeout), daemon=True)
        process.start()
        worker_conn.close()  # the child holds that end now; with ours closed, its death reads as EOF here
        return process, conn

    def close(self):
        # A worker forked later holds copies of the earlier workers' pipe ends: close every pipe
        # before waiting, and the workers see end-of-file one after the other.
        for process, conn in self.workers:
            conn.close()
        deadline = time.monotonic() + 2
        for process, conn in self.workers:
            process.join(timeout=max(0.0, deadline - time.monotonic()))
            if process.is_alive():  # a worker of another Grader, forked later, holds our pipe
                process.kill()
        self.workers = []

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def grade(self, responses, golds):
        """1.0 where the answer extracted from a response equals its gold answer, else 0.0."""
        answers = [extract_answer(response) for response in responses]
        return [float(equal) for equal in self.check(answers, golds)]

    def check(self, answers, golds):
        """answers_equal(answer, gold) for each pair (None answers are unequal), in parallel."""
        if len(answers) != len(golds):
            raise ValueError(f"{len(answers)} answers but {len(golds)} gold answers")
        answers = [None if answer is None else as_text(answer) for answer in answers]  # hashable text
        unique = {}  # an RL group often repeats one answer: grade each distinct pair once
        for pair in zip(answers, golds):
            unique.setdefault(pair, None)
        pairs = list(unique)
        slow = {i for i, (answer, gold) in enumerate(pairs) if needs_math_verify(answer, gold)}  # LaTeX, sympy
        results = {i: answers_equal(*pairs[i]) for i in range(len(pairs)) if i not in slow}  # numbers, here
        results.update(self._check_in_workers([(i, *pairs[i]) for i in sorted(slow)]))
        equal = {pairs[i]: results[i] for i in range(len(pairs))}
        return [equal[pair] for pair in zip(answers, golds)]

    def _check_in_workers(self, jobs):
        """Send chunks of jobs to idle workers; collect results; kill and replace stalled ones."""
        # ~4 chunks per worker: few pipe round trips, yet a slow chunk does not leave the others idle
        chunk = max(1, math.ceil(len(jobs) / (4 * len(self.workers))))
        queue = deque(jobs[i : i + chunk] for i in range(0, len(jobs), chunk))
        results = {}
        busy = {}  # worker slot -> [jobs not answered yet, time of its last progress]
        while queue or busy:
            for slot in range(len(self.workers)):
                if slot not in busy and queue:
                    busy[slot] = [list(queue.popleft()), time.monotonic()]
                    self.workers[slot][1].send(busy[slot][0])
            conns = {self.workers[slot][1]: slot for slot in busy}
            # wake at least every 0.5 s, so a worker that answers nothing is seen stalled
            for conn in multiprocessing.connection.wait(list(conns), timeout=0.5):
                slot = conns[conn]
                try:
                    index, equal = conn.recv()
                except EOFError:  # the worker died (e.g. out of memory): treat like a stall
                    busy[slot][1] = -math.inf
                    continue
                results[index] = equal
                busy[slot][0].pop(0)  # a worker answers its jobs in order
                busy[slot][1] = time.monotonic()
                if not busy[slot][0]:
                    del busy[slot]
            for slot, (pending, last_progress) in list(busy.items()):
                if time.monotonic() - last_progress > self.stall_limit:
                    results[pending[0][0]] = False  # the answer it was stuck on scores 0
                    if pending[1:]:
                        queue.appendleft(pending[1:])  # the rest of its chunk goes to the next free worker
                    del busy[slot]
                    process, conn = self.workers[slot]
                    process.kill()
                    conn.close()
                    process.join()
                    self.workers[slot] = self._start_worker()
        return results


# ---------------------------------------------------------------------------------------------
# 2. Metrics
# ---------------------------------------------------------------------------------------------


def pass_at_k(n, c, k):
    """Probability that at least one of k samples, drawn without replacement from n samples of
    which c are correct, is correct: the unbiased estimator of Chen et al. (2021),

        pass@k = 1 - C(n-c, k) / C(n, k) = 1 - prod_{i=n-c+1}^{n} (1 - k/i),

    the product form avoiding the huge binomials.
    """
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass@k needs 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    if n - c < k:  # every k-subset holds a correct sample
        return 1.0
    return float(1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))


def majority_answer(answers, equal):
    """The answer most samples agree on (maj@k), grouping answers by equivalence, not by string.

    `answers` are extracted answers (None for none); `equal(a, b)` decides equivalence. Each
    answer joins the first group whose first answer it equals; the largest group wins, ties
    going to the group formed first. Returns that group's first answer, or None.
    """
    groups = []  # [representative, count]
    for answer in answers:
        if answer is None:
            continue
        for group in groups:
            if equal(group[0], answer):
                group[1] += 1
                break
        else:
            groups.append([answer, 1])
    return max(groups, key=lambda group: group[1])[0] if groups else None


# ---------------------------------------------------------------------------------------------
# 3. Prompts
# ---------------------------------------------------------------------------------------------
# Base models are evaluated few-shot (paper section 3.2.1): GSM8K with the 8 chain-of-thought
# exemplars of Wei et al. (2022) as `Q: ...\nA: ...`, MATH with the 4 of Minerva (Lewkowycz et
# al., 2022) as `Problem:\n...\n\nSolution:\n...`, and classroom problems with solved problems
# of the classroom TRAIN split (disjoint from the test split by construction). Tuned models get
# the chat template with the format's instruction. A few-shot model goes on to invent the next
# problem after its answer, and the response is cut where that begins: in the `Q: / A:` prompts
# at the first blank line, the prompt's own separator (no exemplar answer holds one); in MATH's,
# whose solutions may hold blank lines, at the next `Problem:`. Not at the next `Q:` (lm-eval's
# stop for GSM8K): the classroom's base model, raised on its corpus's pages, follows its answer
# with "Example 3. ..." far more often than with "Q:", and the grader, which reads a response's last
# stated answer, then graded the invented problem's answer.

GSM8K_EXEMPLARS = [
    ("There are 15 trees in the grove. Grove workers will plant trees in the grove today. After they are done, there will be 21 trees. How many trees did the grove workers plant today?",
     "There are 15 trees originally. Then there were 21 trees after some more were planted. So there must have been 21 - 15 = 6. The answer is 6."),
    ("If there are 3 cars in the parking lot and 2 more cars arrive, how many cars are in the parking lot?",
     "There are originally 3 cars. 2 more cars arrive. 3 + 2 = 5. The answer is 5."),
    ("Leah had 32 chocolates and her sister had 42. If they ate 35, how many pieces do they have left in total?",
     "Originally, Leah had 32 chocolates. Her sister had 42. So in total they had 32 + 42 = 74. After eating 35, they had 74 - 35 = 39. The answer is 39."),
    ("Jason had 20 lollipops. He gave Denny some lollipops. Now Jason has 12 lollipops. How many lollipops did Jason give to Denny?",
     "Jason started with 20 lollipops. Then he had 12 after giving some to Denny. So he gave Denny 20 - 12 = 8. The answer is 8."),
    ("Shawn has five toys. For Christmas, he got two toys each from his mom and dad. How many toys does he have now?",
     "Shawn started with 5 toys. If he got 2 toys each from his mom and dad, then that is 4 more toys. 5 + 4 = 9. The answer is 9."),
    ("There were nine computers in the server room. Five more computers were installed each day, from monday to thursday. How many computers are now in the server room?",
     "There were originally 9 computers. For each of 4 days, 5 more computers were added. So 5 * 4 = 20 computers were added. 9 + 20 is 29. The answer is 29."),
    ("Michael had 58 golf balls. On tuesday, he lost 23 golf balls. On wednesday, he lost 2 more. How many golf balls did he have at the end of wednesday?",
     "Michael started with 58 golf balls. After losing 23 on tuesday, he had 58 - 23 = 35. After losing 2 more, he had 35 - 2 = 33 golf balls. The answer is 33."),
    ("Olivia has $23. She bought five bagels for $3 each. How much money does she have left?",
     "Olivia had 23 dollars. 5 bagels for 3 dollars each will be 5 x 3 = 15 dollars. So she has 23 - 15 dollars left. 23 - 15 is 8. The answer is 8."),
]

MATH_EXEMPLARS = [
    ("Find the domain of the expression $\\frac{\\sqrt{x-2}}{\\sqrt{5-x}}$.",
     "The expressions inside each square root must be non-negative. Therefore, $x-2 \\ge 0$, so $x\\ge2$, and $5 - x \\ge 0$, so $x \\le 5$. Also, the denominator cannot be equal to zero, so $5-x>0$, which gives $x<5$. Therefore, the domain of the expression is $\\boxed{[2,5)}$.\nFinal Answer: The final answer is $[2,5)$. I hope it is correct."),
    ("If $\\det \\mathbf{A} = 2$ and $\\det \\mathbf{B} = 12,$ then find $\\det (\\mathbf{A} \\mathbf{B}).$",
     "We have that $\\det (\\mathbf{A} \\mathbf{B}) = (\\det \\mathbf{A})(\\det \\mathbf{B}) = (2)(12) = \\boxed{24}.$\nFinal Answer: The final answer is $24$. I hope it is correct."),
    ("Terrell usually lifts two 20-pound weights 12 times. If he uses two 15-pound weights instead, how many times must Terrell lift them in order to lift the same total weight?",
     "If Terrell lifts two 20-pound weights 12 times, he lifts a total of $2\\cdot 12\\cdot20=480$ pounds of weight.  If he lifts two 15-pound weights instead for $n$ times, he will lift a total of $2\\cdot15\\cdot n=30n$ pounds of weight.  Equating this to 480 pounds, we can solve for $n$:\n\\begin{align*}\n30n&=480\\\\\n\\Rightarrow\\qquad n&=480/30=\\boxed{16}\n\\end{align*}\nFinal Answer: The final answer is $16$. I hope it is correct."),
    ("If the system of equations\n\n\\begin{align*}\n6x-4y&=a,\\\\\n6y-9x &=b.\n\\end{align*}has a solution $(x, y)$ where $x$ and $y$ are both nonzero, find $\\frac{a}{b},$ assuming $b$ is nonzero.",
     "If we multiply the first equation by $-\\frac{3}{2}$, we obtain\n\n$$6y-9x=-\\frac{3}{2}a.$$Since we also know that $6y-9x=b$, we have\n\n$$-\\frac{3}{2}a=b\\Rightarrow\\frac{a}{b}=\\boxed{-\\frac{2}{3}}.$$\nFinal Answer: The final answer is $-\\frac{2}{3}$. I hope it is correct."),
]

SUFFIXES = {"cot": COT_SUFFIX, "pot": POT_SUFFIX, "tool": TOOL_SUFFIX}
DEFAULT_SHOTS = {"gsm8k": 8, "math": 4, "classroom": 3}  # classroom: its model has 512 positions
FEWSHOT_STOP = {"gsm8k": "\n\n", "math": "Problem:", "classroom": "\n\n"}  # where an invented next problem begins


def task_style(task, problems):
    """Which few-shot prompt a task gets: "classroom", "math" (MATH-shaped rows) or "gsm8k"."""
    if task == "classroom":
        return "classroom"
    if task == "math" or any("level" in p.meta or "type" in p.meta for p in problems):  # MATH's own fields
        return "math"
    return "gsm8k"


def fewshot_exemplars(style, fmt, shots, cfg):
    """(question, solution) pairs for a few-shot prompt."""
    if style == "classroom":
        solved = tasks.classroom_problems("train", shots, cfg.classroom_seed, tasks.Difficulty.from_config(cfg))
        return [(p.question, tasks.render_solution(p, fmt)) for p in solved]
    if fmt != "cot":
        raise BadInput(f"few-shot {fmt} prompts need solved example programs, which only the classroom "
                       f"problems carry: evaluate {style} with eval_format=cot, or a tuned model with eval_mode=chat")
    exemplars = GSM8K_EXEMPLARS if style == "gsm8k" else MATH_EXEMPLARS
    if shots > len(exemplars):
        raise BadInput(f"eval_shots={shots}: the {style} few-shot prompt has {len(exemplars)} solved examples; "
                       f"use at most {len(exemplars)}")
    return exemplars[:shots]


def make_prompt(tokenizer, question, mode, fmt, style, exemplars):
    """The prompt's token ids: the checkpoint's chat template (DeepSeekMath's, or Qwen's / Llama
    3's from tokenizer_config.json), or BOS and few-shot exemplars."""
    if mode == "chat":
        return tokenizer.encode_prompt(question, SUFFIXES[fmt])
    if style == "math":
        text = "".join(f"Problem:\n{q}\n\nSolution:\n{a}\n\n" for q, a in exemplars) + f"Problem:\n{question}\n\nSolution:\n"
    else:
        text = "".join(f"Q: {q}\nA: {a}\n\n" for q, a in exemplars) + f"Q: {question}\nA:"
    return [tokenizer.bos_id] + tokenizer.encode(text)  # BOS first, as the chat path's encode_prompt does


# ---------------------------------------------------------------------------------------------
# 4. Decoding: greedy, k samples, programs and tool rounds
# ---------------------------------------------------------------------------------------------

# the code of each ```python block; one cut open by the length limit runs to the end of the text
_PYTHON_BLOCK = re.compile(r"```python\n(.*?)(?:```|$)", re.DOTALL)
OUTPUT_MARKER = "```output"  # tool-integrated format (tasks.render_solution): the runtime's output follows


@dataclass
class Decoding:
    """How to turn prompts into responses (from the eval_* config keys)."""
    fmt: str  # "cot", "pot" or "tool"
    max_new_tokens: int  # per generation round: a tool-integrated response has up to tool_rounds + 1
    batch_size: int  # prompts per generate() call
    stop_text: str  # few-shot: cut the response where the next problem starts; "" in chat mode
    tool_rounds: int  # most program runs in one tool-integrated response
    program_limits: dict  # run_program's timeout and memory_mb
    compile: bool  # the decode step through torch.compile (the compile key; model.generate says what it buys)


def _continue(model, contexts, decoding, temperature, eos_ids, stops, generator, progress):
    """Generate a continuation of every context (token ids), in batches of similar length
    (less padding). Returns (new ids without EOS, truncated) per context."""
    order = sorted(range(len(contexts)), key=lambda i: len(contexts[i]))  # a batch pads to its longest
    results = [None] * len(contexts)
    for start in range(0, len(order), decoding.batch_size):
        rows = order[start : start + decoding.batch_size]
        room = model.args.max_seq_len - max(len(contexts[i]) for i in rows)  # the longest row bounds the batch
        out = generate(model, [contexts[i] for i in rows], min(decoding.max_new_tokens, room),
                       temperature=temperature, eos_id=eos_ids, stop_sequences=stops, generator=generator,
                       compile=decoding.compile)
        for row, i in enumerate(rows):
            ids = out.tokens[row][out.mask[row]].tolist()  # the row's generated tokens, filler dropped
            # the EOS is not text; a stop sequence stays (respond cuts the few-shot one from the text)
            results[i] = (ids[:-1] if ids and ids[-1] in eos_ids else ids, bool(out.truncated[row]))
        if progress is not None:
            progress.update(len(rows))
    return results


def _tool_output(result):
    """What the model reads back from running a block: the output, or an error's last line."""
    if result.timed_out:
        return "TimeoutError: the program ran out of time"
    if result.ok:
        return result.output.strip("\n")
    lines = result.output.strip().splitlines()
    return lines[-1] if lines else f"the program ended with status {result.returncode}"


def stop_sequences(tokenizer, text):
    """Token-id sequences that end a row at `text`: its own ids, and each token whose bytes hold it."""
    needle = text.encode()
    return [tokenizer.encode(text)] + [[i] for piece, i in tokenizer.mergeable_ranks.items() if needle in piece]


def respond(model, tokenizer, contexts, decoding, temperature, generator, progress):
    """One response per prompt: {"text", "truncated"}. Tool-integrated responses pause after a
    code block's "```output" line, run the block in the sandbox, read its output back and go on,
    for at most decoding.tool_rounds executions."""
    contexts = [list(c) for c in contexts]
    longest = max(map(len, contexts), default=0)
    if longest >= model.args.max_seq_len:
        raise BadInput(f"a prompt of {longest} tokens leaves no room in the model's {model.args.max_seq_len} "
                       "positions: use fewer few-shot examples (eval_shots) or eval_mode=chat")
    # stop sequences as token ids: where a few-shot model's next problem begins (its text's ids,
    # and every single token holding that text, as ".\n\n" holds "\n\n"), and the marker after
    # which a tool-integrated model waits for its program's output. They only end generation
    # early: the text is cut at the stop text below, however its tokens fell.
    stops = stop_sequences(tokenizer, decoding.stop_text) if decoding.stop_text else []
    if decoding.fmt == "tool":
        stops.append(tokenizer.encode(OUTPUT_MARKER))
    responses = [[] for _ in contexts]  # generated ids (and tool outputs) per context
    inserted = [[] for _ in contexts]  # (start, end) of each tool output in the response's text
    truncated = [False] * len(contexts)
    active = list(range(len(contexts)))  # rows that still generate in this round
    for round_ in range(decoding.tool_rounds + 1):
        full = {i for i in active if len(contexts[i]) + len(responses[i]) >= model.args.max_seq_len}
        truncated = [cut or i in full for i, cut in enumerate(truncated)]  # no room to go on after an output
        active = [i for i in active if i not in full]
        # progress counts the first round only: one tick per response
        outs = _continue(model, [contexts[i] + responses[i] for i in active], decoding, temperature,
                         tokenizer.eos_ids, stops, generator, progress if round_ == 0 else None)
        paused = []
        for i, (ids, cut_short) in zip(active, outs):
            responses[i] += ids
            truncated[i] = cut_short
            text = tokenizer.decode(responses[i])
            if decoding.fmt == "tool" and text.endswith(OUTPUT_MARKER) and round_ < decoding.tool_rounds:
                paused.append(i)
        # the last python block is the one that asked for output; all of them run in the sandbox at once
        codes = [(_PYTHON_BLOCK.findall(tokenizer.decode(responses[i])) or [""])[-1] for i in paused]
        results = run_programs(codes, **decoding.program_limits)
        for i, result in zip(paused, results):
            start = len(tokenizer.decode(responses[i]))
            # closed as tasks.render_solution writes it in training, so the model goes on as it learned
            responses[i] += tokenizer.encode(f"\n{_tool_output(result)}\n```\n")
            inserted[i].append((start, len(tokenizer.decode(responses[i]))))
        active = paused
        if not active:
            break
    texts = [tokenizer.decode(ids) for ids in responses]
    if decoding.stop_text:  # drop the invented next problem
        texts = [cut_at_stop(text, decoding.stop_text, spans) for text, spans in zip(texts, inserted)]
    return [{"text": text.strip(), "truncated": cut} for text, cut in zip(texts, truncated)]


def cut_at_stop(text, stop_text, inserted):
    """text up to the first stop_text the model wrote: one that touches an inserted tool output
    (a program that printed nothing or a blank line) is not the model's and does not cut."""
    at = text.find(stop_text)
    while at >= 0 and any(at < end and at + len(stop_text) > start for start, end in inserted):
        at = text.find(stop_text, at + 1)
    return text if at < 0 else text[:at]


def answers_of(responses, fmt, program_limits):
    """The answer each response states; program-of-thought: what its program prints."""
    if fmt != "pot":
        return [extract_answer(r["text"]) for r in responses]
    # the last python block is the program; a response without one has no answer
    programs = {i: blocks[-1] for i, r in enumerate(responses) if (blocks := _PYTHON_BLOCK.findall(r["text"]))}
    results = dict(zip(programs, run_programs(list(programs.values()), **program_limits)))
    for i, result in results.items():
        responses[i]["program_output"] = result.output
    # a program that crashed or timed out states no answer, even if it printed one first
    return [program_answer(results[i].output) if i in results and results[i].ok else None for i in range(len(responses))]


_SYMPY_WORDS = {"sqrt", "pi", "oo", "exp", "log", "sin", "cos", "tan"}  # what sympy prints in an expression
_EXPONENT_FLOAT = re.compile(r"-?\d+(?:\.\d+)?e[+-]?\d+")  # Python's repr of 0.00001: 1e-05


def program_answer(output):
    """What a program-of-thought program answers: its last printed line. An expression
    ("3*sqrt(2)", "(1, 2)", "x = 3": digits, operators, one-letter names, sympy's sqrt, pi, ...)
    is the answer whole, for the grader's math-verify to read; Python's exponent form (1e-05)
    is written out (0.00001); a line in words ("The total is 42.") gives what extract_answer
    finds in it, and a last line with no answer the whole output's. The last number of the
    output instead read 3*sqrt(2) as 2 and 1e-05 as 05, which equals 5."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    if not lines:
        return None
    last = lines[-1]
    if _EXPONENT_FLOAT.fullmatch(last):
        return format(decimal.Decimal(last), "f")  # exact: 1.23e-07 -> 0.000000123
    if set(re.findall(r"[A-Za-z]{2,}", last)) <= _SYMPY_WORDS and not last_boxed(last):
        return last
    return extract_answer(last) or extract_answer(output)


# ---------------------------------------------------------------------------------------------
# 5. Evaluating a model on a task, and the script
# ---------------------------------------------------------------------------------------------


@dataclass
class Evaluation:
    metrics: dict  # problems, greedy, [maj@k, pass@k, pass@1,] no_answer, truncated
    records: list  # one dict per problem: gold, greedy response and, with k > 1, the k samples, each graded


def evaluate_model(model, tokenizer, problems, cfg, task="classroom", grader=None):
    """Answer and grade `problems` with `model`: greedy accuracy, and with cfg.eval_k > 1 the
    k samples' maj@k, pass@k and pass@1. The eval_* keys of cfg choose prompts and decoding
    (sft.py and grpo.py can pass a copy with eval_k=1 for a quick held-out accuracy).

    Under torchrun every rank calls this with the same problems and a model it can run on its
    own (unwrapped from DDP, or unsharded): each rank answers problems[rank::world_size], and
    every rank returns the metrics and records of all problems.
    """
    rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
    mine = list(range(rank, len(problems), world))  # strided, so every rank gets a similar mix
    style = task_style(task, problems)
    exemplars = []
    if cfg.eval_mode == "fewshot":
        exemplars = fewshot_exemplars(style, cfg.eval_format, cfg.eval_shots or DEFAULT_SHOTS[style], cfg)
    prompts = [make_prompt(tokenizer, problems[i].question, cfg.eval_mode, cfg.eval_format, style, exemplars)
               for i in mine]
    limits = {"timeout": cfg.eval_program_timeout, "memory_mb": cfg.eval_program_memory_mb}
    decoding = Decoding(cfg.eval_format, cfg.eval_max_new_tokens, cfg.eval_batch_size,
                        FEWSHOT_STOP[style] if cfg.eval_mode == "fewshot" else "", cfg.eval_tool_rounds, limits,
                        cfg.compile)
    k = cfg.eval_k
    device = model.embed_tokens.weight.device
    generator = torch.Generator(device).manual_seed(cfg.seed + rank)  # reproducible, and different per rank
    # maj@k and pass@k on the first eval_k_problems problems only: k samples each cost k greedy answers
    sampled = [p for p, i in zip(prompts, mine) if k > 1 and i < (cfg.eval_k_problems or len(problems))]
    progress = tqdm(total=len(mine) + k * len(sampled), desc=f"eval {task}", unit="response", disable=rank != 0)
    was_training = model.training
    model.eval()
    with training.autocast(device, cfg.dtype):
        greedy = respond(model, tokenizer, prompts, decoding, 0.0, generator, progress)  # temperature 0: argmax
        # k copies of each prompt, side by side: graded_records reads problem j's as rows j k .. j k + k - 1
        samples = respond(model, tokenizer, [p for p in sampled for _ in range(k)], decoding,
                          cfg.eval_temperature, generator, progress) if sampled else []
    model.train(was_training)
    progress.close()

    own_grader = grader is None  # a stage passes its own, forked once before the model filled memory
    grader = grader or Grader(cfg.grader_workers, cfg.grader_timeout)
    try:
        records = graded_records([problems[i] for i in mine], greedy, samples, k, cfg.eval_format, limits, grader)
    finally:
        if own_grader:
            grader.close()
    for record, i in zip(records, mine):
        record["index"] = i
    if world > 1:
        shares = [None] * world
        dist.all_gather_object(shares, records)
        records = sorted((r for share in shares for r in share), key=lambda r: r["index"])  # problem order
    return Evaluation(task_metrics(records, k), records)


def graded_records(problems, greedy, samples, k, fmt, limits, grader):
    """One record per problem: its greedy response and its samples (k per problem, in order, for
    the first len(samples) / k problems), each with its answer and grade, and the samples'
    majority answer."""
    golds = [problem.answer for problem in problems]
    n_sampled = len(samples) // k if samples else 0
    greedy_answers = answers_of(greedy, fmt, limits)
    sample_answers = answers_of(samples, fmt, limits)
    # one check for greedy and sampled answers: one pass through the worker pool
    correct = grader.check(greedy_answers + sample_answers, golds + [gold for gold in golds[:n_sampled] for _ in range(k)])
    greedy_correct, sample_correct = correct[: len(golds)], correct[len(golds) :]
    groups = [range(j * k, (j + 1) * k) for j in range(n_sampled)]
    # maj@k groups a problem's sampled answers by equivalence: grade each pair of its distinct answers once
    pairs = set()
    for group in groups:
        pairs.update(itertools.combinations(dict.fromkeys(sample_answers[s] for s in group if sample_answers[s]), 2))
    pairs = sorted(pairs)
    same = dict(zip(pairs, grader.check([a for a, _ in pairs], [b for _, b in pairs])))

    def equal(a, b):
        """Equivalence of two sampled answers: the same string, or graded equal above."""
        return a == b or same.get((a, b), same.get((b, a), False))

    records = []
    for j, problem in enumerate(problems):
        record = {"id": problem.id, "question": problem.question, "gold": golds[j],
                  "greedy": {**greedy[j], "answer": greedy_answers[j], "correct": greedy_correct[j]}}
        if j < n_sampled:
            group = groups[j]
            record["samples"] = [{**samples[s], "answer": sample_answers[s], "correct": sample_correct[s]} for s in group]
            majority = majority_answer([sample_answers[s] for s in group], equal)
            record["majority_answer"] = majority
            # the majority answer is one of the samples: its grade is that sample's
            record["majority_correct"] = any(sample_answers[s] == majority and sample_correct[s] for s in group)
        records.append(record)
    return records


def task_metrics(records, k):
    """Greedy accuracy; with k samples maj@k, pass@k and pass@1 (the unbiased estimator with
    n = k); the shares of responses with no answer (format failures) and cut at the length limit."""
    responses = [r["greedy"] for r in records] + [s for r in records for s in r.get("samples", [])]
    metrics = {"problems": len(records), "greedy": float(np.mean([r["greedy"]["correct"] for r in records]))}
    sampled = [r for r in records if "samples" in r]
    if sampled:
        metrics["sampled_problems"] = len(sampled)
        n_correct = [sum(s["correct"] for s in r["samples"]) for r in sampled]
        # paper 5.2.2, figure 7: RL lifts Maj@K, not Pass@K (it sharpens, it does not add abilities)
        metrics[f"maj@{k}"] = float(np.mean([r["majority_correct"] for r in sampled]))
        metrics[f"pass@{k}"] = float(np.mean([pass_at_k(k, c, k) for c in n_correct]))  # n = k: any sample right
        metrics["pass@1"] = float(np.mean([pass_at_k(k, c, 1) for c in n_correct]))  # c / k: sampled accuracy
    metrics["no_answer"] = float(np.mean([s["answer"] is None for s in responses]))
    metrics["truncated"] = float(np.mean([s["truncated"] for s in responses]))
    return metrics


def results_table(metrics_by_task):
    """Per task: one row of percentages (and the evaluation's speed)."""
    columns = list(dict.fromkeys(key for metrics in metrics_by_task.values() for key in metrics))
    rows = [["task"] + columns]
    for task, metrics in metrics_by_task.items():
        cells = [task]
        for key in columns:
            value = metrics.get(key, "")
            # shares as percentages; problems/s, the one float that is not a share, as a number
            cells.append(f"{100 * value:.1f}%" if isinstance(value, float) and key != "problems/s" else
                         f"{value:.2f}" if isinstance(value, float) else str(value))
        rows.append(cells)
    widths = [max(len(row[c]) for row in rows) for c in range(len(rows[0]))]
    return "\n".join("  ".join(cell.rjust(w) if c else cell.ljust(w) for c, (cell, w) in enumerate(zip(row, widths)))
                     for row in rows)


def stage_grader(cfg, d):
    """The Grader of a stage: grader_workers processes, or by default this rank's share of the
    CPU cores (at most 8), so that W ranks on one machine do not start W x cores workers."""
    workers = cfg.grader_workers or max(1, min(8, (os.cpu_count() or 1) // d.world_size))
    return Grader(workers, cfg.grader_timeout)


def run_name(checkpoint):
    """The name a checkpoint's results go under: its folder's name, or for a stage's
    .../NAME/ckpt folder the stage's NAME (pretrain, sft, grpo_outcome, ...)."""
    folder = os.path.normpath(checkpoint)
    if os.path.basename(folder) == "ckpt":
        folder = os.path.dirname(folder)
    return os.path.basename(folder)


def task_name(task):
    """A task's name in metrics.json and its records' file: the file's name without extension."""
    return os.path.splitext(os.path.basename(task))[0]


def check_eval_config(cfg):
    """Refuse a bad eval_* setting before a model is loaded, naming the fix."""
    if not cfg.eval_checkpoint:
        raise BadInput("set --eval_checkpoint=FOLDER: a checkpoint written by pretrain.py, sft.py or grpo.py, "
                       "or a Hugging Face Llama folder such as deepseek-math-7b-rl")
    if cfg.eval_mode not in ("chat", "fewshot"):
        raise BadInput(f"eval_mode={cfg.eval_mode!r}: use 'chat' (tuned models) or 'fewshot' (base models)")
    if cfg.eval_format not in SUFFIXES:
        raise BadInput(f"eval_format={cfg.eval_format!r}: use one of {', '.join(SUFFIXES)}")
    if cfg.eval_k < 1 or cfg.eval_batch_size < 1 or cfg.eval_max_new_tokens < 1:
        raise BadInput("eval_k, eval_batch_size and eval_max_new_tokens must be at least 1")
    names = [task_name(task) for task in cfg.eval_tasks]
    if len(set(names)) < len(names):
        raise BadInput(f"eval_tasks {cfg.eval_tasks} share the name {max(names, key=names.count)!r}, and each "
                       "task's results are written under its file's name: rename or move one of the files")


def main():
    cfg = config.main_config()
    try:
        d = distributed.setup(cfg.device)
        check_eval_config(cfg)
        tokenizer = load_tokenizer(cfg, cfg.eval_checkpoint)
        if cfg.eval_format in ("pot", "tool"):
            sandbox_layers()  # a machine that cannot run programs says so before any generation
        task_problems = {}
        for task in cfg.eval_tasks or [cfg.test_problems]:
            problems = tasks.load_problems(task, "test", cfg)
            task_problems[task] = problems[: cfg.eval_n_problems or len(problems)]  # the same first n for every model
        with stage_grader(cfg, d) as grader:  # forked before the model fills memory
            # no training: weights in the compute dtype (bf16 on a GPU), half the memory of float32
            model = Transformer.from_pretrained(cfg.eval_checkpoint, dtype=distributed.compute_dtype(d.device, cfg.dtype),
                                                device=d.device)
            metrics = {}
            out_dir = os.path.join(cfg.out_dir, "eval", run_name(cfg.eval_checkpoint))
            for task, problems in task_problems.items():
                name = task_name(task)
                start = time.time()
                result = evaluate_model(model, tokenizer, problems, cfg, task, grader)
                metrics[name] = {**result.metrics, "problems/s": len(problems) / (time.time() - start)}
                if d.is_main:
                    write_jsonl(os.path.join(out_dir, f"{name}.jsonl"), result.records)
    except (BadInput, FileNotFoundError, KeyError, ValueError, SandboxError) as e:
        sys.exit(f"evaluate.py: {e}")
    if d.is_main:
        settings = {key: value for key, value in vars(cfg).items() if key.startswith("eval_")}  # what metrics depend on
        write_json(os.path.join(out_dir, "metrics.json"), {"settings": settings, "metrics": metrics})
        print(f"\n{cfg.eval_checkpoint}: {cfg.eval_mode} {cfg.eval_format}, k={cfg.eval_k}, sandbox: "
              f"{', '.join(sandbox_layers())}\n{results_table(metrics)}\nevery response and its grade: {out_dir}/")
    distributed.cleanup()


if __name__ == "__main__":
    main()
