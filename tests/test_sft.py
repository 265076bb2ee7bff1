"""sft.py: the chat template evaluation uses, the loss on response tokens only, packing without
leaks across examples, a short real run (loss falls, summary written), exact resume, torchrun."""

import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import evaluate
import sft
from model import ModelArgs, Transformer, sequence_logprobs
from support import tasks, training
from support.config import load_config
from support.fileio import BadInput
from support.tokenizer import train_bpe

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def tokenizer():
    problems = tasks.classroom_problems("train", 100, 1234)
    return train_bpe([p.question + " " + tasks.render_solution(p, f) for p in problems for f in tasks.FORMATS], 400)


@pytest.fixture(scope="module")
def problems():
    return tasks.classroom_problems("train", 6, 99)


def tiny_model(tokenizer, seed=0):
    torch.manual_seed(seed)
    return Transformer(ModelArgs(vocab_size=tokenizer.n_vocab, dim=32, n_layer=2, n_head=4, n_kv_head=2,
                                 intermediate_size=64, max_seq_len=320, bos_id=tokenizer.bos_id,
                                 eos_id=tokenizer.eos_id))


@pytest.mark.parametrize("fmt", tasks.FORMATS)
def test_examples_use_the_prompt_evaluation_writes_and_train_only_the_response(tokenizer, problems, fmt):
    problem = problems[0]
    example = sft.make_example(tokenizer, problem, fmt)
    prompt = evaluate.make_prompt(tokenizer, problem.question, "chat", fmt, "classroom", [])
    assert example.tokens[:len(prompt)].tolist() == prompt
    assert not example.trained[:len(prompt)].any() and example.trained[len(prompt)]
    assert example.tokens[-1] == tokenizer.eos_id and example.trained[-1]
    response = tokenizer.decode(example.tokens[len(prompt):-1].tolist())
    assert response == " " + tasks.render_solution(problem, fmt)


def test_tool_outputs_are_read_not_trained_and_tokenized_as_the_runtime_appends_them(tokenizer, problems):
    problem = problems[0]
    example = sft.make_example(tokenizer, problem, "tool")
    ids, trained = example.tokens.tolist(), example.trained.tolist()
    prompt_len = trained.index(True)
    # maximal runs of untrained response tokens: the tool outputs
    runs, start = [], None
    for i in range(prompt_len, len(ids) + 1):
        if i < len(ids) and not trained[i]:
            start = i if start is None else start
        elif start is not None:
            runs.append((start, i))
            start = None
    assert len(runs) == len(problem.steps)
    marker = tokenizer.encode(evaluate.OUTPUT_MARKER)
    for (start, end), step in zip(runs, problem.steps):
        # what evaluate.respond appends after running the block, token for token
        assert ids[start:end] == tokenizer.encode(f"\n{step.result}\n```\n")
        # the model's stretch ends with the stop sequence that pauses generation for the tool
        assert ids[start - len(marker):start] == marker


def test_special_token_strings_are_tokens_in_the_models_text_and_text_in_a_programs_output(tokenizer):
    """As at inference: the response is read as encode_response reads it (transformers'
    apply_chat_template reads a conversation so), while a program's output is inserted by
    evaluate.py with plain encode: a program cannot print an EOS into the turn."""
    eos = tokenizer.eos[0]
    response = f"x = 1{eos}\n```python\nprint(x)\n```\n{evaluate.OUTPUT_MARKER}\n1{eos}\n```\nso {eos}1"
    ids, trained = sft.response_tokens(tokenizer, response, "tool")
    model_text, output_text, rest = sft.TOOL_OUTPUT.split(tokenizer.response_prefix + response)
    assert ids == (tokenizer.encode_with_special_tokens(model_text) + tokenizer.encode(output_text)
                   + tokenizer.encode_with_special_tokens(rest) + [tokenizer.eos_id])
    assert [i for i, t in zip(ids, trained) if i == tokenizer.eos_id and not t] == []  # no EOS in the output
    assert ids.count(tokenizer.eos_id) == 3  # the model's two, and the response's end
    assert sft.response_tokens(tokenizer, f"5{eos}", "cot")[0] == tokenizer.encode_response(f"5{eos}")


