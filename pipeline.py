"""The whole recipe end to end: corpus -> pretrain -> SFT -> RL (five ways) -> evaluation, then
one results table and the plots, as in the paper's Tables 5-6 and Figures 5-7.

    bash run_classroom.sh                               # sets up .venv, then runs this on the classroom
    python pipeline.py configs/classroom.py             # the same, in an environment you made
    python pipeline.py configs/classroom.py --out_dir=out/try2 --sft_steps=100   # overrides reach every stage

Every stage is its own script, run here as a subprocess with the same config file and overrides,
exactly the command you would type (it is printed). A stage whose outputs are there, load, and
are newer than the outputs it was built from is skipped: delete a stage's folder (or change
what it reads) to run it again. The stages, with the paper's sections:

    corpus    corpus.py   2.1  fastText math-page selection, decontamination, BPE, token shards
    pretrain  pretrain.py 2.3  AdamW, multi-step LR, on the selected corpus
    sft       sft.py      3    chain-of-thought / program / tool-integrated instruction tuning
    rl        grpo.py     4-5  RFT, online RFT, PPO, GRPO (outcome), GRPO (process), from SFT
    eval      evaluate.py      greedy, maj@k and pass@k on held-out problems, every checkpoint

At the end, under out_dir: results.md (also printed) and plots/*.png.
"""

import os
import subprocess
import sys
import time
from dataclasses import dataclass, field

import config
import evaluate
import grpo
from fileio import BadInput, atomic_path, read_json, read_jsonl
from model import Transformer


@dataclass
class Stage:
    name: str  # also its folder under out_dir, and its row in the table
    command: list  # script and stage-specific overrides (the config and the user's overrides follow)
    needs: list = field(default_factory=list)  # stages whose outputs this one reads
    checkpoint: bool = True  # writes {folder}/ckpt


# The RL runs: (folder, label in the table, grpo.py overrides). Each starts from the SFT checkpoint.
RL_METHODS = [
    ("rft", "RFT", ["--rl_algo=rft"]),
    ("online_rft", "Online RFT", ["--rl_algo=online_rft"]),
    ("ppo", "PPO", ["--rl_algo=ppo"]),
    ("grpo_outcome", "GRPO (outcome)", ["--rl_algo=grpo", "--rl_reward=outcome"]),
    ("grpo_process", "GRPO (process)", ["--rl_algo=grpo", "--rl_reward=process"]),
]

STAGES = [
    Stage("corpus", ["corpus.py"], checkpoint=False),
    Stage("pretrain", ["pretrain.py"], ["corpus"]),
    Stage("sft", ["sft.py"], ["pretrain"]),
    *[Stage(f"rl/{folder}", ["grpo.py", *overrides], ["sft"]) for folder, _, overrides in RL_METHODS],
]

# Evaluated checkpoints, in table order: (table label, stage, prompting). The base model has
# never seen the chat template, so it is prompted few-shot, as the paper evaluates base models.
EVALUATED = [("Base (few-shot)", "pretrain", "fewshot"), ("SFT", "sft", "chat"),
             *[(label, f"rl/{folder}", "chat") for folder, label, _ in RL_METHODS]]


# ---------------------------------------------------------------- running the stages


def summary_path(cfg, stage):
    return os.path.join(cfg.out_dir, stage, "summary.json")


def eval_metrics_path(cfg, stage):
    """Where evaluate.py writes the metrics of the stage's checkpoint."""
    checkpoint = os.path.join(cfg.out_dir, stage, "ckpt")
    return os.path.join(cfg.out_dir, "eval", evaluate.run_name(checkpoint), "metrics.json")


def is_done(output, checkpoint, inputs):
    """An output counts when it parses, its checkpoint (if any) loads, and it is newer than every
    output it was built from (a re-run upstream stage makes everything downstream stale)."""
    try:
        read_json(output)
        if checkpoint:
            Transformer.from_pretrained(checkpoint)
    except (OSError, ValueError, KeyError, BadInput):
        return False
    return all(os.path.getmtime(output) >= os.path.getmtime(path) for path in inputs)


def run_command(name, command, argv):
    """Run one stage exactly as a user would; a failing stage ends the pipeline with its command."""
    full = [sys.executable, *command, *argv]
    print(f"\n=== {name}: {' '.join(full[1:])}", flush=True)
    start = time.time()
    if subprocess.run(full).returncode != 0:
        sys.exit(f"pipeline.py: stage {name} failed (its output is above); fix it and run pipeline.py again: "
                 "finished stages are skipped")
    return time.time() - start


