"""The decoder against naive recomputation, itself under padding, and transformers' Llama."""

import json
import os

import pytest
import torch

from model import ModelArgs, Transformer, generate, padding_positions_and_mask, sequence_logprobs

ARGS = ModelArgs(vocab_size=97, dim=64, n_layer=2, n_head=4, n_kv_head=2, intermediate_size=96,
                 max_seq_len=128, bos_id=1, eos_id=2)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = Transformer(ARGS).eval()
    # bigger weights than the init's make sharper distributions: a stricter test of equality
    with torch.no_grad():
        for p in m.parameters():
            p.mul_(3.0)
    return m


def prompts():
    g = torch.Generator().manual_seed(1)
    return [torch.randint(3, 97, (n,), generator=g).tolist() for n in (5, 11, 8, 1)]


def naive_greedy(model, prompt, n):
    seq = list(prompt)
    for _ in range(n):
        logits = model(torch.tensor([seq]))[0, -1]
        seq.append(int(logits.argmax()))
        if seq[-1] == ARGS.eos_id:
            break
    return seq[len(prompt):]


def test_kv_cache_greedy_equals_naive_recomputation(model):
    out = generate(model, prompts(), max_new_tokens=20, temperature=0, eos_id=-1)
    for i, p in enumerate(prompts()):
        assert out.tokens[i][out.mask[i]].tolist() == naive_greedy(model, p, 20)


def test_generate_logprobs_equal_forward_recomputation(model):
    torch.manual_seed(0)
    ps = prompts()
    out = generate(model, ps, max_new_tokens=16, temperature=0.7, eos_id=ARGS.eos_id,
                   generator=torch.Generator().manual_seed(3))
    for i, p in enumerate(ps):
        new = out.tokens[i][out.mask[i]]
        seq = torch.tensor([p + new.tolist()])
        logp = sequence_logprobs(model, seq, temperature=0.7)[0, len(p) - 1:]
        torch.testing.assert_close(logp, out.logprobs[i][out.mask[i]], atol=1e-5, rtol=0)


def test_batch_padding_does_not_change_a_row(model):
    ps = prompts()
    batched = generate(model, ps, max_new_tokens=12, temperature=0, eos_id=-1)
    for i, p in enumerate(ps):
        alone = generate(model, [p], max_new_tokens=12, temperature=0, eos_id=-1)
        assert batched.tokens[i].tolist() == alone.tokens[0].tolist()
        torch.testing.assert_close(batched.logprobs[i], alone.logprobs[0], atol=1e-5, rtol=0)
    # left and right padding in a scored batch give the unpadded log-probs
    seq = ps[1]
    ref = sequence_logprobs(model, torch.tensor([seq]))[0]
    n, T = len(seq), len(seq) + 4
    for left in (True, False):
        tokens, mask = torch.zeros(1, T, dtype=torch.long), torch.zeros(1, T, dtype=torch.bool)
        sl = slice(T - n, T) if left else slice(0, n)
        tokens[0, sl], mask[0, sl] = torch.tensor(seq), True
        logp = sequence_logprobs(model, tokens, mask)[0]
        got = logp[T - n:] if left else logp[:n - 1]
        torch.testing.assert_close(got, ref, atol=1e-5, rtol=0)


def test_stop_at_eos_and_truncation_flag(model):
    out = generate(model, prompts(), max_new_tokens=6, temperature=0, eos_id=-1)
    assert out.truncated.all() and out.mask.all() and out.tokens.shape == (4, 6)
    first = out.tokens[0, 2].item()  # make the third greedy token of row 0 its "EOS"
    out = generate(model, prompts()[:1], max_new_tokens=6, temperature=0, eos_id=first)
    assert out.tokens.shape[1] <= 3 and not out.truncated[0]


def test_chunked_logprobs_match_whole_and_backprop(model):
    tokens = torch.randint(0, 97, (2, 40))
    whole = sequence_logprobs(model, tokens, chunk_size=1000)
    with torch.enable_grad():
        chunked = sequence_logprobs(model, tokens, chunk_size=7)
        chunked.sum().backward()
    torch.testing.assert_close(chunked.detach(), whole, atol=1e-5, rtol=0)
    ref = torch.log_softmax(model(tokens)[:, :-1].float(), -1).gather(-1, tokens[:, 1:, None])[..., 0]
    torch.testing.assert_close(whole, ref, atol=1e-5, rtol=0)
    assert model.embed_tokens.weight.grad is not None
    model.zero_grad(set_to_none=True)


