"""pipeline.py: the maj@k / pass@k curves, the skip rule, and the whole recipe at a tiny size."""

import itertools
import json
import os
import platform
import re
import shlex
import shutil
import subprocess
import sys
import time

import pytest
import torch

import pipeline
from model import ModelArgs, Transformer
from support import config, rl_support
from support.fileio import write_json

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def brute_force_pass_at(samples, j):
    """pass@j by enumerating every j-subset of the samples: the share holding a correct one."""
    subsets = list(itertools.combinations(samples, j))
    return sum(any(s["correct"] for s in subset) for subset in subsets) / len(subsets)


def test_curves_at_k_match_brute_force_and_majority_by_hand():
    records = [
        {"samples": [{"answer": "5", "correct": True}, {"answer": "4", "correct": False},
                     {"answer": "4", "correct": False}, {"answer": "5", "correct": True}]},
        {"samples": [{"answer": None, "correct": False}, {"answer": "7", "correct": True},
                     {"answer": "3", "correct": False}, {"answer": "3", "correct": False}]},
    ]
    ks, maj, passes = pipeline.curves_at_k(records)
    assert ks == [1, 2, 3, 4]
    for j, value in zip(ks, passes):
        expected = sum(brute_force_pass_at(r["samples"], j) for r in records) / 2
        assert abs(value - expected) < 1e-12
    # Majority of the first j answers, ties to the first seen. Problem 1: 5 | 5 (tie, first) |
    # 4 (two 4s) | 5 (tie 2-2, first seen). Problem 2: none | 7 | 7 (tie) | 3.
    assert maj == [0.5, 1.0, 0.5, 0.5]


def test_a_stage_is_redone_when_missing_broken_or_older_than_its_inputs(tmp_path):
    upstream, output = tmp_path / "up.json", tmp_path / "summary.json"
    checkpoint = tmp_path / "ckpt"
    upstream.write_text("{}")
    assert not pipeline.loads(str(output), None)  # missing
    output.write_text("{not json")
    assert not pipeline.loads(str(output), None)  # half written
    output.write_text(json.dumps({"steps": 1}))
    assert pipeline.loads(str(output), None) and not pipeline.newer_input(str(output), [str(upstream)])
    assert not pipeline.loads(str(output), str(checkpoint))  # no checkpoint
    Transformer(ModelArgs(vocab_size=16, dim=8, n_layer=1, n_head=2, n_kv_head=2, intermediate_size=16,
                          max_seq_len=8)).save_pretrained(str(checkpoint))
    assert pipeline.loads(str(output), str(checkpoint))
    later = time.time() + 5
    os.utime(upstream, (later, later))  # upstream was re-run after this stage
    assert pipeline.newer_input(str(output), [str(upstream)]) == str(upstream)


def test_a_stage_done_with_other_settings_is_named_and_run_again_from_the_start(tmp_path, monkeypatch, capsys):
    """Only the keys that shape a stage count; the run that follows a change starts over."""
    out = tmp_path / "sft"
    out.mkdir()
    (out / "summary.json").write_text("{}")
    argv = ["configs/classroom.py", f"--out_dir={tmp_path}", "--sft_lr=0.001"]
    command = ["sft.py"]
    assert "missing" in pipeline.settings_change(str(out / "summary.json"), pipeline.settings(command, argv))
    write_json(pipeline.record_path(str(out / "summary.json")), pipeline.settings(command, argv))
    assert pipeline.settings_change(str(out / "summary.json"), pipeline.settings(command, argv + ["--rl_lr=1.0"])) == ""
    assert pipeline.settings_change(str(out / "summary.json"), pipeline.settings(command, argv + ["--device=cpu"])) == ""
    changed = pipeline.settings_change(str(out / "summary.json"), pipeline.settings(command, argv + ["--sft_lr=0.01"]))
    assert changed == "settings changed: sft_lr 0.001 -> 0.01"

    ran, log = [], str(out / "sft.log")
    monkeypatch.setattr(pipeline, "run_command", lambda name, command, argv, env, log, echo: ran.append(argv) or 1.0)
    monkeypatch.setattr(pipeline, "loads", lambda output, checkpoint: True)
    numbers = pipeline.numerics(pipeline.same_numbers_env(config.load_config(argv)))  # as run_step records them
    write_json(pipeline.record_path(str(out / "summary.json")), {**pipeline.settings(command, argv), **numbers})
    assert pipeline.run_step("sft", command, str(out / "summary.json"), None, [], argv, log) == 0.0  # same settings
    assert pipeline.run_step("sft", command, str(out / "summary.json"), None, [], [*argv, "--sft_lr=0.01"], log) == 1.0
    assert ran[-1][-1] == "--sft_resume=false"  # a finished checkpoint is not resumed
    assert "sft_lr 0.001 -> 0.01; running it again from the start" in capsys.readouterr().out
    assert pipeline.settings_change(str(out / "summary.json"), pipeline.settings(command, [*argv, "--sft_lr=0.01"])) == ""


