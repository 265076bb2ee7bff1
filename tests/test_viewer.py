"""support/viewer.py: what a step records reaches the page unchanged (read back from the page's JSON
blob with html.parser), long outputs are cut and the page stays small, and a folder without rollouts
is a one-line error."""

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from html.parser import HTMLParser

import pytest
import torch

from support import tasks, viewer
from support.tokenizer import train_bpe

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def tokenizer():
    problems = tasks.classroom_problems("train", 100, 1234)
    return train_bpe([p.question + " " + tasks.render_solution(p, "cot") for p in problems], 400)


def wrong(solution):
    """The solution with its final answer changed: a wrong output."""
    head, _, answer = solution.rpartition("\\boxed{")
    return head + "\\boxed{" + str(int(answer.rstrip("}.")) + 1) + "}."


@dataclass
class Rollouts:
    """grpo.Rollouts' fields, as record_rollouts reads them. A copy, so that these tests do not
    import grpo.py and everything it imports."""
    problems: list
    texts: list
    tokens: torch.Tensor  # (N, L)
    mask: torch.Tensor  # (N, L)
    response_mask: torch.Tensor  # (N, L-1), column j scores token j + 1
    truncated: torch.Tensor  # (N,)

    def response_columns(self, row):
        return self.response_mask[row].nonzero().squeeze(-1).tolist()


def make_rollouts(tokenizer, problems, responses):
    """Rollouts built by hand: one row per (problem, response token list)."""
    prompts = [tokenizer.encode_prompt(p.question) for p in problems]
    seqs = [p + r for p, r in zip(prompts, responses)]
    L = max(map(len, seqs))
    tokens = torch.full((len(seqs), L), tokenizer.pad_id)
    mask = torch.zeros(len(seqs), L, dtype=torch.bool)
    response_mask = torch.zeros(len(seqs), L - 1, dtype=torch.bool)
    for row, (prompt, seq) in enumerate(zip(prompts, seqs)):
        tokens[row, :len(seq)], mask[row, :len(seq)] = torch.tensor(seq), True
        response_mask[row, len(prompt) - 1:len(seq) - 1] = True  # column j scores token j + 1
    truncated = torch.tensor([r[-1] != tokenizer.eos_id for r in responses])
    texts = [tokenizer.decode([t for t in r if t != tokenizer.eos_id]) for r in responses]
    return Rollouts(problems, texts, tokens, mask, response_mask, truncated)


def step_tensors(rollouts, correct, G, seed=0):
    """What one outcome-reward GRPO step computes for `rollouts` (ratio and KL drawn at random)."""
    g = torch.Generator().manual_seed(seed)
    m = rollouts.response_mask
    rewards, reward_mask = torch.zeros(m.shape), torch.zeros(m.shape, dtype=torch.bool)
    for row in range(len(correct)):
        last = rollouts.response_columns(row)[-1]
        rewards[row, last], reward_mask[row, last] = correct[row], True
    r = correct.view(-1, G)
    mean, std = r.mean(1, keepdim=True), r.std(1, unbiased=False, keepdim=True)
    outcome = ((r - mean) / std.clamp(min=1e-6)).view(-1, 1)  # (r_i - mean(r)) / std(r), paper 4.1.2
    ratio = torch.exp(0.3 * torch.randn(m.shape, generator=g)) * m
    return dict(rewards=rewards, reward_mask=reward_mask, correct=correct, advantages=outcome * m,
                ratio=ratio, clipped=((ratio - 1).abs() > 0.2) & m,
                kl=torch.rand(m.shape, generator=g) * 0.01 * m,
                group_mean=mean.squeeze(1), group_std=std.squeeze(1))


class Blob(HTMLParser):
    """The page's <script type="application/json"> data, as the browser's JSON.parse reads it."""

    def __init__(self):
        super().__init__()
        self.inside, self.text = False, ""

    def handle_starttag(self, tag, attrs):
        self.inside = tag == "script" and ("type", "application/json") in attrs

    def handle_endtag(self, tag):
        self.inside = False

    def handle_data(self, data):
        if self.inside:
            self.text += data


