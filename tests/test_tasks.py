import re
import subprocess
import sys

import datasets
import pytest

from support import config, tasks
from support.fileio import BadInput, write_jsonl

# Every operation and frame, including the two-step group ("*") events.
ALL_OPS = tasks.Difficulty(min_steps=1, max_steps=4, max_number=99, ops="+-*")


def run_python(code):
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=30, check=True).stdout.strip()


def test_cot_solutions_box_the_answer_and_every_step_checks():
    for problem in tasks.classroom_problems("train", 200, seed=3, difficulty=ALL_OPS):
        solution = tasks.render_solution(problem, "cot")
        assert tasks.last_boxed(solution) == problem.answer
        lines = solution.split("\n")
        assert len(lines) == len(problem.steps) + 1
        for line, step in zip(lines, problem.steps):
            a, op, b = step.expression.split()  # one equation a op b = c per step
            assert line.endswith(f": {a} {op} {b} = {step.result}.")
            assert eval(step.expression) == int(step.result)  # trusted: our own generator
        assert int(problem.steps[-1].result) == int(problem.answer)


def test_program_of_thought_prints_the_answer():
    problems = tasks.classroom_problems("test", 12, seed=5, difficulty=ALL_OPS)
    for problem in problems:
        block = tasks.render_solution(problem, "pot")
        program = re.fullmatch(r"```python\n(.*)\n```", block, re.S).group(1)
        assert run_python(program) == problem.answer


def test_tool_integrated_outputs_match_execution():
    problems = tasks.classroom_problems("test", 4, seed=7, difficulty=ALL_OPS)
    for problem in problems:
        text = tasks.render_solution(problem, "tool")
        rounds = re.findall(r"```python\n(.*?)\n```\n```output\n(.*?)\n```", text, re.S)
        assert len(rounds) == len(problem.steps) >= 1
        for code, output in rounds:
            assert run_python(code) == output
        assert text.endswith(f"The answer is \\boxed{{{problem.answer}}}.")


def test_step_rewards_credit_correct_steps_and_reject_corrupted_ones():
    problem = tasks.classroom_problems("train", 1, seed=11,
                                       difficulty=tasks.Difficulty(3, 3, 99, "+-"))[0]
    solution = problem.solution
    rewards = tasks.step_rewards(problem, solution)
    assert [r for _, r in rewards] == [1.0] * 4
    assert [solution[:end].rsplit("\n", 1)[-1] for end, _ in rewards] == solution.split("\n")

    # Step 2 gets a wrong result: false arithmetic scores 0, the other steps keep their 1.
    a, op, b = problem.steps[1].expression.split()
    wrong = int(problem.steps[1].result) + 1
    lines = solution.split("\n")
    lines[1] = f"{problem.steps[1].words}: {a} {op} {b} = {wrong}."
    assert [r for _, r in tasks.step_rewards(problem, "\n".join(lines))] == [1, 0, 1, 1]

    # True arithmetic that reaches no reference value, a repeated correct step, a line with no
    # work and a wrong boxed answer all score 0.
    lines = solution.split("\n")
    off_path = f"{a} {op} {b} + 1 = {wrong}"
    response = "\n".join([lines[0], lines[0], "Let me think.", off_path, "\\boxed{-5}"])
    assert [r for _, r in tasks.step_rewards(problem, response)] == [1, 0, 0, 0, 0]


def test_step_rewards_read_gsm8k_notation():
    problem = tasks.gsm8k_problem("weng", "Weng earns $12 an hour ... How much did she earn?",
                                  "Weng earns 12/60 = $<<12/60=0.2>>0.2 per minute.\nWorking 50 "
                                  "minutes, she earned 0.2 x 50 = $<<0.2*50=10>>10.\n#### 10")
    assert problem.solution == ("Weng earns 12/60 = $0.2 per minute.\nWorking 50 minutes, she "
                                "earned 0.2 x 50 = $10.\nThe answer is \\boxed{10}.")
    assert [(s.expression, s.result) for s in problem.steps] == [("12/60", "0.2"), ("0.2*50", "10")]
    assert [r for _, r in tasks.step_rewards(problem, problem.solution)] == [1, 1, 1]
    assert [r for _, r in tasks.step_rewards(problem, "12/60 = 0.3\n0.3 x 50 = 15")] == [0, 0]