def run_stages(cfg, argv):
    """Every stage in order, then every evaluation; returns {step name: seconds} (0 = skipped)."""
    seconds = {}
    for stage in STAGES:
        output = summary_path(cfg, stage.name)
        checkpoint = os.path.join(cfg.out_dir, stage.name, "ckpt") if stage.checkpoint else None
        if is_done(output, checkpoint, [summary_path(cfg, need) for need in stage.needs]):
            print(f"=== {stage.name}: done before, skipped ({output})")
            seconds[stage.name] = 0.0
        else:
            seconds[stage.name] = run_command(stage.name, stage.command, argv)
    for _, stage, mode in EVALUATED:
        output, checkpoint = eval_metrics_path(cfg, stage), os.path.join(cfg.out_dir, stage, "ckpt")
        name = f"eval {os.path.basename(stage)}"
        if is_done(output, None, [summary_path(cfg, stage)]):
            print(f"=== {name}: done before, skipped ({output})")
            seconds[name] = 0.0
        else:
            seconds[name] = run_command(name, ["evaluate.py", f"--eval_checkpoint={checkpoint}",
                                               f"--eval_mode={mode}"], argv)
    return seconds


# ---------------------------------------------------------------- the table


def percent(value):
    return "-" if value is None else f"{100 * value:.1f}"


def results_rows(cfg):
    """One row per evaluated checkpoint: accuracy on the held-out task and, for RL, its cost."""
    task = os.path.splitext(os.path.basename(cfg.eval_tasks[0] if cfg.eval_tasks else cfg.test_problems))[0]
    k = cfg.eval_k
    rows = []
    for label, stage, _ in EVALUATED:
        metrics = read_json(eval_metrics_path(cfg, stage))["metrics"][task]
        rl = read_json(summary_path(cfg, stage)) if stage.startswith("rl/") else {}
        rows.append({"label": label, "greedy": metrics["greedy"], "maj": metrics.get(f"maj@{k}"),
                     "pass": metrics.get(f"pass@{k}"), "memory_mb": rl.get("model_state_mb"),
                     "rss_mb": rl.get("peak_rss_mb"), "step_s": rl.get("seconds_per_step"),
                     "models": ", ".join(rl["models_held"]) if rl else None})
    return task, rows


def markdown_table(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def results_markdown(cfg, task, rows, seconds):
    k = cfg.eval_k

    def cell(value, fmt):
        return "-" if value is None else fmt.format(value)

    main = markdown_table(
        ["model", "greedy %", f"maj@{k} %", f"pass@{k} %", "RL train memory MB", "RL peak RSS MB", "s / RL step",
         "models held"],
        [[r["label"], percent(r["greedy"]), percent(r["maj"]), percent(r["pass"]), cell(r["memory_mb"], "{:.1f}"),
          cell(r["rss_mb"], "{:.0f}"), cell(r["step_s"], "{:.2f}"), r["models"] or "-"] for r in rows])
    corpus = read_json(summary_path(cfg, "corpus"))
    loop = markdown_table(["iteration", "collected", "new", "math domains", "recall", "precision"],
                          [[it["iteration"], it["collected"], it["new"], it["math_domains"], it.get("recall", "-"),
                            it.get("precision", "-")] for it in corpus["iterations"]])
    timing = markdown_table(["step", "seconds"], [[name, f"{s:.0f}" if s else "skipped"] for name, s in seconds.items()])
    return f"""# Results: {cfg.out_dir}

Held-out `{task}` problems ({cfg.eval_n_problems or 'all'}): greedy accuracy, and over {k} samples at
temperature {cfg.eval_temperature} the majority-vote (maj@{k}) and any-correct (pass@{k}) accuracy. RL
memory: bytes of the parameters, gradients and optimizer states of every model the method holds
(the paper's argument: GRPO holds no value model); peak RSS is the whole process.

{main}

## Corpus loop (paper 2.1): each iteration's collection against the classroom web's truth

{loop}

Pages: {corpus['pool_pages']} in the pool, {corpus['url_duplicates']} URL and {corpus['near_duplicates']} near
duplicates removed, {corpus['selected']} selected; decontamination removed {corpus['decontaminated']}.
Tokens: {corpus['tokens']['train']:,} train, {corpus['tokens']['val']:,} validation.

## Time per step of this run

{timing}
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
        records = list(read_jsonl(os.path.join(cfg.out_dir, "eval", stage, f"{task}.jsonl")))
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
    grpo.plot_comparison(cfg.out_dir, ["ppo", "grpo_outcome", "grpo_process"], paths[-1])
    return paths


def main():
    cfg = config.main_config()
    if cfg.eval_k < 2:
        sys.exit("pipeline.py: the table needs maj@k and pass@k: set --eval_k to 2 or more (configs/classroom.py: 8)")
    argv = sys.argv[1:]  # the config file and overrides, passed to every stage unchanged
    start = time.time()
    seconds = run_stages(cfg, argv)
    task, rows = results_rows(cfg)
    report = results_markdown(cfg, task, rows, seconds)
    path = os.path.join(cfg.out_dir, "results.md")
    with atomic_path(path) as tmp, open(tmp, "w") as f:
        f.write(report)
    plots = draw_plots(cfg, task)
    print("\n" + report)
    print(f"pipeline: {(time.time() - start) / 60:.1f} min; table {path}; plots {', '.join(plots)}")


if __name__ == "__main__":
    main()