def page_blob(path):
    parser = Blob()
    with open(path, encoding="utf-8") as f:
        parser.feed(f.read())
    return json.loads(parser.text)


def test_the_numbers_of_a_token_on_the_page_are_the_recorded_ones(tokenizer, tmp_path):
    problems = tasks.classroom_problems("train", 2, 7)
    problems[1].question += " </script><b>"  # text that must not end the page's data early
    G = 4
    texts = [[s, wrong(s), s, wrong(s)] for s in (tasks.render_solution(p, "cot") for p in problems)]
    rollouts = make_rollouts(tokenizer, [p for p in problems for _ in range(G)],
                             [tokenizer.encode_response(t) for ts in texts for t in ts])
    correct = torch.tensor([1.0, 0.0, 1.0, 0.0] * 2)
    step = step_tensors(rollouts, correct, G)
    values = torch.randn(rollouts.response_mask.shape) * rollouts.response_mask
    path = tmp_path / "out" / "rl" / "{}" / viewer.ROLLOUTS_FILE
    viewer.record_rollouts(str(path).format("grpo_outcome"), "grpo_outcome", 3, rollouts, tokenizer, **step)
    viewer.record_rollouts(str(path).format("ppo"), "ppo", 3, rollouts, tokenizer, **step,
                           values=values, returns=values + step["advantages"])

    viewer.main([str(tmp_path / "out")])
    data = page_blob(tmp_path / "out" / viewer.PAGE_FILE)
    assert data["methods"] == ["grpo_outcome", "ppo"] and data["steps"] == {"grpo_outcome": [3], "ppo": [3]}
    assert [q["text"] for q in data["questions"]] == [p.question for p in problems]

    row, k = 6, 5  # question 1, output 2, response token 5
    column = rollouts.response_columns(row)[k]
    recorded = [json.loads(line) for line in open(str(path).format("ppo"), encoding="utf-8")][row]
    shown = data["groups"]["ppo"]["3"]["1"]["outputs"][2]
    for name, tensor in [("advantage", step["advantages"]), ("ratio", step["ratio"]), ("kl", step["kl"]),
                         ("value", values), ("return", values + step["advantages"])]:
        assert shown[name][k] == recorded[name][k] == viewer.rounded(float(tensor[row, column])), name
    assert shown["clipped"][k] == recorded["clipped"][k] == int(step["clipped"][row, column])
    token_id = int(rollouts.tokens[row, column + 1])
    assert shown["tokens"][k] == tokenizer.encoding.decode_single_token_bytes(token_id).decode()
    assert shown["tokens"][-1] == viewer.EOS_TEXT
    # the outcome reward lands on the last response token, EOS
    assert shown["rewards"] == [[len(shown["tokens"]) - 1, 1.0]] and shown["correct"]
    group = data["groups"]["ppo"]["3"]["1"]
    assert (group["G"], group["correct"], group["mean"], group["std"]) == (4, 2, 0.5, 0.5)
    # outcome supervision: one advantage on every token, (1 - 0.5) / 0.5
    assert set(data["groups"]["grpo_outcome"]["3"]["1"]["outputs"][2]["advantage"]) == {1.0}
    assert "value" not in data["groups"]["grpo_outcome"]["3"]["1"]["outputs"][2]


