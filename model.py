"""The DeepSeek-LLM / Llama decoder, its KV-cache sampler, and Hugging Face checkpoints.

DeepSeekMath-7B (paper section 2.3) is initialised from DeepSeek-Coder-Base-v1.5 7B, which has
the Llama architecture: pre-norm blocks of

    h = x + Attention(RMSNorm(x))        causal self-attention with rotary positions (RoPE)
    y = h + SwiGLU(RMSNorm(h))           down( silu(gate(h)) * up(h) )

followed by a final RMSNorm and an untied LM head. The same trunk with a scalar head (one number
per token) is the reward model and PPO's value model (paper section 4.1).

Checkpoints are folders in the Hugging Face layout (config.json + model.safetensors, or shards
with model.safetensors.index.json), with HF's parameter names, so a real deepseek-math-7b folder
opens here and ours open in `transformers` and vLLM. Two more families have the same trunk, up to
three options, so they load too (model_type in config.json):

    "llama"   DeepSeek-LLM/Math, Llama 2, Llama 3/3.1/3.2 (Llama 3.1+: `rope_scaling` "llama3";
              1B/3B: tied embeddings; instruct models: a list of EOS ids)
    "qwen2"   Qwen2, Qwen2.5 (biases on the q/k/v projections; tied embeddings up to 3B)

Anything else in a config.json that would change the computation is refused with one line
naming the field (`ModelArgs.from_hf`).

    model = Transformer.from_pretrained("deepseek-math-7b-rl")
    model.save_pretrained("out/my-model")

Generation (`generate`) runs batched prompts of different lengths (left-padded) through a
preallocated KV cache, each decode step eager or, with compile=True, through torch.compile (greedy
on a CPU, four steps to a compiled call);
rows that finish leave the batch once a quarter of its rows have, so a batch costs about the sum
of its rows' lengths, not B times the longest.
`sequence_logprobs` recomputes log-probs of given completions in chunks; without gradients, or
with them once a chunk's logits pass CHECKPOINT_LOGITS_BYTES, it never holds a whole (B, T, V)
float32 logits tensor (V is 102,400 for the 7B).

"The classroom model" below is configs/classroom.py's: 4 layers of width 128, a 1,024-token
vocabulary, ~1.07M parameters, the model the classroom run trains on a CPU in minutes.

Shapes: B batch, T query length, S key length (cache), D = dim, H heads, K kv heads, d head dim.
"""

import contextlib
import json
import math
import os
import shutil
import tempfile
import warnings
from dataclasses import dataclass, fields

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from support.fileio import BadInput

# Llama 3.1's RoPE scaling parameters (config.json's rope_scaling / rope_parameters), typed
LLAMA3_ROPE_KEYS = dict(factor=1.0, low_freq_factor=1.0, high_freq_factor=1.0, original_max_position_embeddings=1)


