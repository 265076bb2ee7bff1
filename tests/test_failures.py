"""What every stage does when things go wrong (issue 18): a NaN/inf stops the run before it
spreads and is never saved, a corrupt file or an out-of-range value is one line naming it and
the fix, and a failed, interrupted or killed run loses nothing. Stage-specific cases live
beside each stage's tests (test_pretrain, test_sft, test_pipeline, test_configs)."""

import hashlib
import os
import subprocess
import sys

import pytest
import torch

import corpus
from model import ModelArgs, Transformer
from support import training
from support.fileio import BadInput, read_json, recover_staged_folder

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_model():
    torch.manual_seed(0)
    return Transformer(ModelArgs(vocab_size=16, dim=8, n_layer=1, n_head=2, n_kv_head=2, intermediate_size=16,
                                 max_seq_len=8))


def test_check_finite_names_the_step_the_quantity_and_the_last_checkpoint(tmp_path):
    training.check_finite(3, str(tmp_path), loss=1.5, grad_norm=torch.tensor(2.0), rewards=torch.ones(8))
    with pytest.raises(training.Diverged, match=r"^step 3: grad_norm inf: .* no checkpoint was saved in"):
        training.check_finite(3, str(tmp_path), loss=1.5, grad_norm=float("inf"))
    tiny_model().save_pretrained(str(tmp_path))
    rewards = torch.tensor([1.0, float("nan"), 0.0, float("nan")])
    with pytest.raises(training.Diverged, match=rf"^step 7: rewards: 2 of 4 values NaN/inf: .*the last checkpoint, "
                                                rf"{tmp_path}, is untouched; lower rl_lr$"):
        training.check_finite(7, str(tmp_path), "lower rl_lr", loss=0.1, rewards=rewards)


def test_non_finite_weights_are_never_saved_and_the_last_checkpoint_stays(tmp_path):
    model = tiny_model()
    training.save_checkpoint(tmp_path / "ckpt", model, None, {"step": 1})
    before = (tmp_path / "ckpt" / "model.safetensors").read_bytes()
    with torch.no_grad():
        next(model.parameters())[0] = float("nan")
    with pytest.raises(training.Diverged, match=r"^step 2: the weights hold NaN/inf, so they were not saved; the last "
                                                rf"checkpoint, {tmp_path / 'ckpt'}, is untouched"):
        training.save_checkpoint(tmp_path / "ckpt", model, None, {"step": 2})
    assert (tmp_path / "ckpt" / "model.safetensors").read_bytes() == before
    assert training.load_train_state(tmp_path / "ckpt")["step"] == 1
    assert os.listdir(tmp_path) == ["ckpt"]


def test_truncated_or_corrupt_files_are_named_with_the_fix(tmp_path):
    config = tmp_path / "config.json"
    config.write_text('{"hidden_size": 64, "num_hid')
    with pytest.raises(BadInput, match=f"^{config}: not valid JSON .*truncated or corrupt: restore it"):
        read_json(str(config))
    with pytest.raises(BadInput, match=f"^{tmp_path / 'none.json'}: no such file"):
        read_json(str(tmp_path / "none.json"))
    training.save_checkpoint(tmp_path / "ckpt", tiny_model(), None, {"step": 1})
    state = tmp_path / "ckpt" / "train_state.pt"
    for damaged in (state.read_bytes()[:-40], b"\0" * 64):
        state.write_bytes(damaged)
        with pytest.raises(BadInput, match=f"^{state}: truncated or corrupt .*cannot resume"):
            training.load_train_state(tmp_path / "ckpt")


def test_leftovers_of_killed_saves_are_removed_and_a_finished_write_put_in_place(tmp_path):
    (tmp_path / "ckpt").mkdir()
    (tmp_path / ".ckpt.abc123").mkdir()  # killed while written
    (tmp_path / ".ckpt.def456.old").mkdir()  # killed while the replaced one was removed
    (tmp_path / ".ckpt.other.tmp").write_text("")  # fileio.atomic_path's, not a folder save's
    (tmp_path / ".ckpt2.xyz789").mkdir()  # another folder's
    assert recover_staged_folder(tmp_path / "ckpt") == ""
    assert sorted(os.listdir(tmp_path)) == [".ckpt.other.tmp", ".ckpt2.xyz789", "ckpt"]
    os.rename(tmp_path / "ckpt", tmp_path / ".ckpt.k1.old")
    (tmp_path / ".ckpt.k1").mkdir()
    (tmp_path / ".ckpt.k1" / "new").write_text("")
    assert recover_staged_folder(tmp_path / "ckpt").startswith("recovered")
    assert os.listdir(tmp_path / "ckpt") == ["new"] and not (tmp_path / ".ckpt.k1.old").exists()


