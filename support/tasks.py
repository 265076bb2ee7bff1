"""Math problems for every later stage: SFT examples, RL questions and rewards, evaluation sets.

DeepSeekMath section 3.1 tunes the base model on math problems whose solutions come in three
formats: chain-of-thought (CoT, steps in words and equations), program-of-thought (PoT, a
program whose printed result is the answer) and tool-integrated reasoning (text interleaved with
code blocks and their outputs). Section 4.1.3 (process supervision) rewards each reasoning step.
This module gives all of them one small interface:

    problems = load_problems("classroom", "train", cfg)   # or "gsm8k", "math", or a file path
    text = render_solution(problems[0], "pot")           # "cot" | "pot" | "tool"
    rewards = step_rewards(problems[0], model_response)  # [(char_end, 0.0 or 1.0), ...]

Sources:
- "classroom": GSM8K-style multi-step arithmetic word problems generated from a seed (config
  keys classroom_*), so the whole recipe runs offline on a CPU. Each problem is a short story
  about one running quantity ("chain") or two people compared and added ("compare"); every
  step is ONE equation `a op b = c` whose operands come from the question or earlier steps.
  The train/test split is a pure function of the question text (a CRC32 bucket), so the splits
  never share a question, whatever the seed or the difficulty.
- "gsm8k" / "math": the Hugging Face hub (online only), or the same rows from local files:
  GSM8K rows {question, answer: "...<<48/2=24>>24...\\n#### 72"}, MATH rows {problem,
  solution: "... \\boxed{...}", level, type}, or plain {question, answer[, solution]} rows.

Run `python -m support.tasks configs/classroom.py` to print one classroom problem in every format.
"""

import ast
import math
import numbers
import os
import random
import re
import zlib
from collections import Counter
from dataclasses import dataclass, field
from fractions import Fraction

from support.fileio import BadInput, read_records
from support.grading import last_boxed

GSM8K_HUB = ("openai/gsm8k", "main")  # load_dataset(name, config); splits train / test
MATH_HUB = "EleutherAI/hendrycks_math"  # one config per subject, each with train / test
MATH_SUBJECTS = ("algebra", "counting_and_probability", "geometry", "intermediate_algebra",
                 "number_theory", "prealgebra", "precalculus")

# The program-of-thought instruction. The paper gives the CoT and tool-integrated suffixes
# (tokenizer.COT_SUFFIX, tokenizer.TOOL_SUFFIX) but not a PoT one; ours asks for the same
# contract evaluate.py checks: a Python program that prints the final answer.
POT_SUFFIX = "\nPlease write a Python program to solve the problem above, and print the final answer."
FORMATS = ("cot", "pot", "tool")


@dataclass
class Step:
    """One checkable reasoning step: `expression = result`, e.g. "23 + 15" = "38"."""
    expression: str  # Python arithmetic over the operands; classroom steps are always "a op b"
    result: str  # the value the step must reach, as written in the solution
    words: str = ""  # the step in words (classroom only), e.g. "Maya buys 15 more marbles"


@dataclass
class Problem:
    id: str
    question: str
    answer: str  # the gold final answer, as text ("72", "\\frac{1}{2}")
    solution: str = ""  # a chain-of-thought solution ending in \boxed{answer}, when known
    steps: list = field(default_factory=list)  # [Step]: the reference steps, when known
    program: str = ""  # a program-of-thought solution that prints the answer (classroom only)
    meta: dict = field(default_factory=dict)  # dataset extras, e.g. MATH's level and type


# ---------------------------------------------------------------- answers in solutions

def _number(text):
    """Exact value of a plain number ("1,000", "2.5", "-3", "7/2"), else None."""
    try:
        return Fraction(text.strip().strip("$").replace(",", ""))
    except (ValueError, ZeroDivisionError):
        return None