@dataclass
class ModelArgs:
    # Defaults: support/config.py's (~1.9M parameters; configs/classroom.py narrows V to 1,024 and
    # max_seq_len to 256, ~1.07M); DeepSeekMath-7B's config.json, read by from_hf,
    # has V 102,400, D 4,096, 30 layers, 32 heads and 32 kv heads, SwiGLU width 11,008, 4,096 positions.
    vocab_size: int = 4096  # V, rows of embed_tokens and lm_head; at least the tokenizer's ids
    dim: int = 128  # D, the width of the residual stream
    n_layer: int = 4
    n_head: int = 4  # H query heads
    n_kv_head: int = 4  # K key/value heads: K < H is grouped-query attention (GQA), K = H plain multi-head
    intermediate_size: int = 352  # SwiGLU width, ~8/3 D (rounded up to a multiple of 32)
    max_seq_len: int = 512  # positions the RoPE tables cover; prompt + output must fit
    rope_theta: float = 10000.0  # RoPE's base: theta_j = rope_theta^(-2j/d)
    rope_scaling: dict = None  # Llama 3.1's long-context RoPE: {LLAMA3_ROPE_KEYS: value}; None = plain
    norm_eps: float = 1e-6  # RMSNorm's eps (DeepSeek-LLM/Math: 1e-6; config.json's rms_norm_eps)
    tie_embeddings: bool = False  # lm_head shares embed_tokens' matrix (small Llama 3.2 / Qwen2); DeepSeek: no
    qkv_bias: bool = False  # Qwen2: biases on the q, k and v projections (not on o_proj)
    init_std: float = 0.02  # N(0, init_std) init; matters only for a model trained from scratch
    bos_id: int = 0  # None where the model has none (Qwen2's config.json may say null)
    eos_id: int = 1  # or a list of ids, any of which ends generation (Llama 3 instruct: three)

    @classmethod
    def from_config(cls, cfg, **overrides):
        """The model keys of a run's config (support/config.py), plus token ids from the tokenizer."""
        values = {f.name: getattr(cfg, f.name) for f in fields(cls) if hasattr(cfg, f.name)}
        return cls(**{**values, **overrides})

    @property
    def head_dim(self):
        """d = D / H: the heads split the width. HF configs may say head_dim; from_hf refuses others."""
        return self.dim // self.n_head

    # ---- Hugging Face config.json <-> ModelArgs
    def to_hf(self, head, dtype):
        """The config.json that transformers and vLLM read for this model (the inverse of from_hf)."""
        family = "qwen2" if self.qkv_bias else "llama"  # only Qwen2 has q/k/v biases: they name the family
        arch = {"qwen2": "Qwen2", "llama": "Llama"}[family]
        hf = dict(
            architectures=[arch + ("ForCausalLM" if head == "lm" else "ForSequenceClassification")],
            model_type=family,
            vocab_size=self.vocab_size,
            hidden_size=self.dim,
            intermediate_size=self.intermediate_size,
            num_hidden_layers=self.n_layer,
            num_attention_heads=self.n_head,
            num_key_value_heads=self.n_kv_head,
            head_dim=self.head_dim,
            max_position_embeddings=self.max_seq_len,
            rms_norm_eps=self.norm_eps,
            rope_theta=self.rope_theta,
            # the pre-transformers-5 key: transformers 5 and vLLM both still read it
            rope_scaling={"rope_type": "llama3", **self.rope_scaling} if self.rope_scaling else None,
            tie_word_embeddings=self.tie_embeddings,
            initializer_range=self.init_std,
            bos_token_id=self.bos_id,
            eos_token_id=self.eos_id,
            hidden_act="silu",
            torch_dtype=str(dtype).removeprefix("torch."),
        )
        if family == "llama":
            hf.update(attention_bias=False, mlp_bias=False)
        else:
            hf.update(use_sliding_window=False)  # Qwen2 can window its attention; ours always sees it all
        if head != "lm":
            hf["num_labels"] = 1  # ForSequenceClassification with one label: the reward / value head
        return hf

    @classmethod
    def from_hf(cls, hf, path="config.json"):
        """ModelArgs of a Llama- or Qwen2-family config.json; a field we would compute
        differently from `transformers` is a BadInput naming it."""
        def refuse(field, why):
            return BadInput(f"{path}: {field} {hf.get(field)!r} is not supported ({why})")

        family = hf.get("model_type")
        if family not in ("llama", "qwen2"):
            raise refuse("model_type", "this project reads Llama-family (DeepSeek-LLM/Math, Llama 2/3) "
                                       "and Qwen2-family (Qwen2, Qwen2.5) checkpoints")
        unsupported = {"hidden_act": hf.get("hidden_act", "silu") != "silu",
                       "attention_bias": family == "llama" and hf.get("attention_bias"),
                       "mlp_bias": hf.get("mlp_bias"),
                       "use_sliding_window": hf.get("use_sliding_window")}
        for field, bad in unsupported.items():
            if bad:
                raise refuse(field, "every layer here is a plain silu, full-attention Llama layer")
        try:
            n_head = hf["num_attention_heads"]
            if hf.get("head_dim") not in (None, hf["hidden_size"] // n_head):
                raise refuse("head_dim", "it must be hidden_size / num_attention_heads")
            return cls(
                vocab_size=hf["vocab_size"],
                dim=hf["hidden_size"],
                n_layer=hf["num_hidden_layers"],
                n_head=n_head,
                n_kv_head=hf.get("num_key_value_heads") or n_head,  # absent in Llama 1 configs: no GQA
                intermediate_size=hf["intermediate_size"],
                max_seq_len=hf.get("max_position_embeddings", 4096),
                rope_theta=_rope_theta(hf),
                rope_scaling=_rope_scaling(hf, refuse),
                norm_eps=hf.get("rms_norm_eps", 1e-6),
                tie_embeddings=hf.get("tie_word_embeddings", False),
                qkv_bias=family == "qwen2",  # Qwen2's q/k/v always have biases (no config key)
                init_std=hf.get("initializer_range", 0.02),
                bos_id=hf.get("bos_token_id"),
                eos_id=hf.get("eos_token_id"),
            )
        except KeyError as e:
            raise BadInput(f"{path}: no {e.args[0]!r}; is this a Hugging Face model config.json?")


def _rope_theta(hf):
    """transformers < 5 writes rope_theta at the top; 5 inside rope_parameters."""
    return float(hf.get("rope_theta") or (hf.get("rope_parameters") or {}).get("rope_theta", 10000.0))


def _rope_scaling(hf, refuse):
    """Llama 3's RoPE scaling from either spelling (`rope_scaling` before transformers 5,
    `rope_parameters` since, with rope_type "default" for plain RoPE), or None."""
    for field in ("rope_scaling", "rope_parameters"):
        rope = hf.get(field) or {}
        kind = rope.get("rope_type", rope.get("type", "default"))
        if kind == "default":
            continue
        if kind != "llama3" or any(k not in rope for k in LLAMA3_ROPE_KEYS):
            raise refuse(field, "only plain RoPE and Llama 3's rope_type 'llama3' with "
                                + ", ".join(LLAMA3_ROPE_KEYS))
        return {k: type(v)(rope[k]) for k, v in LLAMA3_ROPE_KEYS.items()}  # the key set we compute, no more
    return None


class RMSNorm(nn.Module):
    """y = x / sqrt(mean(x^2) + eps) * w, computed in float32 as Llama does.

    RMSNorm (Zhang & Sennrich 2019) is LayerNorm without the mean subtraction and the bias: it
    only rescales each token's vector to unit RMS, which is what keeps the pre-norm blocks' inputs
    at a fixed scale, and it is cheaper. The gain w starts at 1 and is not weight-decayed."""

    def __init__(self, dim, eps):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        x32 = x.float()  # (..., D); a bf16 mean of squares over 4,096 numbers would lose digits
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(x.dtype)  # cast back before the gain, in HF LlamaRMSNorm's order


def rope_tables(args, device=None):
    """cos/sin tables (max_seq_len, d) for RoPE, theta_j = base^(-2j/d) (Llama 3.1: rescaled).

    Hugging Face's layout rotates the two halves of each head (dimension j with j + d/2),
    not interleaved pairs, and Llama checkpoints' q/k weights are permuted to match; we use
    the same layout so those weights load unchanged."""
    d = args.head_dim
    # theta_j for j = 0 .. d/2 - 1, (d/2,): from 1 rad per position down to ~1/rope_theta
    inv_freq = 1.0 / (args.rope_theta ** (torch.arange(0, d, 2, device=device, dtype=torch.float32) / d))
    if args.rope_scaling:
        inv_freq = llama3_inv_freq(inv_freq, **args.rope_scaling)
    # m * theta_j for every position m, (max_seq_len, d/2), float32 (in bf16 the angle of
    # position 4,000 would be off by whole radians)
    angles = torch.outer(torch.arange(args.max_seq_len, device=device, dtype=torch.float32), inv_freq)
    angles = torch.cat([angles, angles], dim=-1)  # (max_seq_len, d): dimensions j and j + d/2 share theta_j
    return angles.cos(), angles.sin()


def llama3_inv_freq(inv_freq, factor, low_freq_factor, high_freq_factor, original_max_position_embeddings):
    """Llama 3.1's context extension of RoPE, frequency by frequency (d/2,).

    r_j = original context / wavelength_j = turns frequency j makes over the original context.
    r_j < low_freq_factor (slow, position-coding dimensions): theta_j / factor, so factor x the
    original context rotates them no further than the original context did; r_j >
    high_freq_factor (fast, local-order dimensions): unchanged; in between, linear in r_j:
        theta'_j = (1 - s) theta_j / factor + s theta_j,  s = (r_j - low) / (high - low) in [0, 1]"""
    turns = original_max_position_embeddings * inv_freq / (2 * math.pi)  # r_j
    s = ((turns - low_freq_factor) / (high_freq_factor - low_freq_factor)).clamp(0, 1)
    return (1 - s) * inv_freq / factor + s * inv_freq


def apply_rope(x, cos, sin):
    """x (B, H, T, d) rotated by position: x*cos + rotate_half(x)*sin; cos/sin (B, 1, T, d).

    RoPE (Su et al. 2021): the pair (x_j, x_j+d/2) of the token at position m is rotated by the
    angle m theta_j. With q rotated by m theta_j and k by n theta_j, each pair's dot product depends
    on the positions only through (m - n) theta_j: attention sees relative positions, and no
    position is added to the residual stream."""
    x1, x2 = x.chunk(2, dim=-1)  # (B, H, T, d/2) each
    # (x1, x2) -> (x1 cos - x2 sin, x2 cos + x1 sin): a 2-D rotation of each pair
    return x * cos + torch.cat([-x2, x1], dim=-1) * sin


class KVCache:
    """Preallocated keys/values of every layer: (B, K, S_max, d) each, filled left to right.

    A forward writes its T new keys/values at `length` and attends over the filled prefix, a
    view (B, K, length + T, d): no copy, unlike a cache grown by torch.cat at every step, which
    re-reads and re-writes the whole cache each token. generate() sets `length` after the
    prefill, and `_decode_steps` advances it by one a step, inside the compiled call when there is
    one (torch.compile then sees it as one symbolic size, not a new graph per step)."""

    def __init__(self, args, batch_size, max_len, device, dtype):
        shape = (batch_size, args.n_kv_head, max_len, args.head_dim)  # K heads, not H: GQA's H/K saving
        # one (B, K, S_max, d) tensor per layer: 2 x n_layer x B x K x S_max x d numbers in all,
        # for the 7B at bf16 0.5 MB per token of a row. Left unset (empty, not zeros): a forward
        # reads only the positions written before it (the prefill writes 0..P-1, each decode step
        # its own), and zeroing ~90 MB per batch took 1.4 s of a 65 s classroom evaluation (cProfile).
        self.k = [torch.empty(shape, device=device, dtype=dtype) for _ in range(args.n_layer)]
        self.v = [torch.empty(shape, device=device, dtype=dtype) for _ in range(args.n_layer)]
        self.length = 0  # positions filled so far (the same for every row: prompts are left-padded)

    def take_rows(self, rows):
        """A cache of the given rows, (B,) bool or (B',) indices, which may repeat a row: a copy,
        so every later step reads and computes only those rows (generate drops finished rows,
        and gives each copy of a repeated prompt its prompt's rows). Only the filled positions
        are copied: after a classroom prefill that is a quarter of the cache (0.3 instead of 2.3
        ms a layer to give 16 prompts' rows to their 128 copies, an Intel Xeon, 1 thread)."""
        index = rows.nonzero().squeeze(1) if rows.dtype == torch.bool else rows  # (B',)

        def take(cache):  # (B, K, S_max, d) -> (B', K, S_max, d), positions from `length` on unset
            taken = cache.new_empty((len(index), *cache.shape[1:]))
            torch.index_select(cache[:, :, :self.length], 0, index, out=taken[:, :, :self.length])
            return taken
        for layer in range(len(self.k)):  # a layer at a time: each old one is freed before the next copy
            self.k[layer], self.v[layer] = take(self.k[layer]), take(self.v[layer])

    def update(self, layer, k, v):
        """Store this forward's keys/values (B, K, T, d); return those to attend over (B, K, S, d)."""
        end = self.length + k.shape[2]  # prefill: T = prompt length; decode: T = 1
        at = torch.arange(self.length, end, device=k.device)  # (T,) the cache positions written
        # index_copy_, not an assignment to a slice: in a compiled call of several decode steps
        # (generate's greedy steps on a CPU) inductor turned each slice assignment into a copy of
        # the whole cache (2.6 instead of 1.1 ms a step at batch 16); index_copy_ it writes in place
        # in the cache's dtype: under autocast a bf16 cache gets RoPE's float32 keys and bf16 values
        self.k[layer].index_copy_(2, at, k.to(self.k[layer].dtype))
        self.v[layer].index_copy_(2, at, v.to(self.v[layer].dtype))
        return self.k[layer][:, :, :end], self.v[layer][:, :, :end]


class Attention(nn.Module):
    """Causal self-attention with RoPE and grouped-query attention (GQA, Ainslie et al. 2023).

    H query heads share K key/value heads in groups of H/K: the k/v projections and the KV cache
    shrink by H/K at little cost in quality. K = H is plain multi-head attention (DeepSeekMath-7B,
    Llama 2-7B); K < H is Llama 3's, Qwen2's and the 67B DeepSeek-LLM's GQA.

    Two branches serve only generate(compile=True)'s decode step (section "generation" below):
    qkv_t, set by decode_weight_layout, does the three projections in one matmul, and
    one_query_attention replaces SDPA for one query a row (the same attention, rounded its own way)."""

    def __init__(self, args):
        super().__init__()
        self.n_head, self.n_kv_head, self.head_dim = args.n_head, args.n_kv_head, args.head_dim
        self.q_proj = nn.Linear(args.dim, args.n_head * args.head_dim, bias=args.qkv_bias)
        self.k_proj = nn.Linear(args.dim, args.n_kv_head * args.head_dim, bias=args.qkv_bias)
        self.v_proj = nn.Linear(args.dim, args.n_kv_head * args.head_dim, bias=args.qkv_bias)
        self.o_proj = nn.Linear(args.n_head * args.head_dim, args.dim, bias=False)
        self.qkv_t = None  # (D, H d + 2 K d): q, k and v's weights side by side, inside decode_weight_layout

    def forward(self, x, cos, sin, attn_mask, cache, layer):
        B, T, _ = x.shape
        if self.qkv_t is None:
            q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)  # (B, T, H d), (B, T, K d), (B, T, K d)
        else:  # generate(compile=True)'s decode step on a CPU: the three in one matmul, the same numbers
            qkv = x @ self.qkv_t
            if self.q_proj.bias is not None:  # Qwen2; added apart from the matmul, it may round apart from F.linear's
                qkv = qkv + torch.cat([self.q_proj.bias, self.k_proj.bias, self.v_proj.bias])
            q, k, v = qkv.split([self.q_proj.out_features, self.k_proj.out_features, self.v_proj.out_features], -1)
        q = q.view(B, T, self.n_head, self.head_dim).transpose(1, 2)  # (B, H, T, d)
        k = k.view(B, T, self.n_kv_head, self.head_dim).transpose(1, 2)  # (B, K, T, d)
        v = v.view(B, T, self.n_kv_head, self.head_dim).transpose(1, 2)  # (B, K, T, d)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)  # positions enter here only; v has none
        if cache is not None:  # write this step's keys/values, attend over everything so far
            k, v = cache.update(layer, k, v)  # (B, K, S, d)
        if T == 1 and attn_mask is not None and torch.compiler.is_compiling():
            y = one_query_attention(q, k, v, attn_mask)  # generate(compile=True)'s decode step
        else:
            # softmax(q k^T / sqrt(d) + mask) v; K < H shares each kv head among H/K query heads (GQA)
            # No mask: a batch of whole unpadded rows, no cache, so the fused kernel's own causal mask
            # serves (is_causal aligns it to the first key: wrong once keys outnumber queries, which
            # is why trunk refuses a cache without a mask). A mask hides padding: the prefill's from
            # padding_positions_and_mask, a decode step's (B, 1, 1, S) slice of generate()'s key mask.
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, is_causal=attn_mask is None,
                                               enable_gqa=self.n_kv_head != self.n_head)  # (B, H, T, d)
        return self.o_proj(y.transpose(1, 2).reshape(B, T, -1))  # heads side by side (B, T, H d) -> (B, T, D)


