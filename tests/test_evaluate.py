"""Tests for evaluate.py: answer extraction, equivalence, the grading pool, pass@k, maj@k, and
the program sandbox (hostile programs are contained and score 0 while evaluation goes on)."""

import itertools
import math
import os
import time

import pytest

import evaluate
from evaluate import Grader, extract_answer, majority_answer, pass_at_k, run_program, run_programs

# ---------------------------------------------------------------- extraction

EXTRACTIONS = [
    ("so the total is \\boxed{42}.", "42"),
    ("\\boxed{\\frac{1}{2}}", "\\frac{1}{2}"),
    ("nested: \\boxed{\\left\\{ \\frac{a}{b}, \\sqrt{2} \\right\\}} done", "\\left\\{ \\frac{a}{b}, \\sqrt{2} \\right\\}"),
    ("first \\boxed{1}, then corrected: \\boxed{2}", "2"),
    ("\\boxed{7} and then the output was cut off \\boxed{\\frac{3", "7"),
    ("$\\boxed 5$", "5"),
    ("\\fbox{x+1}", "x+1"),
    ("Natalia sold 48/2 = 24 clips in May.\n#### 72", "72"),
    ("#### 1,234", "1,234"),
    ("She has 3 + 4 = 7 apples. The answer is 7.", "7"),
    ("The answer is: 3.5", "3.5"),
    ("Final Answer: The final answer is $\\frac{1}{2}$. I hope it is correct.", "\\frac{1}{2}"),
    ("The answer is 18 dollars.", "18 dollars"),
    ("She has 12 left, so she gets 2.5 more, then -3", "-3"),
    ("from 5-3 we get 2 and then 10-4", "4"),
    ("the range [1,5]-2", "2"),
    ("In total 1,500 people came.", "1,500"),
    ("I do not know.", None),
    ("", None),
    ("\\boxed{} and nothing else", None),
]


@pytest.mark.parametrize("text,answer", EXTRACTIONS)
def test_extract_answer(text, answer):
    assert extract_answer(text) == answer


# ---------------------------------------------------------------- equivalence: (answer, gold, equal)