def test_packed_examples_get_the_log_probs_they_get_alone(tokenizer, problems):
    model = tiny_model(tokenizer)
    examples = [sft.make_example(tokenizer, p, f) for p, f in zip(problems, ["cot", "tool", "pot", "cot"])]
    batch = sft.collate([examples[:3], examples[3:]], tokenizer.pad_id, torch.device("cpu"))
    with torch.no_grad():
        packed = sequence_logprobs(model, batch.tokens, positions=batch.positions, attn_mask=batch.attn_mask)
        start = 0
        for example in examples[:3]:
            alone = sequence_logprobs(model, torch.from_numpy(example.tokens).long()[None])[0]
            n = len(example.tokens)
            torch.testing.assert_close(packed[0, start:start + n - 1], alone, atol=1e-5, rtol=1e-5)
            start += n
        alone = sequence_logprobs(model, torch.from_numpy(examples[3].tokens).long()[None])[0]
        torch.testing.assert_close(packed[1, :len(alone)], alone, atol=1e-5, rtol=1e-5)  # the padded row


def test_loss_is_the_per_example_mean_over_response_tokens_only(tokenizer, problems):
    model = tiny_model(tokenizer)
    examples = [sft.make_example(tokenizer, p, f) for p, f in zip(problems, ["cot", "tool", "pot", "cot"])]
    batch = sft.collate([examples[:2], examples[2:]], tokenizer.pad_id, torch.device("cpu"))
    loss = sft.packed_nll(model, batch) / len(examples)
    reference = []  # each example alone, full logits, the positions whose target is trained
    for example in examples:
        tokens = torch.from_numpy(example.tokens).long()
        logp = F.log_softmax(model(tokens[None, :-1])[0], dim=-1)  # (L-1, V)
        nll = -logp.gather(-1, tokens[1:, None])[:, 0]
        reference.append(nll[torch.from_numpy(example.trained[1:])].mean())
    torch.testing.assert_close(loss, torch.stack(reference).mean())
    # no prompt, padding or tool-output token carries weight: its gradient is zero
    trained = torch.zeros_like(batch.tokens, dtype=torch.bool)
    trained[0, :sum(len(e.tokens) for e in examples[:2])] = torch.from_numpy(np.concatenate([e.trained for e in examples[:2]]))
    trained[1, :sum(len(e.tokens) for e in examples[2:])] = torch.from_numpy(np.concatenate([e.trained for e in examples[2:]]))
    assert torch.equal(batch.weights > 0, trained[:, 1:])


def test_pack_rows_fills_windows_in_a_deterministic_stream():
    lengths = [30, 70, 50, 90, 20, 60, 40, 80]
    rows = sft.pack_rows(lengths, 128, 12, seed=7)
    assert len(rows) == 12 and all(sum(lengths[i] for i in row) <= 128 for row in rows)
    stream = [i for row in rows for i in row]
    assert sorted(stream[:8]) == list(range(8)) and sorted(stream[8:16]) == list(range(8))  # epochs
    for row, after in zip(rows, rows[1:]):  # a row ends only when the next example does not fit
        assert sum(lengths[i] for i in row) + lengths[after[0]] > 128
    assert sft.pack_rows(lengths, 128, 5, seed=7) == rows[:5]  # step k's rows do not depend on the run length


def test_format_shares_and_bad_values():
    cfg = load_config(["--sft_formats={'cot': 3, 'tool': 1}"])
    assert sft.format_shares(cfg) == {"cot": 0.75, "tool": 0.25}
    for bad in ["{'cot': 1, 'proof': 1}", "{'cot': 0}", "{'cot': -1, 'pot': 2}"]:
        with pytest.raises(BadInput, match="sft_formats"):
            sft.format_shares(load_config([f"--sft_formats={bad}"]))


