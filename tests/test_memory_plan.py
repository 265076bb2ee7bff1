import json
import os
import re

import pytest
import torch

from model import KVCache, ModelArgs, Transformer
from support import config, memory_plan


CONFIG_7B = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", "7b.py")


def cfg_7b(*overrides):
    return config.load_config([CONFIG_7B, *overrides])


def test_7b_parameter_count_against_the_architecture_formula():
    args = ModelArgs.from_config(cfg_7b())
    n_policy, n_block, n_root = memory_plan.parameter_counts(args)
    D, I, V, L = 4096, 11008, 102400, 30
    block = 4 * D * D + 3 * D * I + 2 * D  # q, k, v, o; gate, up, down; two RMSNorm gains
    assert n_block == block
    assert n_policy == L * block + 2 * V * D + D == 6_910_365_696  # ~6.9B
    assert n_root == 2 * V * D + D
    n_scalar, n_scalar_block, n_scalar_root = memory_plan.parameter_counts(args, "scalar")
    assert n_scalar == n_policy - V * D + D and n_scalar_block == block  # the LM head (V x D) becomes 1 x D
    assert memory_plan.parameter_counts(args, "reward")[0] == n_policy + D  # both heads


def printed_sections(text):
    """{algo: [(rows GiB list, total GiB)] per phase} parsed from print_plan's output."""
    sections, algo, rows = {}, None, []
    for line in text.splitlines():
        if re.match(r"^(GRPO|PPO)\s+GiB$", line):
            algo = line.split()[0]
            sections[algo] = []
        number = re.search(r"(\d+\.\d\d)$", line)
        if algo is None or not number or not line.startswith("    "):
            continue
        if line.strip().startswith("="):
            sections[algo].append((rows, float(number.group(1))))
            rows = []
        else:
            rows.append(float(number.group(1)))
    return sections


@pytest.mark.parametrize("world_size", [1, 8])
def test_printed_plan_adds_up(capsys, world_size):
    memory_plan.print_plan(cfg_7b(), world_size)
    sections = printed_sections(capsys.readouterr().out)
    assert set(sections) == {"GRPO", "PPO"}
    for phases in sections.values():
        (held_rows, held), (rollout_rows, rollout_peak), (update_rows, update_peak) = phases
        assert held == pytest.approx(sum(held_rows), abs=0.005 * len(held_rows) + 0.005)
        assert rollout_peak == pytest.approx(held + sum(rollout_rows), abs=0.005 * (len(held_rows) + len(rollout_rows)) + 0.01)
        assert update_peak == pytest.approx(held + sum(update_rows), abs=0.005 * (len(held_rows) + len(update_rows)) + 0.01)


def test_parameter_bytes_and_sharding():
    n_policy = memory_plan.parameter_counts(ModelArgs.from_config(cfg_7b()))[0]
    one, eight = memory_plan.memory_plans(cfg_7b(), 1)[0], memory_plan.memory_plans(cfg_7b(), 8)[0]
    held = {r.name: r.bytes for r in eight["GRPO"].rows["held"]}
    assert held["policy: weights, fp32 master (1/W)"] == n_policy * 4 / 8
    assert held["reference pi_ref: weights, bf16 (1/W)"] == n_policy * 2 / 8
    # gradients live from a backward to the optimizer step that frees them: in the update only
    assert not any("gradients" in name for name in held)
    update = {r.name: r.bytes for r in eight["GRPO"].rows["update"]}
    assert update["policy: gradients, fp32 (1/W)"] == n_policy * 4 / 8
    for algo in ("GRPO", "PPO"):
        for row_1, row_8 in zip(one[algo].rows["held"], eight[algo].rows["held"]):
            if row_1.name.startswith("reference"):  # whole, pi_ref keeps float32 weights, as the policy computes from
                assert (row_1.name, row_1.bytes) == ("reference pi_ref: weights, fp32", n_policy * 4)
                continue
            assert row_1.name == row_8.name.replace(" (1/W)", "") and "(1/W)" in row_8.name
            assert row_8.bytes == row_1.bytes / 8
    # DDP keeps every model whole on every rank, and a bucket copy of each trained model's gradients
    ddp = memory_plan.memory_plans(cfg_7b("--parallel=ddp"), 8)[0]["PPO"]
    assert ddp.total("held") == pytest.approx(one["PPO"].total("held") + sum(
        r.bytes for r in ddp.rows["held"] if "DDP gradient buckets" in r.name))
    assert len([r for r in ddp.rows["held"] if "DDP gradient buckets" in r.name]) == 2  # policy, value model


def test_grpo_needs_less_than_ppo_by_exactly_the_value_model():
    cfg = cfg_7b()
    n_scalar = memory_plan.parameter_counts(ModelArgs.from_config(cfg), "scalar")[0]
    for world_size in (1, 8):
        plans = memory_plan.memory_plans(cfg, world_size)[0]
        grpo, ppo = plans["GRPO"], plans["PPO"]
        # weights + AdamW m, v held: 12 bytes per value-model parameter, sharded; its gradients
        # (4 more) live in the update, with its gathered weights and activations
        assert ppo.total("held") - grpo.total("held") == pytest.approx(12 * n_scalar / world_size)
        in_flight, sharded = ("FSDP units in flight", " (1/W)") if world_size > 1 else ("autocast's copies", "")
        ppo_only = {r.name for r in ppo.rows["update"]} - {r.name for r in grpo.rows["update"]}
        assert sorted(ppo_only) == ["value model activations (checkpointed)",
                                    f"value model gathered weights, bf16 ({in_flight})",
                                    f"value model: gradients, fp32{sharded}"]
        assert grpo.peak("rollout") < ppo.peak("rollout")
        assert grpo.peak("update") < ppo.peak("update")


