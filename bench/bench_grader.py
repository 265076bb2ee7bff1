"""Benchmark: answers graded per second by evaluate.Grader, the RL reward function.

Two workloads shaped like GRPO batches (questions x a group of G sampled responses, many
responses of one group repeating an answer):
- gsm8k: numeric answers ("#### 72", "The answer is 1,250.", "\\boxed{72.0}"): decided in the
  parent process without sympy;
- math: LaTeX answers (fractions, radicals, intervals, sets, expressions) in \\boxed{}, in
  equivalent or wrong forms: every distinct pair goes through math-verify in the workers.
Each workload grades two fresh batches: the second shows the rate once the workers are warm
(math-verify's parser builds its tables lazily), as they are after the first steps of RL.

    python bench/bench_grader.py [--questions=64] [--group=16] [--workers=0]
"""

import argparse
import os
import random
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from evaluate import Grader  # noqa: E402

# (gold, equivalent forms, wrong forms) with random integers a, b, c filled in
MATH_TEMPLATES = [
    ("\\frac{{{a}}}{{{b}}}", ["\\dfrac{{{a}}}{{{b}}}", "{a}/{b}", "\\frac{{{a2}}}{{{b2}}}"], ["\\frac{{{b}}}{{{a}}}", "{a}/{c}"]),
    ("{a}\\sqrt{{{b}}}", ["\\sqrt{{{a_sq_b}}}", "{a} \\sqrt{{{b}}}"], ["{b}\\sqrt{{{a}}}", "\\sqrt{{{c}}}"]),
    ("({a}, {c}]", ["({a},{c}]", "\\left({a}, {c}\\right]"], ["[{a}, {c}]", "({a}, {c})"]),
    ("\\{{{a}, {c}\\}}", ["\\{{{c}, {a}\\}}", "{a}, {c}"], ["\\{{{a}\\}}", "\\{{{a}, {b}, {c}\\}}"]),
    ("x^2 + {two_a}x + {a_sq}", ["(x+{a})^2", "x^2+{two_a}x+{a_sq}"], ["x^2 + {a_sq}", "(x-{a})^2"]),
    ("\\frac{{{a}\\pi}}{{{b}}}", ["{a}\\pi/{b}", "\\frac{{{a}}}{{{b}}}\\pi"], ["\\frac{{{c}\\pi}}{{{b}}}", "{a}"]),
    ("-\\frac{{{a}}}{{{b}}}", ["\\frac{{-{a}}}{{{b}}}", "-{a}/{b}"], ["\\frac{{{a}}}{{{b}}}", "-{c}"]),
]


def gsm8k_batch(rng, n_questions, group):
    responses, golds = [], []
    for _ in range(n_questions):
        gold = rng.randint(1, 5000)
        for _ in range(group):
            answer = gold if rng.random() < 0.5 else gold + rng.choice([-10, -1, 1, 2, 100])
            template = rng.choice(["Adding up, {a} + 0 = {a}.\n#### {c}", "So in all: {c}. The answer is {c}.",
                                   "The total is \\boxed{{{a}.0}}."])
            responses.append(template.format(a=answer, c=f"{answer:,}"))
            golds.append(str(gold))
    return responses, golds


def math_batch(rng, n_questions, group):
    responses, golds = [], []
    for _ in range(n_questions):
        gold, right, wrong = rng.choice(MATH_TEMPLATES)
        a, b = rng.randint(2, 40), rng.choice([3, 5, 7, 11, 13])
        values = dict(a=a, b=b, c=a + rng.randint(1, 9), a2=2 * a, b2=2 * b, a_sq_b=a * a * b, two_a=2 * a, a_sq=a * a)
        for _ in range(group):
            form = rng.choice(right) if rng.random() < 0.5 else rng.choice(wrong)
            responses.append(f"Simplifying step by step, we get \\boxed{{{form.format(**values)}}}.")
            golds.append(gold.format(**values))
    return responses, golds


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--questions", type=int, default=64)
    parser.add_argument("--group", type=int, default=16)
    parser.add_argument("--workers", type=int, default=0, help="0 = one per CPU core, at most 8")
    args = parser.parse_args()
    rng = random.Random(0)
    start = time.perf_counter()
    with Grader(n_workers=args.workers) as grader:
        print(f"{len(grader.workers)} workers started in {time.perf_counter() - start:.2f} s")
        for name, make_batch in [("gsm8k", gsm8k_batch), ("math", math_batch)]:
            for attempt in ("first batch", "second batch"):
                responses, golds = make_batch(rng, args.questions, args.group)
                distinct = len(set(zip(responses, golds)))
                start = time.perf_counter()
                rewards = grader.grade(responses, golds)
                seconds = time.perf_counter() - start
                print(f"{name:6s} {attempt}: {len(responses)} answers ({distinct} distinct) in {seconds:.2f} s "
                      f"= {len(responses) / seconds:,.0f} answers/s, mean reward {sum(rewards) / len(rewards):.2f}")


if __name__ == "__main__":
    main()
