"""Resume is exact, and a 2-process torchrun run (DDP, FSDP2) equals a 1-process run."""

import os
import subprocess
import sys

import pytest
import torch

from model import ModelArgs, Transformer
from support.training import load_train_state

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "tests", "train_steps.py")


def run(args, nproc=1):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if nproc == 1:
        cmd = [sys.executable, SCRIPT, *args]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}",
               "--standalone", SCRIPT, *args]
    result = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]  # a failed run shows why


def weights(folder):
    return Transformer.from_pretrained(os.path.join(folder, "ckpt")).state_dict()


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    out = tmp_path_factory.mktemp("straight")
    run([str(out), "--steps", "6"])
    return out


def test_resume_is_bit_identical(straight, tmp_path):
    run([str(tmp_path), "--steps", "6", "--stop_after", "3"])
    assert load_train_state(tmp_path / "ckpt")["step"] == 3
    run([str(tmp_path), "--steps", "6", "--resume"])
    for (k, a), (_, b) in zip(weights(straight).items(), weights(tmp_path).items()):
        assert torch.equal(a, b), k


@pytest.mark.parametrize("parallel", ["ddp", "fsdp"])
def test_two_process_run_matches_one_process(straight, tmp_path, parallel):
    run([str(tmp_path), "--steps", "6", "--parallel", parallel], nproc=2)
    for (k, a), (_, b) in zip(weights(straight).items(), weights(tmp_path).items()):
        torch.testing.assert_close(a, b, atol=2e-5, rtol=1e-4, msg=k)


def test_train_state_loads_weights_only_and_names_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="train_state.pt"):
        load_train_state(tmp_path)


def test_rng_state_round_trips_through_a_weights_only_file(tmp_path):
    """What follows a saved state is what follows it restored, for every generator, their cached
    gaussians included (Python's gauss and NumPy's randn draw two values at a time)."""
    import random

    import numpy as np

    from support import training

    random.seed(1), np.random.seed(1), torch.manual_seed(1)
    random.gauss(0, 1), np.random.randn(), np.random.rand(3)  # a cached gaussian each, a position mid-block
    torch.save(training.rng_state(), tmp_path / "rng.pt")

    def draws():
        return [random.random(), random.gauss(0, 1), *np.random.rand(2), np.random.randn(), float(torch.rand(1))]

    expected = draws()
    training.set_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True))
    assert draws() == expected


def test_a_resume_with_other_optimizer_settings_is_refused_unless_the_lr_is_scheduled():
    from support import training
    from support.fileio import BadInput

    model = Transformer(ModelArgs(vocab_size=61, dim=16, n_layer=1, n_head=2, n_kv_head=2, intermediate_size=32))
    cpu = torch.device("cpu")
    saved = training.make_adamw(model, 5e-5, 0.1, (0.9, 0.95), cpu).state_dict()
    training.load_optimizer_state(training.make_adamw(model, 5e-5, 0.1, (0.9, 0.95), cpu), model, saved)
    with pytest.raises(BadInput, match="resuming: the run was trained with optimizer settings"):
        training.load_optimizer_state(training.make_adamw(model, 1e-5, 0.1, (0.9, 0.95), cpu), model, saved)
    with pytest.raises(BadInput, match="'weight_decay': 0.1"):
        training.load_optimizer_state(training.make_adamw(model, 5e-5, 0.0, (0.9, 0.95), cpu), model, saved,
                                      lr_scheduled=True)
    training.load_optimizer_state(training.make_adamw(model, 1e-5, 0.1, (0.9, 0.95), cpu), model, saved,
                                  lr_scheduled=True)  # pretrain.py sets the lr every step