def one_query_attention(q, k, v, key_mask):
    """softmax(q k^T / sqrt(d) + mask) v for one new query per row, (B, H, 1, d), over S cached
    keys and values (B, K, S, d); key_mask (B, 1, 1, S), True = may attend.

    The decode step's attention, written out for torch.compile: two small matmuls and a masked
    softmax, which inductor turns into two fused loops. Against the fused SDPA kernel (built for
    many queries) it made the compiled step ~10% faster at batch 128, the classroom evaluation's
    shape (1.79x -> 1.98x transformers' generate), and 3-4% at batch 16 and 1, where attention
    takes ~45% of the step (bench/bench_generate.py, an Intel Xeon, 1 thread). Each key's score
    is a 32-number dot product, two vector multiplies and a sum across the lanes
    (TORCH_LOGS=output_code shows the loop); at batch 16 and 160 cached keys the step spends
    0.53 ms on its keys and values, which one core can read in 0.39 ms (the bench prints both):
    the loops are bound by that reading, and normalizing by a reciprocal instead of softmax's
    division changed nothing measurable.
    Eager decoding keeps SDPA: the classroom's committed results were made with its rounding."""
    B, H, _, d = q.shape
    K = k.shape[1]
    q = q.reshape(B, K, H // K, d)  # the H/K query heads that share a kv head, as rows (GQA without a copy)
    scores = q @ k.transpose(-1, -2) / math.sqrt(d)  # (B, K, H/K, S)
    scores = scores.masked_fill(~key_mask, float("-inf"))  # left padding; the mask broadcasts over heads
    return (scores.softmax(-1) @ v).view(B, H, 1, d)  # (B, K, H/K, d) -> (B, H, 1, d)


class SwiGLU(nn.Module):
    """Llama's feed-forward (Shazeer 2020, GLU variants): down(silu(gate(x)) * up(x)), silu(z) =
    z sigmoid(z). Three D x I matrices instead of a plain MLP's two, so I ~ 8/3 D keeps the
    parameter count of a 4D-wide two-matrix MLP. gate_up_t, set by decode_weight_layout for the
    compiled decode step, does gate and up in one matmul: the same numbers."""

    def __init__(self, args):
        super().__init__()
        self.gate_proj = nn.Linear(args.dim, args.intermediate_size, bias=False)
        self.up_proj = nn.Linear(args.dim, args.intermediate_size, bias=False)
        self.down_proj = nn.Linear(args.intermediate_size, args.dim, bias=False)
        self.gate_up_t = None  # (D, 2I): gate's and up's weights side by side, inside decode_weight_layout

    def forward(self, x):
        if self.gate_up_t is None:
            gate, up = self.gate_proj(x), self.up_proj(x)  # (B, T, I) each
        else:  # generate(compile=True)'s decode step on a CPU: both in one matmul, the same numbers
            gate, up = (x @ self.gate_up_t).chunk(2, dim=-1)
        return self.down_proj(F.silu(gate) * up)  # (B, T, I) gated, back to (B, T, D)


class Block(nn.Module):
    """One pre-norm decoder layer. Each sublayer reads a normalised copy of the residual stream and
    adds its output back, so the stream itself is never normalised and the gradient reaches every
    layer through the identity path of the sums (pre-norm trains more stably at depth than post-norm)."""

    def __init__(self, args):
        super().__init__()
        self.input_layernorm = RMSNorm(args.dim, args.norm_eps)
        self.self_attn = Attention(args)
        self.post_attention_layernorm = RMSNorm(args.dim, args.norm_eps)
        self.mlp = SwiGLU(args)

    def forward(self, x, cos, sin, attn_mask, cache, layer):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, attn_mask, cache, layer)  # h, (B, T, D)
        return x + self.mlp(self.post_attention_layernorm(x))  # y = h + SwiGLU(RMSNorm(h))