@pytest.mark.skipif(platform.machine().lower() not in ("x86_64", "amd64"), reason="CPU kernels are chosen on x86 only")
def test_stages_that_run_alone_get_every_core_only_where_the_thread_count_changes_no_bit(monkeypatch):
    """MKL's strict mode (avx2, avx512): corpus, pretraining and SFT get pipeline_jobs x
    cpu_threads threads, and the thread count is not one of the numbers' settings. In a mode
    without it (a user's MKL_CBWR=AVX2) every stage keeps cpu_threads, and the count is recorded."""
    for key in ("MKL_CBWR", "OMP_NUM_THREADS", "ATEN_CPU_CAPABILITY"):
        monkeypatch.delenv(key, raising=False)
    cfg = config.load_config(["configs/classroom.py", "--pipeline_jobs=2", "--cpu_threads=1"])
    alone, beside = pipeline.same_numbers_env(cfg, alone=True), pipeline.same_numbers_env(cfg)
    assert (alone["OMP_NUM_THREADS"], beside["OMP_NUM_THREADS"], alone["MKL_CBWR"]) == ("2", "1", "AVX2,STRICT")
    assert pipeline.numerics(alone) == pipeline.numerics(beside) == {"ATEN_CPU_CAPABILITY": "avx2", "MKL_CBWR": "AVX2,STRICT"}
    monkeypatch.setenv("MKL_CBWR", "AVX2")
    alone = pipeline.same_numbers_env(cfg, alone=True)
    assert alone["OMP_NUM_THREADS"] == "1" and pipeline.numerics(alone)["OMP_NUM_THREADS"] == "1"


def test_a_stage_made_with_other_kernels_is_run_again(tmp_path, monkeypatch, capsys):
    """The kernels are part of a stage's settings: a checkpoint made under MKL_CBWR=AVX2 is not
    taken for one made under the strict mode."""
    out = tmp_path / "sft"
    out.mkdir()
    (out / "summary.json").write_text("{}")
    argv = ["configs/classroom.py", f"--out_dir={tmp_path}"]
    log = str(out / "sft.log")
    monkeypatch.setattr(pipeline, "run_command", lambda name, command, argv, env, log, echo: 1.0)
    monkeypatch.setattr(pipeline, "loads", lambda output, checkpoint: True)
    monkeypatch.setattr(pipeline.platform, "machine", lambda: "x86_64")
    monkeypatch.setenv("MKL_CBWR", "AVX2")
    assert pipeline.run_step("sft", ["sft.py"], str(out / "summary.json"), None, [], argv, log) == 1.0
    assert pipeline.run_step("sft", ["sft.py"], str(out / "summary.json"), None, [], argv, log) == 0.0
    monkeypatch.delenv("MKL_CBWR")
    assert pipeline.run_step("sft", ["sft.py"], str(out / "summary.json"), None, [], argv, log) == 1.0
    assert "MKL_CBWR 'AVX2' -> 'AVX2,STRICT'" in capsys.readouterr().out


