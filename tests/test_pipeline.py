"""pipeline.py: the maj@k / pass@k curves, the skip rule, and the whole recipe at a tiny size."""

import itertools
import json
import os
import subprocess
import sys
import time

import torch

import pipeline
from model import ModelArgs, Transformer

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
    assert not pipeline.is_done(str(output), None, [str(upstream)])  # missing
    output.write_text("{not json")
    assert not pipeline.is_done(str(output), None, [str(upstream)])  # half written
    output.write_text(json.dumps({"steps": 1}))
    assert pipeline.is_done(str(output), None, [str(upstream)])
    assert not pipeline.is_done(str(output), str(checkpoint), [str(upstream)])  # no checkpoint
    Transformer(ModelArgs(vocab_size=16, dim=8, n_layer=1, n_head=2, n_kv_head=2, intermediate_size=16,
                          max_seq_len=8)).save_pretrained(str(checkpoint))
    assert pipeline.is_done(str(output), str(checkpoint), [str(upstream)])
    later = time.time() + 5
    os.utime(upstream, (later, later))  # upstream was re-run after this stage
    assert not pipeline.is_done(str(output), str(checkpoint), [str(upstream)])


# Every stage at a tiny size: a smaller web, a few steps each, few problems. Real runs of the
# real scripts, so each stage's outputs must exist, load and make sense together.
TINY = ["--web_pool_pages=4000", "--web_seed_pages=400", "--web_shards=2", "--web_contaminated_pages=4",
        "--classroom_train_size=400", "--classroom_test_size=40",
        "--pretrain_steps=30", "--pretrain_warmup_steps=5", "--pretrain_eval_every=15", "--pretrain_ckpt_every=30",
        "--sft_steps=6", "--sft_batch_size=8", "--sft_micro_batch_size=8", "--sft_eval_problems=8", "--sft_save_every=6",
        "--rl_steps=2", "--rl_questions_per_step=2", "--rl_group_size=4", "--rl_rollout_questions=2",
        "--rl_micro_batch=8", "--rl_max_new_tokens=48", "--rl_save_every=2",
        "--eval_n_problems=8", "--eval_k=2", "--eval_max_new_tokens=48", "--grader_workers=1"]


def test_the_whole_recipe_runs_end_to_end_at_a_tiny_size(tmp_path):
    out = tmp_path / "run"
    command = [sys.executable, "pipeline.py", "configs/classroom.py", f"--out_dir={out}", *TINY]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]

    corpus = json.loads((out / "corpus" / "summary.json").read_text())
    assert corpus["tokens"]["train"] > 10_000 and corpus["iterations"][-1]["recall"] > 0.5
    pretrain = json.loads((out / "pretrain" / "summary.json").read_text())
    assert pretrain["val_loss"] < pretrain["unigram_entropy"]  # it learned something about the text
    for stage in ["pretrain", "sft"] + [f"rl/{folder}" for folder, _, _ in pipeline.RL_METHODS]:
        model = Transformer.from_pretrained(str(out / stage / "ckpt"))
        assert all(torch.isfinite(p).all() for p in model.parameters()), stage
    results = (out / "results.md").read_text()
    for label, _, _ in pipeline.EVALUATED:
        assert f"| {label} |" in results
    for plot in ["corpus_recall", "pretrain_loss", "rl_ppo_vs_grpo", "maj_pass_at_k"]:
        assert (out / "plots" / f"{plot}.png").stat().st_size > 10_000, plot

    # A second run finds every stage done and only redraws the table and plots.
    again = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and again.stdout.count("done before, skipped") == len(pipeline.STAGES) + len(pipeline.EVALUATED)