class Transformer(nn.Module):
    """Llama / Qwen2 decoder. head="lm": next-token logits (B, T, V); head="scalar": one value per
    token (B, T), the value model of paper section 4 (HF's LlamaForSequenceClassification names
    this head `score`); head="reward": both, the reward model of support/rewards.py, whose score
    adds the log-probs its own LM head gives the output's tokens."""

    def __init__(self, args, head="lm"):
        super().__init__()
        assert head in ("lm", "scalar", "reward"), head
        self.args, self.head_kind = args, head
        # Module names follow Hugging Face's (minus the "model." prefix), so state dicts map 1:1.
        # from_pretrained builds on the meta device, weights about to be replaced: initialising meta
        # tensors changes nothing but costs ~1.5 s a process (nn.Embedding's normal_ or an arange on
        # meta imports torch._dynamo), so there the embedding gets an empty weight and no init runs.
        meta = torch.empty(0).device.type == "meta"
        self.embed_tokens = nn.Embedding(args.vocab_size, args.dim,
                                         _weight=torch.empty(args.vocab_size, args.dim) if meta else None)
        self.layers = nn.ModuleList(Block(args) for _ in range(args.n_layer))
        self.norm = RMSNorm(args.dim, args.norm_eps)  # the stream grows with depth: normalise before the head
        if head in ("lm", "reward"):
            self.lm_head = nn.Linear(args.dim, args.vocab_size, bias=False)
            if args.tie_embeddings:
                self.lm_head.weight = self.embed_tokens.weight  # one Parameter: its gradient is the sum of both uses
        if head in ("scalar", "reward"):
            self.score = nn.Linear(args.dim, 1, bias=False)  # no bias, as HF's ForSequenceClassification
        # The trainers set it: store only each block's input and recompute the block in backward,
        # trading ~1/3 more compute for activations of one block instead of n_layer.
        self.gradient_checkpointing = False
        if not meta:  # (from_pretrained builds the RoPE tables once the weights are real)
            self.reset_rope()
            self.apply(self._init_weights)

    def reset_rope(self):
        """(Re)build the RoPE tables on the weights' device (after from_pretrained's meta build)."""
        cos, sin = rope_tables(self.args, self.embed_tokens.weight.device)
        # persistent=False: derived from args, so not in state_dict and not in HF checkpoints
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)

    def _init_weights(self, module):
        """Llama init: N(0, 0.02); the projections that write into the residual stream
        (o_proj, down_proj) scaled by 1/sqrt(2 * n_layer) so the stream's variance stays O(1)
        at depth (GPT-2's rule). The scalar head starts at 0: a value model that knows nothing."""
        std = self.args.init_std
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=std)
        if isinstance(module, nn.Linear) and module.bias is not None:  # Qwen2's q/k/v
            nn.init.zeros_(module.bias)
        if isinstance(module, Attention):
            nn.init.normal_(module.o_proj.weight, std=std / math.sqrt(2 * self.args.n_layer))
        if isinstance(module, SwiGLU):
            nn.init.normal_(module.down_proj.weight, std=std / math.sqrt(2 * self.args.n_layer))
        if module is getattr(self, "score", None):
            nn.init.zeros_(module.weight)

    def trunk(self, tokens, positions=None, attn_mask=None, cache=None):
        """Hidden states after the final norm, (B, T, D).

        positions (B, T): RoPE positions (default 0..T-1); attn_mask (B, 1, T, S) bool, True =
        may attend (default causal); cache: a KVCache continued from cache.length (the caller
        advances it), which needs positions and attn_mask (generate builds both)."""
        B, T = tokens.shape
        if cache is not None and (positions is None or attn_mask is None):
            raise ValueError("a forward through a KVCache needs positions and attn_mask: the default causal "
                             "mask lines up with the cache's first key, not its last")
        if positions is None:
            positions = torch.arange(T, device=tokens.device).expand(B, T)  # (B, T)
        cos = self.rope_cos[positions].unsqueeze(1)  # (B, 1, T, d): each row's own positions, shared by heads
        sin = self.rope_sin[positions].unsqueeze(1)
        x = self.embed_tokens(tokens)  # (B, T, D)
        cos, sin = cos.to(x.dtype), sin.to(x.dtype)  # tables in float32, applied in the compute dtype, as HF does
        for i, layer in enumerate(self.layers):
            if self.gradient_checkpointing and self.training:
                x = checkpoint(layer, x, cos, sin, attn_mask, cache, i, use_reentrant=False)  # keeps x only
            else:
                x = layer(x, cos, sin, attn_mask, cache, i)
        return self.norm(x)

    def forward(self, tokens, positions=None, attn_mask=None, cache=None, last_only=False,
                targets=None, temperature=1.0, with_entropy=False, chunk_size=256):
        """Logits (B, T, V) (values (B, T) for the scalar head); last_only: logits of the last
        position only (B, V), for generation; targets (B, T): log pi(targets[:, t] | tokens[:, :t+1])
        (B, T) computed in chunks (see sequence_logprobs). Every use goes through forward so that
        DDP's and FSDP's hooks (gradient sync, weight all-gather) see it."""
        h = self.trunk(tokens, positions, attn_mask, cache)  # (B, T, D)
        if self.head_kind == "scalar":
            return self.score(h).squeeze(-1)  # (B, T)
        if self.head_kind == "reward":  # the score, and log pi(targets) (B, T) each
            return self.score(h).squeeze(-1), chunked_logprobs(self.lm_head, h, targets, temperature, False, chunk_size)
        if last_only:
            return self.lm_head(h[:, -1])  # (B, V)
        if targets is None:
            return self.lm_head(h)  # (B, T, V)
        return chunked_logprobs(self.lm_head, h, targets, temperature, with_entropy, chunk_size)

    def num_params(self):
        """Parameters, a tied lm_head counted once (parameters() yields a shared tensor once)."""
        return sum(p.numel() for p in self.parameters())

    # ------------------------------------------------------------------ Hugging Face checkpoints
    @staticmethod
    def hf_name(name):
        """Our state-dict key -> HF's: the trunk sits under "model." in LlamaForCausalLM, the heads do not."""
        return name if name.startswith(("lm_head.", "score.")) else "model." + name

    def save_pretrained(self, folder, state_dict=None, max_shard_bytes=5 * 2**30, atomic=True):
        """Write config.json and model.safetensors (or shards + index) in HF's layout.

        The folder is written beside its final place and renamed into it, so a crash mid-save
        leaves the previous checkpoint (if any) intact (atomic=False: write into `folder` as it
        is, for a caller that stages the folder itself). state_dict: a full (gathered) state
        dict, for FSDP models whose own tensors are shards."""
        from safetensors.torch import save_file

        state = state_dict if state_dict is not None else self.state_dict()
        tensors = {self.hf_name(k): v.detach().cpu().contiguous() for k, v in state.items()}
        if self.args.tie_embeddings:
            tensors.pop("lm_head.weight", None)  # HF stores only embed_tokens and re-ties on load
        dtype = next(iter(tensors.values())).dtype  # config.json's torch_dtype: the dtype stored
        # Greedy sharding in state-dict order, as HF's save_pretrained: a new shard when the next
        # tensor would overflow max_shard_bytes (a single larger tensor gets a shard of its own).
        shards, current, size = [], {}, 0
        for name, t in tensors.items():
            nbytes = t.numel() * t.element_size()
            if current and size + nbytes > max_shard_bytes:
                shards.append(current)
                current, size = {}, 0
            current[name], size = t, size + nbytes
        shards.append(current)
        with (staged_folder(folder) if atomic else contextlib.nullcontext(folder)) as tmp:
            os.makedirs(tmp, exist_ok=True)
            with open(os.path.join(tmp, "config.json"), "w") as f:
                json.dump(self.args.to_hf(self.head_kind, dtype), f, indent=2)
            if len(shards) == 1:
                save_file(shards[0], os.path.join(tmp, "model.safetensors"), metadata={"format": "pt"})
                return
            weight_map = {}  # tensor name -> shard file: model.safetensors.index.json, how loaders find it
            for i, shard in enumerate(shards, 1):
                name = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
                save_file(shard, os.path.join(tmp, name), metadata={"format": "pt"})
                weight_map.update({k: name for k in shard})
            total = sum(t.numel() * t.element_size() for t in tensors.values())
            with open(os.path.join(tmp, "model.safetensors.index.json"), "w") as f:
                json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)

    @classmethod
    def from_pretrained(cls, folder, head="lm", dtype=None, device="cpu"):
        """Load an HF Llama- or Qwen2-family folder. head="scalar" on an LM checkpoint keeps the
        trunk and starts a fresh (zero) scalar head: how a value model is initialised from the
        policy. A missing or damaged file, or weights that disagree with config.json, is a
        BadInput naming the file and the tensor or field."""
        config_path = os.path.join(folder, "config.json")
        if not os.path.exists(config_path):
            raise BadInput(f"{folder}: no config.json; expected a Hugging Face checkpoint folder "
                           "(config.json + model.safetensors)")
        with open(config_path) as f:
            try:
                hf = json.load(f)
            except json.JSONDecodeError as e:
                raise BadInput(f"{config_path}: not valid JSON ({e})")
        args = ModelArgs.from_hf(hf, config_path)
        # On the meta device the model has shapes but no memory and no random init: a 7B costs
        # neither 28 GB of float32 nor the seconds of initialising weights about to be replaced.
        with torch.device("meta"):
            model = cls(args, head)
        stored, files = read_safetensors(folder, device)
        # HF name -> (our name, the meta parameter, whose shape config.json fixed)
        expected = {cls.hf_name(k): (k, p) for k, p in model.state_dict(keep_vars=True).items()}
        state = {}
        for hf_key, (key, param) in expected.items():
            if hf_key not in stored:
                if hf_key == "lm_head.weight" and args.tie_embeddings:
                    continue
                if hf_key == "score.weight":  # a value model started from an LM checkpoint
                    stored[hf_key] = torch.zeros(1, args.dim, device=device,
                                                 dtype=stored["model.embed_tokens.weight"].dtype)
                elif hf_key == "lm_head.weight" and head == "reward":
                    raise BadInput(f"{folder}: a scalar-head checkpoint has no LM head, and a reward model "
                                   "that reads its LM's log-probs needs one: start it from an LM checkpoint, "
                                   "or set rl_rm_likelihood=false")
                else:
                    raise BadInput(f"{folder}: checkpoint has no tensor '{hf_key}' (expected shape "
                                   f"{tuple(param.shape)} from config.json); is this checkpoint's "
                                   "config.json its own?")
            t = stored[hf_key]
            if tuple(t.shape) != tuple(param.shape):
                given = ", ".join(f"{f}={hf.get(f)}" for f in shape_fields(hf_key))
                raise BadInput(f"{os.path.join(folder, files[hf_key])}: tensor '{hf_key}' has shape "
                               f"{tuple(t.shape)} but config.json ({given}) makes it {tuple(param.shape)}")
            state[key] = t.to(dtype) if dtype is not None else t
        # assign=True: the loaded tensors become the parameters (no copy into meta tensors);
        # strict=False: a tied lm_head is not in `state`.
        model.load_state_dict(state, strict=False, assign=True)
        if args.tie_embeddings and head != "scalar":
            model.lm_head.weight = model.embed_tokens.weight  # assign replaced embed_tokens': tie again
        model.reset_rope()  # built on meta, the model has no RoPE tables yet
        return model


