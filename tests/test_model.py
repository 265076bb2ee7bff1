"""The decoder against naive recomputation, itself under padding, and transformers' Llama."""

import json
import os
import subprocess
import sys

import pytest
import torch

from model import (KVCache, ModelArgs, Transformer, decode_weight_layout, generate, one_query_attention,
                   padding_positions_and_mask, sample_next, sequence_logprobs)

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


def test_generation_under_autocast_keeps_its_cache_in_the_compute_dtype(model, monkeypatch):
    """grpo.py's rollouts on one GPU: float32 weights (AdamW's master copy) under bf16 autocast.
    The cache is bf16, what attention computes in (half the memory of float32), and takes
    RoPE's float32 keys and the bf16 values alike; here on a CPU, whose autocast works the same."""
    import model as model_module
    dtypes = []

    class RecordedCache(model_module.KVCache):
        def __init__(self, *args):
            super().__init__(*args)
            dtypes.append(self.k[0].dtype)
    monkeypatch.setattr(model_module, "KVCache", RecordedCache)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = generate(model, prompts(), max_new_tokens=6, temperature=0, eos_id=-1)
        first = [int(model(torch.tensor([p]))[0, -1].argmax()) for p in prompts()]  # the prefill's own pick
    assert dtypes == [torch.bfloat16] and out.tokens[:, 0].tolist() == first
    generate(model, prompts(), max_new_tokens=2, temperature=0, eos_id=-1)
    assert dtypes[-1] == torch.float32  # without autocast, the weights' dtype


def test_sampling_is_seeded_and_stops_at_any_eos(model):
    def sample(seed, eos_id):
        return generate(model, prompts(), max_new_tokens=16, temperature=1.0, eos_id=eos_id,
                        generator=torch.Generator().manual_seed(seed))
    first, again = sample(3, -1), sample(3, -1)
    assert torch.equal(first.tokens, again.tokens) and not torch.equal(first.tokens, sample(4, -1).tokens)
    # every row's 3rd and 5th tokens made EOS ids: each row stops at the first of them it meets
    stops = sorted({t for row in first.tokens.tolist() for t in (row[2], row[4])})
    out = sample(3, stops)
    for row, stopped in zip(first.tokens.tolist(), out.tokens.tolist()):
        n = next(i for i, t in enumerate(row) if t in stops) + 1
        assert stopped[:n] == row[:n]
    assert out.mask.sum(1).tolist() == [next(i for i, t in enumerate(r) if t in stops) + 1
                                         for r in first.tokens.tolist()]
    assert not out.truncated.any()


def test_batch_padding_does_not_change_a_row(model):
    ps = prompts()
    batched = generate(model, ps, max_new_tokens=12, temperature=0, eos_id=-1)
    for i, p in enumerate(ps):
        alone = generate(model, [p], max_new_tokens=12, temperature=0, eos_id=-1)
        assert batched.tokens[i].tolist() == alone.tokens[0].tolist()
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


def test_finished_rows_leave_the_batch_and_the_others_sample_as_before(model):
    """Rows that stop early are dropped from the batch (the model runs fewer rows per step), and
    the rows still going get the same random stream, so the same samples, as with none stopped."""
    ps = [p for p in prompts() for _ in range(3)]  # 12 rows

    def sample(eos_id):
        rows_run = []  # rows the first block saw at each decode step
        hook = model.layers[0].register_forward_pre_hook(lambda _, args: rows_run.append(args[0].shape[0]))
        try:
            out = generate(model, ps, max_new_tokens=24, temperature=1.0, eos_id=eos_id,
                           generator=torch.Generator().manual_seed(5))
        finally:
            hook.remove()
        return out, rows_run[1:]  # [0] is the prefill

    free, free_rows = sample(-1)
    assert set(free_rows) == {len(ps)}
    # stop token: the 2nd token of the first 9 rows when it never occurs in the last three
    last3 = set(free.tokens[9:].flatten().tolist())
    stops = sorted({t for t in free.tokens[:9, 1].tolist() if t not in last3})
    assert stops, "the fixture's samples left no token to stop on"
    stopped, stopped_rows = sample(stops)
    assert min(stopped_rows) < len(ps)  # the batch shrank once rows finished
    for row in range(len(ps)):
        n = int(stopped.mask[row].sum())
        assert stopped.tokens[row, :n].tolist() == free.tokens[row, :n].tolist()
    assert torch.equal(stopped.tokens[9:], free.tokens[9:, :stopped.tokens.shape[1]])  # never stopped: unchanged