def test_train_and_test_are_disjoint_even_across_seeds():
    train = tasks.classroom_problems("train", 3000, seed=1)
    test = tasks.classroom_problems("test", 300, seed=2)
    train_questions = {p.question for p in train}
    assert len(train_questions) == 3000 and len({p.question for p in test}) == 300
    assert not train_questions & {p.question for p in test}


def test_generation_is_deterministic_and_follows_the_difficulty():
    difficulty = tasks.Difficulty(min_steps=2, max_steps=3, max_number=50, ops="+-")
    first = tasks.classroom_problems("train", 300, seed=9, difficulty=difficulty)
    assert first == tasks.classroom_problems("train", 300, seed=9, difficulty=difficulty)
    assert first != tasks.classroom_problems("train", 300, seed=10, difficulty=difficulty)
    for problem in first:
        assert 2 <= len(problem.steps) <= 3
        assert all(2 <= int(n) <= 50 for n in re.findall(r"\d+", problem.question))
        assert all(1 <= int(s.result) <= 50 and s.expression.split()[1] in "+-"
                   for s in problem.steps)


def test_load_problems_classroom_uses_the_config():
    cfg = config.load_config(["--classroom_test_size=7", "--classroom_max_steps=2",
                              "--classroom_ops=+"])
    problems = tasks.load_problems("classroom", "test", cfg)
    assert [p.id for p in problems] == [f"classroom-test-{i}" for i in range(7)]
    assert all(len(p.steps) == 2 and " - " not in p.solution for p in problems)


GSM8K_ROWS = [
    {"question": "Natalia sold clips to 48 of her friends in April, and then she sold half as "
                 "many clips in May. How many clips did Natalia sell altogether in April and May?",
     "answer": "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\nNatalia sold 48+24 = "
               "<<48+24=72>>72 clips altogether in April and May.\n#### 72"},
    {"question": "A farm has 1,000 hens ...", "answer": "1000+200 = <<1000+200=1200>>1,200\n#### 1,200"},
]
MATH_ROWS = [
    {"problem": "What is $\\frac{1}{4}$ of 2?", "level": "Level 1", "type": "Prealgebra",
     "solution": "We have $\\frac{1}{4} \\cdot 2 = \\boxed{\\frac{1}{2}}$."},
    {"problem": "Find $x$ if $x^2 = 9$ and $x>0$.", "level": "Level 2", "type": "Algebra",
     "solution": "First $\\boxed{5}$ is wrong; $x = \\boxed{\\sqrt{\\frac{81}{9}}}$."},
    {"problem": "Evaluate $2+3$.", "level": "Level 1", "type": "Prealgebra",
     "solution": "It is $\\boxed 5$."},
]


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet"])
def test_gsm8k_and_math_rows_load_from_files(tmp_path, suffix):
    paths = {name: str(tmp_path / f"{name}_test{suffix}") for name in ("gsm8k", "math")}
    for name, rows in (("gsm8k", GSM8K_ROWS), ("math", MATH_ROWS)):
        if suffix == ".jsonl":
            write_jsonl(paths[name], rows)
        else:
            datasets.Dataset.from_list(rows).to_parquet(paths[name])
    cfg = config.load_config([])

    gsm8k = tasks.load_problems(paths["gsm8k"], "test", cfg)
    assert [p.answer for p in gsm8k] == ["72", "1200"]
    assert gsm8k[0].id == "gsm8k_test-0"
    assert gsm8k[0].solution.endswith("altogether in April and May.\nThe answer is \\boxed{72}.")
    assert "<<" not in gsm8k[0].solution and [s.result for s in gsm8k[0].steps] == ["24", "72"]

    math = tasks.load_problems(paths["math"], "test", cfg)
    assert [p.answer for p in math] == ["\\frac{1}{2}", "\\sqrt{\\frac{81}{9}}", "5"]
    assert math[0].meta == {"level": "Level 1", "type": "Prealgebra"}
    assert math[0].solution == MATH_ROWS[0]["solution"]

    both = tasks.load_problems(paths["gsm8k"] + "+" + paths["math"], "test", cfg)  # the paper's RL questions
    assert [p.id for p in both] == [p.id for p in gsm8k + math]


