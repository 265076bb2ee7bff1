"""Benchmark: decoding with the KV cache (model.generate) against naive full recomputation,
and, on a GPU, the 7B's decode throughput against the memory-bandwidth limit.

1. Classroom model shape (configs/classroom.py, random weights), greedy, batch 16, 256 new
   tokens: the naive loop re-runs the whole sequence for every new token (O(T^2) positions),
   the cache runs one position per step (O(T)). Both must produce identical tokens.
2. CUDA only: the full-size 7B (configs/7b.py, random bf16 weights), batch 1 and 64, 512 new
   tokens. A decode step must read every weight once and every cached key/value once, so
       time >= (weight bytes + KV bytes) / memory bandwidth,
   with the bandwidth measured here by a device-to-device copy. The fraction printed is that
   lower bound over the measured time (1.0 = at the bandwidth limit; issue 9 asks >= 0.6 at
   batch 1).

    python bench/bench_generate.py [--batch_size=16] [--new_tokens=256] [--prompt_len=32]
"""

import argparse
import os
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import config  # noqa: E402
from model import ModelArgs, Transformer, generate  # noqa: E402

NO_EOS = -1  # an id no token has: every row runs the full number of new tokens


@torch.no_grad()
def naive_greedy(model, prompts, new_tokens):
    """Greedy decoding without a cache: each step runs the model over the whole sequence so far."""
    tokens = prompts  # (B, P), every prompt the same length: no padding needed
    for _ in range(new_tokens):
        logits = model(tokens, last_only=True)  # (B, V) for the last position only
        tokens = torch.cat([tokens, logits.argmax(-1, keepdim=True)], dim=1)
    return tokens[:, prompts.shape[1]:]  # (B, new_tokens)


def timed(fn, device):
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    result = fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return result, time.perf_counter() - start


def cache_vs_naive(batch_size, new_tokens, prompt_len):
    cfg = config.load_config([os.path.join(ROOT, "configs", "classroom.py")])
    # the classroom context (256) is shorter than prompt + 256 new tokens: widen RoPE's table only
    args = ModelArgs.from_config(cfg, max_seq_len=prompt_len + new_tokens)
    torch.manual_seed(0)
    model = Transformer(args).eval()
    prompts = torch.randint(0, args.vocab_size, (batch_size, prompt_len))
    generation, cached_s = timed(lambda: generate(model, prompts.tolist(), new_tokens, temperature=0,
                                                  eos_id=NO_EOS), torch.device("cpu"))
    naive, naive_s = timed(lambda: naive_greedy(model, prompts, new_tokens), torch.device("cpu"))
    identical = torch.equal(generation.tokens, naive)
    n = batch_size * new_tokens
    print(f"classroom shape ({args.n_layer} layers x {args.dim}, vocab {args.vocab_size}, "
          f"{model.num_params() / 1e6:.2f}M params), batch {batch_size}, prompt {prompt_len}, "
          f"{new_tokens} new tokens, greedy, 1 CPU thread")
    print(f"  KV cache : {n / cached_s:9.0f} tokens/s ({cached_s:.2f} s)")
    print(f"  naive    : {n / naive_s:9.0f} tokens/s ({naive_s:.2f} s)")
    print(f"  speed-up : {naive_s / cached_s:.1f}x, tokens identical: {identical}")
    if not identical:
        sys.exit("KV-cache generation differs from full recomputation")


def copy_bandwidth(device, n_bytes=2**30, repeats=10):
    """Bytes per second moved by a device-to-device copy (each copy reads and writes n_bytes)."""
    src = torch.empty(n_bytes, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    dst.copy_(src)
    _, seconds = timed(lambda: [dst.copy_(src) for _ in range(repeats)], device)
    return 2 * n_bytes * repeats / seconds


def generation_bytes(model, batch_size, prompt_len, new_tokens):
    """Bytes a generation of new_tokens must read from memory, all bf16 (2 bytes): each of its
    new_tokens forward passes (the prefill, then one per further token) reads every weight but
    the embedding table (a lookup reads only B rows of it); decode step t also reads the
    keys/values of the prompt_len + t positions cached so far,
    B x (prompt_len + t) x n_layer x 2 (k and v) x n_kv_head x head_dim."""
    args = model.args
    n_weights = model.num_params() - args.vocab_size * args.dim
    kv_per_position = args.n_layer * 2 * args.n_kv_head * args.head_dim * 2
    kv_positions = sum(prompt_len + t for t in range(1, new_tokens))
    return new_tokens * n_weights * 2 + batch_size * kv_positions * kv_per_position


def gpu_7b(new_tokens, prompt_len, batch_sizes=(1, 64)):
    device = torch.device("cuda")
    cfg = config.load_config([os.path.join(ROOT, "configs", "7b.py")])
    args = ModelArgs.from_config(cfg)
    torch.manual_seed(0)
    torch.set_default_dtype(torch.bfloat16)  # build the weights directly in bf16 on the GPU
    with device:
        model = Transformer(args).eval()
    torch.set_default_dtype(torch.float32)
    bandwidth = copy_bandwidth(device)
    print(f"\n7B ({model.num_params() / 1e9:.2f}B params, bf16, random weights) on "
          f"{torch.cuda.get_device_name(device)}; copy bandwidth {bandwidth / 1e9:.0f} GB/s")
    generate(model, [[1] * prompt_len], 8, temperature=0, eos_id=NO_EOS)  # warm-up (kernels, allocator)
    for batch_size in batch_sizes:
        prompts = torch.randint(0, args.vocab_size, (batch_size, prompt_len)).tolist()
        _, seconds = timed(lambda: generate(model, prompts, new_tokens, temperature=0, eos_id=NO_EOS), device)
        bound = generation_bytes(model, batch_size, prompt_len, new_tokens) / bandwidth
        print(f"  batch {batch_size:3d}: {batch_size * new_tokens / seconds:8.0f} tokens/s, "
              f"{seconds / new_tokens * 1e3:6.2f} ms/step; bandwidth limit {bound / new_tokens * 1e3:6.2f} "
              f"ms/step; fraction of the limit {bound / seconds:.2f}; peak memory "
              f"{torch.cuda.max_memory_allocated(device) / 2**30:.1f} GiB")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--new_tokens", type=int, default=256)
    parser.add_argument("--prompt_len", type=int, default=32)
    parser.add_argument("--gpu_new_tokens", type=int, default=512)
    opts = parser.parse_args()
    # one thread: on a shared classroom machine OpenMP threads spin against other jobs' and the
    # timings become noise; the ratio, not the absolute speed, is what this part measures
    torch.set_num_threads(1)
    cache_vs_naive(opts.batch_size, opts.new_tokens, opts.prompt_len)
    if torch.cuda.is_available():
        gpu_7b(opts.gpu_new_tokens, opts.prompt_len)
    else:
        print("no CUDA device: the 7B decode-throughput part is skipped")


if __name__ == "__main__":
    main()