def test_repeated_prompts_share_one_prefill_and_sample_as_naive_recomputation(model):
    """Copies of a prompt (k samples of one question) are prefilled once, and each copy then
    samples as if it had its own prefill: the same tokens as recomputing every row's whole
    sequence at each step and sampling from the same random stream."""
    g = torch.Generator().manual_seed(7)
    a, b = (torch.randint(3, 97, (9,), generator=g).tolist() for _ in range(2))  # one length: no padding
    ps = [a, a, b, a, b]
    prefill_rows = []
    hook = model.layers[0].register_forward_pre_hook(lambda _, args: prefill_rows.append(args[0].shape))
    try:
        out = generate(model, ps, max_new_tokens=10, temperature=1.0, eos_id=-1,
                       generator=torch.Generator().manual_seed(3))
    finally:
        hook.remove()
    assert prefill_rows[0][:2] == (2, 9)  # two distinct prompts prefilled
    seqs, stream = [list(p) for p in ps], torch.Generator().manual_seed(3)
    for _ in range(10):
        logits = model(torch.tensor(seqs))[:, -1]  # (5, V), every row recomputed from its start
        for seq, token in zip(seqs, sample_next(logits, 1.0, stream).tolist()):
            seq.append(token)
    assert out.tokens.tolist() == [seq[9:] for seq in seqs]
    assert out.tokens[0].tolist() != out.tokens[1].tolist()  # copies sample on their own


def test_the_kv_cache_is_never_read_where_nothing_was_written(model, monkeypatch):
    """No slot of the KV cache is read before it is written (the prefill writes every prompt
    position, padding too, and each decode step its own): with every slot NaN to begin with, a
    padded batch whose finished rows leave it generates the same tokens."""
    import model as model_module
    ps = [p for p in prompts() for _ in range(2)]  # lengths 5, 11, 8 and 1: left padding
    clean = generate(model, ps, max_new_tokens=16, temperature=0, eos_id=-1)
    stop = clean.tokens[0, 3].item()  # some rows finish early and leave the batch
    expected = generate(model, ps, max_new_tokens=16, temperature=0, eos_id=stop)
    plain_init = model_module.KVCache.__init__

    def nan_filled(self, *args):
        plain_init(self, *args)
        for t in self.k + self.v:
            t.fill_(float("nan"))
    monkeypatch.setattr(model_module.KVCache, "__init__", nan_filled)
    assert torch.equal(generate(model, ps, max_new_tokens=16, temperature=0, eos_id=-1).tokens, clean.tokens)
    got = generate(model, ps, max_new_tokens=16, temperature=0, eos_id=stop)
    assert torch.equal(got.tokens, expected.tokens) and torch.equal(got.mask, expected.mask)
    assert not expected.mask.all()  # a row did stop


def test_stop_at_eos_and_truncation_flag(model):
    out = generate(model, prompts(), max_new_tokens=6, temperature=0, eos_id=-1)
    assert out.truncated.all() and out.mask.all() and out.tokens.shape == (4, 6)
    first = out.tokens[0, 2].item()  # make the third greedy token of row 0 its "EOS"
    out = generate(model, prompts()[:1], max_new_tokens=6, temperature=0, eos_id=first)
    assert out.tokens.shape[1] <= 3 and not out.truncated[0]


def test_compile_falls_back_to_eager_with_a_warning(model, monkeypatch):
    import model as model_module

    def broken(*args):
        raise RuntimeError("no C++ compiler\nmore detail")
    monkeypatch.setattr(model_module, "_compiled_steps", {"cpu": broken})
    eager = generate(model, prompts(), max_new_tokens=10, temperature=0, eos_id=-1)
    with pytest.warns(UserWarning, match=r"torch.compile failed \(RuntimeError: no C\+\+ compiler\); decoding eagerly"):
        fallback = generate(model, prompts(), max_new_tokens=10, temperature=0, eos_id=-1, compile=True)
    assert torch.equal(fallback.tokens, eager.tokens) and model_module._compiled_steps["cpu"] is False
    assert torch.equal(generate(model, prompts(), 10, temperature=0, eos_id=-1, compile=True).tokens, eager.tokens)