def test_kv_cache_row_equals_the_models_cache():
    for per_call, rows in ((1, 64), (2, 128), (4, 128)):  # 16 questions over 8 ranks: 2 per rank
        cfg = cfg_7b("--rl_questions_per_step=16", f"--rl_rollout_questions={per_call}")
        plan = memory_plan.memory_plans(cfg, 8)[0]["GRPO"]
        kv_row = next(r for r in plan.rows["rollout"] if r.name.startswith("KV cache"))
        length = cfg.plan_prompt_len + cfg.rl_max_new_tokens
        cache = KVCache(ModelArgs.from_config(cfg), rows, length, "meta", torch.bfloat16)  # generate()'s
        assert kv_row.bytes == sum(t.numel() * t.element_size() for t in cache.k + cache.v)


def saved_activation_bytes(args, tokens, checkpointing):
    """Bytes autograd keeps for backward after a bf16 forward of the trunk (each storage once,
    weights and RoPE tables excluded), measured with saved_tensors_hooks."""
    torch.manual_seed(0)
    model = Transformer(args).to(torch.bfloat16).train()
    model.gradient_checkpointing = checkpointing
    own = {t.untyped_storage().data_ptr() for t in [*model.parameters(), *model.buffers()]}
    saved = {}

    def pack(t):
        storage = t.untyped_storage()
        if storage.data_ptr() not in own:
            saved[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model.trunk(tokens)
    return sum(saved.values())


def test_activation_formula_matches_what_autograd_saves():
    # grouped-query attention (2 kv heads for 4) so every term of the formula is exercised
    args = ModelArgs(vocab_size=256, dim=64, n_layer=3, n_head=4, n_kv_head=2, intermediate_size=96,
                     max_seq_len=64)
    tokens = torch.randint(0, args.vocab_size, (2, 32))
    n = tokens.numel()
    # the head's input (2D per token) is saved by the log-prob chunks, outside the trunk
    assert saved_activation_bytes(args, tokens, False) == \
        memory_plan.activation_bytes(args, n, False) - 2 * args.dim * n
    # checkpointed: the forward keeps block inputs; backward adds one recomputed block
    assert saved_activation_bytes(args, tokens, True) == \
        memory_plan.activation_bytes(args, n, True) - 2 * args.dim * n - memory_plan.layer_activation_bytes(args) * n


def test_command_line(monkeypatch, capsys):
    monkeypatch.setattr("sys.argv", ["memory_plan.py", CONFIG_7B, "--world_size=8"])
    memory_plan.main()
    out = capsys.readouterr().out
    assert "6,910,365,696 parameters (6.91B)" in out and "W=8 (FSDP2" in out
    monkeypatch.setattr("sys.argv", ["memory_plan.py", CONFIG_7B, "--world_size=0"])
    with pytest.raises(SystemExit, match="world_size=0"):
        memory_plan.main()


CONFIG_QWEN = CONFIG_7B.replace("7b.py", "qwen2.5-0.5b-gsm8k.py")
# Qwen2.5-0.5B-Instruct's config.json (the fields that set the model)
QWEN25_05B = dict(architectures=["Qwen2ForCausalLM"], model_type="qwen2", vocab_size=151936, hidden_size=896,
                  intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2,
                  max_position_embeddings=32768, rope_theta=1000000.0, rms_norm_eps=1e-6, tie_word_embeddings=True,
                  use_sliding_window=False, sliding_window=32768, max_window_layers=21, hidden_act="silu",
                  bos_token_id=151643, eos_token_id=151645)


def test_qwen_config_fits_one_24gb_gpu(capsys, tmp_path):
    memory_plan.print_plan(config.load_config([CONFIG_QWEN]), 1)
    out = capsys.readouterr().out
    assert "GPU of 24 GB (24 GiB, 2 of them for the CUDA context and allocator): GRPO fits" in out
    assert "GPU of 80 GB (80 GiB, 2 of them for the CUDA context and allocator): GRPO fits, PPO fits" in out
    # with the checkpoint's config.json the plan counts exactly its model: 494,032,768 parameters
    # (Qwen's published count), q/k/v biases included, the head tied to the embeddings
    json.dump(QWEN25_05B, open(tmp_path / "config.json", "w"))
    memory_plan.print_plan(config.load_config([CONFIG_QWEN, f"--rl_init_checkpoint={tmp_path}"]), 1)
    assert "494,032,768 parameters" in capsys.readouterr().out
    grpo = memory_plan.memory_plans(config.load_config([CONFIG_QWEN]), 1)[0]["GRPO"]
    assert max(grpo.peak("rollout"), grpo.peak("update")) / memory_plan.GiB + memory_plan.RESERVE_GIB <= 24