def test_an_interrupted_stage_resumes_only_with_the_settings_and_inputs_it_started_with(tmp_path, monkeypatch, capsys):
    """No summary, a train_state.pt: the run resumes when it started (stage_started.json) with
    these settings after its inputs were made; no start record, other settings, a newer input or
    a checkpoint older than the start (an earlier run's) start it over, saying why."""
    out, upstream = tmp_path / "sft", tmp_path / "pretrain_summary.json"
    (out / "ckpt").mkdir(parents=True)
    upstream.write_text("{}")
    argv, ran = ["configs/classroom.py", f"--out_dir={tmp_path}"], []
    monkeypatch.setattr(pipeline, "run_command", lambda name, command, argv, env, log, echo: ran.append(argv) or 1.0)

    def interrupted(*overrides, saved=None):
        """run_step on the folder of a run that saved its checkpoint `saved` s after it started."""
        if saved is not None:
            at = os.path.getmtime(pipeline.started_path(str(out / "summary.json"))) + saved
            (out / "ckpt" / "train_state.pt").touch()
            os.utime(out / "ckpt" / "train_state.pt", (at, at))
        pipeline.run_step("sft", ["sft.py"], str(out / "summary.json"), str(out / "ckpt"), [str(upstream)],
                          [*argv, *overrides], str(tmp_path / "sft.log"))
        return ran[-1][-1] == "--sft_resume=false", capsys.readouterr().out

    (out / "ckpt" / "train_state.pt").touch()  # an out dir from before the start record
    assert interrupted() == (True, f"=== sft: interrupted, but {out}/stage_started.json, the settings it started "
                                   "with, is missing; running it again from the start\n")
    started = os.path.getmtime(out / "stage_started.json")
    assert interrupted(saved=1) == (False, "")  # resumed, and the start record is the first run's still
    assert os.path.getmtime(out / "stage_started.json") == started
    start_over, said = interrupted("--sft_lr=0.01", saved=1)
    assert start_over and "interrupted, but settings changed: sft_lr 0.002 -> 0.01; running it again" in said
    start_over, said = interrupted("--sft_lr=0.01", saved=-1)  # stopped before its first save
    assert start_over and f"{out}/ckpt/train_state.pt is from a run before the one interrupted" in said
    later = os.path.getmtime(out / "stage_started.json") + 5
    os.utime(upstream, (later, later))  # pretraining ran again after SFT started
    start_over, said = interrupted("--sft_lr=0.01", saved=1)
    assert start_over and f"interrupted, but {upstream} is newer" in said


def test_a_save_killed_between_its_renames_is_put_back_before_the_resume_check(tmp_path, monkeypatch, capsys):
    """A checkpoint save killed between staged_folder's two renames leaves no ckpt/, its new
    copy beside the old: put back first, it is the interrupted run's, judged as any other."""
    out, upstream = tmp_path / "sft", tmp_path / "pretrain_summary.json"
    out.mkdir()
    upstream.write_text("{}")
    argv, ran = ["configs/classroom.py", f"--out_dir={tmp_path}"], []
    monkeypatch.setattr(pipeline, "run_command", lambda name, command, argv, env, log, echo: ran.append(argv) or 1.0)

    def run_step(*overrides):
        pipeline.run_step("sft", ["sft.py"], str(out / "summary.json"), str(out / "ckpt"), [str(upstream)],
                          [*argv, *overrides], str(tmp_path / "sft.log"))
        return ran[-1][-1] == "--sft_resume=false", capsys.readouterr().out

    run_step()  # the first run starts, with the config's settings, and is killed in a save:
    (out / ".ckpt.abcd1234.old").mkdir()  # its previous checkpoint, renamed away
    (out / ".ckpt.abcd1234").mkdir()  # the new one, complete
    (out / ".ckpt.abcd1234" / "train_state.pt").touch()
    later = os.path.getmtime(out / "stage_started.json") + 1
    os.utime(out / ".ckpt.abcd1234" / "train_state.pt", (later, later))
    start_over, said = run_step("--sft_lr=0.01")
    assert (out / "ckpt" / "train_state.pt").exists() and not (out / ".ckpt.abcd1234.old").exists()
    assert start_over and "interrupted, but settings changed: sft_lr 0.002 -> 0.01" in said


def test_a_record_from_an_older_pipeline_is_not_a_change(tmp_path):
    """An out dir's records from before a key was recorded lack it, and hold paths as given: an
    upgrade of pipeline.py reruns no stage for that alone; a value it recorded that differs does."""
    output = tmp_path / "eval" / "metrics.json"
    output.parent.mkdir()
    output.write_text("{}")
    wanted = {"eval_checkpoint": os.path.realpath(tmp_path / "sft" / "ckpt"), "eval_max_new_tokens": 128, "seed": 1}
    older = {"eval_checkpoint": os.path.relpath(tmp_path / "sft" / "ckpt"), "seed": 1}
    pipeline.write_json(pipeline.record_path(str(output)), older)
    assert pipeline.settings_change(str(output), wanted) == ""
    pipeline.write_json(pipeline.record_path(str(output)), {**older, "seed": 2})
    assert pipeline.settings_change(str(output), wanted) == "settings changed: seed 2 -> 1"


