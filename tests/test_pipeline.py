"""pipeline.py: the maj@k / pass@k curves, the skip rule, and the whole recipe at a tiny size."""

import itertools
import json
import os
import time

import pipeline
from model import ModelArgs, Transformer


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
