"""Tests for evaluate.py and support/grading.py: answer extraction, equivalence, the grading pool,
pass@k, maj@k, prompts, and evaluation with a scripted model (programs and tool rounds in the
sandbox, whose hostile programs are tests/test_sandbox.py's)."""

import itertools
import json
import math
import os
import subprocess
import sys
import time

import pytest
import torch

import evaluate
from evaluate import Grader, majority_answer, pass_at_k
from model import Generation, ModelArgs, Transformer
from support import config, grading, tasks
from support.fileio import BadInput, read_jsonl, write_jsonl
from support.grading import extract_answer
from support.tasks import POT_SUFFIX
from support.tokenizer import COT_SUFFIX, chat_prompt, train_bpe

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

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
    ("#### Step 1: Add\n3 + 4 = 7\n#### Step 2: Conclude\nThe answer is 7.", "7"),  # markdown headings
    ("She has 3 + 4 = 7 apples. The answer is 7.", "7"),
    ("The answer is: 3.5", "3.5"),
    ("Final Answer: The final answer is $\\frac{1}{2}$. I hope it is correct.", "\\frac{1}{2}"),
    ("The answer is 18 dollars.", "18 dollars"),
    ("The answer is $15, because $20 - $5 = $15.", "15"),  # money, not a $...$ span
    ("The answer is $40 - $10 = $30.", "30"),
    ("The answer is $18.", "18"),
    ("The answer is $15$.", "15"),
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
    ("10 million", "10", False),  # a scale, not a unit
    ("3 thousand", "3", False),
    ("3 pi", "3", False),
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


def test_a_too_long_answer_is_unequal_on_either_side_without_parsing():
    """maj@k compares two model answers, so the long one may stand as the gold: it is refused
    there too, before math-verify spends seconds on it."""
    long = "x" * 50_000
    start = time.monotonic()
    assert not grading.answers_equal("5", long) and not grading.answers_equal(long, "5")
    assert not grading.needs_math_verify("5", long)
    assert time.monotonic() - start < 0.5


def test_answers_equal_in_the_main_thread_agrees_with_the_pool():
    for answer, gold, equal in PAIRS[::10]:
        assert grading.answers_equal(answer, gold) == equal, (answer, gold)


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
    assert majority_answer(answers, grading.answers_equal) == "\\frac{1}{2}"  # 3 votes, "3" has 2
    assert majority_answer(["2", "5", "5.0", "2"], grading.answers_equal) == "2"  # tie: formed first
    assert majority_answer([None, None], grading.answers_equal) is None


# ---------------------------------------------------------------- prompts


def test_prompts_chat_template_and_few_shot_formats(tiny_tokenizer):
    cfg = config.load_config([])
    question = "Ann has 3 pens and buys 4 more. How many pens does she have?"

    def prompt(*args):
        ids = evaluate.make_prompt(tiny_tokenizer, question, *args)
        assert ids[0] == tiny_tokenizer.bos_id
        return tiny_tokenizer.decode(ids[1:])

    assert prompt("chat", "cot", "gsm8k", []) == chat_prompt(question, COT_SUFFIX)
    assert prompt("chat", "pot", "gsm8k", []).endswith(POT_SUFFIX + "\n\nAssistant:")
    gsm8k = prompt("fewshot", "cot", "gsm8k", evaluate.fewshot_exemplars("gsm8k", "cot", 8, cfg))
    assert gsm8k.startswith("Q: There are 15 trees") and gsm8k.count("\nA: ") == 8 and gsm8k.endswith(f"Q: {question}\nA:")
    math_prompt = prompt("fewshot", "cot", "math", evaluate.fewshot_exemplars("math", "cot", 4, cfg))
    assert math_prompt.count("Problem:\n") == 5 and math_prompt.endswith(f"Problem:\n{question}\n\nSolution:\n")
    classroom = evaluate.fewshot_exemplars("classroom", "pot", 3, cfg)
    assert len(classroom) == 3 and all(not tasks.is_test_question(q) and "```python" in a for q, a in classroom)
    with pytest.raises(BadInput, match="eval_format=cot"):
        evaluate.fewshot_exemplars("gsm8k", "pot", 8, cfg)
    with pytest.raises(BadInput, match="eval_shots=10: the gsm8k few-shot prompt has 8 solved examples"):
        evaluate.fewshot_exemplars("gsm8k", "cot", 10, cfg)
    assert evaluate.task_style("x.jsonl", [tasks.Problem("1", "q", "2", meta={"level": "Level 3"})]) == "math"


