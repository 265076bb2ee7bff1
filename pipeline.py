"""The whole recipe end to end: corpus -> pretrain -> SFT -> RL (eight ways) -> evaluation, then
the findings (accuracies with intervals, paired differences, the paper's claims as verdicts) and
the plots, as in the paper's Tables 5-6 and Figures 5-7.

    bash run_classroom.sh                               # sets up .venv, then runs this on the classroom
    python pipeline.py configs/classroom.py             # the same, in an environment you made
    python pipeline.py configs/classroom.py --seeds=3 --learned_rewards=true   # three RL seeds from one SFT checkpoint
    MKL_CBWR=AVX2 OMP_NUM_THREADS=1 python pipeline.py configs/classroom.py --chains=9 --seeds=3 \
        --learned_rewards=true --results_file=results/classroom.md   # the README's findings: nine SFT
                                                        # checkpoints too, in the MKL mode they were made in
    python pipeline.py configs/classroom.py --out_dir=out/try2 --sft_steps=100   # overrides reach every stage

Every stage is its own script, run here as a subprocess with the same config file and overrides
(the command is printed, after the environment the pipeline adds: MKL's mode, the threads and the
CPU kernels, also recorded in results.md). A stage whose outputs are there, load, are newer than
the outputs it was built from, and were made with the same settings (the config keys that shape
them, paths as the real paths they name, recorded in its stage_config.json; how often it saves
and whether it resumes do not count) is skipped; one that is stale runs again from the start.
An interrupted pretraining or SFT stage resumes from its last checkpoint if it started with the
same settings (its stage_started.json) after the outputs it reads were made; else it starts
again and says why. An interrupted RL stage starts again (rl_resume is off by default). The RL
runs' algorithm, reward, iterations and seed are the pipeline's to choose: it refuses them as
overrides. Delete a stage's folder to run it again anyway.
Corpus, pretraining and SFT run one after the other, each on every core; then every stage and
evaluation starts as soon as the ones it reads are done, pipeline_jobs at a time. The stages,
with the paper's sections:

    corpus    corpus.py   2.1  fastText math-page selection, decontamination, BPE, token shards
    pretrain  pretrain.py 2.3  AdamW, multi-step LR, on the selected corpus
    sft       sft.py      3    chain-of-thought / program / tool-integrated instruction tuning
    rl        grpo.py     4-5  RFT, online RFT, PPO, GRPO (outcome, process, ORM, PRM, PRM iterative),
                               from SFT; with --seeds=N each N times, with other RL seeds
    eval      evaluate.py      greedy, maj@k and pass@k on held-out problems, every checkpoint

With --chains=K all of it runs K times, with seeds seed, seed+1, ... (the first in out_dir, the
others in out_dir/chain-seed{S}): K SFT checkpoints, and findings whose intervals cover what
another checkpoint does, which intervals over RL seeds from one checkpoint cannot (another
machine rounds its way to another checkpoint: README "Same command, same numbers").

At the end, under out_dir: results.md (the findings, over every chain; also printed; the same bytes when the same
command runs again on the same machine), timings.md (each stage's wall time), plots/*.png and
rollouts.html (support/viewer.py's page of the RL runs' rollouts, token by token).
"""

import fnmatch
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass, field

import evaluate
from model import Transformer
from support import config, report, rl_support, training, viewer
from support.fileio import BadInput, atomic_path, read_json, read_jsonl, recover_staged_folder, write_json


@dataclass
class Stage:
    name: str  # also its folder under out_dir, and its row in the table
    command: list  # script and stage-specific overrides (they follow the config and the user's overrides)
    needs: list = field(default_factory=list)  # stages whose outputs this one reads
    checkpoint: bool = True  # writes {folder}/ckpt


# The RL methods: (key, label in the table, grpo.py overrides). Each starts from the SFT checkpoint
# with the same budget; its folder is rl/{key} (rl_support.method_name of these overrides), and with
# --seeds=N the study's seeds 2..N run again in rl/{key}-seed{s}, with rl_seed = s.
# The last three train and use a learned reward model: they run when learned_rewards is on.
RL_METHODS = [
    ("rft", "RFT", ["--rl_algo=rft"]),
    ("online_rft", "Online RFT", ["--rl_algo=online_rft"]),
    ("ppo", "PPO", ["--rl_algo=ppo"]),
    ("grpo_outcome", "GRPO (outcome)", ["--rl_algo=grpo", "--rl_reward=outcome"]),
    ("grpo_process", "GRPO (process)", ["--rl_algo=grpo", "--rl_reward=process"]),
    ("grpo_orm", "GRPO (ORM)", ["--rl_algo=grpo", "--rl_reward=orm"]),
    ("grpo_prm", "GRPO (PRM)", ["--rl_algo=grpo", "--rl_reward=prm"]),
    # the paper's iterative RL (Fig. 6): 2 iterations of half the steps, pi_ref reset and the PRM retrained
    ("grpo_prm_iterative", "GRPO (PRM, iterative)", ["--rl_algo=grpo", "--rl_reward=prm", "--rl_iteration_steps=HALF"]),
]