def _evaluate(expression):
    """Exact value of an arithmetic expression (numbers, + - * /, parentheses), else None.
    Parsed, never eval'd: model output is untrusted."""
    operators = {ast.Add: Fraction.__add__, ast.Sub: Fraction.__sub__,
                 ast.Mult: Fraction.__mul__, ast.Div: Fraction.__truediv__}

    def value(node):
        if isinstance(node, ast.Constant) and type(node.value) in (int, float):
            return Fraction(str(node.value))
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
            return -value(node.operand)
        if isinstance(node, ast.BinOp) and type(node.op) in operators:
            return operators[type(node.op)](value(node.left), value(node.right))
        raise ValueError("not plain arithmetic")

    if len(expression) > 200:
        return None
    try:
        return value(ast.parse(expression.strip(), mode="eval").body)
    except (SyntaxError, ValueError, ZeroDivisionError, RecursionError):
        return None


# ---------------------------------------------------------------- process rewards

# An equation in a step: an arithmetic expression, "=", a number ("23 + 15 = 38", "48/2 = 24").
EQUATION = re.compile(r"([(0-9][0-9.+\-*/() ]*?)\s*=\s*(-?[0-9]+(?:\.[0-9]+)?)")
THOUSANDS = re.compile(r"(?<=[0-9]),(?=[0-9]{3}\b)")  # "1,000" -> "1000"
TIMES = re.compile(r"(?<=[0-9)]) ?[x\u00d7] ?(?=[0-9(])")  # GSM8K writes "0.2 x 50" -> "0.2*50"


def step_rewards(problem, response):
    """Process supervision (paper section 4.1.3): a 0/1 reward for every step of a response.

    A step is a non-empty line. Its reward is 1 when
    - it holds \\boxed{x}: x equals the gold answer (as numbers when both are numbers); or
    - it holds equations `expression = value`, every one arithmetically true, and every value is
      one of the problem's reference step results not already credited earlier in this response
      (a multiset: a value is credited as often as the reference solution reaches it, so
      repeating a correct line earns nothing more);
    otherwise 0 (a line with no equation shows no checkable work). Before matching, "$" signs
    and thousands commas are dropped and "3 x 4" reads "3*4", as GSM8K writes them. Problems
    without reference steps (MATH) can only earn the final-answer reward.

    Returns [(end, reward)], one per step, where end is the character offset just past the
    step's text (response[start:end] is the line); the RL code gives each reward to the token
    covering character end - 1, the paper's "last token of each step".
    """
    uncredited = Counter(_number(step.result) for step in problem.steps)
    rewards, offset = [], 0
    for line in response.split("\n"):
        end = offset + len(line)
        if line.strip():
            rewards.append((end, _line_reward(line, problem.answer, uncredited)))
        offset = end + 1
    return rewards


def result_spans(response):
    """(start, end) character spans of the values a response states: each equation's result (the
    38 of "23 + 15 = 38") and the final \\boxed{} answer. A learned reward model reads how likely
    its own language model finds these characters (support/rewards.py)."""
    spans = [m.span(2) for m in EQUATION.finditer(response)]
    box = response.rfind("\\boxed{")
    answer = last_boxed(response[box:]) if box >= 0 else None
    if answer:
        start = response.find(answer, box)
        spans.append((start, start + len(answer)))
    return spans


def _line_reward(line, answer, uncredited):
    boxed = last_boxed(line)
    if boxed is not None:
        return float(_same_answer(boxed, answer))
    arithmetic = TIMES.sub("*", THOUSANDS.sub("", line.replace("$", "")))
    equations = EQUATION.findall(arithmetic)
    values = Counter()
    for expression, written in equations:
        value = _number(written)
        if _evaluate(expression) != value:
            return 0.0
        values[value] += 1
    if not values or any(uncredited[v] < n for v, n in values.items()):
        return 0.0
    uncredited.subtract(values)
    return 1.0


def _same_answer(given, gold):
    given_value, gold_value = _number(given), _number(gold)
    if given_value is not None and gold_value is not None:
        return given_value == gold_value
    return given.strip() == gold.strip()