def test_examples_follow_the_mixing_ratio_and_too_long_ones_are_dropped(tokenizer):
    problems = tasks.classroom_problems("train", 400, 5)
    examples, formats, dropped = sft.build_examples(problems, {"cot": 0.5, "tool": 0.5}, tokenizer, 0, 10_000)
    assert dropped == 0 and 150 < formats.count("tool") < 250
    lengths = sorted(len(e.tokens) for e in examples)
    _, _, dropped = sft.build_examples(problems, {"cot": 0.5, "tool": 0.5}, tokenizer, 0, lengths[200])
    assert dropped == sum(n > lengths[200] for n in lengths)


# ------------------------------------------------------------------------------- real runs

def run_args(out, steps, *extra):
    return [f"--out_dir={out}", "--device=cpu", "--classroom_train_size=64", "--classroom_test_size=6",
            "--classroom_max_number=30", f"--sft_steps={steps}", "--sft_batch_size=4", "--sft_micro_batch_size=2",
            "--sft_lr=0.003", "--sft_save_every=2", "--sft_eval_problems=6", "--eval_max_new_tokens=12",
            "--grader_workers=1", *extra]


@pytest.fixture(scope="module")
def base(tmp_path_factory, tokenizer):
    """A tiny random 'pretrained' checkpoint at {out}/pretrain/ckpt."""
    out = tmp_path_factory.mktemp("sft")
    training.save_checkpoint(out / "pretrain" / "ckpt", tiny_model(tokenizer), tokenizer)
    return out


def run_sft(monkeypatch, args):
    monkeypatch.setattr(sys, "argv", ["sft.py", *args])
    sft.main()


def sft_weights(out):
    return Transformer.from_pretrained(os.path.join(out, "sft", "ckpt")).state_dict()


@pytest.fixture(scope="module")
def straight(base, tmp_path_factory):
    out = tmp_path_factory.mktemp("straight")
    os.symlink(base / "pretrain", out / "pretrain")
    with pytest.MonkeyPatch.context() as monkeypatch:
        run_sft(monkeypatch, run_args(out, 6))
    return out


def test_short_run_loss_falls_and_writes_summary(straight):
    with open(straight / "sft" / "metrics.jsonl") as f:
        records = [json.loads(line) for line in f]
    assert [r["step"] for r in records] == list(range(1, 7))
    assert records[-1]["loss"] < records[0]["loss"] - 0.5
    summary = json.load(open(straight / "sft" / "summary.json"))
    assert summary["steps"] == 6 and summary["eval_problems"] == 6
    assert 0 <= summary["accuracy"] <= 1 and 0 <= summary["format_rate"] <= 1
    assert len(open(straight / "sft" / "eval-cot.jsonl").readlines()) == 6


def test_resume_is_bit_identical(base, straight, tmp_path, monkeypatch):
    os.symlink(base / "pretrain", tmp_path / "pretrain")
    run_sft(monkeypatch, run_args(tmp_path, 4))
    assert training.load_train_state(tmp_path / "sft" / "ckpt")["step"] == 4
    with pytest.raises(SystemExit, match="trained on other examples or in another order"):
        run_sft(monkeypatch, run_args(tmp_path, 6) + ["--seed=1"])  # another draw of formats and packing
    run_sft(monkeypatch, run_args(tmp_path, 6))  # more steps: the same rows, then new ones
    for (k, a), (_, b) in zip(sft_weights(straight).items(), sft_weights(tmp_path).items()):
        assert torch.equal(a, b), k