def test_top_p_keeps_nucleus_only(model):
    from model import sample_next
    logits = torch.tensor([[4.0, 3.0, 0.0, -1.0]])
    seen = {sample_next(logits, 1.0, 0.5)[0].item() for _ in range(50)}
    assert seen == {0}  # p(token 0) = 0.71 >= 0.5: the nucleus is token 0 alone
    _, logp = sample_next(logits, 1.0, 0.9)  # nucleus {0, 1}, renormalised
    p01 = torch.softmax(logits[0, :2], -1)
    assert min(abs(logp.exp().item() - p01[0].item()), abs(logp.exp().item() - p01[1].item())) < 1e-6


# ------------------------------------------------------------------ Hugging Face checkpoints
def hf_config(tie=False):
    from transformers import LlamaConfig
    return LlamaConfig(vocab_size=97, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                       rms_norm_eps=1e-6, rope_theta=10000.0, tie_word_embeddings=tie,
                       bos_token_id=1, eos_token_id=2)


@pytest.mark.parametrize("tie", [False, True])
def test_loads_transformers_checkpoint_with_same_logits(tmp_path, tie):
    from transformers import LlamaForCausalLM
    torch.manual_seed(0)
    hf = LlamaForCausalLM(hf_config(tie)).eval()
    hf.save_pretrained(tmp_path)
    ours = Transformer.from_pretrained(tmp_path).eval()
    tokens = torch.randint(0, 97, (2, 30))
    with torch.no_grad():
        torch.testing.assert_close(ours(tokens), hf(tokens).logits, atol=1e-4, rtol=1e-4)


def test_transformers_loads_our_checkpoint_with_same_logits(tmp_path, model):
    from transformers import LlamaForCausalLM
    model.save_pretrained(tmp_path)
    hf = LlamaForCausalLM.from_pretrained(tmp_path).eval()
    tokens = torch.randint(0, 97, (2, 30))
    with torch.no_grad():
        torch.testing.assert_close(hf(tokens).logits, model(tokens), atol=1e-4, rtol=1e-4)


def test_sharded_bf16_round_trip(tmp_path, model):
    model.to(torch.bfloat16).save_pretrained(tmp_path, max_shard_bytes=40_000)
    model.float()
    files = sorted(os.listdir(tmp_path))
    assert "model.safetensors.index.json" in files and "model-00001-of-" in files[1][:15]
    loaded = Transformer.from_pretrained(tmp_path)
    assert loaded.embed_tokens.weight.dtype == torch.bfloat16
    for (k, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        torch.testing.assert_close(a.bfloat16(), b, atol=0, rtol=0, msg=k)


def test_bad_checkpoints_name_the_key_and_shapes(tmp_path, model):
    from safetensors.torch import load_file, save_file
    model.save_pretrained(tmp_path)
    path = tmp_path / "model.safetensors"
    tensors = load_file(path)
    tensors["model.layers.1.mlp.up_proj.weight"] = torch.zeros(5, 5)
    save_file(tensors, path)
    with pytest.raises(ValueError, match=r"model\.layers\.1\.mlp\.up_proj\.weight.*\(5, 5\).*\(96, 64\)"):
        Transformer.from_pretrained(tmp_path)
    del tensors["model.layers.1.mlp.up_proj.weight"]
    save_file(tensors, path)
    with pytest.raises(KeyError, match=r"model\.layers\.1\.mlp\.up_proj\.weight"):
        Transformer.from_pretrained(tmp_path)
    with pytest.raises(FileNotFoundError, match="config.json"):
        Transformer.from_pretrained(tmp_path / "nowhere")


def test_value_model_from_lm_checkpoint_and_back_in_transformers(tmp_path, model):
    from transformers import LlamaForSequenceClassification
    model.save_pretrained(tmp_path / "lm")
    value = Transformer.from_pretrained(tmp_path / "lm", head="scalar")
    tokens = torch.randint(0, 97, (2, 10))
    assert value(tokens).shape == (2, 10) and value(tokens).abs().max() == 0  # a fresh head
    torch.nn.init.normal_(value.score.weight)
    value.save_pretrained(tmp_path / "value")
    assert json.load(open(tmp_path / "value" / "config.json"))["num_labels"] == 1
    hf = LlamaForSequenceClassification.from_pretrained(tmp_path / "value").eval()
    with torch.no_grad():
        # HF pools the score of the last token of the row
        for row in tokens:
            torch.testing.assert_close(hf(row[None]).logits[:, 0], value(row[None])[:, -1],
                                       atol=1e-4, rtol=1e-4)


def test_padding_mask_positions():
    mask = torch.tensor([[False, False, True, True], [True, True, True, False]])
    positions, attn = padding_positions_and_mask(mask)
    assert positions.tolist() == [[0, 0, 0, 1], [0, 1, 2, 2]]
    assert attn[0, 0, 3].tolist() == [False, False, True, True]