def shape_fields(hf_key):
    """The config.json fields that set the shape of tensor `hf_key`."""
    if "embed_tokens" in hf_key or "lm_head" in hf_key:
        return ("vocab_size", "hidden_size")
    if any(p in hf_key for p in ("gate_proj", "up_proj", "down_proj")):
        return ("intermediate_size", "hidden_size")
    if "q_proj" in hf_key or "o_proj" in hf_key:
        return ("num_attention_heads", "hidden_size")
    if "k_proj" in hf_key or "v_proj" in hf_key:
        return ("num_key_value_heads", "num_attention_heads", "hidden_size")
    return ("hidden_size",)


def read_safetensors(folder, device):
    """{HF name: tensor} of every tensor of a checkpoint folder (model.safetensors, or the shards
    that model.safetensors.index.json lists), and {HF name: the file it is in}."""
    from safetensors import SafetensorError, safe_open

    index = os.path.join(folder, "model.safetensors.index.json")
    if os.path.exists(index):
        try:
            with open(index) as f:
                files = sorted(set(json.load(f)["weight_map"].values()))  # each shard once
        except (json.JSONDecodeError, KeyError, AttributeError) as e:
            raise BadInput(f"{index}: not a safetensors index ({type(e).__name__}: {e})")
    elif os.path.exists(os.path.join(folder, "model.safetensors")):
        files = ["model.safetensors"]
    else:
        raise BadInput(f"{folder}: no model.safetensors or model.safetensors.index.json")
    stored, where = {}, {}
    for name in files:
        path = os.path.join(folder, name)
        if not os.path.exists(path):
            raise BadInput(f"{path}: missing; model.safetensors.index.json lists it (download every shard)")
        try:
            with safe_open(path, framework="pt", device=str(device)) as f:
                for key in f.keys():
                    stored[key], where[key] = f.get_tensor(key), name  # read straight onto `device`
        except (SafetensorError, OSError) as e:
            raise BadInput(f"{path}: damaged or truncated safetensors file ({e}); download it again")
    return stored, where


class staged_folder:
    """Write a folder under a temporary name, then swap it into place (old one removed)."""

    def __init__(self, folder):
        self.folder = os.path.abspath(folder)

    def __enter__(self):
        parent = os.path.dirname(self.folder)
        os.makedirs(parent, exist_ok=True)
        self.tmp = tempfile.mkdtemp(dir=parent, prefix="." + os.path.basename(self.folder) + ".")
        return self.tmp

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            return False
        # Two renames, never a copy: a crash between them leaves the complete new folder beside
        # the .old one, which fileio.recover_staged_folder puts in place on the next run.
        old = None
        if os.path.exists(self.folder):
            old = self.tmp + ".old"
            os.replace(self.folder, old)
        os.replace(self.tmp, self.folder)
        if old:
            shutil.rmtree(old, ignore_errors=True)
        return False


# ---------------------------------------------------------------------- masks and log-probs
def padding_positions_and_mask(mask):
    """From a (B, T) bool mask of real tokens (left or right padding), the RoPE positions
    (B, T) that count only real tokens, and the (B, 1, T, T) causal mask that hides padding.

    A left-padding query sees only itself (a right-padding one the real prefix and itself), so no
    softmax row is empty (which would give NaN); its output is never used. This makes a real
    token's result independent of the row's padding."""
    B, T = mask.shape
    # (B, T): 0 at a row's first real token, as if it had no padding; left padding gets 0, right
    # padding the last real position (both unused)
    positions = (mask.long().cumsum(1) - 1).clamp(min=0)
    causal = torch.ones(T, T, dtype=torch.bool, device=mask.device).tril()  # (T, T) query t sees keys <= t
    attn = causal & mask[:, None, None, :]  # (B, 1, T, T)
    attn = attn | torch.eye(T, dtype=torch.bool, device=mask.device)  # the diagonal: no empty softmax row
    return positions, attn


def _chunk_logprobs(lm_head, hidden, targets, temperature, with_entropy):
    """Log-probs (B, c) of the targets, and the entropies, of one chunk of c positions."""
    logits = lm_head(hidden).float()  # (B, c, V), the only place logits exist
    if temperature != 1.0:
        logits = logits / temperature  # the distribution the samples came from: softmax(z / tau)
    logp_all = F.log_softmax(logits, dim=-1)  # (B, c, V), float32: a bf16 log-softmax would blur ratios
    logp = logp_all.gather(-1, targets.unsqueeze(-1)).squeeze(-1)  # (B, c)
    if not with_entropy:
        return logp, None
    with torch.no_grad():  # a metric: kept out of the graph, so backward does not recompute it
        entropy = -(logp_all.exp() * logp_all).sum(-1)  # H = -sum_v p_v log p_v, (B, c)
    return logp, entropy