def test_greedy_steps_several_to_a_call_give_the_tokens_of_one_step_a_call(model, monkeypatch):
    """generate(compile=True) on a CPU runs greedy steps DECODE_STEPS_PER_CALL to a call (here the
    eager function stands in for the compiled one, so nothing compiles): the same tokens, masks and
    truncation flags as one step a call, with rows that end inside a call at an EOS and at a
    two-token stop sequence, finished rows leaving the batch, and a length no multiple of 4."""
    import model as model_module
    calls = []

    def counted_steps(*args):
        calls.append(args[-1])
        return model_module._decode_steps(*args)
    monkeypatch.setattr(model_module, "_compiled_steps", {"cpu": counted_steps})
    ps = prompts()
    free = generate(model, ps, max_new_tokens=23, temperature=0, eos_id=-1).tokens
    eos = free[:2, 5].tolist()  # rows 0 and 1 end at their 6th token at the latest, inside the second call
    stop = [free[2, 9:11].tolist()]  # row 2 at its 11th at the latest, inside the third
    for ends in (dict(eos_id=-1), dict(eos_id=eos), dict(eos_id=eos, stop_sequences=stop)):
        one = generate(model, ps, max_new_tokens=23, temperature=0, **ends)
        calls.clear()
        several = generate(model, ps, max_new_tokens=23, temperature=0, compile=True, **ends)
        for field in ("tokens", "mask", "truncated"):
            assert torch.equal(getattr(several, field), getattr(one, field)), (ends, field)
        assert calls[0] == 4
    # no row ends: 22 tokens after the prefill's, five calls of 4, then 1 and 1 (4 would pass the 23rd)
    assert generate(model, ps, max_new_tokens=23, temperature=0, eos_id=-1, compile=True) and calls[-7:] == [4] * 5 + [1] * 2
    assert not one.mask.all() and one.truncated[3]  # the last case: rows ended early, row 3 ran to the end


def test_decode_weight_layout_holds_the_same_numbers_and_gives_them_back_row_major(model):
    """generate(compile=True) decodes on a CPU with every linear weight stored column by column,
    q/k/v and gate/up as views into one matrix each: every number as it was, the grouped
    forwards' outputs the same up to rounding (Qwen2's q/k/v biases and a tied head included),
    and on leaving, even through an exception, each weight row-major, its own and equal to the bit."""
    tied = Transformer(ModelArgs(**{**ARGS.__dict__, "tie_embeddings": True, "qkv_bias": True}))
    for m in (model, tied):
        for name, w in m.named_parameters():
            if name.endswith("bias"):
                torch.nn.init.normal_(w)  # not the zeros they start at: a bias left out would show
        before = {name: w.detach().clone() for name, w in m.named_parameters()}
        tokens = torch.tensor([prompts()[1]])
        expected = m(tokens)
        with pytest.raises(KeyboardInterrupt), decode_weight_layout(m):
            for name, w in m.named_parameters():
                relaid = w.dim() == 2 and name != "embed_tokens.weight"  # tied: lm_head is this one tensor
                assert (w.dim() == 2 and w.stride(0) == 1) == relaid and torch.equal(w, before[name]), name
            attn, mlp = m.layers[0].self_attn, m.layers[0].mlp
            assert attn.q_proj.weight.untyped_storage().data_ptr() == attn.qkv_t.untyped_storage().data_ptr()
            assert torch.equal(attn.qkv_t, torch.cat([attn.q_proj.weight, attn.k_proj.weight, attn.v_proj.weight]).t())
            assert torch.equal(mlp.gate_up_t, torch.cat([mlp.gate_proj.weight, mlp.up_proj.weight]).t())
            torch.testing.assert_close(m(tokens), expected, atol=1e-5, rtol=1e-5)
            raise KeyboardInterrupt  # a Ctrl-C in the middle of decoding
        assert all(w.is_contiguous() and torch.equal(w, before[name]) for name, w in m.named_parameters())
        assert all(block.self_attn.qkv_t is None and block.mlp.gate_up_t is None for block in m.layers)
        assert len({w.untyped_storage().data_ptr() for w in m.parameters()}) == len(list(m.parameters()))