def rl_runs(cfg):
    """(key, label, [(folder, grpo.py overrides) per seed]) for each RL method."""
    runs = []
    for key, label, overrides in RL_METHODS if cfg.learned_rewards else RL_METHODS[:5]:
        overrides = [o.replace("HALF", str(max(1, cfg.rl_steps // 2))) for o in overrides]
        if learned_reward(overrides) and cfg.pipeline_rm_sft_steps:
            overrides.append(f"--rl_rm_init={os.path.join(cfg.out_dir, 'sft_rm', 'ckpt')}")
        seeds = [(f"rl/{key}", overrides)]
        seeds += [(f"rl/{key}-seed{s}", [*overrides, f"--rl_seed={s}"]) for s in range(2, cfg.seeds + 1)]
        runs.append((key, label, seeds))
    return runs


def learned_reward(overrides):
    return any(o in ("--rl_reward=orm", "--rl_reward=prm") for o in overrides)


# What rl_runs chooses for each RL run: grpo.py names a run's folder after these
# (rl_support.method_name), and rl_compare runs two methods, so a value from the user would send
# a run where the pipeline does not look for it.
PER_RUN_KEYS = ("rl_algo", "rl_reward", "rl_iteration_steps", "rl_seed", "rl_compare")


def check_rl_keys(cfg):
    """Refuse, in one line, a setting that would make a grpo.py stage write another folder than
    the pipeline reads, or that the pipeline would override."""
    for key in PER_RUN_KEYS:
        if getattr(cfg, key) != config.DEFAULTS[key]:
            sys.exit(f"pipeline.py: {key}={getattr(cfg, key)!r} would make grpo.py write other folders than "
                     "pipeline.py reads, which chooses each RL run's algorithm, reward, iterations and seed itself "
                     f"(more seeds: --seeds=N); leave {key} out, or run grpo.py for one RL run")
    if cfg.learned_rewards and cfg.rl_steps < 2:
        sys.exit(f"pipeline.py: --rl_steps={cfg.rl_steps} leaves iterative RL (grpo_prm_iterative) one iteration, so "
                 "it would write grpo_prm's folder: set --rl_steps to 2 or more, or --learned_rewards=false")
    if cfg.learned_rewards and cfg.pipeline_rm_sft_steps and cfg.rl_rm_init:
        sys.exit(f"pipeline.py: rl_rm_init={cfg.rl_rm_init!r} would be overridden: with pipeline_rm_sft_steps the "
                 f"reward models start from {os.path.join(cfg.out_dir, 'sft_rm', 'ckpt')}; leave rl_rm_init out, or "
                 "set --pipeline_rm_sft_steps=0")


def stages(cfg):
    """The stages in order. With pipeline_rm_sft_steps, the learned reward models start from their
    own, longer SFT run (sft_rm), not from the policy's checkpoint: configs/classroom.py says why."""
    rm_trunk = cfg.learned_rewards and cfg.pipeline_rm_sft_steps > 0
    return [
        Stage("corpus", ["corpus.py"], checkpoint=False),
        Stage("pretrain", ["pretrain.py"], ["corpus"]),
        Stage("sft", ["sft.py"], ["pretrain"]),
        *([Stage("sft_rm", ["sft.py", "--sft_folder=sft_rm", f"--sft_steps={cfg.pipeline_rm_sft_steps}"], ["pretrain"])]
          if rm_trunk else []),
        *[Stage(folder, ["grpo.py", *overrides], ["sft", "sft_rm"] if rm_trunk and learned_reward(overrides) else ["sft"])
          for _, _, seeds in rl_runs(cfg) for folder, overrides in seeds],
    ]


def evaluated(cfg):
    """Evaluated checkpoints, in table order: (label, key, stages (one per seed), prompting). The
    base model has never seen the chat template, so it is prompted few-shot, as the paper
    evaluates base models."""
    return [("Base (few-shot)", "base", ["pretrain"], "fewshot"), ("SFT", "sft", ["sft"], "chat"),
            *[(label, key, [folder for folder, _ in seeds], "chat") for key, label, seeds in rl_runs(cfg)]]


# ---------------------------------------------------------------- running the stages


def summary_path(cfg, stage):
    return os.path.join(cfg.out_dir, stage, "summary.json")


def eval_metrics_path(cfg, stage):
    """Where evaluate.py writes the metrics of the stage's checkpoint."""
    checkpoint = os.path.join(cfg.out_dir, stage, "ckpt")
    return os.path.join(cfg.out_dir, "eval", evaluate.run_name(checkpoint), "metrics.json")


# The config keys whose values shape what each script writes (fnmatch patterns): a stage done
# with other values runs again. Keys that change only speed or places (out_dir, device, compile,
# parallel, grader_workers) and other stages' keys do not count.
MODEL_KEYS = ("vocab_size", "n_layer", "n_head", "n_kv_head", "dim", "intermediate_size", "max_seq_len",
              "rope_theta", "norm_eps", "tie_embeddings", "init_std")
PROBLEM_KEYS = ("seed", "dtype", "tokenizer_path", "train_problems", "test_problems", "classroom_*", "grader_timeout")
# The eval_* keys that shape the greedy answers of SFT's and RL's own held-out checks
# (evaluate.evaluate_model with eval_k=1). SFT sets eval_mode and eval_format itself; RL takes
# them from the config, and eval_n_problems too (unread_by_grpo: when it does not).
HELD_OUT_KEYS = ("eval_max_new_tokens", "eval_batch_size", "eval_tool_rounds", "eval_program_*")
SETTINGS = {
    "corpus.py": ("seed", "vocab_size", "tokenizer_path", "classroom_*", "corpus_*", "fasttext_*", "web_*"),
    "pretrain.py": ("seed", "dtype", "tokenizer_path", *MODEL_KEYS, "pretrain_*"),
    "sft.py": (*PROBLEM_KEYS, "sft_*", *HELD_OUT_KEYS),
    "grpo.py": (*PROBLEM_KEYS, "rl_*", "ppo_*", *HELD_OUT_KEYS, "eval_mode", "eval_format", "eval_shots",
                "eval_n_problems"),
    "evaluate.py": (*PROBLEM_KEYS, "eval_*"),
}
# Keys that change only how often a run saves and whether it resumes, never a number it writes
# (a resumed run repeats a straight one bit for bit: tests/test_pretrain.py, test_sft.py,
# test_grpo.py): not settings, so changing them reruns nothing.
HOW_SAVED = ("*_resume", "*_save_every", "pretrain_ckpt_every")
# The keys that name one file or folder, recorded as real paths: out/x, ./out/x and /abs/out/x
# are one setting. realpath, not abspath: what counts is the files named, so a symbolic link to
# a folder is that folder, and a link pointed elsewhere since is another setting.
PATH_KEYS = ("tokenizer_path", "pretrain_init", "sft_init", "rl_init_checkpoint", "rl_rm_init", "rl_rm_checkpoint",
             "eval_checkpoint", "corpus_url_patterns")
# A finished stage that must run again starts over instead of resuming its finished checkpoint.
START_OVER = {"pretrain.py": ["--pretrain_resume=false"], "sft.py": ["--sft_resume=false"],
              "grpo.py": ["--rl_resume=false"]}


def loads(output, checkpoint):
    """Whether a step's output parses and its checkpoint (if any) loads."""
    try:
        read_json(output)
        if checkpoint:
            Transformer.from_pretrained(checkpoint)
    except (OSError, ValueError, KeyError, BadInput):
        return False
    return True


def newer_input(output, inputs):
    """An output it was built from that is newer than it (a re-run upstream stage), or ""."""
    return next((path for path in inputs if os.path.getmtime(path) > os.path.getmtime(output)), "")


def matches(key, patterns):
    return any(fnmatch.fnmatchcase(key, p) for p in patterns)


def unread_by_grpo(values):
    """The keys of SETTINGS["grpo.py"] that a run with these values never reads."""
    return [*(["rl_rm_*"] if values["rl_reward"] in ("outcome", "process") else []),  # it builds no reward model
            *(["ppo_*"] if values["rl_algo"] != "ppo" else []),  # only PPO has a value model
            *(["eval_n_problems"] if values["rl_eval_problems"] else []),  # the held-out checks' count
            *(["eval_shots"] if values["eval_mode"] != "fewshot" else [])]  # chat prompts hold no examples


def settings(command, argv):
    """{key: value} of the keys that shape what `command` (script, its overrides) writes."""
    values = vars(config.load_config([*argv, *command[1:]]))
    unread = [*HOW_SAVED, *(unread_by_grpo(values) if command[0] == "grpo.py" else [])]
    chosen = {key: as_setting(key, value) for key, value in values.items()
              if matches(key, SETTINGS[command[0]]) and not matches(key, unread)}
    return json.loads(json.dumps(chosen))  # as the record holds them: tuples as lists


def record_path(output):
    return os.path.join(os.path.dirname(output), "stage_config.json")


def started_path(output):
    return os.path.join(os.path.dirname(output), "stage_started.json")


def as_setting(key, value):
    """A setting's value as recorded: a path as the real path it names."""
    return os.path.realpath(value) if key in PATH_KEYS and value else value


def changes(recorded, wanted):
    """How `wanted` differs from the `recorded` settings, or "". A key the record lacks was not
    recorded by the pipeline.py that ran the stage, which ran with its default then: taken as
    unchanged, so that a newer pipeline.py does not rerun every stage of an out dir. Paths
    compare as the real paths they name (older records hold them as given)."""
    changed = [f"{key} {recorded[key]!r} -> {value!r}" for key, value in wanted.items()
               if key in recorded and as_setting(key, recorded[key]) != value]
    return "settings changed: " + ", ".join(changed) if changed else ""


def settings_change(output, wanted):
    """How `wanted` differs from the settings `output` was made with, or "". The record is written
    here after a stage succeeds; one older than the output means the stage ran outside this script."""
    record = record_path(output)
    try:
        recorded = read_json(record)
        if os.path.getmtime(record) < os.path.getmtime(output):
            return f"it ran outside pipeline.py after {record} was written"
    except (OSError, BadInput):
        return f"{record}, the settings it ran with, is missing"
    return changes(recorded, wanted)


def resume_change(output, train_state, inputs, wanted):
    """Why an interrupted stage's checkpoint must not be resumed, or "". The start record is
    written when a run starts from step 0 (not when it resumes), so a checkpoint older than it
    is an earlier run's, and an input newer than it came after the run began."""
    started = started_path(output)
    try:
        recorded = read_json(started)
    except (OSError, BadInput):
        return f"{started}, the settings it started with, is missing"
    if os.path.getmtime(train_state) < os.path.getmtime(started):
        return f"{train_state} is from a run before the one interrupted"
    stale = newer_input(started, inputs)
    return f"{stale} is newer" if stale else changes(recorded, wanted)


# MKL's matrix-multiply code path for each choice of torch's kernels. ",STRICT" makes MKL's
# sgemm give the same bits on any number of threads ("strict CNR mode", AVX2 and AVX-512 paths
# only); torch's own CPU ops on these shapes already do (README "Same command, same numbers").
MKL_PATH = {"default": "COMPATIBLE", "avx2": "AVX2,STRICT", "avx512": "AVX512,STRICT"}


def strict_mkl(mode):
    """Whether an MKL_CBWR value is a strict mode, where the thread count changes no bit."""
    return mode.upper().endswith(",STRICT")


def same_numbers_env(cfg, alone=False):
    """What makes x86 machines agree: torch picks its CPU kernels (AVX2, AVX-512) and MKL its
    matmul code path by the CPU, and both round differently; outside MKL's strict mode the thread
    count splits sums differently. A 1M-parameter model trained for minutes amplifies those last
    bits into points of accuracy (README "Same command, same numbers"). So every stage runs with
    the kernels of cpu_kernels (torch: ATEN_CPU_CAPABILITY; MKL: its conditional numerical
    reproducibility mode, MKL_CBWR) and cpu_threads threads, unless the environment already says
    otherwise. A stage that runs `alone` (corpus, pretraining, SFT: nothing else can run beside
    them) gets every worker's threads when the strict mode makes that change no bit."""
    if not cfg.cpu_kernels or platform.machine().lower() not in ("x86_64", "amd64"):
        return {}
    mkl = os.environ.get("MKL_CBWR", MKL_PATH[cfg.cpu_kernels])
    threads = cfg.cpu_threads * (cfg.pipeline_jobs if alone and strict_mkl(mkl) else 1)
    wanted = {"ATEN_CPU_CAPABILITY": cfg.cpu_kernels, "MKL_CBWR": mkl,
              "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    return {key: os.environ.get(key, value) for key, value in wanted.items()}


def stage_envs(cfg):
    """The environments of the stages that run alone and of the others, for results' headers."""
    return same_numbers_env(cfg, alone=True), same_numbers_env(cfg)


def numerics(env):
    """The part of a stage's environment that shapes its numbers (recorded with its settings):
    the kernels, and the thread count unless MKL's strict mode makes it change no bit."""
    env = {**os.environ, **env}
    shaping = ["ATEN_CPU_CAPABILITY", "MKL_CBWR"]
    if not strict_mkl(env.get("MKL_CBWR", "")):
        shaping.append("OMP_NUM_THREADS")
    return {key: env.get(key, "") for key in shaping}


def run_command(name, command, argv, env, log, echo):
    """Run one stage exactly as a user would, its output into `log` (logs/NAME.log). With `echo`
    (no stage beside it) its stdout is printed as it comes too and its progress bars (stderr) go
    to the terminal only; side by side, the log's last lines are printed after a failure. A
    failing stage ends the pipeline with its command. The stage's own overrides come last, so
    they win over the user's (sft_rm's --sft_steps over a --sft_steps meant for SFT)."""
    full = [sys.executable, command[0], *argv, *command[1:]]
    # what the pipeline adds to the environment leads the line, so that pasted into a shell it
    # gives the same numbers
    added = [f"{key}={shlex.quote(value)}" for key, value in env.items() if os.environ.get(key) != value]
    python = os.path.relpath(sys.executable)  # short where it lies below the working directory
    python = sys.executable if python.startswith("..") else python
    shown = " ".join([*added, shlex.join([python, *full[1:]])])
    print(f"\n=== {name}: {shown}" + ("" if echo else f"  # output: {log}"), flush=True)
    start = time.time()
    env = {**os.environ, **env, "PYTHONUNBUFFERED": "1"}  # lines reach the log as the stage prints them
    with open(log, "w") as out:
        if echo:  # `with` waits for the stage to end, on Ctrl-C too (the stage gets the SIGINT as well)
            with subprocess.Popen(full, env=env, stdout=subprocess.PIPE, text=True, errors="replace") as stage:
                for line in stage.stdout:  # tee
                    print(line, end="", flush=True)
                    out.write(line)
            status = stage.returncode
        else:
            status = subprocess.run(full, env=env, stdout=out, stderr=subprocess.STDOUT).returncode
    if status != 0:
        if not echo:
            print(open(log).read()[-3000:], file=sys.stderr)
        sys.exit(f"pipeline.py: stage {name} failed (its output is above); fix it and run pipeline.py again: "
                 "finished stages are skipped")
    if not echo:
        print(f"=== {name}: done in {time.time() - start:.0f} s", flush=True)
    return time.time() - start


def run_step(name, command, output, checkpoint, inputs, argv, log, alone=False, echo=False):
    """Run one stage or evaluation unless its output is there, loads, is newer than its inputs
    and was made with these settings (config keys and numerics); returns its seconds (0 =
    skipped). A stale one is run again from the start; so is an interrupted one (its output
    missing or broken, a checkpoint there) unless it started with these settings after its inputs
    were made: then it resumes. Its output goes to `log`; `alone`: it gets every core
    (same_numbers_env); `echo`: nothing runs beside it, so its output is printed as well."""
    env = same_numbers_env(config.load_config(argv), alone)
    wanted = {**settings(command, argv), **numerics(env)}
    if command[0] in START_OVER and checkpoint:  # a save killed between its renames: ckpt/ put back
        recover_staged_folder(checkpoint)
    train_state = os.path.join(checkpoint, "train_state.pt") if checkpoint else ""
    start_over, resumes = [], False
    if loads(output, checkpoint):
        stale = newer_input(output, inputs)
        why = f"{stale} is newer" if stale else settings_change(output, wanted)
        if not why:
            print(f"=== {name}: done before, skipped ({output})")
            return 0.0
        print(f"=== {name}: done before, but {why}; running it again from the start")
        start_over = START_OVER.get(command[0], [])
    elif command[0] in START_OVER and os.path.exists(train_state):
        why = resume_change(output, train_state, inputs, wanted)
        if why:
            print(f"=== {name}: interrupted, but {why}; running it again from the start")
            start_over = START_OVER[command[0]]
        resumes = not why
    if command[0] in START_OVER and not resumes:
        write_json(started_path(output), wanted)
    seconds = run_command(name, command, [*argv, *start_over], env, log, echo)
    write_json(record_path(output), wanted)
    return seconds


@dataclass
class Step:
    """One stage or evaluation as run_step runs it, and the steps that must finish first."""
    name: str
    command: list
    output: str
    checkpoint: str
    needs: list  # the steps whose outputs (summary.json) it reads: newer ones make it stale


def log_path(cfg, name):
    return os.path.join(cfg.out_dir, "logs", name.replace("/", "_").replace(" ", "_") + ".log")


def run_step_of(cfg, step, argv, alone=False, echo=False):
    """run_step for a Step: its inputs are the summaries of the steps it needs."""
    log = log_path(cfg, step.name)
    os.makedirs(os.path.dirname(log), exist_ok=True)
    return run_step(step.name, step.command, step.output, step.checkpoint,
                    [summary_path(cfg, need) for need in step.needs], argv, log, alone, echo)


def run_when_ready(cfg, steps, argv):
    """Each step as soon as the steps it needs are done, up to cfg.pipeline_jobs at once (each a
    process of cpu_threads threads), the ready ones in list order; with more than one worker each
    writes to logs/NAME.log only. So a core never waits for a phase to end: a finished RL run is
    evaluated while the others still train.
    Which step runs beside which changes no result: each is its own process with its own seeds.
    Returns {name: seconds}; after a failure nothing more starts."""
    jobs = cfg.pipeline_jobs

    def run(step):
        return run_step_of(cfg, step, argv, echo=jobs == 1)

    waiting, running, seconds = list(steps), {}, {}
    later = {step.name for step in steps}  # a need outside these ran before

    def ready(step):
        return all(need in seconds or need not in later for need in step.needs)

    with ThreadPoolExecutor(jobs) as pool:
        while waiting or running:
            for step in [s for s in waiting if ready(s)][:jobs - len(running)]:
                waiting.remove(step)
                running[pool.submit(run, step)] = step
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in finished:
                seconds[running.pop(future).name] = future.result()  # a failed stage's SystemExit ends it here
    return {step.name: seconds[step.name] for step in steps}


def chains(cfg, argv):
    """(config, argv) of each chain: the first is the plain run in out_dir, chain c runs with
    seed + c into out_dir/chain-seed{seed + c}. Chains run one after the other."""
    runs = [(cfg, argv)]
    for c in range(1, cfg.chains):
        chain_argv = [*argv, f"--seed={cfg.seed + c}", f"--out_dir={os.path.join(cfg.out_dir, f'chain-seed{cfg.seed + c}')}"]
        runs.append((config.load_config(chain_argv), chain_argv))
    return runs


def run_stages(cfg, argv):
    """Corpus, pretraining and SFT in order, each alone on every core: every later step reads
    SFT's checkpoint or waits behind it (the base model's evaluation could run beside SFT, but SFT
    on both cores ends sooner, and the evaluation joins the steps after it). Then the RL runs, the
    reward models' SFT and every evaluation, each as soon as what it reads is there. Returns
    {step name: seconds} (0 = skipped), in table order."""
    steps = [Step(stage.name, stage.command, summary_path(cfg, stage.name),
                  os.path.join(cfg.out_dir, stage.name, "ckpt") if stage.checkpoint else None,
                  stage.needs) for stage in stages(cfg)]
    for _, _, folders, mode in evaluated(cfg):
        for stage in folders:
            command = ["evaluate.py", f"--eval_checkpoint={os.path.join(cfg.out_dir, stage, 'ckpt')}",
                       f"--eval_mode={mode}"]
            steps.append(Step(f"eval {os.path.basename(stage)}", command, eval_metrics_path(cfg, stage), None, [stage]))
    seconds = {step.name: run_step_of(cfg, step, argv, alone=True, echo=True) for step in steps[:3]}
    # Ready steps start in list order; those that nothing waits for and that could start at once
    # (the base and SFT models' evaluations) go last, to fill the gap left while the last RL
    # checkpoints are evaluated. In list order one core sat idle through the default run's last
    # evaluation, about 5% of the time after SFT; in this order that part took 489 s for 964 s of
    # one-core work, against 482 s perfectly shared (the 11.9-minute run: git log -p --
    # results/classroom-default-timings.md).
    needed = {need for step in steps for need in step.needs}
    fillers = [step for step in steps[3:] if step.name not in needed and set(step.needs) <= set(seconds)]
    ran = run_when_ready(cfg, [step for step in steps[3:] if step not in fillers] + fillers, argv)
    return {**seconds, **{step.name: ran[step.name] for step in steps[3:]}}


# ---------------------------------------------------------------- the results


def task_name(cfg):
    return evaluate.task_name(cfg.eval_tasks[0] if cfg.eval_tasks else cfg.test_problems)


def results_markdown(cfg, chain_cfgs):
    """results.md: the findings over every chain (support/report.py) and the first chain's corpus
    loop: all of it the same, byte for byte, when the same command runs again on the same machine."""
    task = task_name(cfg)
    out_dirs = [c.out_dir for c in chain_cfgs]
    rows = [report.load_row(out_dirs, task, label, key, folders) for label, key, folders, _ in evaluated(cfg)]
    findings = report.findings(cfg, rows, task, cfg.seeds, stage_envs(cfg), out_dirs, [c.seed for c in chain_cfgs])
    corpus = read_json(summary_path(cfg, "corpus"))
    loop = report.markdown(["iteration", "collected", "new", "math domains", "recall", "precision"],
                           [[it["iteration"], it["collected"], it["new"], it["math_domains"], it.get("recall", "-"),
                             it.get("precision", "-")] for it in corpus["iterations"]])
    first = f" (chain seed {cfg.seed})" if len(chain_cfgs) > 1 else ""
    return f"""{findings}
## Corpus loop (paper 2.1): each iteration's collection against the classroom web's truth{first}

{loop}

Pages: {corpus['pool_pages']} in the pool, {corpus['url_duplicates']} URL and {corpus['near_duplicates']} near
duplicates removed, {corpus['selected']} selected; decontamination removed {corpus['decontaminated']}.
Tokens: {corpus['tokens']['train']:,} train, {corpus['tokens']['val']:,} validation.
"""


def run_log(cfg, names):
    """What the first chain's stages printed, from their logs, stage after stage: each line as it
    last stood (a progress bar redraws its line after a carriage return), the bars left out."""
    parts = []
    for name in names:
        if os.path.exists(log := log_path(cfg, name)):
            with open(log, errors="replace") as f:
                lines = [line.split("\r")[-1] for line in f.read().splitlines()]
            parts.append("\n".join([f"=== {name}", *[line for line in lines if line.strip() and "%|" not in line]]))
    return "\n\n".join(parts) + "\n"


def timings_markdown(cfg, chain_cfgs, seconds, total):
    """timings.md: what this run took, stage by stage, and each RL method's cost per step."""
    rl = [(os.path.relpath(os.path.join(c.out_dir, folder), cfg.out_dir), read_json(summary_path(c, folder)))
          for c in chain_cfgs for _, _, seeds in rl_runs(c) for folder, _ in seeds]
    header = report.machine_header(cfg, cfg.seeds, stage_envs(cfg), [c.seed for c in chain_cfgs])
    return f"""# Timings

Wall time {total / 60:.1f} min. {header}

{report.markdown(["step", "seconds"], [[name, f"{s:.0f}" if s else "skipped"] for name, s in seconds.items()])}

{report.markdown(["RL run", "s / step", "peak RSS MB"],
                 [[folder, f"{s['seconds_per_step']:.2f}", f"{s['peak_rss_mb']:.0f}"] for folder, s in rl])}
"""


# ---------------------------------------------------------------- the plots


def corpus_plot(ax, cfg):
    iterations = list(read_jsonl(os.path.join(cfg.out_dir, "corpus", "metrics.jsonl")))
    x = [it["iteration"] for it in iterations]
    ax.plot(x, [it["recall"] for it in iterations], "o-", label="recall")
    ax.plot(x, [it["precision"] for it in iterations], "s--", label="precision")
    ax.set(title="Corpus loop: math pages found per iteration", xlabel="iteration", ylim=(0, 1.05), xticks=x)
    ax.legend()


def pretrain_plot(ax, cfg):
    log = list(read_jsonl(os.path.join(cfg.out_dir, "pretrain", "metrics.jsonl")))
    train = [r for r in log if "loss" in r]
    val = [r for r in log if "val_loss" in r]
    ax.plot([r["step"] for r in train], [r["loss"] for r in train], label="train", alpha=0.7)
    ax.plot([r["step"] for r in val], [r["val_loss"] for r in val], "o-", label="validation")
    summary = read_json(os.path.join(cfg.out_dir, "pretrain", "summary.json"))
    # the loss of a model that knows token frequencies only: what "the model learned" is measured against
    ax.axhline(summary["unigram_entropy"], color="gray", linestyle="--", label="unigram entropy of the data")
    ax.set(title="Pretraining loss", xlabel="step", ylabel="cross-entropy (nats/token)")
    ax.legend()


def curves_at_k(records):
    """maj@j and pass@j for j = 1..k from each problem's k samples (paper figure 7)."""
    k = len(records[0]["samples"])
    maj, passes = [], []
    for j in range(1, k + 1):
        # classroom answers are integers, so equal strings are equal answers
        majority = [evaluate.majority_answer([s["answer"] for s in r["samples"][:j]], str.__eq__) for r in records]
        maj.append(sum(any(s["answer"] == m and s["correct"] for s in r["samples"][:j]) for r, m in zip(records, majority))
                   / len(records))
        passes.append(sum(evaluate.pass_at_k(k, sum(s["correct"] for s in r["samples"]), j) for r in records) / len(records))
    return list(range(1, k + 1)), maj, passes


def k_plot(ax, cfg, task):
    """The paper's finding (5.2.2): RL lifts maj@k but hardly pass@k, i.e. it makes the output
    distribution more robust rather than adding new abilities."""
    for stage, label, color in (("sft", "SFT", "tab:blue"), ("grpo_outcome", "GRPO", "tab:red")):
        records = [r for r in read_jsonl(os.path.join(cfg.out_dir, "eval", stage, f"{task}.jsonl")) if "samples" in r]
        ks, maj, passes = curves_at_k(records)
        ax.plot(ks, maj, "o-", color=color, label=f"{label} maj@k")
        ax.plot(ks, passes, "s--", color=color, label=f"{label} pass@k")
    ax.set(title="maj@k and pass@k before and after RL", xlabel="k (samples)", ylabel="accuracy", xticks=ks)
    ax.legend()


def draw_plots(cfg, task):
    import matplotlib
    matplotlib.use("Agg")  # files only: works without a display
    import matplotlib.pyplot as plt

    folder = os.path.join(cfg.out_dir, "plots")
    os.makedirs(folder, exist_ok=True)
    paths = []
    for name, draw in (("corpus_recall", corpus_plot), ("pretrain_loss", pretrain_plot),
                       ("maj_pass_at_k", lambda ax, c: k_plot(ax, c, task))):
        fig, ax = plt.subplots(figsize=(6, 4))
        draw(ax, cfg)
        fig.tight_layout()
        paths.append(os.path.join(folder, f"{name}.png"))
        fig.savefig(paths[-1], dpi=110)
        plt.close(fig)
    paths.append(os.path.join(folder, "rl_ppo_vs_grpo.png"))  # reward and accuracy per RL step
    rl_support.plot_comparison(cfg.out_dir, ["ppo", "grpo_outcome", "grpo_process"], paths[-1])
    return paths


def wall_time_line(seconds, wall):
    """The results file's wall time, naming the stages this run found done and skipped: with any,
    the figure is not the time from an empty out_dir."""
    skipped = [name for name, s in seconds.items() if not s]
    named = ", ".join(skipped[:6]) + (f" and {len(skipped) - 6} more" if len(skipped) > 6 else "")
    done_before = f", {len(skipped)} of {len(seconds)} stages done before and skipped ({named})"
    return f"Wall time of the run that wrote this: {wall / 60:.1f} min{done_before if skipped else ''}."


def write(path, text):
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with atomic_path(path) as tmp, open(tmp, "w") as f:
        f.write(text)


def main():
    cfg = config.main_config()
    if cfg.eval_k < 2:
        sys.exit("pipeline.py: the table needs maj@k and pass@k: set --eval_k to 2 or more (configs/classroom.py: 8)")
    if any(2 <= cfg.seed + c <= cfg.seeds for c in range(cfg.chains)):
        sys.exit(f"pipeline.py: --seed={cfg.seed} would repeat an RL run: a chain's first RL seed is its seed and the "
                 f"others are 2..{cfg.seeds} (--seeds={cfg.seeds}); pick --seed above {cfg.seeds}")
    check_rl_keys(cfg)
    argv = sys.argv[1:]  # the config file and overrides, passed to every stage unchanged
    start, seconds, runs = time.time(), {}, chains(cfg, argv)
    for chain_cfg, chain_argv in runs:
        prefix = os.path.relpath(chain_cfg.out_dir, cfg.out_dir) + ": " if chain_cfg is not cfg else ""
        seconds |= {prefix + name: s for name, s in run_stages(chain_cfg, chain_argv).items()}
    chain_cfgs = [chain_cfg for chain_cfg, _ in runs]
    results, path = results_markdown(cfg, chain_cfgs), os.path.join(cfg.out_dir, "results.md")
    write(path, results)
    timings = timings_markdown(cfg, chain_cfgs, seconds, time.time() - start)
    write(os.path.join(cfg.out_dir, "timings.md"), timings)
    if cfg.results_file:  # the study's copies (results/*.md, the README's): results with its wall time, timings
        write(cfg.results_file, results.replace("\n", f"\n\n{wall_time_line(seconds, time.time() - start)}\n", 1))
        write(os.path.splitext(cfg.results_file)[0] + "-timings.md", timings)  # results/x.md -> x-timings.md
        write(os.path.splitext(cfg.results_file)[0] + "-log.txt", run_log(cfg, seconds))  # and x-log.txt
    plots = draw_plots(cfg, task_name(cfg))
    if cfg.rl_viewer_questions:  # the rollouts, token by token
        plots.append(viewer.write_page(cfg.out_dir))
    print("\n" + results + "\n" + timings)
    print(f"pipeline: {(time.time() - start) / 60:.1f} min; results {path}; plots {', '.join(plots)}")


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:  # the stage said what it saved; the pipeline says how to go on
        print("\npipeline.py: interrupted; run the same command to go on (finished stages are kept)", file=sys.stderr)
        sys.exit(training.INTERRUPTED)