# ---------------------------------------------------------------- the three solution formats

def render_solution(problem, fmt):
    """The response text of `problem` in format fmt: "cot", "pot" or "tool".

    cot:  one line per step, "words: a op b = c.", then "The answer is \\boxed{N}."
    pot:  a ```python block whose printed output is the answer.
    tool: per step, its words then a ```python block printing the step's expression and the
          ```output block the tool returns; then "The answer is \\boxed{N}." (ToRA's layout:
          at inference the model stops after a code block and the runtime appends the output).
    """
    if fmt not in FORMATS:
        raise BadInput(f"unknown solution format {fmt!r}; use one of {', '.join(FORMATS)}")
    if fmt == "cot":
        if not problem.solution:
            raise BadInput(f"problem {problem.id} has no solution to tune on; "
                           "give its rows a 'solution' (or GSM8K/MATH rationale)")
        return problem.solution
    if not problem.program:
        raise BadInput(f"problem {problem.id} has no program, so no {fmt} solution: only "
                       "classroom problems carry programs; tune real data in the cot format")
    if fmt == "pot":
        return f"```python\n{problem.program}\n```"
    rounds = [f"{step.words}.\n```python\nprint({step.expression})\n```\n```output\n{step.result}\n```"
              for step in problem.steps]
    return "\n".join(rounds) + f"\nThe answer is \\boxed{{{problem.answer}}}."


def _cot_solution(steps, answer):
    return "\n".join(f"{s.words}: {s.expression} = {s.result}." for s in steps) + \
        f"\nThe answer is \\boxed{{{answer}}}."


# ---------------------------------------------------------------- the classroom world

NAMES = ("Ava", "Ben", "Cleo", "Dan", "Ella", "Finn", "Gia", "Hugo", "Ines", "Jack", "Kira",
         "Leo", "Maya", "Nico", "Olga", "Paul", "Rosa", "Sam", "Tara", "Omar", "Lily", "Raj",
         "Zoe", "Ivan")
OBJECTS = ("apples", "marbles", "stickers", "cards", "books", "coins", "pencils", "shells",
           "stamps", "cookies", "eggs", "balloons", "beads", "candies", "buttons", "crayons")
THEN = ("Then", "Later", "Next", "After that")
GAIN = ("buys {n} more {obj}", "finds {n} more {obj}", "gets {n} more {obj} from {other}",
        "wins {n} more {obj}", "picks up {n} more {obj}", "receives {n} {obj} from {other}")
LOSS = ("gives {n} {obj} to {other}", "loses {n} {obj}", "sells {n} {obj}",
        "gives away {n} {obj}", "uses {n} {obj}")
# A group step ("*" in classroom_ops) is two equations: count * size, then add or take it away.
GROUP_GAIN = (("buys {k} bags with {m} {obj} in each", "{k} bags of {m}", "{who} adds them"),
              ("gets {k} boxes of {m} {obj}", "{k} boxes of {m}", "{who} adds them"))
GROUP_LOSS = (("gives {k} friends {m} {obj} each", "{k} friends get {m}", "{who} gives them away"),
              ("sells {k} packs of {m} {obj}", "{k} packs of {m}", "{who} sells them"))
ASK_ONE = ("How many {obj} does {who} have now?", "How many {obj} does {who} have in the end?")
ASK_TOTAL = ("How many {obj} do {a} and {b} have together?", "How many {obj} do they have in total?")


@dataclass
class Difficulty:
    min_steps: int = 2  # equations per solution
    max_steps: int = 3
    max_number: int = 99  # bound on every number in a question and on every intermediate result
    ops: str = "+-"  # "+", "-", "*" (a one-digit count of groups, two steps)

    @classmethod
    def from_config(cls, cfg):
        return cls(cfg.classroom_min_steps, cfg.classroom_max_steps,
                          cfg.classroom_max_number, cfg.classroom_ops)