def test_plain_question_answer_rows_load(tmp_path):
    path = str(tmp_path / "mine.jsonl")
    write_jsonl(path, [{"id": "q1", "question": "2+2?", "answer": 4}])
    problem = tasks.load_problems(path, "test", config.load_config([]))[0]
    assert (problem.id, problem.answer, problem.solution) == ("q1", "4", "")
    with pytest.raises(BadInput, match="no solution"):
        tasks.render_solution(problem, "cot")


def test_last_boxed():
    assert tasks.last_boxed("a \\boxed{1} b \\boxed{\\frac{\\sqrt{3}}{2}} c") == "\\frac{\\sqrt{3}}{2}"
    assert tasks.last_boxed("\\fbox{\\{1,2\\}}") == "\\{1,2\\}"
    assert tasks.last_boxed("\\boxed{\\frac{1}{2}") is None
    assert tasks.last_boxed("no answer") is None


def test_bad_inputs_name_the_problem(tmp_path):
    cfg = config.load_config([])
    bad_row = str(tmp_path / "bad.jsonl")
    write_jsonl(bad_row, [{"text": "hello"}])
    with pytest.raises(BadInput, match=r"bad.jsonl row 1: a row with keys \['text'\]"):
        tasks.load_problems(bad_row, "test", cfg)
    no_box = str(tmp_path / "nobox.jsonl")
    write_jsonl(no_box, [{"problem": "p", "solution": "the answer is 3"}])
    with pytest.raises(BadInput, match=r"nobox.jsonl row 1: MATH solution has no \\boxed"):
        tasks.load_problems(no_box, "test", cfg)
    with pytest.raises(BadInput, match="no such file"):
        tasks.load_problems(str(tmp_path / "missing.parquet"), "test", cfg)
    with pytest.raises(BadInput, match="unknown problem source 'gsm9k'"):
        tasks.load_problems("gsm9k", "test", cfg)
    with pytest.raises(BadInput, match="Offline, pass a local .jsonl or .parquet file"):
        tasks.load_problems("gsm8k", "test", cfg)  # the tests run with HF_DATASETS_OFFLINE=1
    with pytest.raises(BadInput, match="only classroom problems carry programs"):
        tasks.render_solution(tasks.gsm8k_problem("g", "q", "1+1=<<1+1=2>>2\n#### 2"), "pot")
    with pytest.raises(BadInput, match="classroom_ops='-'"):
        tasks.classroom_problems("train", 1, 0, tasks.Difficulty(ops="-"))
    for row, field in [({"question": "2+2?", "answer": None}, "answer"), ({"question": None, "answer": "4"}, "question"),
                       ({"question": "2+2?", "answer": float("nan")}, "answer"),
                       ({"problem": "p", "solution": None}, "solution"), ({"problem": " ", "solution": "\\boxed{1}"}, "problem")]:
        empty = str(tmp_path / "empty.jsonl")  # a missing value would otherwise be the gold 'None' or 'nan'
        write_jsonl(empty, [row])
        with pytest.raises(BadInput, match=rf"empty.jsonl row 1: field '{field}' is .*; it needs text"):
            tasks.load_problems(empty, "test", cfg)