def test_one_query_attention_equals_sdpa_with_gqa_and_padding():
    """The compiled decode step's attention against the fused kernel eager decoding calls."""
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(3, h, n, 16, generator=g) for h, n in ((6, 1), (2, 9), (2, 9)))  # H = 6, K = 2
    mask = torch.ones(3, 1, 1, 9, dtype=torch.bool)
    mask[1, ..., :4] = False  # row 1: 4 positions of left padding
    expected = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True)
    torch.testing.assert_close(one_query_attention(q, k, v, mask), expected, atol=1e-6, rtol=1e-5)


@pytest.mark.skipif(not os.environ.get("TEST_COMPILE"), reason="compiling takes ~30 s on a CPU; TEST_COMPILE=1 runs it")
def test_compiled_decoding_equals_eager_and_naive(model, monkeypatch):
    import model as model_module
    monkeypatch.setattr(model_module, "_compiled_steps", {})
    ps = prompts()
    eager = generate(model, ps, max_new_tokens=20, temperature=0, eos_id=-1)
    for batch in (ps, ps[:2], ps[1:2]):  # one graph for every batch size and length (batch 1: a second)
        compiled = generate(model, batch, max_new_tokens=20, temperature=0, eos_id=-1, compile=True)
        assert torch.equal(compiled.tokens, eager.tokens[[ps.index(p) for p in batch]])
    assert compiled.tokens[0].tolist() == naive_greedy(model, ps[1], 20)  # the last batch: ps[1] alone
    stops = eager.tokens[:2, 3].tolist()  # rows end at different steps: the compiled batch shrinks too
    stop_sequences = [eager.tokens[2, 6:8].tolist()]  # and inside a call of several steps
    assert torch.equal(generate(model, ps, 20, temperature=0, eos_id=stops, stop_sequences=stop_sequences,
                                compile=True).tokens,
                       generate(model, ps, 20, temperature=0, eos_id=stops, stop_sequences=stop_sequences).tokens)
    assert model_module._compiled_steps["cpu"]  # nothing fell back


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


# ------------------------------------------------------------------ Hugging Face checkpoints
# Tiny random models of each family, built by transformers itself. Llama 3's RoPE scaling has an
# original context of 64 and inputs of 150 tokens, so all three frequency bands matter.
LLAMA3_ROPE = dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                   original_max_position_embeddings=64)
SHAPE = dict(vocab_size=97, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
             rms_norm_eps=1e-6, bos_token_id=1)
FAMILIES = {
    "llama": lambda t: t.LlamaForCausalLM(t.LlamaConfig(**SHAPE, eos_token_id=2)),
    "llama-tied": lambda t: t.LlamaForCausalLM(t.LlamaConfig(**SHAPE, eos_token_id=2, tie_word_embeddings=True)),
    "llama3": lambda t: t.LlamaForCausalLM(t.LlamaConfig(**SHAPE, eos_token_id=[2, 3], rope_theta=500000.0,
                                                         rope_scaling=LLAMA3_ROPE, tie_word_embeddings=True)),
    "qwen2": lambda t: t.Qwen2ForCausalLM(t.Qwen2Config(**SHAPE, eos_token_id=2, rope_theta=1e6,
                                                        tie_word_embeddings=True)),
}


def hf_model(family):
    import transformers
    torch.manual_seed(0)
    model = FAMILIES[family](transformers).eval()
    # Bigger matrices than the init's make sharper distributions (a stricter test) and keep tied
    # models from echoing their input token (greedy output varies); biases and norms move off 0 / 1.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 1:
                p.add_(0.1 * torch.randn_like(p))
            elif "embed_tokens" not in name:
                p.mul_(6.0)
    return model


def relative_error(ours, theirs):
    return float((ours - theirs).norm() / theirs.norm())


def long_tokens():
    return torch.randint(0, 97, (2, 150), generator=torch.Generator().manual_seed(5))