def test_tasks_that_would_write_one_file_are_refused(tmp_path):
    cfg = config.load_config(["--eval_checkpoint=x", "--eval_tasks=['gsm8k/test.jsonl', 'math/test.jsonl']"])
    with pytest.raises(BadInput, match="share the name 'test'"):
        evaluate.check_eval_config(cfg)


@pytest.mark.parametrize("output,answer", [
    ("3*sqrt(2)\n", "3*sqrt(2)"),  # the last number would be 2
    ("step 1\n1e-05\n", "0.00001"),  # the last number would be 05, which equals 5
    ("-2.5e+3\n", "-2500"),
    ("1.23e-07\n", "0.000000123"),  # float's 6 decimals would round it to 0
    ("(1, 2)\n", "(1, 2)"),
    ("x = 3\n", "x = 3"),
    ("The total is 42.\n", "42"),
    ("\\boxed{7}\n", "7"),
    ("42\ndone\n", "42"),  # a last line with no answer: the whole output's
    ("\n\n", None),
])
def test_a_program_answers_with_its_last_printed_line(output, answer):
    assert evaluate.program_answer(output) == answer


# ---------------------------------------------------------------- evaluation with a scripted model


@pytest.fixture(scope="module")
def tiny_tokenizer():
    problems = tasks.classroom_problems("train", 100, 1234)
    return train_bpe([p.question + " " + tasks.render_solution(p, f) for p in problems for f in tasks.FORMATS], 400)


@pytest.fixture
def scripted(tiny_tokenizer, monkeypatch):
    """evaluate_model with generate() replaced by a script: script(context_text, temperature)
    returns what the 'model' writes next (the prompts, tool rounds and grading are real)."""

    def use(script, problems, task="tests", **keys):
        def fake_generate(model, prompts, max_new_tokens, temperature=1.0, eos_id=None,
                          stop_sequences=(), generator=None, compile=False):
            eos_id = eos_id[0]  # evaluate passes the tokenizer's list of end ids
            rows = []
            for prompt in prompts:
                ids = tiny_tokenizer.encode(script(tiny_tokenizer.decode(prompt), temperature))[:max_new_tokens]
                paused = tiny_tokenizer.decode(ids).endswith(evaluate.OUTPUT_MARKER)
                rows.append(ids + ([] if paused else [eos_id]))
            n = max(len(row) for row in rows)
            tokens = torch.tensor([row + [eos_id] * (n - len(row)) for row in rows])
            mask = torch.arange(n)[None, :] < torch.tensor([len(row) for row in rows])[:, None]
            return Generation(tokens, mask, torch.zeros(len(rows), dtype=torch.bool))

        monkeypatch.setattr(evaluate, "generate", fake_generate)
        args = ModelArgs(vocab_size=tiny_tokenizer.n_vocab, dim=16, n_layer=1, n_head=2, n_kv_head=2,
                         intermediate_size=32, max_seq_len=2048, bos_id=tiny_tokenizer.bos_id, eos_id=tiny_tokenizer.eos_id)
        overrides = [f"--{key}={value}" for key, value in keys.items()]
        cfg = config.load_config(["--device=cpu", "--grader_workers=1", *overrides])
        return evaluate.evaluate_model(Transformer(args), tiny_tokenizer, problems, cfg, task=task)

    return use