@pytest.mark.skipif(not os.environ.get("TEST_COMPILE"), reason="compiling takes ~1 min on a CPU; TEST_COMPILE=1 runs it")
def test_a_compiled_run_learns_like_an_eager_one(base, straight, tmp_path, monkeypatch):
    """sft.py --compile=true compiles the model (its held-out evaluation decodes eagerly here, so
    that what compiles is the training): the same steps, a falling loss close to the eager run's
    (compiled kernels round differently), and a checkpoint with the same parameter names."""
    import model as model_module
    from torch._dynamo.utils import counters
    os.symlink(base / "pretrain", tmp_path / "pretrain")
    monkeypatch.setattr(model_module, "_compiled_steps", {"cpu": False})
    counters.clear()
    run_sft(monkeypatch, run_args(tmp_path, 6) + ["--compile=true"])
    assert counters["stats"]["unique_graphs"] > 0
    losses = {}
    for out in (straight, tmp_path):
        with open(out / "sft" / "metrics.jsonl") as f:
            losses[out] = [json.loads(line)["loss"] for line in f]
    assert losses[tmp_path][-1] < losses[tmp_path][0] - 0.5
    assert losses[tmp_path] == pytest.approx(losses[straight], rel=1e-3)
    assert list(sft_weights(tmp_path)) == list(sft_weights(straight))


def test_missing_checkpoint_names_the_fix(tmp_path, monkeypatch):
    with pytest.raises(SystemExit, match="run pretrain.py first or set --sft_init"):
        run_sft(monkeypatch, run_args(tmp_path, 2))


def test_two_process_fsdp_run_matches_one_process(base, straight, tmp_path):
    """Each rank's rows, the loss scaled to the global batch, the gathered checkpoint, the
    evaluation split over ranks (DDP shares all of it but the sharding; test_training covers it)."""
    os.symlink(base / "pretrain", tmp_path / "pretrain")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--standalone",
           os.path.join(ROOT, "sft.py"), *run_args(tmp_path, 6, "--parallel=fsdp")]
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    for (k, a), (_, b) in zip(sft_weights(straight).items(), sft_weights(tmp_path).items()):
        torch.testing.assert_close(a, b, atol=2e-5, rtol=1e-4, msg=k)
    summary = json.load(open(tmp_path / "sft" / "summary.json"))
    assert summary["accuracy"] == json.load(open(straight / "sft" / "summary.json"))["accuracy"]


def test_divergence_exits_naming_the_step_and_saves_no_nan(base, tmp_path, monkeypatch):
    os.symlink(base / "pretrain", tmp_path / "pretrain")
    with pytest.raises(SystemExit, match=r"sft.py: step (\d+): .*(loss|grad_norm) nan.*untouched; lower sft_lr") as stopped:
        run_sft(monkeypatch, run_args(tmp_path, 6, "--sft_lr=1e30", "--sft_save_every=1"))
    bad_step = int(str(stopped.value).split()[2].rstrip(":"))
    assert training.load_train_state(tmp_path / "sft" / "ckpt")["step"] == bad_step - 1
    assert all(torch.isfinite(w).all() for w in sft_weights(tmp_path).values())
    assert not os.path.exists(tmp_path / "sft" / "summary.json")


def test_ctrl_c_saves_the_whole_steps_done_and_exits_130(base, straight, tmp_path, monkeypatch):
    os.symlink(base / "pretrain", tmp_path / "pretrain")
    nll, calls = sft.packed_nll, []

    def ctrl_c_in_step_3(model, batch):
        calls.append(1)
        if len(calls) == 5:  # steps 1 and 2 took two micro-batches each
            signal.raise_signal(signal.SIGINT)
        return nll(model, batch)

    monkeypatch.setattr(sft, "packed_nll", ctrl_c_in_step_3)
    before = signal.getsignal(signal.SIGINT)  # Python's, or SIG_IGN when the tests run in the background
    with pytest.raises(SystemExit) as stopped:
        run_sft(monkeypatch, run_args(tmp_path, 6))
    assert stopped.value.code == 130
    assert training.load_train_state(tmp_path / "sft" / "ckpt")["step"] == 2
    assert signal.getsignal(signal.SIGINT) is before  # the handler it found, again
    monkeypatch.setattr(sft, "packed_nll", nll)
    run_sft(monkeypatch, run_args(tmp_path, 6))
    for (k, a), (_, b) in zip(sft_weights(straight).items(), sft_weights(tmp_path).items()):
        assert torch.equal(a, b), k
