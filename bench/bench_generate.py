"""Benchmark: model.generate against transformers' generate() on the same weights, against naive
full recomputation, and, on a GPU, the 7B's decode throughput against the memory-bandwidth limit.

1. Classroom model shape (configs/classroom.py, random weights), greedy, on the CPU: our
   generate() and transformers' LlamaForCausalLM.generate() on the same weights (ours saved with
   save_pretrained and loaded back by transformers), in interleaved rounds (ours, theirs, ours,
   ... so both see the same machine load), for three shapes (issue 17):
       batch  16 x 256 new tokens   an RL rollout chunk   (goal: ours >= 3x theirs)
       batch   1 x 256 new tokens   one request           (goal: ours >= 2x theirs)
       batch 128 x 160 new tokens   the classroom evaluation (eval_batch_size, eval_max_new_tokens)
   each with a 32-token prompt (the goal lines at the end say whether ours, compiled where it ran,
   meets the first two, round by round: met in every round, in none, or at its line, where the
   rounds fall on both sides of it and the difference from the goal is noise). Printed: the median
   tokens/s of each and its min-max over the rounds, the ratio of the medians with the min-max of
   the per-round ratios, and whether the greedy tokens of the two agree; then the floor: the
   seconds our eager decoding spends in the matmuls and the attention, kernels transformers runs on
   the same shapes, and so the most our speed-up could be if every other op were free; and,
   compiled, where a decode step's time goes: the step alone (its share of a call of several) with
   the run's mean number of cached keys and with a few (and how much of the latter is
   torch.compile's own work around the compiled code), the time the threads need to read those
   keys and values, and generate()'s own time around the step, against the time per token that 3x
   transformers would allow. The CPU model, thread count, torch version and the 1-minute load
   average (before and after) are printed beside them: on a shared machine a load above the core
   count makes every figure noise.
2. The same model, once: the KV cache against naive recomputation (the whole sequence re-run for
   every new token, O(T^2) positions), batch 16 x 256; the tokens must be identical.
3. CUDA only: the full-size 7B (configs/7b.py, random bf16 weights), batch 1 and 64, 512 new
   tokens, eager then compiled (bench/gpu.sh's part 2). A decode step must read every weight
   once and every cached key/value once, so
       time >= (weight bytes + KV bytes) / memory bandwidth,
   with the bandwidth measured here by a device-to-device copy. The fraction printed is that
   lower bound over the measured time (1.0 = at the bandwidth limit; issue 9 asks >= 0.6 at
   batch 1).

    python bench/bench_generate.py [--rounds=5] [--threads=1] [--cases=16x256,1x256,128x160]
                                   [--prompt_len=32] [--naive=true] [--compile=true]

With --compile=true (the default) generate(..., compile=True), the decode step through
torch.compile, is a third contestant ("ours compiled"; its compilation, tens of seconds on a
CPU, happens in the warm-up and is not timed), and the same with one greedy step to a compiled
call instead of model.DECODE_STEPS_PER_CALL a fourth ("ours compiled, one step a call"), whose
line also says how much faster the several steps a call are, round by round. Needs transformers
(requirements-test.txt).
"""

import argparse
import os
import statistics
import sys
import tempfile
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import model as model_module  # noqa: E402
from model import (DECODE_STEPS_PER_CALL, KVCache, ModelArgs, Transformer, _compiled_decode_steps,  # noqa: E402
                   decode_weight_layout, generate)
from support import config, report  # noqa: E402
from bench_grpo_vs_trl import goal_verdict, top_ops  # noqa: E402  the GRPO bench's kernel accounting and verdict

NO_EOS = -1  # an id no token has: every row runs the full number of new tokens
ONE_STEP = "ours compiled, one step a call"
GOALS = {(16, 256): 3.0, (1, 256): 2.0}  # issue 17: (batch, new tokens) -> the speed-up over transformers asked for


def cpu_model():
    """The CPU's name and its widest vector unit."""
    return f"{report.cpu_name()} ({torch.backends.cpu.get_cpu_capability()})"


def load_1min():
    return f"{os.getloadavg()[0]:.2f}" if hasattr(os, "getloadavg") else "?"