def settings_differ(command, *overrides):
    """Whether the overrides change the recorded settings of `command` on the classroom config."""
    argv = ["configs/classroom.py"]
    return pipeline.settings(command, argv) != pipeline.settings(command, [*argv, *overrides])


def test_the_held_out_checks_of_sft_and_rl_are_part_of_their_settings():
    """The eval_* keys evaluate_model reads for their greedy held-out answers count; those of
    sampling (eval_k, ...) do not, nor what each script sets or overrides itself."""
    for command in (["sft.py"], ["grpo.py"]):
        for key in ("eval_max_new_tokens=64", "eval_batch_size=8", "eval_tool_rounds=2", "eval_program_timeout=3.0",
                    "eval_program_memory_mb=512"):
            assert settings_differ(command, f"--{key}"), (command, key)
        for key in ("eval_k=3", "eval_temperature=0.5", "eval_k_problems=7", "eval_tasks=['gsm8k']"):
            assert not settings_differ(command, f"--{key}"), (command, key)
    for key in ("eval_mode=fewshot", "eval_format=pot"):
        assert settings_differ(["grpo.py"], f"--{key}") and not settings_differ(["sft.py"], f"--{key}")
    # the classroom's rl_eval_problems=200 wins over eval_n_problems, and chat prompts hold no examples
    assert not settings_differ(["grpo.py"], "--eval_n_problems=5")
    assert settings_differ(["grpo.py"], "--rl_eval_problems=0", "--eval_n_problems=5")
    assert not settings_differ(["grpo.py"], "--eval_shots=2")
    fewshot = ["configs/classroom.py", "--eval_mode=fewshot"]
    assert pipeline.settings(["grpo.py"], fewshot) != pipeline.settings(["grpo.py"], [*fewshot, "--eval_shots=2"])


def test_how_often_a_stage_saves_and_whether_it_resumes_are_not_settings():
    for command, keys in ((["pretrain.py"], ("pretrain_ckpt_every=7", "pretrain_resume=false")),
                          (["sft.py"], ("sft_save_every=7", "sft_resume=false")),
                          (["grpo.py"], ("rl_save_every=7", "rl_resume=true"))):
        for key in keys:
            assert not settings_differ(command, f"--{key}"), key
            assert key.split("=")[0] not in pipeline.settings(command, ["configs/classroom.py"])


def test_ppo_keys_are_settings_of_ppo_runs_only():
    for algo in ("grpo", "rft", "online_rft"):
        assert not settings_differ(["grpo.py", f"--rl_algo={algo}"], "--ppo_lambda=0.9", "--ppo_value_lr=1e-5")
    assert settings_differ(["grpo.py", "--rl_algo=ppo"], "--ppo_lambda=0.9")


def test_a_relative_an_absolute_and_a_linked_path_to_the_same_out_dir_are_one_setting(tmp_path, monkeypatch):
    """Every step's settings (the evaluations' eval_checkpoint, the reward models' rl_rm_init, a
    tokenizer_path) are the same whichever way the user names the folders."""
    monkeypatch.chdir(tmp_path)
    shutil.copytree(os.path.join(ROOT, "configs"), tmp_path / "configs")
    (tmp_path / "out").mkdir()
    os.symlink(tmp_path / "out", tmp_path / "link")

    def step_settings(out_dir, tokenizer):
        argv = ["configs/classroom.py", f"--out_dir={out_dir}", f"--tokenizer_path={tokenizer}",
                "--learned_rewards=true", "--pipeline_jobs=2"]
        seen = {}
        monkeypatch.setattr(pipeline, "run_step", lambda name, command, *_: seen.update({name: command}) or 1.0)
        pipeline.run_stages(config.load_config(argv), argv)
        return {name: pipeline.settings(command, argv) for name, command in seen.items()}

    relative = step_settings("out/x", "out/tok.tiktoken")
    assert relative["eval sft"]["eval_checkpoint"] == str(tmp_path / "out" / "x" / "sft" / "ckpt")
    assert relative["rl/grpo_orm"]["rl_rm_init"] == str(tmp_path / "out" / "x" / "sft_rm" / "ckpt")
    assert relative == step_settings(str(tmp_path / "out" / "x"), "./out/tok.tiktoken") == \
        step_settings("link/x", str(tmp_path / "link" / "tok.tiktoken"))