@pytest.mark.parametrize("family", list(FAMILIES))
def test_transformers_checkpoint_same_logits_both_ways(tmp_path, family):
    from transformers import AutoModelForCausalLM
    hf = hf_model(family)
    hf.save_pretrained(tmp_path / "theirs")
    ours = Transformer.from_pretrained(tmp_path / "theirs").eval()
    assert ours.args.tie_embeddings == hf.config.tie_word_embeddings
    assert ours.args.qkv_bias == (family == "qwen2")
    assert ours.args.eos_id == hf.config.eos_token_id
    tokens = long_tokens()
    with torch.no_grad():
        theirs = hf(tokens).logits
        assert relative_error(ours(tokens), theirs) < 1e-4
        ours.save_pretrained(tmp_path / "ours")
        back = AutoModelForCausalLM.from_pretrained(tmp_path / "ours").eval()
        assert type(back) is type(hf)
        assert relative_error(back(tokens).logits, theirs) < 1e-4


@pytest.mark.parametrize("family", ["llama", "llama3", "qwen2"])
def test_greedy_generation_identical_to_transformers(tmp_path, family):
    hf = hf_model(family)
    hf.save_pretrained(tmp_path)
    ours = Transformer.from_pretrained(tmp_path).eval()
    g = torch.Generator().manual_seed(6)
    prompts = [torch.randint(4, 97, (n,), generator=g).tolist() for n in (90, 75, 100)]
    out = generate(ours, prompts, max_new_tokens=40, temperature=0)  # the model's own EOS ids
    for i, p in enumerate(prompts):  # one by one: transformers' result depends on its padding
        theirs = hf.generate(torch.tensor([p]), max_new_tokens=40, do_sample=False, pad_token_id=0)
        assert out.tokens[i][out.mask[i]].tolist() == theirs[0, len(p):].tolist()


def test_llama3_rope_scaling_in_the_old_key(tmp_path):
    """A transformers-4 config.json (rope_scaling, rope_theta at the top) gives the same model."""
    hf = hf_model("llama3")
    hf.save_pretrained(tmp_path)
    config = json.load(open(tmp_path / "config.json"))
    rope = config.pop("rope_parameters")
    config.update(rope_theta=rope.pop("rope_theta"), rope_scaling=rope)
    json.dump(config, open(tmp_path / "config.json", "w"))
    ours = Transformer.from_pretrained(tmp_path).eval()
    assert ours.args.rope_scaling["factor"] == 8.0 and ours.args.rope_theta == 500000.0
    with torch.no_grad():
        assert relative_error(ours(long_tokens()), hf(long_tokens()).logits) < 1e-4