def test_tool_integrated_rounds_run_the_code_and_read_its_output_back(scripted):
    def script(context, temperature):
        if "```output\n42\n```" in context:
            return " So the answer is \\boxed{42}."
        if "TimeoutError" in context:
            return " The program hung, so I guess \\boxed{0}."
        if "forever" in context:
            return " Let me loop.\n```python\nwhile True:\n    pass\n```\n```output"
        return " Let me compute.\n```python\nprint(6 * 7)\n```\n```output"

    problems = [tasks.Problem("a", "What is 6 times 7?", "42"), tasks.Problem("b", "Loop forever.", "1")]
    result = scripted(script, problems, eval_format="tool", eval_program_timeout=1.0)
    first, second = result.records
    assert first["greedy"]["text"].endswith("```output\n42\n```\n So the answer is \\boxed{42}.")
    assert first["greedy"]["correct"] and not second["greedy"]["correct"] and second["greedy"]["answer"] == "0"
    assert result.metrics["greedy"] == 0.5 and result.metrics["no_answer"] == 0.0


def test_a_few_shot_cut_skips_the_blank_lines_of_a_tool_output(scripted):
    """A program that prints nothing inserts "\\n\\n```": the few-shot cut at the next blank line
    must not fall there, before the model's answer, but after it, where the model invents a problem."""
    def script(context, temperature):
        if context.endswith("```output\n\n```\n"):
            return " So the answer is \\boxed{7}.\n\nQ: An invented problem?"
        return " Let me compute.\n```python\nx = 3 + 4\n```\n```output"

    problems = [tasks.Problem("a", "What is 3 plus 4?", "7")]
    result = scripted(script, problems, task="classroom", eval_mode="fewshot", eval_format="tool")
    greedy = result.records[0]["greedy"]
    assert greedy["text"].endswith("```output\n\n```\n So the answer is \\boxed{7}.") and greedy["correct"]
    assert evaluate.cut_at_stop("a\n\nb\n\nc", "\n\n", [(1, 4)]) == "a\n\nb"
    assert evaluate.cut_at_stop("a\n\nb", "\n\n", []) == "a" and evaluate.cut_at_stop("ab", "\n\n", []) == "ab"


def test_program_of_thought_grades_what_the_program_prints(scripted):
    def script(context, temperature):
        if "secret" in context:
            return " ```python\nimport os\nprint(os.environ['HOME'])\n```"
        return " ```python\nprint(sum([20, 22]))\n```"

    problems = [tasks.Problem("a", "Add 20 and 22.", "42"), tasks.Problem("b", "Print a secret.", "1")]
    result = scripted(script, problems, eval_format="pot")
    assert [r["greedy"]["correct"] for r in result.records] == [True, False]
    assert result.records[0]["greedy"]["program_output"] == "42\n"
    assert "KeyError" in result.records[1]["greedy"]["program_output"] and result.records[1]["greedy"]["answer"] is None


def test_few_shot_stops_on_any_token_holding_a_blank_line():
    """A BPE trained on few-shot text merges the blank line with what precedes it (".\n\n"):
    that token must end a row too, or a row runs on to max_new_tokens."""
    tokenizer = train_bpe(["Q: One?\nA: The answer is 1.\n\nQ: Two?\nA: 2.\n\n"] * 50, 270)
    stops = evaluate.stop_sequences(tokenizer, "\n\n")
    assert stops[0] == tokenizer.encode("\n\n")
    assert all(len(seq) == 1 and "\n\n" in tokenizer.decode(seq) for seq in stops[1:])
    merged = tokenizer.encode("The answer is 1.\n\nQ:")
    assert "\n\n" in tokenizer.decode(merged[-3:-2]) and merged[-3:-2] in stops  # the ".\n\n" token