def test_the_pipeline_refuses_what_would_send_an_rl_run_to_another_folder():
    """grpo.py names its folder after rl_algo, rl_reward, rl_iteration_steps vs rl_steps and
    rl_seed (rl_support.method_name): the pipeline sets them per run and refuses them from the
    user, so each stage's folder is the one grpo.py writes."""
    def refusal(*overrides):
        with pytest.raises(SystemExit) as e:
            pipeline.check_rl_keys(config.load_config(["configs/classroom.py", "--learned_rewards=true", *overrides]))
        return e.value.code

    assert refusal("--rl_seed=5").startswith("pipeline.py: rl_seed=5 would make grpo.py write other folders than ")
    assert "leave rl_iteration_steps out, or run grpo.py for one RL run" in refusal("--rl_iteration_steps=10")
    assert "leave rl_compare out" in refusal("--rl_compare=true")
    assert refusal("--rl_steps=1") == ("pipeline.py: --rl_steps=1 leaves iterative RL (grpo_prm_iterative) one "
                                       "iteration, so it would write grpo_prm's folder: set --rl_steps to 2 or more, "
                                       "or --learned_rewards=false")
    assert "rl_rm_init='x' would be overridden" in refusal("--rl_rm_init=x")
    for argv in (["--learned_rewards=true", "--seeds=3", "--rl_steps=2"], ["--rl_steps=1", "--rl_rm_init=x"]):
        cfg = config.load_config(["configs/classroom.py", *argv])
        pipeline.check_rl_keys(cfg)  # accepted
        for _, _, seeds in pipeline.rl_runs(cfg):
            for folder, overrides in seeds:
                full = config.load_config(["configs/classroom.py", *argv, *overrides])
                assert folder == f"rl/{rl_support.method_name(full)}"