def test_long_outputs_are_cut_and_a_7b_sized_page_stays_small(tokenizer, tmp_path):
    """The paper's G = 64 outputs of 1,024 tokens, 2 probe questions at 3 steps, GRPO and PPO."""
    G, n_tokens, questions, steps = 64, 1024, 2, (0, 250, 499)
    problems = tasks.classroom_problems("train", questions, 3)
    g = torch.Generator().manual_seed(0)
    responses = torch.randint(0, 256, (questions * G, n_tokens), generator=g).tolist()  # no EOS: truncated
    rollouts = make_rollouts(tokenizer, [p for p in problems for _ in range(G)], responses)
    correct = (torch.rand(questions * G, generator=g) < 0.3).float()
    step = step_tensors(rollouts, correct, G)
    for method in ("grpo_outcome", "ppo"):
        for s in steps:
            extra = {"values": step["advantages"], "returns": step["advantages"]} if method == "ppo" else {}
            viewer.record_rollouts(str(tmp_path / "rl" / method / viewer.ROLLOUTS_FILE), method, s,
                                   rollouts, tokenizer, **step, **extra)
    out = tmp_path / viewer.PAGE_FILE
    viewer.main([str(tmp_path)])

    shown_tokens = 2 * questions * len(steps) * viewer.MAX_OUTPUTS * 2 * viewer.KEEP_TOKENS
    size = os.path.getsize(out)
    assert size < 60 * shown_tokens + 50_000, size  # a few dozen bytes per shown token
    group = page_blob(out)["groups"]["ppo"]["499"]["1"]
    assert group["G"] == G and len(group["outputs"]) == viewer.MAX_OUTPUTS
    assert sum(o["correct"] for o in group["outputs"]) == viewer.MAX_OUTPUTS // 2  # both kinds in view
    o = group["outputs"][0]
    assert o["n"] == n_tokens and o["gap"] == [viewer.KEEP_TOKENS, n_tokens - 2 * viewer.KEEP_TOKENS]
    assert len(o["tokens"]) == len(o["advantage"]) == len(o["value"]) == 2 * viewer.KEEP_TOKENS
    # the first shown token after the gap is response token n - KEEP_TOKENS, the last is the last
    row = G + o["i"]
    columns = rollouts.response_columns(row)
    tail = int(rollouts.tokens[row, columns[n_tokens - viewer.KEEP_TOKENS] + 1])
    assert o["tokens"][viewer.KEEP_TOKENS] == viewer.token_text(tokenizer, tail)
    assert o["rewards"] == [[n_tokens - 1, o["correct"] * 1.0]] and o["truncated"]


def run_viewer(*args):
    return subprocess.run([sys.executable, "-m", "support.viewer", *args],
                          capture_output=True, text=True, cwd=ROOT)


def test_a_folder_without_rollouts_is_a_one_line_error(tmp_path):
    run = tmp_path / "out" / "rl" / "grpo_outcome"
    run.mkdir(parents=True)
    (run / "metrics.jsonl").write_text('{"step": 1}\n')
    for folder, missing in [(run, "no rollouts.jsonl"), (tmp_path / "out", "no run folder holds rollouts.jsonl"),
                            (tmp_path / "nowhere", "no such folder")]:
        result = run_viewer(str(folder))
        assert result.returncode == 1 and result.stdout == ""
        assert result.stderr.startswith(f"support.viewer: {folder}") and missing in result.stderr
        assert result.stderr.count("\n") == 1, result.stderr
    (run / viewer.ROLLOUTS_FILE).write_text('{"method": "grpo_outcome", "step": 0}\n')
    result = run_viewer(str(run))
    assert result.returncode == 1 and "record 1 lacks q, i, question" in result.stderr


def test_an_out_path_that_is_a_folder_is_a_one_line_error(tokenizer, tmp_path):
    problems = tasks.classroom_problems("train", 1, 7)
    rollouts = make_rollouts(tokenizer, problems * 2, [tokenizer.encode_response(problems[0].solution)] * 2)
    viewer.record_rollouts(str(tmp_path / "run" / viewer.ROLLOUTS_FILE), "grpo_outcome", 0, rollouts, tokenizer,
                           **step_tensors(rollouts, torch.tensor([1.0, 1.0]), 2))
    result = run_viewer(str(tmp_path / "run"), f"--out={tmp_path}")
    assert result.returncode == 1 and result.stderr.count("\n") == 1, result.stderr
    assert "cannot write the page to" in result.stderr and "give --out a file path" in result.stderr
