"""bench/: the GPU script's dry run (what runs on a machine without CUDA), and the GRPO-vs-TRL
benchmark's shared parts: the Hugging Face tokenizer built from ours gives our ids, the padded
tokenizer of the 1.3B part has the model's vocabulary, and (with TRL installed) a tiny run of
both sides end to end."""

import os
import subprocess
import sys

import pytest
import torch

from support import report, tasks

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "bench"))
import bench_grpo_vs_trl as bench  # noqa: E402

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHON": sys.executable}


def test_gpu_script_without_cuda_runs_every_dry_run_and_exits_0(tmp_path):
    """No CUDA here (or --dry_run): each part checks its shapes on the meta device, prints its
    command, the figures are marked blocked, and the script exits 0."""
    summary = tmp_path / "summary.txt"
    flags = ["--dry_run"] if torch.cuda.is_available() else []
    result = subprocess.run(["bash", os.path.join(ROOT, "bench", "gpu.sh"), *flags, f"--out={summary}"],
                            cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr + result.stdout
    text = summary.read_text()
    if not flags:
        assert "no CUDA device here" in text and "BLOCKED" in text
    assert "FAILED" not in text and "TIMED OUT" not in text, text
    assert f"host CPU: {report.cpu_name()}, {os.cpu_count()} cores" in text
    assert "373.9M parameters" in text  # the README's pretraining shape
    assert "6.91B parameters" in text and "batch  64" in text  # 7B decode, batch 1 and 64
    assert "1.3B: 24 layers x 2048" in text and "1.35B parameters" in text  # configs/1.3b.py
    for part in ("1-pretrain-mfu-dry: ok", "2-decode-7b-dry: ok", "3-grpo-vs-ppo-1.3b-dry: ok"):
        assert part in text, text
    assert text.count("would run:") == 3


def test_record_keeps_what_a_bench_printed_under_its_command_and_keeps_the_old_file_when_it_fails(tmp_path):
    """bench/record.sh: the results file is the command, where and when it ran, then its stdout
    (not its stderr); a failing command leaves the previous file and passes its status on."""
    out = tmp_path / "bench.txt"
    record = ["bash", os.path.join(ROOT, "bench", "record.sh"), str(out)]
    printing = [sys.executable, "-c", "import sys; print('1.23x transformers'); print('progress', file=sys.stderr)"]
    result = subprocess.run(record + printing, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    lines = out.read_text().splitlines()
    assert lines[0] == " ".join(printing) and report.cpu_name() in lines[1] and lines[3:] == ["1.23x transformers"]
    failing = subprocess.run(record + [sys.executable, "-c", "print('half'); raise SystemExit(3)"], cwd=ROOT,
                             capture_output=True, text=True, timeout=60)
    assert failing.returncode == 3 and out.read_text().splitlines()[3:] == ["1.23x transformers"]


def test_hf_tokenizer_gives_our_ids_and_text():
    ours = bench.classroom_tokenizer(1024)
    hf = bench.hf_tokenizer(ours)
    for p in tasks.classroom_problems("train", 50, 3):
        assert hf(bench.prompt_text(ours, p))["input_ids"] == ours.encode_prompt(p.question)
        solution = tasks.render_solution(p, "cot")
        ids = ours.encode(solution)
        assert hf(solution, add_special_tokens=False)["input_ids"] == ids
        assert hf.decode(ids) == ours.decode(ids) == solution


def test_classroom_tokenizer_fills_a_large_vocabulary_with_ids_text_never_makes():
    tok = bench.classroom_tokenizer(4096)
    assert tok.n_vocab == 4096 and tok.special_tokens[tok.pad] == 4095
    small = bench.classroom_tokenizer(1024)
    text = tasks.render_solution(tasks.classroom_problems("train", 1, 3)[0], "cot")
    assert tok.encode(text) == small.encode(text)  # the filler ids change no encoding
    assert isinstance(tok.decode(list(range(1000, 1100))), str)  # and decode (to U+FFFD)


def test_trl_comparison_runs_end_to_end_at_a_tiny_size(tmp_path):
    pytest.importorskip("trl")
    result = subprocess.run([sys.executable, os.path.join(ROOT, "bench", "bench_grpo_vs_trl.py"),
                             f"--workdir={tmp_path}", "--questions=2", "--group_size=2", "--max_new_tokens=6",
                             "--micro_batch=2", "--steps=1", "--rounds=1"], cwd=ROOT, env=ENV, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "ours / TRL: step" in result.stdout and "peak RSS" in result.stdout
    assert "first imported inside the steps (counted in the growth): grpo.py " in result.stdout
    read = float(result.stdout.split("the update's passes: ours read ")[1].split("%")[0])
    assert 0 < read <= 100  # two micro-batches of 2 rows, each cut to its longest
    assert (tmp_path / "results.json").exists()


def test_trl_comparison_refuses_a_micro_batch_that_does_not_divide_the_step():
    result = subprocess.run([sys.executable, os.path.join(ROOT, "bench", "bench_grpo_vs_trl.py"), "--questions=3",
                             "--group_size=8"], cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert result.stderr.strip() == "--micro_batch=16 must divide the step's 24 rows (TRL accumulates whole micro-batches)"


def test_generation_bench_runs_at_a_tiny_size_with_identical_tokens_and_a_floor():
    """bench_generate.py end to end at a tiny size: ours and transformers agree token for token,
    and the floor (matmuls + attention of ours, the kernels both must run) bounds our speed-up."""
    pytest.importorskip("transformers")
    result = subprocess.run([sys.executable, os.path.join(ROOT, "bench", "bench_generate.py"), "--cases=4x8",
                             "--rounds=1", "--naive=false", "--compile=false"], cwd=ROOT, env=ENV,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "greedy tokens identical" in result.stdout
    floor = [line for line in result.stdout.splitlines() if "floor:" in line]
    assert len(floor) == 1 and float(floor[0].split("at most ")[1].split("x")[0]) >= 1.0, floor


def test_a_goal_is_at_its_line_when_the_rounds_fall_on_both_sides_of_it():
    """A median just past the goal is no evidence when single rounds miss it: each round ran both
    sides back to back, so rounds on both sides mean the gap to the goal is round-to-round noise."""
    def at_least_3x(ratio):  # bench_generate's direction
        return ratio >= 3.0

    assert bench.goal_verdict([3.01, 3.04, 3.02], at_least_3x) == "met in every round"
    assert bench.goal_verdict([2.94, 3.01, 3.04], at_least_3x) == (
        "at its line: met in 2 of 3 rounds, within the rounds' noise")
    assert bench.goal_verdict([2.90, 2.98], at_least_3x) == "not met in any round"

    def at_most_07x(ratio):  # the GRPO bench's direction
        return ratio <= 0.7

    assert bench.goal_verdict([0.63, 0.68], at_most_07x) == "met in every round"
    assert bench.goal_verdict([0.69, 0.72], at_most_07x).startswith("at its line: met in 1 of 2")


def test_generation_bench_says_whether_issue_17s_goal_is_met():
    """At a shape issue 17 sets a goal for (batch 1 x 256 new tokens: >= 2x transformers), the
    bench ends with that goal, the ratio it measured and a verdict that agrees with the two."""
    pytest.importorskip("transformers")
    result = subprocess.run([sys.executable, os.path.join(ROOT, "bench", "bench_generate.py"), "--cases=1x256",
                             "--rounds=1", "--naive=false", "--compile=false"], cwd=ROOT, env=ENV,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    line = next(line for line in result.stdout.splitlines() if line.startswith("goal 1x256:"))
    ratio = float(line.split("transformers: ")[1].split("x ")[0])
    summary = next(line for line in result.stdout.splitlines() if line.startswith("summary, ours /"))
    assert ratio == float(summary.split("1x256: ")[1].split("x")[0])
    # one round: its ratio is the median's, so the verdict cannot be "at its line"
    assert line.endswith(", met in every round" if ratio >= 2.0 else ", not met in any round"), line
    assert not any(line.startswith("goal 16x256") for line in result.stdout.splitlines())  # a case not run


@pytest.mark.skipif(not os.environ.get("TEST_COMPILE"), reason="compiling takes ~1 min on a CPU; TEST_COMPILE=1 runs it")
def test_generation_bench_accounts_for_a_compiled_step():
    """Compiled, the bench splits a step's time: the decode step alone (at the run's mean cache
    length) is part of what generate() takes per step, so it must come out smaller, and
    torch.compile's own work around the compiled code is part of the step from 1 key on; one
    step to a compiled call gives the same tokens."""
    pytest.importorskip("transformers")
    result = subprocess.run([sys.executable, os.path.join(ROOT, "bench", "bench_generate.py"), "--cases=4x8",
                             "--rounds=1", "--naive=false", "--compile=true"], cwd=ROOT, env=ENV,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    line = next(line for line in result.stdout.splitlines() if "compiled step at batch 4 (4 a call):" in line)
    step_ms = float(line.split(": ")[1].split(" ms")[0])
    per_step_ms = float(line.split("ours is ")[1])
    assert 0 < step_ms < per_step_ms, line
    step_at_1_ms, compile_work_ms = (float(x) for x in line.split("mean), ")[1].split(" ms is torch.compile")[0]
                                     .split(" ms at 1-4, of which "))
    assert 0 < compile_work_ms < step_at_1_ms, line
    # the same decoding one greedy step to a compiled call: the same tokens, and the gain measured
    one_step = next(line for line in result.stdout.splitlines() if "ours compiled, one step a call" in line)
    assert "greedy tokens identical" in one_step and " steps a call are " in one_step, one_step