def test_few_shot_responses_are_cut_and_samples_voted_by_equivalence(scripted):
    votes = itertools.cycle(["\\frac{1}{2}", "0.5", "3", "1/2", "3"])

    def script(context, temperature):
        assert context.count("\nA: ") == 2 and context.endswith("Q: Halve one.\nA:")
        answer = next(votes) if temperature > 0 else "0.5"
        # the base model goes on with a problem of its own, not always after a "Q:"
        return f" Half of 1 is {answer}. The answer is {answer}.\n\nExample 3. Something made up?\nThe answer is 9."

    result = scripted(script, [tasks.Problem("a", "Halve one.", "0.5")], eval_mode="fewshot", eval_shots=2, eval_k=5)
    record = result.records[0]
    assert record["greedy"]["text"] == "Half of 1 is 0.5. The answer is 0.5." and record["greedy"]["correct"]
    assert [s["correct"] for s in record["samples"]] == [True, True, False, True, False]
    assert record["majority_correct"]  # {1/2, 0.5, 1/2}: 3 votes; by string "3" would win with 2
    assert result.metrics == {"problems": 1, "sampled_problems": 1, "greedy": 1.0, "maj@5": 1.0, "pass@5": 1.0, "pass@1": 0.6,
                              "no_answer": 0.0, "truncated": 0.0}


# ---------------------------------------------------------------- the script, end to end


def test_gsm8k_and_math_files_evaluate_end_to_end_under_torchrun(tiny_tokenizer, tmp_path):
    """Two processes (gloo) split the problems and rank 0 writes every graded response."""
    checkpoint = tmp_path / "sft" / "ckpt"  # results go under the stage's name: eval/sft
    torch.manual_seed(0)
    args = ModelArgs(vocab_size=tiny_tokenizer.n_vocab, dim=32, n_layer=1, n_head=2, n_kv_head=2,
                     intermediate_size=64, max_seq_len=256, bos_id=tiny_tokenizer.bos_id, eos_id=tiny_tokenizer.eos_id)
    Transformer(args).save_pretrained(str(checkpoint))
    tiny_tokenizer.save(str(checkpoint / "tokenizer.tiktoken"))
    gsm8k = [{"question": f"Tom has {i} apples and buys 3 more. How many does he have?",
              "answer": f"He has {i} + 3 = <<{i}+3={i + 3}>>{i + 3} apples.\n#### {i + 3}"} for i in range(5)]
    math = [{"problem": f"Simplify $\\frac{{{i}}}{{{2 * i}}}$.", "solution": "It is $\\boxed{\\frac{1}{2}}$.",
             "level": "Level 1", "type": "Prealgebra"} for i in range(1, 4)]
    write_jsonl(str(tmp_path / "gsm8k_test.jsonl"), gsm8k)
    write_jsonl(str(tmp_path / "math_test.jsonl"), math)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "evaluate.py",
               f"--eval_checkpoint={checkpoint}", f"--out_dir={tmp_path}", "--device=cpu", "--grader_workers=1",
               f"--eval_tasks={[str(tmp_path / 'gsm8k_test.jsonl'), str(tmp_path / 'math_test.jsonl')]}",
               "--eval_k=2", "--eval_max_new_tokens=8", "--eval_batch_size=2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "gsm8k_test" in run.stdout and "maj@2" in run.stdout
    metrics = json.load(open(tmp_path / "eval" / "sft" / "metrics.json"))["metrics"]
    assert metrics["gsm8k_test"]["problems"] == 5 and metrics["math_test"]["problems"] == 3
    records = read_jsonl(str(tmp_path / "eval" / "sft" / "gsm8k_test.jsonl"))
    assert [(r["index"], r["gold"], len(r["samples"])) for r in records] == [(i, str(i + 3), 2) for i in range(5)]


def test_evaluate_names_a_missing_checkpoint(tmp_path):
    run = subprocess.run([sys.executable, "evaluate.py", f"--out_dir={tmp_path}"], cwd=ROOT, capture_output=True, text=True)
    assert run.returncode != 0 and "--eval_checkpoint=FOLDER" in run.stderr