class _Story:
    """A problem under construction: question sentences, steps, program lines."""

    def __init__(self, rng, difficulty):
        self.rng, self.difficulty = rng, difficulty
        self.obj = rng.choice(OBJECTS)
        self.sentences, self.steps, self.code = [], [], []

    def step(self, words, a, op, b):
        result = {"+": a + b, "-": a - b, "*": a * b}[op]
        self.steps.append(Step(f"{a} {op} {b}", str(result), words))
        return result

    def change(self, who, value, budget, others):
        """One event that changes `who`'s count (1 step, or 2 for a group); the new count, or
        None when no allowed event keeps every number within [1, max_number]."""
        rng, top, ops = self.rng, self.difficulty.max_number, self.difficulty.ops
        # Each allowed event is weighted by how many draws it has (its room), which keeps counts
        # away from the bounds: otherwise 1 and max_number are common answers, easy to guess.
        room = {"+": top - value - 1, "-": value - 2, "*+": top - value - 3, "*-": value - 4}
        kinds = [kind for kind in room
                 if room[kind] > 0 and set(kind) <= set(ops) and (len(kind) == 1 or budget >= 2)]
        if not kinds:
            return None
        kind = rng.choices(kinds, weights=[room[kind] for kind in kinds])[0]
        prefix = rng.choice(THEN) + " " if self.sentences[1:] else ""
        var, other = who.lower(), rng.choice(others)
        if kind in "+-":
            n = rng.randint(2, top - value) if kind == "+" else rng.randint(2, value - 1)
            phrase = rng.choice(GAIN if kind == "+" else LOSS).format(n=n, obj=self.obj, other=other)
            self.code.append(f"{var} = {var} {kind} {n}")
            new = self.step(f"{who} {phrase}", value, kind, n)
        else:
            room = top - value if kind == "*+" else value - 1
            k = rng.randint(2, min(9, room // 2))
            m = rng.randint(2, room // k)
            asked, counted, applied = rng.choice(GROUP_GAIN if kind == "*+" else GROUP_LOSS)
            phrase = asked.format(k=k, m=m, obj=self.obj)
            self.code += [f"group = {k} * {m}", f"{var} = {var} {kind[1]} group"]
            group = self.step(counted.format(k=k, m=m), k, "*", m)
            new = self.step(applied.format(who=who), value, kind[1], group)
        self.sentences.append(f"{prefix}{who} {phrase}.")
        return new


def _chain(story, n_steps, names):
    """One person's count changes n_steps times; the question asks for the final count."""
    who, others = names[0], names[1:]
    value = story.rng.randint(2, story.difficulty.max_number)
    story.sentences.append(f"{who} has {value} {story.obj}.")
    story.code.append(f"{who.lower()} = {value}")
    while len(story.steps) < n_steps:
        value = story.change(who, value, n_steps - len(story.steps), others)
        if value is None:
            return None
    story.sentences.append(story.rng.choice(ASK_ONE).format(obj=story.obj, who=who))
    story.code.append(f"print({who.lower()})")
    return value


def _compare(story, n_steps, names):
    """B has n more (fewer) than A, B's count changes, the question asks for A and B together."""
    rng, top = story.rng, story.difficulty.max_number
    a, b, others = names[0], names[1], names[2:]
    value_a = rng.randint(2, top)
    more = "-" not in story.difficulty.ops or rng.random() < 0.5
    if (more and value_a + 2 > top) or (not more and value_a < 3):
        return None
    n = rng.randint(2, top - value_a) if more else rng.randint(2, value_a - 1)
    relation = "more" if more else "fewer"
    story.sentences += [f"{a} has {value_a} {story.obj}.",
                        f"{b} has {n} {relation} {story.obj} than {a}."]
    story.code += [f"{a.lower()} = {value_a}", f"{b.lower()} = {a.lower()} {'+' if more else '-'} {n}"]
    value_b = story.step(f"{b} has {n} {relation} {story.obj} than {a}", value_a,
                         "+" if more else "-", n)
    while len(story.steps) < n_steps - 1:
        value_b = story.change(b, value_b, n_steps - 1 - len(story.steps), others)
        if value_b is None:
            return None
    if value_a + value_b > top:
        return None
    story.sentences.append(rng.choice(ASK_TOTAL).format(obj=story.obj, a=a, b=b))
    story.code += [f"total = {a.lower()} + {b.lower()}", "print(total)"]
    return story.step(f"{a} and {b} together", value_a, "+", value_b)


def _random_problem(rng, difficulty):
    """One problem from rng, or None when the draw broke a bound (the caller draws again)."""
    n_steps = rng.randint(difficulty.min_steps, difficulty.max_steps)
    names = rng.sample(NAMES, 4)
    story = _Story(rng, difficulty)
    frame = _compare if n_steps >= 2 and rng.random() < 0.5 else _chain
    answer = frame(story, n_steps, names)
    if answer is None:
        return None
    return Problem("", " ".join(story.sentences), str(answer), _cot_solution(story.steps, answer),
                   story.steps, "\n".join(story.code))


def is_test_question(question):
    """The split of a classroom question: a fixed 10% bucket of its CRC32 is held out."""
    return zlib.crc32(question.encode()) % 10 == 0


def classroom_problems(split, n, seed, difficulty=Difficulty()):
    """n distinct classroom problems of `split` ("train" or "test"), the same for the same
    seed and difficulty."""
    if split not in ("train", "test"):
        raise BadInput(f"classroom split {split!r}: use 'train' or 'test'")
    _check_difficulty(difficulty)
    rng = random.Random(seed)
    problems, seen = [], set()
    for _ in range(200 * n + 1000):
        if len(problems) == n:
            return problems
        problem = _random_problem(rng, difficulty)
        if problem is None or problem.question in seen or is_test_question(problem.question) != (split == "test"):
            continue
        seen.add(problem.question)
        problem.id = f"classroom-{split}-{len(problems)}"
        problems.append(problem)
    if len(problems) < n:
        raise BadInput(f"only {len(problems)} distinct classroom {split} problems exist at this "
                       f"difficulty ({difficulty}); ask for fewer or raise classroom_max_number")
    return problems


def _check_difficulty(d):
    if not 1 <= d.min_steps <= d.max_steps:
        raise BadInput(f"classroom_min_steps={d.min_steps}, classroom_max_steps={d.max_steps}: "
                       "need 1 <= min_steps <= max_steps")
    if d.max_number < 10:
        raise BadInput(f"classroom_max_number={d.max_number}: use 10 or more")
    if "+" not in d.ops or set(d.ops) - set("+-*"):
        raise BadInput(f"classroom_ops={d.ops!r}: use '+' plus any of '-', '*' (e.g. '+-')")


# ---------------------------------------------------------------- GSM8K, MATH, files, hub

GSM8K_CALCULATOR = re.compile(r"<<([^<>=]*)=([^<>]*)>>")  # GSM8K's "<<48/2=24>>" annotations


def gsm8k_problem(id, question, answer):
    """A GSM8K row: the rationale's calculator annotations become the reference steps, and the
    solution is the rationale without them, ending in \\boxed{} like every CoT solution here."""
    rationale, _, final = answer.rpartition("####")
    gold = final.strip().replace(",", "")
    steps = [Step(expression.strip(), result.strip())
             for expression, result in GSM8K_CALCULATOR.findall(rationale)]
    solution = GSM8K_CALCULATOR.sub("", rationale).strip() + f"\nThe answer is \\boxed{{{gold}}}."
    return Problem(id, question, gold, solution, steps, meta={"answer_field": answer})  # as the dataset has it


def text_field(row, key, where):
    """row[key] as text: a string with something in it, or a number (an answer of 42); None, NaN
    (a Parquet column's missing value) or an empty string is a BadInput naming the row and field."""
    value = row[key]
    if isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value):
        return str(value)
    if isinstance(value, str) and value.strip():
        return value
    raise BadInput(f"{where}: field '{key}' is {value!r}; it needs text (fix or drop the row)")


def math_problem(id, row, where):
    row = {**row, "problem": text_field(row, "problem", where), "solution": text_field(row, "solution", where)}
    answer = last_boxed(row["solution"])
    if answer is None:
        raise BadInput(f"{where}: MATH solution has no \\boxed{{...}} answer; fix or drop the row")
    meta = {key: row[key] for key in ("level", "type") if key in row}
    return Problem(id, row["problem"], answer, row["solution"], meta=meta)


def _problem_from_row(row, id, where):
    if "problem" in row and "solution" in row:
        return math_problem(id, row, where)
    if "question" in row and "answer" in row:
        question, answer = text_field(row, "question", where), text_field(row, "answer", where)
        if "####" in answer:
            return gsm8k_problem(id, question, answer)
        solution = row.get("solution")
        return Problem(id, question, answer, solution if isinstance(solution, str) else "")  # None, NaN: none
    raise BadInput(f"{where}: a row with keys {sorted(row)}; expected GSM8K (question, answer "
                   "with '#### N'), MATH (problem, solution with \\boxed{}) or question/answer")


def problems_from_file(path):
    stem = os.path.splitext(os.path.basename(path))[0]
    problems = []
    for i, row in enumerate(read_records(path)):
        id = str(row.get("id") or row.get("unique_id") or f"{stem}-{i}")
        problems.append(_problem_from_row(row, id, f"{path} row {i + 1}"))
    if not problems:
        raise BadInput(f"{path}: no problems in the file")
    return problems


def problems_from_hub(name, split):
    import datasets  # slow to import; only the hub path needs it here

    try:
        if name == "gsm8k":
            rows = datasets.load_dataset(*GSM8K_HUB, split=split)
            return [gsm8k_problem(f"gsm8k-{split}-{i}", r["question"], r["answer"])
                    for i, r in enumerate(rows)]
        rows = [r for subject in MATH_SUBJECTS
                for r in datasets.load_dataset(MATH_HUB, subject, split=split)]
    except Exception as e:  # offline, unknown split, hub down: all end the same way for the user
        hub = GSM8K_HUB[0] if name == "gsm8k" else MATH_HUB
        raise BadInput(f"cannot load {name} ({hub}, split {split}) from the Hugging Face hub: "
                       f"{type(e).__name__}: {e}. Offline, pass a local .jsonl or .parquet file "
                       f"of its rows instead (e.g. --{split}_problems=data/{name}_{split}.jsonl)")
    return [math_problem(f"math-{split}-{i}", r, f"{MATH_HUB} {split} row {i + 1}")
            for i, r in enumerate(rows)]


def load_problems(source, split, cfg):
    """The problems of `source` ("classroom", "gsm8k", "math" or a .jsonl/.parquet file path)
    for `split` ("train" or "test"; a file is its own split). cfg supplies the classroom_* keys.
    Sources joined by "+" ("gsm8k+math", the paper's RL questions) are concatenated."""
    if "+" in source:
        return [problem for part in source.split("+") for problem in load_problems(part, split, cfg)]
    if source == "classroom":
        size = cfg.classroom_train_size if split == "train" else cfg.classroom_test_size
        return classroom_problems(split, size, cfg.classroom_seed, Difficulty.from_config(cfg))
    if source in ("gsm8k", "math"):
        return problems_from_hub(source, split)
    if source.endswith((".jsonl", ".parquet")):
        return problems_from_file(source)
    raise BadInput(f"unknown problem source {source!r}: use 'classroom', 'gsm8k', 'math' "
                   "or the path of a .jsonl / .parquet file of problems")


if __name__ == "__main__":
    from support import config

    cfg = config.main_config()
    problem = load_problems(cfg.train_problems, "train", cfg)[0]
    print(f"[{problem.id}] {problem.question}\n")
    for fmt in FORMATS if problem.program else ("cot",):
        print(f"--- {fmt}\n{render_solution(problem, fmt)}\n")