PAIRS = [
    # GSM8K style: plain numbers
    ("72", "72", True),
    ("72.0", "72", True),
    ("72.00", "72", True),
    ("072", "72", True),
    ("1,000", "1000", True),
    ("1000", "1,000", True),
    ("1,234,567", "1234567", True),
    ("1,234,567.5", "1234567.5", True),
    ("-5", "-5", True),
    ("-5", "5", False),
    ("5", "-5", False),
    ("0", "-0", True),
    ("0.5", ".5", True),
    ("3.14", "3.140", True),
    ("3.14", "3.15", False),
    ("12", "12.5", False),
    ("100", "1000", False),
    ("1,000", "100", False),
    ("18", "18.01", False),
    ("18.", "18", True),
    ("$18", "18", True),
    ("\\$18", "18", True),
    ("\\$18.00", "18", True),
    ("$18.50", "18.5", True),
    ("-$5", "-5", True),
    ("18 dollars", "18", True),
    ("5 apples", "5", True),
    ("20 minutes", "20", True),
    ("20 minutes", "30", False),
    ("7 cm", "7", True),
    ("5\\text{ cm}", "5", True),
    ("5 \\text{cm}", "5", True),
    ("10\\text{ meters}", "10", True),
    ("90^\\circ", "90", True),
    ("90^{\\circ}", "90", True),
    ("45^\\circ", "90", False),
    ("10\\%", "10", True),
    ("25\\%", "25", True),
    ("25\\%", "30", False),
    ("1{,}000", "1000", True),
    ("1\\,000", "1000", True),
    ("2.5", "5/2", True),
    ("0.25", "\\frac{1}{4}", True),
    ("0.2", "\\frac{1}{4}", False),
    ("-0.5", "-\\frac{1}{2}", True),
    ("0.5", "-\\frac{1}{2}", False),
    ("1000000", "10^6", True),
    ("10^{10}", "10000000000", True),
    ("999999", "10^6", False),
    # MATH style: fractions
    ("\\frac{1}{2}", "\\frac{1}{2}", True),
    ("\\frac12", "\\frac{1}{2}", True),
    ("\\dfrac{1}{2}", "\\frac{1}{2}", True),
    ("\\tfrac{1}{2}", "\\frac{1}{2}", True),
    ("1/2", "\\frac{1}{2}", True),
    ("2/4", "\\frac{1}{2}", True),
    ("\\frac{2}{4}", "\\frac{1}{2}", True),
    ("\\frac{1}{3}", "\\frac{1}{2}", False),
    ("\\frac{3}{4}", "\\frac{4}{3}", False),
    ("-\\frac{3}{4}", "\\frac{-3}{4}", True),
    ("\\frac{-3}{4}", "-\\frac34", True),
    ("\\frac{3}{-4}", "\\frac{3}{4}", False),
    ("\\frac{9}{4}", "2.25", True),
    ("2\\frac{1}{4}", "\\frac{9}{4}", True),
    ("\\frac{1}{3}", "0.333", False),
    ("\\frac{22}{7}", "\\pi", False),
    # radicals, pi, symbolic
    ("\\sqrt{12}", "2\\sqrt{3}", True),
    ("2\\sqrt3", "2\\sqrt{3}", True),
    ("\\sqrt{2}/2", "\\frac{\\sqrt{2}}{2}", True),
    ("\\frac{1}{\\sqrt{2}}", "\\frac{\\sqrt{2}}{2}", True),
    ("\\sqrt{3}", "\\sqrt{2}", False),
    ("3\\sqrt{2}", "\\sqrt{18}", True),
    ("3\\sqrt{2}", "\\sqrt{6}", False),
    ("\\pi", "\\pi", True),
    ("2\\pi", "\\pi", False),
    ("\\frac{\\pi}{2}", "\\pi/2", True),
    ("3.14", "\\pi", False),
    ("4\\pi", "4 \\pi", True),
    ("\\sqrt[3]{8}", "2", True),
    ("2^{10}", "1024", True),
    ("2^{10}", "1000", False),
    ("e^2", "e^{2}", True),
    ("\\log_2 8", "3", True),
    # expressions and equations
    ("x^2+2x+1", "(x+1)^2", True),
    ("(x+1)^2", "x^2+1", False),
    ("2x+3", "3+2x", True),
    ("2x+3", "2x-3", False),
    ("x=3", "3", True),
    ("y = 2x + 1", "2x+1", True),
    ("x = 5", "4", False),
    ("\\frac{x}{2}", "0.5x", True),
    ("a+b", "b+a", True),
    ("6x^2", "6x^3", False),
    # sets, intervals, tuples, lists
    ("\\{1,2,3\\}", "\\{3,2,1\\}", True),
    ("\\{1,2\\}", "\\{1,2,3\\}", False),
    ("1, 2, 3", "3, 2, 1", True),
    ("1,2", "1,3", False),
    ("(1,2]", "(1,2]", True),
    ("(1,2)", "[1,2]", False),
    ("[1,2)", "(1,2]", False),
    ("(-\\infty, 3)", "(-\\infty,3)", True),
    ("(-\\infty, 3]", "(-\\infty, 3)", False),
    ("[2, \\infty)", "[2,\\infty)", True),
    ("(-\\infty,0)\\cup(1,\\infty)", "(-\\infty, 0) \\cup (1, \\infty)", True),
    ("(1, 2)", "(2, 1)", False),
    ("\\left( 3, \\frac{\\pi}{2} \\right)", "(3,\\frac{\\pi}{2})", True),
    ("(3, 4)", "(3, 5)", False),
    ("\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}", "\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}", True),
    ("\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}", "\\begin{pmatrix} 2 \\\\ 1 \\end{pmatrix}", False),
    # text, choices, infinity, complex numbers
    ("\\text{(A)}", "A", True),
    ("(B)", "B", True),
    ("\\text{B}", "C", False),
    ("\\infty", "\\infty", True),
    ("-\\infty", "\\infty", False),
    ("3+4i", "4i+3", True),
    ("3-4i", "3+4i", False),
    ("\\text{odd}", "\\text{odd}", True),
    ("\\text{even}", "\\text{odd}", False),
    # LaTeX dressing
    ("\\left(\\frac{1}{2}\\right)", "\\frac{1}{2}", True),
    ("\\displaystyle \\frac{1}{2}", "\\frac{1}{2}", True),
    ("\\mathbf{5}", "5", True),
    ("\\,5", "5", True),
    ("−5", "-5", True),
    ("5\\!", "5", True),
    ("x + 2 y", "x + 2", False),
    ("5 x", "5", False),
    # near misses
    ("1,001", "1001.5", False),
    ("0.1", "0.01", False),
    ("1/4", "4", False),
    ("\\frac{1}{4}", "\\frac{1}{5}", False),
    ("x^2", "x^3", False),
    ("2x", "x^2", False),
    ("\\sqrt{2}", "2", False),
    ("(0, 1)", "(0, 1]", False),
    ("\\{1\\}", "1, 2", False),
    ("5\\text{ cm}", "6", False),
    ("10\\%", "20", False),
    ("-\\frac{1}{2}", "\\frac{1}{2}", False),
    ("1.5", "15", False),
    ("150", "15", False),
    ("\\pi/2", "\\pi/3", False),
]


