import glob
import os

import pytest
import torch

from model import ModelArgs, Transformer
from support import config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = sorted(glob.glob(os.path.join(ROOT, "configs", "*.py")))


def meta_params(cfg):
    with torch.device("meta"):
        return Transformer(ModelArgs.from_config(cfg)).num_params()


def test_there_are_configs():
    assert {os.path.basename(p) for p in CONFIGS} >= {"classroom.py", "7b.py", "1.3b.py"}


@pytest.mark.parametrize("path", CONFIGS, ids=os.path.basename)
def test_every_config_loads(path):
    """A key renamed or removed in config.DEFAULTS makes the config that sets it fail here."""
    cfg = config.load_config([path])
    assert cfg.dim % cfg.n_head == 0 and cfg.n_head % cfg.n_kv_head == 0


def test_7b_is_the_papers_model_and_recipe():
    cfg = config.load_config([os.path.join(ROOT, "configs", "7b.py")])
    # deepseek-math-7b-base config.json (DESIGN.md)
    assert (cfg.n_layer, cfg.dim, cfg.n_head, cfg.n_kv_head, cfg.intermediate_size) == (30, 4096, 32, 32, 11008)
    assert (cfg.vocab_size, cfg.max_seq_len, cfg.norm_eps, cfg.rope_theta) == (102400, 4096, 1e-6, 10000.0)
    assert not cfg.tie_embeddings
    assert 6.85e9 < meta_params(cfg) < 6.95e9  # "7B": 6.91B
    # pretraining: 10M-token batches for 500B tokens, AdamW (0.9, 0.95), wd 0.1, the 56/4/10/20/10 mixture
    assert cfg.pretrain_tokens_per_step == pytest.approx(10e6, rel=0.01)
    assert cfg.pretrain_steps * cfg.pretrain_tokens_per_step == pytest.approx(500e9, rel=0.001)
    for world_size in (1, 2, 4, 8, 16, 32, 64, 128):  # whole rows for every GPU (pretrain.py requires it)
        assert cfg.pretrain_tokens_per_step % (cfg.pretrain_batch_size * cfg.max_seq_len * world_size) == 0
    assert (cfg.pretrain_lr, cfg.pretrain_warmup_steps, cfg.pretrain_weight_decay) == (4.2e-4, 2000, 0.1)
    assert list(cfg.pretrain_betas) == [0.9, 0.95]
    assert sorted(cfg.pretrain_weights.values()) == [0.04, 0.1, 0.1, 0.2, 0.56]
    assert set(cfg.pretrain_sources) == set(cfg.pretrain_weights)
    # SFT: 500 steps x 256, constant 5e-5
    assert (cfg.sft_steps, cfg.sft_batch_size, cfg.sft_lr) == (500, 256, 5e-5)
    # GRPO: 1024 outputs = 16 questions x G 64, max length 1024, lr 1e-6, beta 0.04, mu 1
    assert cfg.rl_questions_per_step * cfg.rl_group_size == 1024 and cfg.rl_group_size == 64
    assert (cfg.rl_max_new_tokens, cfg.rl_lr, cfg.rl_kl_coef, cfg.rl_mu) == (1024, 1e-6, 0.04, 1)
    assert cfg.rl_algo == "grpo" and cfg.rl_init_checkpoint.endswith("deepseek-math-7b-instruct")
    assert sorted(cfg.eval_tasks) == ["gsm8k", "math"]


def test_1_3b_fits_the_papers_small_runs():
    cfg = config.load_config([os.path.join(ROOT, "configs", "1.3b.py")])
    assert 1.3e9 < meta_params(cfg) < 1.4e9
    assert cfg.pretrain_tokens_per_step == pytest.approx(4e6, rel=0.05) and cfg.pretrain_lr == 5.3e-4
    assert cfg.pretrain_tokens_per_step % (cfg.pretrain_batch_size * cfg.max_seq_len) == 0
    assert cfg.sft_batch_size % cfg.sft_micro_batch_size == 0


@pytest.mark.parametrize("override, named", [
    ("--device=banana", "device must be auto, cpu, cuda, cuda:N or mps"),
    ("--corpus_lsh_bands=0", "corpus_lsh_bands must be at least 1"),
    ("--rl_micro_batch=0", "rl_micro_batch must be at least 1"),
    ("--corpus_val_share=-1", "corpus_val_share must be in (0, 1)"),
    ("--pretrain_lr=0", "pretrain_lr must be above 0"),
    ("--ppo_gamma=1.5", "ppo_gamma must be in [0, 1]"),
    ("--pretrain_betas=[0.9, 1.0]", "pretrain_betas must be two numbers in [0, 1)"),
    ("--corpus_lsh_bands=256", "corpus_lsh_bands = 256 exceeds corpus_minhash_perms = 128"),
])
def test_a_value_out_of_range_is_rejected_naming_the_key(override, named):
    with pytest.raises(config.ConfigError) as error:
        config.load_config([os.path.join(ROOT, "configs", "classroom.py"), override])
    assert named in str(error.value) and "\n" not in str(error.value)


def test_every_range_rule_names_a_key_and_accepts_its_default():
    for key, (test, _) in config.RULES.items():
        assert key in config.DEFAULTS and test(config.DEFAULTS[key]), key


def test_a_config_file_runs_in_one_namespace_and_its_errors_name_file_and_line(tmp_path):
    """Helpers (names starting with _) are seen inside comprehensions, as in nanoGPT's
    configurator; a name the file never set, a syntax error: the file and line, not a traceback."""
    path = tmp_path / "mine.py"
    path.write_text('_root = "/data/cc"\ncorpus_pool_files = [f"{_root}/pool-{i}.wet.gz" for i in range(2)]\n'
                    "from math import sqrt\nn_layer = int(sqrt(16))\n")
    cfg = config.load_config([str(path)])
    assert cfg.corpus_pool_files == ["/data/cc/pool-0.wet.gz", "/data/cc/pool-1.wet.gz"] and cfg.n_layer == 4
    for body, message in [("dim = 64\nn_layer = n_layers * 2\n", r"mine.py:2: NameError: .*'n_layers'.*did you mean n_layer\?"),
                          ("n_layer = (\n", r"mine.py:1: SyntaxError"),
                          # a setting bound to a function is no value: refused, not skipped as a helper is
                          ("def rl_lr():\n    return 1e-5\n", r"mine.py: rl_lr is bound to function .*write rl_lr = 1e-06"),
                          ("import math as n_layer\n", r"mine.py: n_layer is bound to module")]:
        path.write_text(body)
        with pytest.raises(config.ConfigError, match=message):
            config.load_config([str(path)])


def test_the_elements_of_a_list_or_dict_are_checked_too():
    containers = {key for key, value in config.DEFAULTS.items() if isinstance(value, (list, tuple, dict))}
    assert set(config.ELEMENT_TYPES) == containers  # every list or dict key says what it holds
    for override, message in [('--pretrain_weights={"math": "1"}', "pretrain_weights .* takes names to float values"),
                              ("--corpus_benchmarks=[1, 2]", "corpus_benchmarks .* takes str values")]:
        with pytest.raises(config.ConfigError, match=message):
            config.load_config([override])
    assert config.load_config(['--pretrain_weights={"math": 2}']).pretrain_weights == {"math": 2}