def test_entry_points_end_errors_and_ctrl_c_with_one_line(capsys):
    def bad_input():
        raise BadInput("x.jsonl:3: malformed JSON line; fix or remove it")

    def ctrl_c():
        raise KeyboardInterrupt

    with pytest.raises(SystemExit, match=r"^stage.py: x.jsonl:3: malformed JSON line; fix or remove it$"):
        training.run_main("stage.py", bad_input)
    with pytest.raises(SystemExit) as stopped:
        training.run_main("stage.py", ctrl_c)
    assert stopped.value.code == training.INTERRUPTED == 130
    assert capsys.readouterr().err.strip().count("\n") == 0


def test_a_failed_torch_compile_ends_in_one_line_naming_the_fix():
    def broken_backend(graph, example_inputs):  # as inductor fails without a working C++ compiler
        raise RuntimeError("no working C++ compiler\nthe details")

    def stage():
        torch.compile(lambda x: x * 2, backend=broken_backend)(torch.ones(2))
    with pytest.raises(SystemExit, match=r"^stage.py: torch.compile failed \(RuntimeError: no working C\+\+ "
                                         r"compiler\); run without --compile=true$"):
        training.run_main("stage.py", stage)


def one_line_failure(*args):
    run = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True,
                         env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=120)
    assert run.returncode == 1 and run.stderr.strip().count("\n") == 0, run.stderr
    return run.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_a_gpu_config_on_a_cpu_machine_says_so_and_where_to_go():
    message = one_line_failure("sft.py", "configs/7b.py")
    assert "device='cuda' needs a GPU" in message and "has no CUDA" in message
    assert all(hint in message for hint in ("configs/7b.py", "--dry_run=true", "configs/classroom.py"))


def test_an_out_of_range_value_is_one_line_naming_the_key():
    message = one_line_failure("corpus.py", "configs/classroom.py", "--corpus_val_share=-1")
    assert message.startswith("config error: command line: corpus_val_share = -1.0 is out of range")


# ---------------------------------------------------------------- the corpus: one set, or none

SMALL_WEB = ["configs/classroom.py", "--web_pool_pages=1500", "--web_seed_pages=150", "--web_shards=2",
             "--web_contaminated_pages=2", "--classroom_train_size=50", "--classroom_test_size=20",
             "--vocab_size=300", "--corpus_tokenizer_extra=[]"]


def fingerprint(out_dir):
    """{path: sha256} of every file the corpus stage wrote, and every name in out_dir."""
    files = {}
    for folder, _, names in os.walk(out_dir):
        for name in names:
            path = os.path.join(folder, name)
            files[os.path.relpath(path, out_dir)] = hashlib.sha256(open(path, "rb").read()).hexdigest()
    return files, sorted(os.listdir(out_dir)), sorted(os.listdir(os.path.join(out_dir, "corpus")))


def test_a_failed_corpus_run_leaves_the_previous_set_and_its_summary(tmp_path, monkeypatch):
    def run(*extra):
        monkeypatch.setattr(sys, "argv", ["corpus.py", *SMALL_WEB, f"--out_dir={tmp_path}", *extra])
        corpus.main()

    run()
    before = fingerprint(tmp_path)
    assert "corpus/summary.json" in before[0] and "corpus/fasttext.bin" in before[0] and "tokenizer.tiktoken" in before[1]
    # this one fails after the classifier was trained and the web written, before the selection
    with pytest.raises(BadInput, match="no such URL pattern file"):
        run("--seed=7", f"--corpus_url_patterns={tmp_path / 'missing.txt'}")
    assert fingerprint(tmp_path) == before
    run("--seed=7")  # a run that succeeds replaces the whole set
    after = fingerprint(tmp_path)
    assert after[0]["corpus/summary.json"] != before[0]["corpus/summary.json"] and after[1:] == before[1:]