CHECKPOINT_LOGITS_BYTES = 256 * 2**20  # smaller chunks of logits are cheaper to keep than to recompute


def chunked_logprobs(lm_head, hidden, targets, temperature, with_entropy, chunk_size):
    """log softmax(lm_head(hidden) / temperature) at targets, (B, T), one sequence chunk at a
    time; with gradients on, a chunk whose float32 logits exceed CHECKPOINT_LOGITS_BYTES is
    checkpointed, so only one such (B, chunk, V) tensor exists at a time, in forward and in
    backward (the 7B's vocabulary of 102,400 makes them GiBs; the classroom's are ~36 MB)."""
    logps, entropies = [], []
    # split, not a range over T: under torch.compile a range fixes T, and every new length recompiles
    for h, y in zip(hidden.split(chunk_size, dim=1), targets.split(chunk_size, dim=1)):  # (B, c, D), (B, c)
        # when checkpointed, only h is kept and the (B, c, V) logits are made again in backward
        if torch.is_grad_enabled() and h.shape[0] * h.shape[1] * lm_head.out_features * 4 > CHECKPOINT_LOGITS_BYTES:
            logp, ent = checkpoint(_chunk_logprobs, lm_head, h, y, temperature, with_entropy,
                                   use_reentrant=False)
        else:
            logp, ent = _chunk_logprobs(lm_head, h, y, temperature, with_entropy)
        logps.append(logp)
        entropies.append(ent)
    logp = torch.cat(logps, dim=1)  # (B, T)
    return (logp, torch.cat(entropies, dim=1)) if with_entropy else logp


def sequence_logprobs(model, tokens, mask=None, temperature=1.0, chunk_size=256, with_entropy=False,
                      positions=None, attn_mask=None):
    """log pi(tokens[:, t+1] | tokens[:, :t+1]) for every t: (B, T-1), float32.

    This is pi_theta / pi_old / pi_ref of the RL objectives. temperature must be the one the
    samples were drawn at, or the ratio pi_theta/pi_old is wrong from the first step. `model`
    may be wrapped in DDP/FSDP. Returns (logp, entropy) when with_entropy, entropy being that
    of the sampling distribution."""
    if mask is not None and positions is None:
        positions, attn_mask = padding_positions_and_mask(mask)
    if positions is not None:
        positions = positions[:, :-1]  # (B, T-1), the inputs' positions
    if attn_mask is not None:
        attn_mask = attn_mask[:, :, :-1, :-1]  # the last token predicts nothing we score
    # inputs tokens[:, :-1] predict targets tokens[:, 1:]: column t scores token t + 1
    return model(tokens[:, :-1], positions, attn_mask, targets=tokens[:, 1:], temperature=temperature,
                 with_entropy=with_entropy, chunk_size=chunk_size)


# ---------------------------------------------------------------------- generation
def id_list(ids):
    """None, one id or a list of ids, as a list (config.json's eos_token_id takes all three)."""
    if ids is None:
        return []
    return list(ids) if isinstance(ids, (list, tuple)) else [ids]


@dataclass
class Generation:
    tokens: torch.Tensor  # (B, N) new tokens; after a row stops, the model's first EOS id as filler
    mask: torch.Tensor  # (B, N) bool, True for real generated tokens (the EOS included)
    truncated: torch.Tensor  # (B,) bool, True where the row hit max_new_tokens without stopping


def sample_next(logits, temperature, generator=None):
    """One token per row (B,) from softmax(logits / temperature); temperature 0 is greedy."""
    if temperature == 0:  # greedy: the first of equal maxima, as argmax picks, at half argmax's cost on a CPU
        return logits.max(-1).indices
    probs = F.softmax(logits.float() / temperature, -1)  # (B, V)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)  # generator: the caller's seeded stream


def _decode_steps(model, token, left_pad, key_mask, cache, greedy, n=1):
    """Decode steps from one token per row (B,): each writes its keys/values at cache index
    cache.length, advances it by one and attends over every real key so far (key_mask (B, S_max),
    True = a real token, not left padding). Sampling: one step, its logits (B, V), for the caller
    to draw from its own generator. Greedy: n steps, each feeding its pick to the next, and their
    tokens (n, B). A row's RoPE position counts its real tokens only: the cache index less the
    row's left padding (B,), so a prompt's positions do not depend on the longer prompts beside it.

    Greedy, the pick is inside the step, compiled with it: no (B, V) logits leave the compiled
    graph and no eager max runs a token (1-2% at batch 16). Several steps per call (compiled, on
    a CPU: DECODE_STEPS_PER_CALL): each call of the compiled function costs ~0.2 ms of torch.compile's
    own work (its guards, its wrappers) and each return to generate()'s loop ~0.1 ms more, against
    a classroom step of ~1.1 ms at batch 16. A row that ends inside a call runs on to the call's
    end; generate() writes filler over what it picks after its end, as it does for a finished row
    that has not yet left the batch."""
    tokens = []
    for _ in range(n):
        mask = key_mask[:, None, None, :cache.length + 1]  # (B, 1, 1, S)
        position = cache.length - left_pad  # (B,); computed inside the compiled step, not as one more eager op a token
        logits = model(token[:, None], position[:, None], mask, cache, last_only=True)  # (B, V)
        cache.length += 1
        if not greedy:
            return logits
        token = sample_next(logits, 0)  # (B,)
        tokens.append(token)
    return torch.stack(tokens)  # (n, B): each step's tokens contiguous, as the next call's input must be


@contextlib.contextmanager
def decode_weight_layout(model):
    """Within the block every linear weight holds the same (out, in) numbers, stored column by
    column, and the weights that read the same input side by side: each attention's q, k and v
    weights are views into one row-major (D, q+k+v) matrix, its `qkv_t`, and each SwiGLU's gate
    and up weights into one (D, 2I) matrix, its `gate_up_t`, which their forwards then multiply
    by once. On leaving, even through an exception, each weight is row-major and its own again
    and those matrices are gone. No copy is kept: one group of weights at a time is re-laid.

    Column by column: F.linear(x, W) multiplies x by W^T. Stored this way W^T is a plain
    row-major (in, out) matrix, and MKL multiplies a few rows by it faster than by the transpose
    of nn.Linear's row-major (out, in) weight: 1.4-1.8x at 16 rows, 1.25-1.7x at 1, 1.1x at 128,
    on the classroom model's shapes (an Intel Xeon, 1 thread; the same numbers at 16 and 128
    rows): at batch 16 with 160 cached keys the compiled step took 1.13 ms instead of 1.31.
    Side by side: one matmul by the (D, q+k+v) matrix gives each of q, k and v to the bit (each
    number is the same dot product; Qwen2's biases, added after it, may round a last bit apart
    from F.linear's) in one call instead of three, and torch.compile checks fewer tensors before
    each step: 1.12 -> 1.08 ms at batch 16 and 160 keys.
    generate(compile=True) runs its decode steps on a CPU inside this block; re-laying every
    weight twice per generate() call takes ~2 ms for the classroom model. The embedding table
    (and an LM head tied to it) stays as it is: a lookup reads its rows. Eager decoding keeps
    nn.Linear's layout, the one the classroom's committed results were made with."""
    groups = [(block.self_attn, "qkv_t", (block.self_attn.q_proj, block.self_attn.k_proj, block.self_attn.v_proj))
              for block in model.layers]
    groups += [(block.mlp, "gate_up_t", (block.mlp.gate_proj, block.mlp.up_proj)) for block in model.layers]
    grouped = [linear.weight for _, _, linears in groups for linear in linears]
    grouped_ids = {id(w) for w in grouped}
    alone = [w for w in model.parameters()
             if w.dim() == 2 and w is not model.embed_tokens.weight and id(w) not in grouped_ids]
    try:
        for module, name, linears in groups:
            matrix = torch.cat([linear.weight.data.t() for linear in linears], dim=1)  # (D, sum of outs)
            for linear, columns in zip(linears, matrix.split([linear.out_features for linear in linears], dim=1)):
                linear.weight.data = columns.t()  # (out, D), a view: column j of `matrix` is row j of W
            setattr(module, name, matrix)
        for w in alone:
            w.data = w.data.t().contiguous().t()
        yield
    finally:
        for module, name, _ in groups:
            setattr(module, name, None)
        for w in grouped + alone:  # only the weights this block re-laid (a no-op where it had not yet)
            w.data = w.data.contiguous()