@pytest.fixture(scope="module")
def grader():
    with Grader(n_workers=2) as grader:
        yield grader


def test_answer_pairs_table(grader):
    assert len(PAIRS) >= 100
    assert sum(equal for _, _, equal in PAIRS) >= 40 and sum(not equal for _, _, equal in PAIRS) >= 40
    results = grader.check([answer for answer, _, _ in PAIRS], [gold for _, gold, _ in PAIRS])
    wrong = [(answer, gold, equal) for (answer, gold, equal), result in zip(PAIRS, results) if result != equal]
    assert wrong == []


def test_answers_equal_in_the_main_thread_agrees_with_the_pool():
    for answer, gold, equal in PAIRS[::10]:
        assert evaluate.answers_equal(answer, gold) == equal, (answer, gold)


def test_grade_extracts_then_checks(grader):
    responses = [
        "48/2 = 24 in May, 48 + 24 = 72 in all.\n#### 72",
        "The area is half of 1 so \\boxed{\\dfrac{1}{2}}.",
        "The answer is 0.5.",
        "I give up.",
        "The answer is 71.",
    ]
    golds = ["72", "0.5", "\\frac{1}{2}", "3", "72"]
    assert grader.grade(responses, golds) == [1.0, 1.0, 1.0, 0.0, 0.0]
    with pytest.raises(ValueError, match="2 answers but 1 gold"):
        grader.check(["1", "2"], ["1"])


def test_a_stalled_worker_is_killed_and_replaced(monkeypatch):
    """A computation that never returns to Python (so math-verify's alarm cannot stop it) scores
    0 after the stall limit, and the other answers and later calls are graded normally."""
    real_answers_equal = evaluate.answers_equal

    def stalls_on_hang(answer, gold, timeout=3):
        if answer == "HANG":
            time.sleep(3600)  # the workers are forked after this patch, so they inherit it
        return real_answers_equal(answer, gold, timeout)

    monkeypatch.setattr(evaluate, "answers_equal", stalls_on_hang)
    with Grader(n_workers=1, timeout=1) as grader:
        start = time.monotonic()
        assert grader.check(["\\frac12", "HANG", "\\sqrt{4}"], ["0.5", "x", "2"]) == [True, False, True]
        assert time.monotonic() - start < grader.stall_limit + 5
        assert grader.check(["\\frac{2}{4}"], ["\\frac12"]) == [True]


# ---------------------------------------------------------------- metrics


def test_pass_at_k_matches_enumeration_of_all_k_subsets():
    for n in range(1, 8):
        for c in range(n + 1):
            samples = [True] * c + [False] * (n - c)
            for k in range(1, n + 1):
                subsets = list(itertools.combinations(samples, k))
                expected = sum(any(subset) for subset in subsets) / len(subsets)
                assert pass_at_k(n, c, k) == pytest.approx(expected, abs=1e-12), (n, c, k)


def test_pass_at_k_is_stable_for_large_n_and_rejects_bad_counts():
    assert pass_at_k(1000, 1, 1) == pytest.approx(0.001)
    assert pass_at_k(1000, 10, 100) == pytest.approx(1 - math.comb(990, 100) / math.comb(1000, 100))
    with pytest.raises(ValueError, match="k <= n"):
        pass_at_k(4, 1, 5)