@torch.no_grad()
def naive_greedy(model, prompts, new_tokens):
    """Greedy decoding without a cache: each step runs the model over the whole sequence so far."""
    tokens = prompts  # (B, P), every prompt the same length: no padding needed
    for _ in range(new_tokens):
        logits = model(tokens, last_only=True)  # (B, V) for the last position only
        tokens = torch.cat([tokens, logits.argmax(-1, keepdim=True)], dim=1)
    return tokens[:, prompts.shape[1]:]  # (B, new_tokens)


def one_step_a_call(decode):
    """decode() with greedy steps one to a compiled call, as before model.DECODE_STEPS_PER_CALL."""
    several = model_module.DECODE_STEPS_PER_CALL
    model_module.DECODE_STEPS_PER_CALL = 1  # generate() reads it at each call
    try:
        return decode()
    finally:
        model_module.DECODE_STEPS_PER_CALL = several


def timed(fn, device):
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    result = fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return result, time.perf_counter() - start


def classroom_model(max_len):
    cfg = config.load_config([os.path.join(ROOT, "configs", "classroom.py")])
    # the classroom context (256) is shorter than prompt + 256 new tokens: widen RoPE's table only
    args = ModelArgs.from_config(cfg, max_seq_len=max(cfg.max_seq_len, max_len))
    torch.manual_seed(0)
    return Transformer(args).eval()


def hf_twin(model, folder):
    """transformers' LlamaForCausalLM on our weights, through the files: save_pretrained, then
    from_pretrained, as a user would load our checkpoint. Its EOS is turned off, as ours is."""
    from transformers import LlamaForCausalLM
    model.save_pretrained(folder)
    hf = LlamaForCausalLM.from_pretrained(folder, attn_implementation="sdpa").eval()
    hf.generation_config.eos_token_id = None
    hf.generation_config.pad_token_id = 0
    return hf


def agreement(ours, theirs):
    """'identical', or where the greedy tokens first part (rows that differ, first step)."""
    if torch.equal(ours, theirs):
        return "identical"
    rows = (ours != theirs).any(1)
    first = int((ours != theirs).int().argmax(1)[rows].min())
    return f"DIFFER in {int(rows.sum())}/{len(rows)} rows, first at new token {first}"


def spread(values, fmt):
    return f"{fmt.format(statistics.median(values))} ({fmt.format(min(values))}-{fmt.format(max(values))})"


def kernel_floor(generate_fn):
    """Seconds one call spends in the kernels any implementation of the same decoding must run on
    these shapes: the matmuls and the attention (torch.profiler, own CPU time), and its wall time."""
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        _, wall = timed(generate_fn, torch.device("cpu"))
    return top_ops(prof, wall)["shared_s"], wall