# Greedy decode steps per call of the compiled step on a CPU. On the classroom model at batch 16
# and 256 new tokens (an Intel Xeon, 1 thread; the compiled calls alone, without generate()'s loop)
# a token took 1.27 ms at 1 step a call, 1.07 at 4 and 1.06 at 8. The price: compiling a call of 4
# took 47 s against 22 s for one step, and a generation that ends with fewer than 4 steps to go
# compiles the one-step call as well (69 s in all; once per process); and a row that ends inside a
# call computes up to 3 steps it does not keep. On a GPU one step a call: more would save kernel
# launches and host syncs there too, but no GPU was at hand to measure it.
DECODE_STEPS_PER_CALL = 4
_compiled_steps = {}  # device type -> torch.compile'd decode step, made once per process; False once it failed


def _compiled_decode_steps(device):
    """The compiled decode steps for this kind of device, or None where compiling failed before."""
    if device.type not in _compiled_steps:
        # One graph for every step: dynamic=True makes the cache length (and the batch size) a
        # symbol, where a plain int would be baked in and force a recompilation each step. The
        # graph runs the norms, RoPE, SiLU and residual adds as a few fused C++ (or Triton)
        # kernels around the matmuls and attention, with no Python per op or module. On a CPU the
        # code that calls those kernels is C++ too (cpp_wrapper): a decode step of the classroom
        # model is dozens of kernel calls of microseconds each, and the Python between them cost
        # about a sixth of the step (bench/bench_generate.py); the compilation takes ~2x longer.
        # On a GPU the wrapper stays Python (cpp_wrapper untried there) and each step still
        # launches its kernels one by one and syncs once a token on the host (generate()'s stop
        # check): a 7B-shaped model at batch 1 on an H100 took 7.3-8.1 ms a step, 0.54-0.59 of
        # the memory-bandwidth limit (results/gpu-h100*.txt). CUDA graphs would replay the
        # launches at once, but need fixed shapes, and here the cache length is a symbol.
        # realize_opcount_threshold: inductor computes an intermediate inside each loop that reads
        # it unless its formula has more than this many ops (default 30). The query's rotary
        # embedding has fewer, so the attention loop recomputed it for every cached key it scored;
        # at 4 it is computed once per step: 5% faster at batch 16, 9% at 128, 2% at 1
        # (bench/bench_generate.py's shapes, an Intel Xeon, 1 thread).
        cpu_options = {"cpp_wrapper": True, "realize_opcount_threshold": 4}
        # specialize_float: under dynamic=True each float attribute of the model (every RMSNorm's
        # eps) would be a graph input as well, made into a tensor at every call; as constants they
        # cost nothing: the step 2.5% faster at batch 16, 7% at batch 1. The patch wraps every call,
        # not the first alone: dynamo reads it whenever it traces, and a batch of 1 traces again.
        # recompile_limit: each of greedy-4-steps, greedy-1-step and sampling is a graph of its
        # own, and each again at a batch of 1 (dynamic shapes still specialize a size of 1): a
        # process that decodes all ways had 7 graphs, one under dynamo's default limit of 8, past
        # which it would decode every new case eagerly, without a word.
        compiled = torch.compile(_decode_steps, dynamic=True, options=cpu_options if device.type == "cpu" else {})
        _compiled_steps[device.type] = torch._dynamo.config.patch(specialize_float=True,
                                                                 recompile_limit=16)(compiled)
    return _compiled_steps[device.type] or None  # False (failed before) -> None: decode eagerly


def _give_up_compiling(device, error):
    """Mark compiling as failed for the rest of the process, and say why, once."""
    _compiled_steps[device.type] = False
    first_line = (str(error).splitlines() or [""])[0]
    warnings.warn(f"generate(compile=True): torch.compile failed ({type(error).__name__}: {first_line}); "
                  "decoding eagerly")


