"""pretrain.py: the LR schedule, the data mixture, a short run whose loss falls, exact resume,
gradient accumulation, the NaN stop and Ctrl-C, on a tiny corpus written here."""

import json
import os
import random
import shutil
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch

import pretrain
from model import Transformer
from support import shards, training
from support.fileio import BadInput
from support.tokenizer import train_bpe
from support.training import load_train_state

TINY_MODEL = ["--n_layer=2", "--dim=32", "--n_head=2", "--n_kv_head=2", "--intermediate_size=64",
              "--max_seq_len=32", "--vocab_size=272"]


def sentences(rng, n):
    """Arithmetic facts: enough structure that a tiny model's loss falls in a few dozen steps."""
    out = []
    for _ in range(n):
        a, b = rng.randint(1, 20), rng.randint(1, 20)
        out.append(rng.choice([f"{a} plus {b} is {a + b}.", f"Take {a + b} and remove {b}: {a} remain."]))
    return out


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """out_dir with tokenizer.tiktoken and corpus/tokens/{train,val}-00000.bin, as corpus.py writes."""
    out = tmp_path_factory.mktemp("out")
    rng = random.Random(0)
    docs = [" ".join(sentences(rng, 8)) for _ in range(600)]
    tok = train_bpe(docs, 272)
    tok.save(str(out / "tokenizer.tiktoken"))
    for split, part in (("train", docs[:550]), ("val", docs[550:])):
        ids = [t for doc in part for t in tok.encode(doc) + [tok.eos_id]]
        shards.write_shard(str(out / "corpus" / "tokens" / f"{split}-00000.bin"), np.array(ids, np.uint16))
    return out


def run(corpus, out_dir, *overrides):
    """pretrain.main in this process on the tiny corpus, writing below out_dir."""
    os.makedirs(out_dir, exist_ok=True)
    for name in ("tokenizer.tiktoken", "tokenizer.tiktoken.json", "corpus"):
        if not os.path.exists(os.path.join(out_dir, name)):
            os.symlink(corpus / name, os.path.join(out_dir, name))
    argv = [f"--out_dir={out_dir}", *TINY_MODEL, "--pretrain_steps=8", "--pretrain_tokens_per_step=256",
            "--pretrain_batch_size=4", "--pretrain_lr=3e-3", "--pretrain_warmup_steps=2",
            "--pretrain_eval_every=4", "--pretrain_eval_batches=2", "--pretrain_ckpt_every=4", *overrides]
    return pretrain.main(argv)


def weights(out_dir):
    return Transformer.from_pretrained(os.path.join(out_dir, "pretrain", "ckpt")).state_dict()