def test_the_printed_command_pasted_into_a_shell_runs_the_stage_as_the_pipeline_did(tmp_path, monkeypatch, capsys):
    """The line leads with the variables the pipeline set or changed, and only those."""
    script = tmp_path / "stage.py"
    script.write_text("import json, os, sys\nprint(json.dumps([sys.argv[1:], {k: os.environ.get(k) for k in "
                      "('ATEN_CPU_CAPABILITY', 'MKL_CBWR', 'OMP_NUM_THREADS', 'MKL_NUM_THREADS')}]))\n")
    monkeypatch.setenv("ATEN_CPU_CAPABILITY", "avx2")  # the pipeline's value already: not printed
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    monkeypatch.delenv("MKL_CBWR", raising=False)
    monkeypatch.delenv("MKL_NUM_THREADS", raising=False)
    env = {"ATEN_CPU_CAPABILITY": "avx2", "MKL_CBWR": "AVX2,STRICT", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    log = tmp_path / "stage.log"
    pipeline.run_command("stage", [str(script), "--b=it's"], ["configs/classroom.py", "--a=two words"], env, str(log),
                         echo=True)
    line = capsys.readouterr().out.split("=== stage: ")[1].splitlines()[0]
    # the interpreter the pipeline runs, not whichever `python` a fresh shell finds first
    assert line.startswith("MKL_CBWR=AVX2,STRICT OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 ")
    assert os.path.realpath(shlex.split(line)[3]) == os.path.realpath(sys.executable)
    pasted = subprocess.run(["bash", "-c", line], capture_output=True, text=True, timeout=60)
    assert pasted.returncode == 0 and pasted.stdout == log.read_text()
    # side by side, where its output goes follows as a shell comment: the line still pastes
    pipeline.run_command("stage", [str(script)], ["configs/classroom.py"], env, str(log), echo=False)
    line = capsys.readouterr().out.split("=== stage: ")[1].splitlines()[0]
    assert line.endswith(f"  # output: {log}")
    assert subprocess.run(["bash", "-c", line], capture_output=True, text=True, timeout=60).returncode == 0


def test_every_step_starts_when_what_it_reads_is_done_never_before(tmp_path, monkeypatch):
    """run_stages with 2 workers and slow fake stages: corpus, pretraining and SFT run alone, one
    after the other; then no step starts before the steps it needs have ended, never more than 2
    at once, and the timings come back in table order."""
    events, alone = [], []

    def fake_step(name, command, output, checkpoint, inputs, argv, log, runs_alone, echo):
        if runs_alone:
            alone.append(name)
        events.append(("start", name, time.monotonic()))
        time.sleep(0.3 if name == "sft" else 0.05)
        events.append(("end", name, time.monotonic()))
        return 1.0

    monkeypatch.setattr(pipeline, "run_step", fake_step)
    cfg = config.load_config(["configs/classroom.py", f"--out_dir={tmp_path}", "--pipeline_jobs=2"])
    seconds = pipeline.run_stages(cfg, [])
    at = {(kind, name): t for kind, name, t in events}
    steps = [stage.name for stage in pipeline.stages(cfg)]
    assert list(seconds) == steps + [f"eval {os.path.basename(f)}" for _, _, fs, _ in pipeline.evaluated(cfg) for f in fs]
    assert alone == ["corpus", "pretrain", "sft"]
    assert min(t for (kind, name), t in at.items() if kind == "start" and name not in alone) >= at[("end", "sft")]
    for stage in pipeline.stages(cfg):
        for need in stage.needs:
            assert at[("end", need)] <= at[("start", stage.name)]
    for folder in steps[2:]:
        assert at[("end", folder)] <= at[("start", f"eval {os.path.basename(folder)}")]
    # the base and SFT models' evaluations, which nothing waits for, fill the end
    fillers = ("eval pretrain", "eval sft")
    assert min(at[("start", name)] for name in fillers) >= \
        max(t for (kind, name), t in at.items() if kind == "start" and name not in fillers)
    running = 0
    for kind, _, _ in sorted(events, key=lambda e: e[2]):
        running += 1 if kind == "start" else -1
        assert running <= 2

# Every stage at a tiny size: a smaller web, a few steps each, few problems. Real runs of the
# real scripts, so each stage's outputs must exist, load and make sense together.
TINY = ["--web_pool_pages=4000", "--web_seed_pages=400", "--web_shards=2", "--web_contaminated_pages=4",
        "--classroom_train_size=400", "--classroom_test_size=40",
        "--pretrain_steps=30", "--pretrain_warmup_steps=5", "--pretrain_eval_every=15", "--pretrain_ckpt_every=30",
        "--sft_steps=6", "--sft_batch_size=8", "--sft_micro_batch_size=8", "--sft_eval_problems=8", "--sft_save_every=6",
        "--rl_steps=2", "--rl_questions_per_step=2", "--rl_group_size=4", "--rl_rollout_questions=2",
        "--rl_micro_batch=8", "--rl_max_new_tokens=48", "--rl_save_every=2",
        "--eval_n_problems=8", "--eval_k=2", "--eval_max_new_tokens=48", "--grader_workers=1",
        "--rl_rm_questions=8", "--pipeline_rm_sft_steps=8"]


def run_tiny(out, *extra):
    command = [sys.executable, "pipeline.py", "configs/classroom.py", f"--out_dir={out}", *TINY, "--seeds=2",
               "--learned_rewards=true", *extra]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    out = tmp_path_factory.mktemp("pipeline") / "run"
    run = run_tiny(out)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    for stage in ("corpus", "pretrain", "sft"):  # run alone, a stage's output is printed and kept in logs/
        summary = re.search(rf"^{stage}: .*$", run.stdout, re.M)
        assert summary and summary.group() in (out / "logs" / f"{stage}.log").read_text(), stage
    return out, config.load_config(["configs/classroom.py", f"--out_dir={out}", *TINY, "--seeds=2",
                                    "--learned_rewards=true"])


def test_the_whole_recipe_runs_end_to_end_at_a_tiny_size(tiny):
    out, cfg = tiny
    corpus = json.loads((out / "corpus" / "summary.json").read_text())
    assert corpus["tokens"]["train"] > 10_000 and corpus["iterations"][-1]["recall"] > 0.5
    pretrain = json.loads((out / "pretrain" / "summary.json").read_text())
    assert pretrain["val_loss"] < pretrain["unigram_entropy"]  # it learned something about the text
    for stage in pipeline.stages(cfg)[1:]:
        model = Transformer.from_pretrained(str(out / stage.name / "ckpt"))
        assert all(torch.isfinite(p).all() for p in model.parameters()), stage.name
    results = (out / "results.md").read_text()
    table = results.split("## The paper's claims")[0]
    for label, _, folders, _ in pipeline.evaluated(cfg):
        assert table.count(f"| {label} |") == 1
    # a method's row holds its two seeds' accuracies, and the claims are checked
    assert " / " in results.split("| GRPO (outcome) |")[1].split("\n")[0]
    assert "## The paper's claims" in results and "(n=8)" in results and "ROC" not in results.split("## The")[0]
    # the learned reward models start from their own, longer SFT run
    assert "own SFT run of 8 steps" in results and "the policy from 6 steps" in results
    assert json.loads((out / "rl" / "grpo_orm" / "summary.json").read_text())["reward_model"]
    for plot in ["corpus_recall", "pretrain_loss", "rl_ppo_vs_grpo", "maj_pass_at_k"]:
        assert (out / "plots" / f"{plot}.png").stat().st_size > 10_000, plot
    assert (out / "rollouts.html").stat().st_size > 10_000  # the viewer's page

    # A second run finds every stage done and only rewrites the tables and plots; its results
    # file's wall time says so, as it is not the time of a run from an empty folder.
    again = run_tiny(out, f"--results_file={out / 'study.md'}")
    evaluations = sum(len(folders) for _, _, folders, _ in pipeline.evaluated(cfg))
    steps = len(pipeline.stages(cfg)) + evaluations
    assert again.returncode == 0 and again.stdout.count("done before, skipped") == steps
    assert f"{steps} of {steps} stages done before and skipped (corpus, pretrain, sft" in (out / "study.md").read_text()
    assert (out / "study-timings.md").read_text() == (out / "timings.md").read_text()  # the run's timings beside it
    log = (out / "study-log.txt").read_text()  # what each stage printed (the first run's logs/), bars left out
    assert log.count("=== ") == steps and "%|" not in log and "\r" not in log
    for summary in (r"^corpus: \d+ pages", r"^pretrain: \d+ steps", r"^sft: \d+ steps", r"^grpo_outcome: held-out greedy"):
        assert re.search(summary, log, re.M), summary


def test_the_same_command_writes_the_same_results_byte_for_byte(tiny, tmp_path):
    """Every RL run and evaluation again, in another folder from the same SFT checkpoint (corpus,
    pretraining and SFT are copied: their own runs repeat bit for bit, tests/test_pretrain.py and
    tests/test_sft.py check resumes against straight runs): results.md is the same file."""
    out, _ = tiny
    fresh = tmp_path / "fresh"
    for name in ("corpus", "pretrain", "sft", "sft_rm", "tokenizer.tiktoken", "tokenizer.tiktoken.json"):
        (shutil.copytree if (out / name).is_dir() else shutil.copy2)(out / name, fresh / name)
    run = run_tiny(fresh)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert (fresh / "results.md").read_text() == (out / "results.md").read_text()


def intel_x86():
    try:
        with open("/proc/cpuinfo") as f:
            return "GenuineIntel" in f.read()
    except OSError:
        return False


@pytest.mark.skipif(not intel_x86(), reason="MKL honours MKL_CBWR (its strict mode included) on Intel CPUs only")
def test_pretraining_and_sft_on_two_threads_write_the_one_thread_checkpoints_bit_for_bit(tiny, tmp_path):
    """Why pipeline.py may give the stages that run alone every core: under MKL's strict mode
    pretrain.py and sft.py on 2 threads write the same bytes as the fixture's 1-thread run."""
    out, _ = tiny
    fresh = tmp_path / "two_threads"
    for name in ("corpus", "tokenizer.tiktoken", "tokenizer.tiktoken.json"):
        (shutil.copytree if (out / name).is_dir() else shutil.copy2)(out / name, fresh / name)
    env = {**os.environ, "ATEN_CPU_CAPABILITY": "avx2", "MKL_CBWR": "AVX2,STRICT", "OMP_NUM_THREADS": "2",
           "MKL_NUM_THREADS": "2"}
    for script in ("pretrain.py", "sft.py"):
        run = subprocess.run([sys.executable, script, "configs/classroom.py", f"--out_dir={fresh}", *TINY], cwd=ROOT,
                             env=env, capture_output=True, text=True, timeout=300)
        assert run.returncode == 0, run.stderr[-3000:]
    for stage in ("pretrain", "sft"):
        two, one = (folder / stage / "ckpt" / "model.safetensors" for folder in (fresh, out))
        assert two.read_bytes() == one.read_bytes(), stage


def test_rounding_study_runs_sft_under_each_kernel_setting_from_the_runs_checkpoint(tiny):
    """bench/rounding.sh at the tiny size: one SFT run per kernel setting from the fixture's
    pretrained checkpoint, a table row each, and (MKL's strict mode, Intel CPUs) the 2-thread run
    writing the 1-thread run's checkpoint, as the README's committed table says at full size."""
    out, _ = tiny
    run = subprocess.run(["bash", "bench/rounding.sh", str(out), *TINY], cwd=ROOT, capture_output=True, text=True,
                         timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    rows = [line.split(" | ") for line in run.stdout.splitlines() if line.startswith("| `")]
    assert len(rows) == 7 and rows[0][-1] == "yes |" and all(row[2] == "8" for row in rows)  # sft_eval_problems
    if intel_x86():
        assert rows[1][0] == "| `ATEN_CPU_CAPABILITY=avx2 MKL_CBWR=AVX2,STRICT OMP_NUM_THREADS=2`" \
            and rows[1][-1] == "yes |"
    failing = subprocess.run(["bash", "bench/rounding.sh", str(out / "missing")], cwd=ROOT, capture_output=True,
                             text=True, timeout=60)
    assert failing.returncode == 2 and "usage: bash bench/rounding.sh OUT_DIR" in failing.stderr


def test_chains_run_the_whole_recipe_again_and_pool_its_checkpoints(tiny):
    """--chains=2: the first chain is the run already in out_dir (every stage skipped), the second
    runs every stage with seed + 1 into out_dir/chain-seed1338; results.md then pools both SFT
    checkpoints: each row's per-chain values, and each claim's per-chain differences. (Last in
    this file: it rewrites the fixture's results.md.)"""
    out, cfg = tiny
    run = run_tiny(out, "--chains=2")
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    second = out / "chain-seed1338"
    assert json.loads((second / "sft" / "stage_config.json").read_text())["seed"] == 1338
    assert (second / "results.md").exists() is False  # one findings file, over both chains
    results = (out / "results.md").read_text()
    assert "Chains (whole runs of the recipe, each to its own SFT checkpoint): 2, seeds 1337, 1338." in results
    assert "| greedy % per chain (mean of its RL seeds) |" in results
    sft_row = results.split("| SFT |")[1].split("\n")[0]
    assert sft_row.strip(" |").split(" | ")[3].count(" / ") == 1  # the two SFT checkpoints' accuracies
    claims = results.split("## The paper's claims")[1].split("\n## ")[0]
    assert "| per chain; where one more chain's difference should land (95%) | verdict |" in claims
    rows = [row for row in claims.splitlines() if row.startswith("| ") and "verdict" not in row]
    assert rows and all(re.search(r" / [+-]\d+\.\d; next chain: \[[+-]\d+\.\d, [+-]\d+\.\d\]", row) for row in rows)
    timings = (out / "timings.md").read_text()
    assert "| chain-seed1338: sft |" in timings and "| chain-seed1338/rl/grpo_outcome-seed2 |" in timings


def test_a_seed_that_is_also_an_rl_seed_is_refused():
    command = [sys.executable, "pipeline.py", "configs/classroom.py", "--seed=2", "--seeds=3"]
    run = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert run.returncode == 1 and run.stderr.strip().splitlines()[-1] == (
        "pipeline.py: --seed=2 would repeat an RL run: a chain's first RL seed is its seed and the others are 2..3 "
        "(--seeds=3); pick --seed above 3")
