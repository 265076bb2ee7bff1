"""Fuzz test of the grader (support/grading.py through evaluate.Grader): 10,000 random and hostile
responses, from a fixed seed, each graded to a float in [0, 1] within a time bound, never an
exception. The grader is the RL reward function: a response that made it raise or hang would stop
training, and one that made it slow would stall every step.

    pytest -q tests/test_grader_fuzz.py
"""

import random
import re
import time

import pytest

from evaluate import Grader
from support.grading import extract_answer, last_boxed

N_STRINGS = 10_000
SEED = 20240205
PIECES = ["\\boxed{", "\\boxed", "\\fbox{", "{", "}", "\\frac", "\\sqrt", "$", "$$", "####", "The answer is ",
          "answer is: ", "-", ",", ".", "/", "^", "=", "x", "e", " ", "\n", "\x00", "\ud800", "\udfff", "\\left(",
          "\\right)", "\\text{", "1,000", "0.5", "3/4", "\\infty", "\\pi", "10^{10}", "\\\\", "é", "🙂", "\t"]


def hostile(rng):
    """One string from a family of inputs that broke graders: huge numbers, deep nesting,
    unclosed braces, NUL bytes, lone surrogates, invalid UTF-8, long lines."""
    kind = rng.randrange(10)
    n = rng.choice([1, 10, 100, 1000, 5000])
    if kind == 0:
        return "".join(rng.choice(PIECES) for _ in range(rng.randrange(1, 60)))
    if kind == 1:
        return "\\boxed{" + "".join(rng.choice("0123456789") for _ in range(n)) + "}" * rng.randrange(2)
    if kind == 2:
        return f"The answer is {'9' * n}." if rng.random() < 0.5 else f"#### {'1,' * n}0"
    if kind == 3:
        return "\\boxed{" + "{" * n + rng.choice(["1", "x", ""]) + "}" * rng.randrange(n + 2)
    if kind == 4:
        return "\\boxed{" * n + rng.choice(["", "7", "\\boxed{3}"])
    if kind == 5:
        return bytes(rng.randrange(256) for _ in range(rng.randrange(1, 200)))
    if kind == 6:
        return "".join(chr(rng.randrange(0x110000)) for _ in range(rng.randrange(1, 100)))
    if kind == 7:
        return "".join(rng.choice("{}$\\") for _ in range(rng.randrange(1, 2000)))
    if kind == 8:
        return str(rng.randint(-10**6, 10**6)) + rng.choice(["", ".5", "/7", " dollars", "\\%"])
    return "".join(rng.choice("0123456789 +-*/=.,()abc\n") for _ in range(rng.randrange(1, 300)))


MEGABYTE_LINES = [
    "\\boxed{" * 150_000,
    "x" * 10**6 + "\\boxed{42}",
    "\\boxed{" + "}" * 10**6,
    "1," * 500_000,
    "The answer is " + "$" * 500_000 + "a" * 500_000,
    "answer is " * 100_000,
    "{" * 10**6,
    "\x00" * 10**6,
]


@pytest.fixture(scope="module")
def grader():
    with Grader(n_workers=2, timeout=1) as grader:
        yield grader


def test_extraction_is_fast_on_every_string():
    rng = random.Random(SEED)
    slowest = 0.0
    for text in [hostile(rng) for _ in range(N_STRINGS)] + MEGABYTE_LINES:
        start = time.perf_counter()
        answer = extract_answer(text)
        slowest = max(slowest, time.perf_counter() - start)
        assert answer is None or isinstance(answer, str)
    assert slowest < 1.0


def test_every_string_grades_to_a_float_in_time(grader):
    rng = random.Random(SEED)
    responses = [hostile(rng) for _ in range(N_STRINGS)] + MEGABYTE_LINES
    golds = [rng.choice(["42", "0.5", "\\frac{3}{4}", "x^2+1"]) if i % 20 == 0 else "42" for i in range(len(responses))]
    start = time.monotonic()
    rewards = grader.grade(responses, golds)
    assert time.monotonic() - start < 40
    assert len(rewards) == len(responses) and all(type(r) is float and 0.0 <= r <= 1.0 for r in rewards)
    assert rewards[len(responses) - len(MEGABYTE_LINES) + 1] == 1.0  # the box after a megabyte of x


def test_reported_crashes_and_hangs(grader):
    """\\boxed{ and 5,000 digits raised ValueError (Python's int-string limit); 112 KB of
    unclosed \\boxed{ took minutes; a 1 MB response is graded in well under a second."""
    cases = ["\\boxed{" + "9" * 5000 + "}", "\\boxed{" * 16_000, "\\boxed{" * 150_000 + " so \\boxed{42}",
             b"\\boxed{42} \xff\xfe\xc3", "\\boxed{4\ud8002}", "The answer is 42.\x00"]
    start = time.monotonic()
    assert grader.grade(cases, ["42"] * len(cases)) == [0.0, 0.0, 1.0, 1.0, 0.0, 1.0]
    assert time.monotonic() - start < 3


def simple_last_boxed(text):
    """The obvious scan, from each box (last first) to its closing brace: quadratic on many
    unclosed boxes, but plainly right; the reference grading.last_boxed must agree with."""
    for match in reversed(list(re.finditer(r"\\(?:boxed|fbox)\s*", text))):
        start = match.end()
        if text.startswith("{", start):
            depth = 0
            for i in range(start, len(text)):
                depth += {"{": 1, "}": -1}.get(text[i], 0)
                if depth == 0:
                    return text[start + 1:i].strip()
            continue
        token = re.match(r"[^\s$]+", text[start:])
        if token:
            return token.group(0)
    return None


def test_linear_last_boxed_agrees_with_the_simple_scan():
    """grading.last_boxed must find the same box as the simple scan on any mix of boxes and braces."""
    rng = random.Random(SEED)
    pieces = ["\\boxed{", "\\boxed ", "\\fbox{", "\\boxed", "{", "}", "x", "1", " ", "$"]
    for _ in range(5000):
        text = "".join(rng.choice(pieces) for _ in range(rng.randrange(1, 30)))
        assert last_boxed(text) == simple_last_boxed(text), text