def ours_vs_transformers(model, hf, batch_size, new_tokens, prompt_len, rounds, use_compile):
    prompts = torch.randint(0, model.args.vocab_size, (batch_size, prompt_len),
                            generator=torch.Generator().manual_seed(batch_size))
    contestants = {
        "ours": lambda: generate(model, prompts.tolist(), new_tokens, temperature=0, eos_id=NO_EOS).tokens,
        "transformers": lambda: hf.generate(prompts, attention_mask=torch.ones_like(prompts),
                                            max_new_tokens=new_tokens, do_sample=False)[:, prompt_len:],
    }
    if use_compile:
        contestants["ours compiled"] = lambda: generate(model, prompts.tolist(), new_tokens, temperature=0,
                                                        eos_id=NO_EOS, compile=True).tokens
        contestants[ONE_STEP] = lambda: one_step_a_call(contestants["ours compiled"])
    outputs = {name: fn() for name, fn in contestants.items()}  # warm-up (and compilation)
    seconds = {name: [] for name in contestants}
    for r in range(rounds):
        names = list(contestants) if r % 2 == 0 else list(reversed(contestants))  # neither always first
        for name in names:
            seconds[name].append(timed(contestants[name], torch.device("cpu"))[1])
    n = batch_size * new_tokens
    print(f"batch {batch_size} x {new_tokens} new tokens (prompt {prompt_len}), {rounds} rounds, "
          f"load {load_1min()}:")
    for name, s in seconds.items():
        line = f"  {name:{max(map(len, contestants))}s}: {spread([n / x for x in s], '{:,.0f}')} tokens/s"
        if name != "transformers":
            ratios = [t / o for o, t in zip(s, seconds["transformers"])]
            line += (f"  {statistics.median(seconds['transformers']) / statistics.median(s):.2f}x transformers "
                     f"(rounds {min(ratios):.2f}-{max(ratios):.2f}x); greedy tokens "
                     f"{agreement(outputs[name], outputs['transformers'])}")
        if name == ONE_STEP:
            gains = [o / c for o, c in zip(s, seconds["ours compiled"])]
            line += (f"; {DECODE_STEPS_PER_CALL} steps a call are "
                     f"{statistics.median(s) / statistics.median(seconds['ours compiled']):.2f}x faster "
                     f"(rounds {min(gains):.2f}-{max(gains):.2f}x)")
        print(line)
    # transformers runs the same matmuls and attention on the same shapes: even with every other op
    # of ours free, our eager step could not be faster than those kernels
    floor, wall = kernel_floor(contestants["ours"])
    print(f"  floor: matmuls and attention take {floor:.2f} s of our eager {wall:.2f} s (profiled); with every "
          f"other op free our eager decoding would be at most {statistics.median(seconds['transformers']) / floor:.2f}x "
          f"transformers (compiled, the step runs other kernels: its own attention, matmuls by re-laid weights)")
    if use_compile and batch_size > 1:  # one row's keys and values fit in the L2 cache: nothing to see
        compiled_step_budget(model, batch_size, prompt_len, new_tokens,
                             statistics.median(seconds["ours compiled"]) / new_tokens,
                             statistics.median(seconds["transformers"]) / new_tokens)
    # per contestant: the ratio of the medians, and each round's ratio (its run and transformers'
    # in the same round, the contestants' order reversed every other round)
    return {name: (statistics.median(seconds["transformers"]) / statistics.median(s),
                   [t / o for o, t in zip(s, seconds["transformers"])])
            for name, s in seconds.items() if name != "transformers"}


def kv_bytes_per_position(args, bytes_per_number):
    """Bytes one row caches per position: n_layer x 2 (k and v) x n_kv_head x head_dim numbers."""
    return args.n_layer * 2 * args.n_kv_head * args.head_dim * bytes_per_number