@torch.no_grad()
def generate(model, prompts, max_new_tokens, temperature=1.0, eos_id=None, stop_sequences=(),
             generator=None, compile=False):
    """Continue each prompt (a list of token ids) until an EOS, a stop sequence, or max_new_tokens.

    eos_id: one id or a list (any of them ends a row; Llama 3 instruct ends turns with <|eot_id|>
    but may end with <|end_of_text|>); None = the model's own (args.eos_id).
    stop_sequences: token-id lists; a row also ends after any of them (kept in its output).
    Prompts are left-padded to the longest, so every row's next token sits at the same cache
    index; positions count only real tokens, so a row's result does not depend on its padding.
    One prefill pass fills the KV cache (once per distinct prompt: copies of a prompt share it);
    each decode step then costs one token per row of the batch, where finished rows leave the
    batch once a quarter of its rows have (and, compiled and greedy, only between calls).

    compile=True runs the decode steps through torch.compile: the first call compiles (on a CPU
    20-70 s for the classroom model, see DECODE_STEPS_PER_CALL; a batch of 1 compiles once more),
    later calls of any batch size and length reuse it. On the classroom model it made greedy
    decoding 2.3x faster at batch 16, 3.2x at batch 1 and 1.5x at batch 128
    (bench/bench_generate.py, an Intel Xeon, 1 thread: results/generate-xeon.txt). The
    classroom run decodes eagerly: one of its evaluations (evaluate.py, 5,000 answers at batch
    128) took 52 s compiled against 36 s eager, the compilation counted, and compiled kernels
    round differently from the eager ones its committed results were made with. On an H100, a
    7B-shaped model in bf16 decoded 5.6-5.8x faster compiled than eager at batch 1 and 3.5x at
    batch 64 (bash bench/gpu.sh; results/gpu-h100*.txt). Where
    compiling fails, a warning says why and decoding goes on eagerly, with the same results as
    compile=False."""
    args = model.args
    device = model.embed_tokens.weight.device
    eos = id_list(args.eos_id if eos_id is None else eos_id)
    # any of them ends a row: the EOS ids and each one-token stop sequence, checked in one isin
    end_ids = torch.tensor(eos + [seq[0] for seq in stop_sequences if len(seq) == 1], dtype=torch.long,
                           device=device)
    # longer ones are matched against each row's last tokens; as tensors once, not at every step
    stop_sequences = [torch.tensor(seq, dtype=torch.long, device=device) for seq in stop_sequences if len(seq) > 1]
    B, P = len(prompts), max(len(p) for p in prompts)
    max_new_tokens = min(max_new_tokens, args.max_seq_len - P)  # the RoPE tables end at max_seq_len
    if max_new_tokens <= 0:
        raise ValueError(f"prompt of {P} tokens leaves no room under max_seq_len={args.max_seq_len}")
    step = _compiled_decode_steps(device) if compile else None
    pad_id = (id_list(args.eos_id) or [0])[0]  # filler for left padding and finished rows; masked out
    tokens = torch.full((B, P), pad_id, dtype=torch.long, device=device)  # (B, P), prompts right-aligned
    key_mask = torch.zeros(B, P + max_new_tokens, dtype=torch.bool, device=device)  # True: a real key
    for i, p in enumerate(prompts):
        tokens[i, P - len(p):] = torch.tensor(p, dtype=torch.long, device=device)
        key_mask[i, P - len(p):] = True
    key_mask[:, P:] = True  # every generated token is real (a finished row's filler is never read)
    positions, attn = padding_positions_and_mask(key_mask[:, :P])  # (B, P), (B, 1, P, P)
    cache, logits = _prefill_distinct_prompts(model, prompts, tokens, positions, attn, P + max_new_tokens)
    left_pad = P - (positions[:, -1] + 1)  # (B,) each row's left padding: RoPE position = cache index - this

    out = torch.full((B, max_new_tokens), pad_id, dtype=torch.long, device=device)  # (B, N)
    done = torch.zeros(B, dtype=torch.bool, device=device)  # (B,)
    lengths = torch.full((B,), max_new_tokens, dtype=torch.long, device=device)  # (B,) tokens kept per row
    rows = torch.arange(B, device=device)  # (A,) the rows the model still runs, in the cache's order
    greedy = temperature == 0  # then each decode step returns its rows' next tokens, not their logits
    next_token = sample_next(logits, 0) if greedy else None  # (B,)
    # compiled, on a CPU, greedy steps run DECODE_STEPS_PER_CALL to a call (see _decode_steps)
    steps_per_call = DECODE_STEPS_PER_CALL if step and greedy and device.type == "cpu" else 1
    ahead = []  # tokens (A,) the last call decoded for the steps after the current one
    n_done = 0  # finished rows, on the host. Until a row finishes, the ops that mask finished rows
    # are skipped: a few microseconds each on a CPU, against a compiled classroom step of ~1.1 ms
    with contextlib.ExitStack() as layout:
        if step and device.type == "cpu":  # MKL's faster layout for the compiled steps' few-row matmuls
            layout.enter_context(decode_weight_layout(model))
        for t in range(max_new_tokens):
            # Sampling draws from all B rows' logits (a finished row's are stale, its token is filler):
            # the random stream each row gets then does not depend on which rows have finished.
            token = next_token if greedy else sample_next(logits, temperature, generator)  # (B,)
            if n_done:
                token = token.masked_fill(done, pad_id)
            out[:, t] = token
            stopped = _ends_at(out, t, end_ids, stop_sequences)  # (B,) rows that end at this token
            if n_done:
                stopped &= ~done  # a finished row's filler (the model's EOS) does not end it again
            n_stopped = int(stopped.sum())  # one host sync per token; after the last token no forward is needed
            if n_stopped:
                lengths = torch.where(stopped, t + 1, lengths)  # the EOS or stop sequence stays in the output
                done |= stopped
                n_done += n_stopped
            if n_done == B or t == max_new_tokens - 1:
                break
            if ahead:  # the last call decoded this step already (greedy, several steps a call)
                row_out = ahead.pop(0)  # (A,)
            else:
                finished = n_done - (B - len(rows))  # rows in the batch that have finished
                if finished and 4 * finished >= len(rows):  # a quarter: see _drop_finished_rows
                    rows, key_mask, left_pad = _drop_finished_rows(~done[rows], rows, key_mask, left_pad, cache)
                if len(rows) < B:
                    token = token[rows]  # (A,)
                # steps_per_call steps where that many more tokens are wanted after this one, else one
                # (the last token needs no forward pass, and the cache has no room beyond max_new_tokens)
                n_steps = steps_per_call if max_new_tokens - 1 - t >= steps_per_call else 1
                if step:
                    start = cache.length
                    try:
                        row_out = step(model, token, left_pad, key_mask, cache, greedy, n_steps)  # (A, V), greedy (n_steps, A)
                    except Exception as e:  # compilation failed (no C++ compiler, an op it cannot trace...)
                        _give_up_compiling(device, e)
                        step = None  # eager rewrites the same cache slots, with the same values
                        layout.close()  # and reads the weights in their own layout, as compile=False does
                        cache.length = start
                        row_out = _decode_steps(model, token, left_pad, key_mask, cache, greedy, n_steps)
                else:
                    row_out = _decode_steps(model, token, left_pad, key_mask, cache, greedy)
                if greedy:
                    ahead = list(row_out)  # n_steps tokens (A,) each: this step's and the next n_steps - 1's
                    row_out = ahead.pop(0)
            if greedy:
                next_token = row_out if len(rows) == B else next_token.index_put_((rows,), row_out)  # (B,)
            else:
                logits = row_out if len(rows) == B else logits.index_put_((rows,), row_out)  # (B, V)
    n = int(lengths.max())  # drop the columns no row reached
    mask = torch.arange(n, device=device)[None, :] < lengths[:, None]  # (B, n)
    return Generation(out[:, :n], mask, ~done)


def _prefill_distinct_prompts(model, prompts, tokens, positions, attn, cache_len):
    """The KV cache (B rows, filled to the prompts' width P) and the last logits (B, V) of the
    left-padded prompts tokens (B, P).

    Identical prompts share one prefill (evaluate.py's k samples of a question, grpo.py's G
    outputs of one): the U distinct prompts run, then each copy gets its prompt's cache rows
    and last logits. To the bit what prefilling every copy gives, where a row's numbers do not
    depend on the rows beside it (see _drop_finished_rows). The classroom evaluation's 4,000
    samples have 500 distinct prompts: with one prefill each (and the cache left unzeroed), the
    default run's chat evaluations took 37-39 s instead of 47-50 s, the same answers byte for
    byte (results/classroom-default-timings.md against classroom-default-before-timings.md)."""
    B, P = tokens.shape
    distinct, copy_of = {}, []  # prompt -> (its number among the distinct prompts, its first row); (B,) numbers
    for i, p in enumerate(prompts):
        copy_of.append(distinct.setdefault(tuple(p), (len(distinct), i))[0])
    firsts = [row for _, row in distinct.values()]  # (U,)
    # the dtype attention computes in: autocast's (bf16 on a GPU whose weights stay float32, as an
    # RL policy's do on one GPU: half the cache), else the weights'
    device_type = tokens.device.type
    dtype = (torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type)
             else model.embed_tokens.weight.dtype)
    cache = KVCache(model.args, len(firsts), cache_len, tokens.device, dtype)
    logits = model(tokens[firsts], positions[firsts], attn[firsts], cache, last_only=True)  # (U, V)
    if not torch.isfinite(logits).all():  # checked once per call: a per-step check would sync the GPU each token
        raise FloatingPointError("the model's logits hold NaN/inf: its weights have diverged")
    cache.length = P  # the model writes into the cache; advancing it is ours
    if len(firsts) < B:
        copy_of = torch.tensor(copy_of, device=tokens.device)  # (B,) each row's distinct prompt
        cache.take_rows(copy_of)
        logits = logits[copy_of]  # (B, V)
    return cache, logits


def _ends_at(out, t, end_ids, stop_sequences):
    """(B,) bool: the rows whose token t ends them, an end id (EOS, a one-token stop sequence)
    or the last token of a longer stop sequence; out (B, N) holds the generated tokens only, so a
    stop sequence never matches across the prompt."""
    stopped = torch.isin(out[:, t], end_ids)
    for seq in stop_sequences:
        if t + 1 >= len(seq):
            stopped |= (out[:, t + 1 - len(seq):t + 1] == seq).all(-1)
    return stopped


def _drop_finished_rows(keep, rows, key_mask, left_pad, cache):
    """The batch without its finished rows: keep (A,) marks the rows still generating; rows (A,)
    their numbers in the whole batch, key_mask (A, S), left_pad (A,) and the cache's rows follow.

    A batch runs until its longest row ends. Once a quarter of the rows it runs have finished,
    generate() drops them here: an evaluation batch whose answers end anywhere from 30 to 160
    tokens then costs about the sum of its rows' lengths, not B times the longest. Each drop
    copies the cache once; waiting for a quarter bounds the copies to ~log(B) / log(4/3). The rows
    kept compute what they would have beside the others, to the bit where the matmuls round a row
    alike at any batch size (MKL_CBWR=...,STRICT, pipeline.py's default: the default run's 5,000
    answers of each chat evaluation came out byte for byte as before); in MKL's other modes a row
    may round by its batch's size, as it does under padding (tests/test_model.py checks the tokens)."""
    cache.take_rows(keep)
    return rows[keep], key_mask[keep], left_pad[keep]

