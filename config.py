"""Configuration: one set of keys for every stage, plain Python files to set them.

    python STAGE.py configs/NAME.py --key=value --other_key=value
    torchrun --nproc_per_node=2 STAGE.py configs/NAME.py --key=value

Every key that exists, with its default and its meaning, is written below in DEFAULTS (grouped
by stage). A config file in configs/ is plain assignments (`n_layer = 30`) and may do
arithmetic, as nanoGPT's do. `--key=value` on the command line overrides the file. A key that
is not in DEFAULTS, or a value whose type differs from the default's, is an error that names
the key and lists the valid ones: a typo never silently trains the wrong model.
"""

import ast
import difflib
import sys
from types import SimpleNamespace

DEFAULTS = dict(
    # ---------------------------------------------------------------- run
    out_dir="out/classroom",  # every stage writes below this folder (its own sub-folder)
    seed=1337,
    device="auto",  # "auto" = cuda when available, else cpu
    dtype="auto",  # "auto" = bfloat16 autocast on cuda, float32 on cpu; or float32 / bfloat16
    compile=False,  # torch.compile the model (GPU runs)
    parallel="ddp",  # how a multi-process run shares the model: "ddp" or "fsdp" (FSDP2 fully_shard)
    # ---------------------------------------------------------------- model (Llama layout)
    vocab_size=4096,
    n_layer=4,
    n_head=4,
    n_kv_head=4,  # < n_head gives grouped-query attention; the 7B uses plain multi-head (32/32)
    dim=128,
    intermediate_size=352,  # SwiGLU hidden width; Llama's rule is about 8/3 * dim
    max_seq_len=512,
    rope_theta=10000.0,
    norm_eps=1e-6,
    tie_embeddings=False,
    init_std=0.02,
    # ---------------------------------------------------------------- tokenizer
    tokenizer_path="",  # a .tiktoken ranks file, or a Hugging Face tokenizer.json; "" = ours in out_dir
    # ---------------------------------------------------------------- tasks (math problems)
    train_problems="classroom",  # SFT/RL problems: "classroom", "gsm8k" / "math" (hub, online) or a .jsonl/.parquet file
    test_problems="classroom",  # held-out problems, same choices (the paper: GSM8K and MATH test sets)
    classroom_seed=1234,  # seed of the generated problems, apart from `seed` so every run sees the same splits
    classroom_train_size=20000,  # generated training problems
    classroom_test_size=500,  # generated held-out problems (disjoint from train by construction)
    classroom_min_steps=2,  # fewest equations in a solution
    classroom_max_steps=3,  # most equations in a solution
    classroom_max_number=99,  # bound on every number in a question and every intermediate result
    classroom_ops="+-",  # step operations: "+" and any of "-", "*" ("*": a one-digit count of groups, 2 steps)
    # ---------------------------------------------------------------- corpus.py
    # ---------------------------------------------------------------- pretrain.py
    # ---------------------------------------------------------------- sft.py
    # ---------------------------------------------------------------- evaluate.py
    grader_workers=0,  # answer-grading processes (evaluation and RL rewards); 0 = one per CPU core, at most 8
    grader_timeout=3,  # seconds math-verify may spend on one parse or comparison (an int: signal.alarm)
    # ---------------------------------------------------------------- grpo.py
)


def _parse_value(key, text, default):
    """Turn the command-line text for `key` into the type of its default."""
    if isinstance(default, bool):
        if text.lower() in ("true", "1", "yes"):
            return True
        if text.lower() in ("false", "0", "no"):
            return False
        raise ConfigError(f"--{key}={text}: expected true or false")
    if isinstance(default, str):
        return text
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        raise ConfigError(f"--{key}={text}: expected a {type(default).__name__} like {default!r}")
    return value


def _check_type(key, value, default, where):
    ok = type(value) is type(default) or (isinstance(default, float) and type(value) is int)
    if isinstance(default, (list, tuple)) and isinstance(value, (list, tuple)):
        ok = True
    if not ok:
        raise ConfigError(
            f"{where}: {key} = {value!r} is a {type(value).__name__}, but {key} takes a "
            f"{type(default).__name__} (default {default!r})"
        )
    return float(value) if isinstance(default, float) else value


def _unknown(key, where):
    close = difflib.get_close_matches(key, DEFAULTS, n=3)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    valid = ", ".join(sorted(DEFAULTS))
    return ConfigError(f"{where}: unknown config key '{key}'.{hint}\nValid keys: {valid}")


class ConfigError(ValueError):
    pass


def load_config(argv=None):
    """Defaults <- config file (first positional argument) <- --key=value overrides."""
    argv = sys.argv[1:] if argv is None else argv
    values = dict(DEFAULTS)
    files = [a for a in argv if not a.startswith("--")]
    if len(files) > 1:
        raise ConfigError(f"expected one config file, got {files}")
    for path in files:
        try:
            source = open(path).read()
        except OSError as e:
            raise ConfigError(f"cannot read config file {path}: {e.strerror}; "
                              "pass a file from configs/, e.g. configs/classroom.py")
        scope = {}
        exec(compile(source, path, "exec"), {}, scope)
        for key, value in scope.items():
            if key.startswith("_") or isinstance(value, type(sys)):  # helpers and imports
                continue
            if key not in DEFAULTS:
                raise _unknown(key, path)
            values[key] = _check_type(key, value, DEFAULTS[key], path)
    for arg in argv:
        if not arg.startswith("--"):
            continue
        if "=" not in arg:
            raise ConfigError(f"{arg}: write overrides as --key=value")
        key, text = arg[2:].split("=", 1)
        if key not in DEFAULTS:
            raise _unknown(key, "command line")
        value = _parse_value(key, text, DEFAULTS[key])
        values[key] = _check_type(key, value, DEFAULTS[key], "command line")
    return SimpleNamespace(**values)


def main_config(argv=None):
    """load_config for a script's entry point: a bad config ends the run with its message only."""
    try:
        return load_config(argv)
    except ConfigError as e:
        sys.exit(f"config error: {e}")