def metrics(out_dir):
    with open(os.path.join(out_dir, "pretrain", "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def test_learning_rate_is_the_papers_multi_step_schedule():
    # peak 1e-3, 10 warm-up steps, 100 steps: 0.1, 0.5, 1.0 of the peak while warming up, the
    # peak until step 80 (80%), 31.6% until step 90 (90%), then 10%
    expected = {0: 1e-4, 4: 5e-4, 9: 1e-3, 10: 1e-3, 79: 1e-3, 80: 3.16e-4, 89: 3.16e-4, 90: 1e-4, 99: 1e-4}
    for step, lr in expected.items():
        assert pretrain.learning_rate(step, 100, 1e-3, 10) == pytest.approx(lr), step


def test_mixture_draws_sources_by_weight_and_every_rank_a_slice_of_one_batch(tmp_path):
    # source a: two shards, tokens 0..499 and 600..899; source b: one shard, 1000..1499
    for path, low, high in (("a/train-00000.bin", 0, 500), ("a/train-00001.bin", 600, 900),
                            ("b/train-00000.bin", 1000, 1500)):
        shards.write_shard(str(tmp_path / path), np.arange(low, high, dtype=np.uint16))
    sources = [pretrain.TokenSource(n, str(tmp_path / n), "train", 9) for n in ("a", "b")]
    mix = pretrain.Mixture(sources, [3.0, 1.0])
    rows = mix.rows((7, 0, 3), 20000, 0, 20000).numpy()
    assert (np.diff(rows, axis=1) == 1).all()  # one contiguous window of one shard: none crosses 499 -> 600
    from_a = rows[:, 0] < 1000
    assert abs(from_a.mean() - 0.75) < 0.01, from_a.mean()
    ends = set(rows[:, -1])
    assert {499, 899, 1499} <= ends and {0, 600, 1000} <= set(rows[:, 0])  # first and last windows drawn
    assert torch.equal(mix.rows((7, 0, 3), 20000, 100, 104), torch.from_numpy(rows[100:104]))
    # a shard shorter than a row is counted as never read; ids past the vocabulary are refused
    shards.write_shard(str(tmp_path / "c/train-00000.bin"), np.arange(2000, 2100, dtype=np.uint16))
    shards.write_shard(str(tmp_path / "c/train-00001.bin"), np.arange(0, 5, dtype=np.uint16))
    short = pretrain.TokenSource("c", str(tmp_path / "c"), "train", 9)
    assert short.unread == 5
    short.check_ids(2100)
    with pytest.raises(BadInput, match="source 'c': its train shards .* hold token id 2099, beyond the model's "
                                       "vocabulary of 2048"):
        short.check_ids(2048)


def test_short_run_loss_falls_below_unigram_entropy(corpus, tmp_path):
    summary = run(corpus, str(tmp_path), "--pretrain_steps=40", "--pretrain_eval_every=20")
    losses = [r["loss"] for r in metrics(tmp_path)]
    assert len(losses) == 40 and {"lr", "grad_norm", "tokens_per_s"} <= set(metrics(tmp_path)[0])
    assert sum(losses[-5:]) / 5 < losses[0] - 1.5
    assert summary["val_loss"] < summary["unigram_entropy"] - 0.3
    saved = json.load(open(tmp_path / "pretrain" / "summary.json"))
    assert saved["steps"] == 40 and saved["tokens"] == 40 * 256
    # continued pretraining (the 7B starts from DeepSeek-Coder): a new run from this checkpoint
    run(corpus, str(tmp_path / "continued"), "--pretrain_steps=1",
        f"--pretrain_init={tmp_path / 'pretrain' / 'ckpt'}")
    assert metrics(tmp_path / "continued")[0]["loss"] < losses[0] - 1.5


def test_resume_after_ctrl_c_is_exact(corpus, tmp_path, monkeypatch):
    run(corpus, str(tmp_path / "straight"))
    # Ctrl-C arrives in the first of step 3's two micro-steps: the run drops that step, saves the
    # two whole steps, exits; the same command then resumes at step 3.
    loss_of = pretrain.lm_loss
    training_calls = []

    def ctrl_c_in_step_3(model, rows):
        if model.training:
            training_calls.append(1)
            if len(training_calls) == 5:  # steps 1 and 2 took 2 micro-steps each
                signal.raise_signal(signal.SIGINT)
        return loss_of(model, rows)

    monkeypatch.setattr(pretrain, "lm_loss", ctrl_c_in_step_3)
    with pytest.raises(SystemExit) as stopped:
        run(corpus, str(tmp_path / "resumed"))
    assert stopped.value.code == 130
    monkeypatch.setattr(pretrain, "lm_loss", loss_of)
    assert load_train_state(tmp_path / "resumed" / "pretrain" / "ckpt")["step"] == 2
    run(corpus, str(tmp_path / "resumed"))
    for (k, a), (_, b) in zip(weights(tmp_path / "straight").items(), weights(tmp_path / "resumed").items()):
        assert torch.equal(a, b), k
    straight, resumed = metrics(tmp_path / "straight"), metrics(tmp_path / "resumed")
    assert [r["step"] for r in resumed] == list(range(1, 9))
    assert [(r["loss"], r["lr"]) for r in resumed] == [(r["loss"], r["lr"]) for r in straight]


def test_sigterm_then_ctrl_c_still_saves_and_a_second_ctrl_c_stops_at_once():
    stop = training.StopRequest()
    try:
        signal.raise_signal(signal.SIGTERM)  # torchrun's agent forwards a Ctrl-C as SIGTERM
        signal.raise_signal(signal.SIGINT)  # and the terminal's own Ctrl-C reaches the worker too
        assert stop.requested
        with pytest.raises(KeyboardInterrupt):
            signal.raise_signal(signal.SIGINT)
    finally:
        stop.restore()


def test_gradient_accumulation_matches_one_big_batch(corpus, tmp_path):
    run(corpus, str(tmp_path / "one"), "--pretrain_steps=3")
    run(corpus, str(tmp_path / "two"), "--pretrain_steps=3", "--pretrain_batch_size=2")  # accumulation 2
    for (k, a), (_, b) in zip(weights(tmp_path / "one").items(), weights(tmp_path / "two").items()):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4, msg=k)


@pytest.mark.parametrize("parallel", ["ddp", "fsdp"])
def test_two_process_run_matches_one_process(corpus, tmp_path, parallel):
    # a step's global batch does not depend on the number of ranks: 1 rank x 4 rows x 2
    # micro-steps there, 2 ranks x 2 rows x 2 micro-steps (DDP skips one all-reduce) here
    run(corpus, str(tmp_path / "one"), "--pretrain_steps=3")
    for name in ("tokenizer.tiktoken", "tokenizer.tiktoken.json", "corpus"):
        os.symlink(corpus / name, tmp_path / name)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "pretrain.py",
           f"--out_dir={tmp_path}", *TINY_MODEL, "--pretrain_steps=3", "--pretrain_tokens_per_step=256",
           "--pretrain_batch_size=2", "--pretrain_lr=3e-3", "--pretrain_warmup_steps=2",
           "--pretrain_eval_batches=2", f"--parallel={parallel}", "--device=cpu"]
    result = subprocess.run(cmd, cwd=root, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    for (k, a), (_, b) in zip(weights(tmp_path / "one").items(), weights(tmp_path).items()):
        torch.testing.assert_close(a, b, atol=2e-5, rtol=1e-4, msg=k)


def test_divergence_stops_naming_the_step_and_keeps_the_last_checkpoint(corpus, tmp_path):
    # a learning rate of 1e9 blows the weights up within a few steps; a checkpoint every step
    with pytest.raises(training.Diverged, match=r"step (\d+)") as stopped:
        run(corpus, str(tmp_path), "--pretrain_lr=1e9", "--pretrain_ckpt_every=1", "--pretrain_steps=50")
    bad_step = int(stopped.value.args[0].split()[1].rstrip(":"))
    assert load_train_state(tmp_path / "pretrain" / "ckpt")["step"] == bad_step - 1
    assert all(torch.isfinite(w).all() for w in weights(tmp_path).values())
    assert not os.path.exists(tmp_path / "pretrain" / "summary.json")


def test_bad_batch_arithmetic_and_missing_shards_are_clear_errors(corpus, tmp_path):
    with pytest.raises(BadInput, match="not a multiple of pretrain_batch_size x max_seq_len"):
        run(corpus, str(tmp_path / "a"), "--pretrain_tokens_per_step=300")
    with pytest.raises(BadInput, match="no train-\\*.bin token shards"):
        run(corpus, str(tmp_path / "b"), "--pretrain_sources={'web': 'nowhere'}", "--pretrain_weights={'web': 1.0}")


def test_a_corrupt_train_state_is_named_and_the_previous_outputs_stay(corpus, tmp_path):
    run(corpus, str(tmp_path))
    state = tmp_path / "pretrain" / "ckpt" / "train_state.pt"
    state.write_bytes(state.read_bytes()[:100])  # a copy cut short
    log = (tmp_path / "pretrain" / "metrics.jsonl").read_text()
    with pytest.raises(BadInput, match=f"{state}: truncated or corrupt.*delete"):
        run(corpus, str(tmp_path))
    assert (tmp_path / "pretrain" / "summary.json").exists()  # inputs are checked before outputs are touched
    assert (tmp_path / "pretrain" / "metrics.jsonl").read_text() == log


def test_a_save_killed_between_its_renames_is_recovered_at_the_next_start(corpus, tmp_path, capsys):
    run(corpus, str(tmp_path), "--pretrain_steps=4", "--pretrain_ckpt_every=2")
    folder = tmp_path / "pretrain"
    (folder / ".ckpt.killed01").mkdir()  # a save killed while writing
    shutil.copytree(folder / "ckpt", folder / ".ckpt.swapped")  # a save killed between its renames:
    os.rename(folder / "ckpt", folder / ".ckpt.swapped.old")  # the new folder whole, the old one aside
    run(corpus, str(tmp_path), "--pretrain_steps=4", "--pretrain_ckpt_every=2")
    out = capsys.readouterr().out
    assert f"recovered {folder / 'ckpt'}" in out and "at step 4" in out  # resumed, not started over
    assert sorted(os.listdir(folder)) == ["ckpt", "metrics.jsonl", "summary.json"]