def read_bandwidth(n_bytes, repeats=50):
    """Bytes per second torch's threads read from a float32 tensor of n_bytes (summing it)."""
    x = torch.ones(n_bytes // 4)
    x.sum()
    return n_bytes * repeats / timed(lambda: [x.sum() for _ in range(repeats)], torch.device("cpu"))[1]


def torch_compile_overhead_ms(call, calls=100):
    """Milliseconds each call of a compiled function spends in torch.compile's own work around the
    compiled code: dynamo's cache lookup (its guards over the model and the inputs) and the Python
    wrappers between the call and the compiled graph, from the records torch.profiler makes of
    both (the names torch 2.13 gives them; None where a version records them otherwise)."""
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(calls):
            call()
    events = prof.key_averages()
    names = ("Torch-Compiled Region", "## Call CompiledFxGraph", "TorchDynamo Cache Lookup")
    region, graph, lookup = (next((e.cpu_time_total for e in events if e.key.startswith(name)), None)
                             for name in names)
    if None in (region, graph, lookup):
        return None
    return (region - graph + lookup) / calls / 1e3  # us -> ms


@torch.no_grad()
def compiled_step_budget(model, batch_size, prompt_len, new_tokens, ours_per_step, theirs_per_step, calls=200):
    """Where a compiled decode step's time goes: the step alone (its share of a call of
    DECODE_STEPS_PER_CALL steps into the compiled graph) around the run's mean cache length and
    from 1 cached key on, whose difference is what the attention's reading of the cache costs,
    against the time torch's threads need to read those keys and values, and, of the latter,
    torch.compile's own work around the compiled code; the rest of generate()'s time per step is
    its loop (stop checks) and the prefill."""
    args = model.args
    steps = _compiled_decode_steps(torch.device("cpu"))
    n = DECODE_STEPS_PER_CALL  # greedy, generate() runs this many steps a call: a step is a call's 1/n
    mean_keys = prompt_len + new_tokens // 2
    cache = KVCache(args, batch_size, prompt_len + new_tokens, "cpu", torch.float32)
    for t in cache.k + cache.v:  # KVCache leaves its memory unset; whatever it held (denormals, NaN) must not time the step
        t.zero_()
    key_mask = torch.ones(batch_size, prompt_len + new_tokens, dtype=torch.bool)
    token = torch.zeros(batch_size, dtype=torch.long)
    no_padding = torch.zeros(batch_size, dtype=torch.long)  # every row's left padding

    def call(first):  # n steps, the first attending over `first` cached keys, the last over first + n - 1
        cache.length = first - 1  # each step writes its own key at `length` and advances it
        steps(model, token, no_padding, key_mask, cache, True, n)
    ms = {}
    with decode_weight_layout(model):  # as generate(compile=True) runs it on a CPU
        for first in (mean_keys - (n - 1) // 2, 1):
            call(first)
            ms[first] = timed(lambda: [call(first) for _ in range(calls)], torch.device("cpu"))[1] / calls / n * 1e3
        # from 1 key on, where the compiled code is shortest
        compile_work_ms = torch_compile_overhead_ms(lambda: call(1))
    at_mean = ms[mean_keys - (n - 1) // 2]
    kv_bytes = batch_size * mean_keys * kv_bytes_per_position(args, 4)  # fp32
    gb_s = read_bandwidth(kv_bytes) / 1e9
    print(f"  compiled step at batch {batch_size} ({n} a call): {at_mean:.2f} ms at {mean_keys} cached keys (the "
          f"run's mean), {ms[1]:.2f} ms at 1-{n}"
          + ("" if compile_work_ms is None else f", of which {compile_work_ms / n:.2f} ms is torch.compile's own work "
             f"around the compiled code (dynamo's cache lookup and guards, its wrappers; torch.profiler)")
          + f"; the attention's reading of the cache costs the difference, "
          f"{at_mean - ms[1]:.2f} ms, for {kv_bytes / 2**20:.1f} MB of keys and values that "
          f"{torch.get_num_threads()} thread(s) read in {kv_bytes / gb_s / 1e6:.2f} ms ({gb_s:.0f} GB/s); "
          f"generate() around the step "
          f"{ours_per_step * 1e3 - at_mean:.2f} ms a step; 3x transformers would be "
          f"{theirs_per_step / 3 * 1e3:.2f} ms a step (a token for each of the batch's rows), ours is "
          f"{ours_per_step * 1e3:.2f}")


def cache_vs_naive(model, batch_size, new_tokens, prompt_len):
    prompts = torch.randint(0, model.args.vocab_size, (batch_size, prompt_len),
                            generator=torch.Generator().manual_seed(0))
    generation, cached_s = timed(lambda: generate(model, prompts.tolist(), new_tokens, temperature=0,
                                                  eos_id=NO_EOS), torch.device("cpu"))
    naive, naive_s = timed(lambda: naive_greedy(model, prompts, new_tokens), torch.device("cpu"))
    n = batch_size * new_tokens
    print(f"KV cache vs naive recomputation, batch {batch_size} x {new_tokens} new tokens (prompt {prompt_len}), "
          f"load {load_1min()}:")
    print(f"  KV cache : {n / cached_s:9,.0f} tokens/s ({cached_s:.2f} s)")
    print(f"  naive    : {n / naive_s:9,.0f} tokens/s ({naive_s:.2f} s)")
    print(f"  speed-up : {naive_s / cached_s:.1f}x, tokens {agreement(generation.tokens, naive)}")
    if not torch.equal(generation.tokens, naive):
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
    kv_per_position = kv_bytes_per_position(args, 2)
    kv_positions = sum(prompt_len + t for t in range(1, new_tokens))
    return new_tokens * n_weights * 2 + batch_size * kv_positions * kv_per_position


def gpu_7b(new_tokens, prompt_len, batch_sizes=(1, 64)):
    """Decoding a 7B-shaped model in bf16 at each batch size, eager then compiled, against the
    time the bytes it must read take at the measured copy bandwidth."""
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
    prompts = {b: torch.randint(0, args.vocab_size, (b, prompt_len)).tolist() for b in batch_sizes}
    for compiled in (False, True):
        for batch_size in batch_sizes:
            # warm-up: kernels and allocator; compiled, the compilation (a batch of 1 compiles apart)
            _, warm_seconds = timed(lambda: generate(model, prompts[batch_size][:1] * batch_size, 8,
                                                     temperature=0, eos_id=NO_EOS, compile=compiled), device)
            torch.cuda.reset_peak_memory_stats(device)
            _, seconds = timed(lambda: generate(model, prompts[batch_size], new_tokens, temperature=0,
                                                eos_id=NO_EOS, compile=compiled), device)
            bound = generation_bytes(model, batch_size, prompt_len, new_tokens) / bandwidth
            print(f"  {'compiled' if compiled else 'eager':8s} batch {batch_size:3d}: "
                  f"{batch_size * new_tokens / seconds:8.0f} tokens/s, {seconds / new_tokens * 1e3:6.2f} ms/step; "
                  f"bandwidth limit {bound / new_tokens * 1e3:6.2f} ms/step; fraction of the limit "
                  f"{bound / seconds:.2f}; peak memory {torch.cuda.max_memory_allocated(device) / 2**30:.1f} GiB "
                  f"(warm-up {warm_seconds:.0f} s)")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", default="16x256,1x256,128x160", help="batch x new tokens, comma-separated")
    parser.add_argument("--prompt_len", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--naive", default="true", choices=["true", "false"])
    parser.add_argument("--compile", default="true", choices=["true", "false"])
    parser.add_argument("--gpu_new_tokens", type=int, default=512)
    opts = parser.parse_args()
    # one thread by default: on a shared classroom machine OpenMP threads spin against other jobs'
    # and the timings become noise
    torch.set_num_threads(opts.threads)
    cases = [tuple(int(x) for x in case.split("x")) for case in opts.cases.split(",")]
    import transformers
    print(f"CPU: {cpu_model()}, {os.cpu_count()} cores; {torch.get_num_threads()} torch thread(s); "
          f"torch {torch.__version__}, transformers {transformers.__version__}; "
          f"1-minute load average {load_1min()}")
    model = classroom_model(opts.prompt_len + max(n for _, n in cases))
    args = model.args
    print(f"classroom shape: {args.n_layer} layers x {args.dim}, {args.n_head} heads, vocab {args.vocab_size}, "
          f"{model.num_params() / 1e6:.2f}M params, float32, random weights; greedy, no EOS\n")
    with tempfile.TemporaryDirectory() as folder:
        hf = hf_twin(model, folder)
    ratios = {}
    for batch_size, new_tokens in cases:
        ratios[batch_size, new_tokens] = ours_vs_transformers(model, hf, batch_size, new_tokens, opts.prompt_len,
                                                              opts.rounds, opts.compile == "true")
    for name in ratios[cases[0]]:
        print(f"summary, {name} / transformers (medians): " + ", ".join(
            f"{b}x{n}: {r[name][0]:.2f}x" for (b, n), r in ratios.items()))
    for case, goal in GOALS.items():
        if case in ratios:
            best, per_round = ratios[case].get("ours compiled", ratios[case]["ours"])  # compiled where it ran
            print(f"goal {case[0]}x{case[1]}: ours >= {goal:g}x transformers: {best:.2f}x (rounds "
                  f"{min(per_round):.2f}-{max(per_round):.2f}x), {goal_verdict(per_round, lambda r: r >= goal)}")
    print(f"load now {load_1min()}")
    if opts.naive == "true":
        print()
        cache_vs_naive(model, 16, 256, opts.prompt_len)
    if torch.cuda.is_available():
        gpu_7b(opts.gpu_new_tokens, opts.prompt_len)
    else:
        print("no CUDA device: the 7B decode-throughput part is skipped")


if __name__ == "__main__":
    main()