def test_sharded_bf16_round_trip(tmp_path, model):
    model.to(torch.bfloat16).save_pretrained(tmp_path, max_shard_bytes=40_000)
    model.float()
    files = sorted(os.listdir(tmp_path))
    assert "model.safetensors.index.json" in files and "model-00001-of-" in files[1][:15]
    loaded = Transformer.from_pretrained(tmp_path)
    assert loaded.embed_tokens.weight.dtype == torch.bfloat16
    for (k, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        torch.testing.assert_close(a.bfloat16(), b, atol=0, rtol=0, msg=k)


def test_loading_initialises_nothing_and_leaves_the_random_stream_alone(tmp_path, model):
    """from_pretrained builds on the meta device and runs no init: in a fresh process, loading
    neither imports torch._dynamo (~1.5 s a process, which an init on meta costs) nor draws from
    the random stream a stage seeded, and the RoPE tables are real."""
    model.save_pretrained(tmp_path)
    script = "\n".join([
        "import sys, torch", "from model import Transformer",
        f"torch.manual_seed(0); m = Transformer.from_pretrained({str(tmp_path)!r}); after_load = torch.rand(1)",
        "torch.manual_seed(0); untouched = torch.rand(1)",
        "print('torch._dynamo' in sys.modules, bool(after_load == untouched), m.rope_cos.device)"])
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    run = subprocess.run([sys.executable, "-c", script], cwd=root, capture_output=True, text=True, timeout=120)
    assert run.stdout.split() == ["False", "True", "cpu"], run.stderr[-2000:]


def edit_config(folder, **changes):
    config = json.load(open(folder / "config.json"))
    json.dump({**config, **changes}, open(folder / "config.json", "w"))


def test_bad_checkpoints_are_one_line_naming_file_and_field(tmp_path, model):
    from safetensors.torch import load_file, save_file
    from support.fileio import BadInput
    model.save_pretrained(tmp_path)
    path = tmp_path / "model.safetensors"
    tensors = load_file(path)
    edit_config(tmp_path, intermediate_size=80)
    with pytest.raises(BadInput, match=r"model\.safetensors: tensor 'model\.layers\.0\.mlp\.gate_proj\.weight' has shape "
                                       r"\(96, 64\) but config.json \(intermediate_size=80, hidden_size=64\)"):
        Transformer.from_pretrained(tmp_path)
    edit_config(tmp_path, intermediate_size=96)
    del tensors["model.layers.1.mlp.up_proj.weight"]
    save_file(tensors, path)
    with pytest.raises(BadInput, match=r"no tensor 'model\.layers\.1\.mlp\.up_proj\.weight'"):
        Transformer.from_pretrained(tmp_path)
    data = open(path, "rb").read()
    open(path, "wb").write(data[:len(data) // 2])
    with pytest.raises(BadInput, match=r"model\.safetensors: damaged or truncated"):
        Transformer.from_pretrained(tmp_path)
    open(path, "wb").write(b"\x00" * 100)
    with pytest.raises(BadInput, match=r"model\.safetensors: damaged or truncated"):
        Transformer.from_pretrained(tmp_path)
    with pytest.raises(BadInput, match="nowhere: no config.json"):
        Transformer.from_pretrained(tmp_path / "nowhere")


def test_missing_shard(tmp_path, model):
    from support.fileio import BadInput
    model.save_pretrained(tmp_path, max_shard_bytes=40_000)
    shard = sorted(tmp_path.glob("model-00002-of-*.safetensors"))[0]
    shard.unlink()
    with pytest.raises(BadInput, match=shard.name + r": missing; model\.safetensors\.index\.json lists it"):
        Transformer.from_pretrained(tmp_path)


@pytest.mark.parametrize("changes, message", [
    (dict(model_type="mistral"), "model_type 'mistral' is not supported"),
    (dict(model_type="qwen2", use_sliding_window=True), "use_sliding_window True is not supported"),
    (dict(rope_scaling={"rope_type": "yarn", "factor": 4.0}), "rope_scaling .*yarn.* is not supported"),
    (dict(rope_parameters={"rope_type": "linear", "factor": 2.0, "rope_theta": 1e4}),
     "rope_parameters .*linear.* is not supported"),
    (dict(rope_scaling={"rope_type": "llama3", "factor": 8.0}), "rope_scaling .*original_max_position_embeddings"),
    (dict(attention_bias=True), "attention_bias True is not supported"),
    (dict(hidden_act="gelu"), "hidden_act 'gelu' is not supported"),
    (dict(head_dim=32), "head_dim 32 is not supported"),
])
def test_unsupported_config_fields(tmp_path, model, changes, message):
    from support.fileio import BadInput
    model.save_pretrained(tmp_path)
    edit_config(tmp_path, **changes)
    with pytest.raises(BadInput, match="config.json: " + message):
        Transformer.from_pretrained(tmp_path)


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


def test_value_model_from_a_bf16_lm_checkpoint_computes_in_bf16(tmp_path, model):
    """The fresh scalar head takes the stored trunk's dtype, so a bf16 checkpoint loaded as it
    is (dtype=None) runs: a float32 head on a bf16 trunk would refuse to multiply."""
    model.to(torch.bfloat16).save_pretrained(tmp_path)
    model.float()
    value = Transformer.from_pretrained(tmp_path, head="scalar")
    assert value.score.weight.dtype == torch.bfloat16
    assert value(torch.randint(0, 97, (2, 6))).dtype == torch.bfloat16


def test_a_cached_forward_without_its_mask_is_refused(model):
    """SDPA's is_causal aligns its mask to the first key: through a cache it would let a new
    query see only the first cached key, so the model asks for the mask instead of guessing."""
    cache = KVCache(model.args, 1, 16, "cpu", torch.float32)
    with pytest.raises(ValueError, match="needs positions and attn_mask"):
        model(torch.tensor([[5, 3, 7]]), cache=cache)


def test_padding_mask_positions():
    mask = torch.tensor([[False, False, True, True], [True, True, True, False]])
    positions, attn = padding_positions_and_mask(mask)
    assert positions.tolist() == [[0, 0, 0, 1], [0, 1, 2, 2]]
    assert attn[0, 0, 3].tolist() == [False, False, True, True]