def test_majority_vote_groups_equivalent_answers_not_strings():
    answers = ["3", "\\frac{1}{2}", "0.5", "3", "1/2", None, None, None]
    assert majority_answer(answers, evaluate.answers_equal) == "\\frac{1}{2}"  # 3 votes, "3" has 2
    assert majority_answer(["2", "5", "5.0", "2"], evaluate.answers_equal) == "2"  # tie: formed first
    assert majority_answer([None, None], evaluate.answers_equal) is None


# ---------------------------------------------------------------- the sandbox


def program_score(result, gold, grader):
    return grader.grade([result.output if result.ok else ""], [gold])[0]


def test_a_program_runs_and_its_printed_answer_is_graded(grader):
    result = run_program("import sympy\nprint(sympy.Rational(3, 4) + sympy.Rational(1, 4) * 3)")
    assert result.ok and result.output == "3/2\n"
    assert program_score(result, "1.5", grader) == 1.0
    crashed = run_program("print(1 / 0)")
    assert not crashed.ok and "ZeroDivisionError" in crashed.output and "_sandboxed_main" not in crashed.output


def test_working_directory_is_private_and_temporary():
    result = run_program("import os\nopen('notes.txt', 'w').write('hi')\nprint(os.getcwd(), open('notes.txt').read())")
    folder, text = result.output.split()
    assert result.ok and text == "hi" and not os.path.exists(folder)


def test_output_is_truncated():
    result = run_program("print('x' * 100000)", max_output_chars=100)
    assert result.ok and result.output.startswith("x" * 100) and result.output.endswith("[... output truncated]")


def test_no_environment_secrets(monkeypatch, grader):
    monkeypatch.setenv("SECRET_TOKEN", "42")
    result = run_program("import os\nprint(os.environ.get('SECRET_TOKEN', 'none'))")
    assert result.output == "none\n" and program_score(result, "42", grader) == 0.0
    if "landlock" in evaluate.sandbox_layers():  # nor through another process's /proc/PID/environ
        result = run_program(f"print(open('/proc/{os.getpid()}/environ', 'rb').read())")
        assert not result.ok and "SECRET_TOKEN" not in result.output


def fork_is_blocked():
    result = run_program("import os\nn = 0\ntry:\n    for _ in range(5):\n        if os.fork() == 0:\n"
                         "            os._exit(0)\n        n += 1\nexcept OSError:\n    pass\nprint(n)", timeout=5)
    return result.output == "0\n"


def test_hostile_programs_are_contained_and_score_zero_while_the_rest_is_graded(tmp_path, grader):
    """Each hostile program prints the gold answer 42 only if its attack got through."""
    if not fork_is_blocked():  # a bounded probe first: never start a real fork bomb unguarded
        pytest.skip("this machine's sandbox cannot block fork (no seccomp, running as root)")
    outside = tmp_path / "escaped.txt"
    programs = {
        "good": "print(6 * 7)",
        "infinite loop": "while True:\n    pass\nprint(42)",
        "sleeps past the timeout": "import time\ntime.sleep(60)\nprint(42)",
        "fork bomb": "import os\nwhile True:\n    os.fork()\nprint(42)",
        "10 GB allocation": "x = bytearray(10 * 1024 ** 3)\nprint(42)",
        "network": "import socket\nsocket.create_connection(('1.1.1.1', 53), timeout=1)\nprint(42)",
        "crash": "import sys\nsys.setrecursionlimit(10 ** 6)\nf = lambda n: f(n + 1)\nf(0)\nprint(42)",
    }
    if "landlock" in evaluate.sandbox_layers():
        programs["write outside"] = f"open({str(outside)!r}, 'w').write('x')\nprint(42)"
    start = time.monotonic()
    results = run_programs(list(programs.values()), timeout=2.0, memory_mb=1024)
    assert time.monotonic() - start < 30
    scores = {name: program_score(result, "42", grader) for name, result in zip(programs, results)}
    assert scores == {name: float(name == "good") for name in programs}
    assert results[1].timed_out and results[2].timed_out
    assert not outside.exists()
