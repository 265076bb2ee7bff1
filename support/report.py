"""The classroom run's findings: the results table with intervals, paired comparisons, and the
paper's claims as a checklist of verdicts (pipeline.py writes them; see README "Findings").

    python pipeline.py configs/classroom.py                 # one RL seed: out/classroom/results.md
    python pipeline.py configs/classroom.py --seeds=3 --results_file=out/seeds.md   # RL seeds from one SFT checkpoint
    python pipeline.py configs/classroom.py --chains=9 --seeds=3 --results_file=out/chains.md
                                                            # nine SFT checkpoints, intervals over them
    python -m support.report results/classroom.md results/classroom-amd.md   # the claims, run by run, and whether
                                                                             # the other runs land where the first predicts

Every number comes from the evaluation records on disk (eval/NAME/TASK.jsonl: each held-out
problem's greedy answer and its k samples, graded), so a table can be checked problem by problem.
Accuracies carry a 95% interval and the number of problems; with several RL seeds a method's
row is the mean over its seeds, with the per-seed values beside it. A difference between two
methods is paired (the same problems, seed against seed) with a two-level bootstrap interval
(stats.py), and a claim of the paper is marked holds / contradicted / not resolved at this
scale from that interval, not from prose. With several chains (whole runs of the recipe, each
to its own SFT checkpoint) the rows and differences are means over them, with each chain's
value beside it, and the intervals are Student's t over the chains (stats.py says why).

results.md holds only what the same command on the same machine reproduces byte for byte (no
times, no resident memory): timings.md holds those.
"""

import itertools
import os
import platform
import re
import sys

import numpy as np
import torch

from support import stats
from support.fileio import read_json, read_jsonl

# The paper's claims: (claim, paper's place, [(method a, method b, what a - b measures)], margin).
# A claim holds when every one of its differences holds (a - b > -margin at 95%).
CLAIMS = [
    ("GRPO > online RFT > RFT", "Fig. 5", [("grpo_outcome", "online_rft", "greedy"), ("online_rft", "rft", "greedy")], 0.0),
    ("process > outcome supervision (rule-based)", "Fig. 5, 4.1.3", [("grpo_process", "grpo_outcome", "greedy")], 0.0),
    ("process > outcome supervision (learned PRM vs ORM)", "4.1.2-4.1.3", [("grpo_prm", "grpo_orm", "greedy")], 0.0),
    ("GRPO close to PPO's accuracy (within 3 points) with less memory", "4.1.1", [("grpo_outcome", "ppo", "greedy")], 0.03),
    ("RL raises maj@k more than pass@k", "Fig. 7, 5.2.2", [("grpo_outcome", "sft", "maj_minus_pass")], 0.0),
    ("iterative RL helps", "Fig. 6", [("grpo_prm_iterative", "grpo_prm", "greedy")], 0.0),
]


def outcomes(records, measure):
    """Per-problem outcomes, (problems,): greedy correctness, maj@k, pass@k (any of k correct), or
    maj@k - pass@k. maj@k and pass@k only over problems that were sampled."""
    sampled = [r for r in records if r.get("samples")]
    if measure == "greedy":
        return np.array([float(r["greedy"]["correct"]) for r in records])
    maj = np.array([float(r["majority_correct"]) for r in sampled])
    any_correct = np.array([float(any(s["correct"] for s in r["samples"])) for r in sampled])
    return {"maj": maj, "pass": any_correct, "maj_minus_pass": maj - any_correct}[measure]


class Row:
    """One model of the table: its evaluation records (records[c][s]: chain c's RL seed s; one
    "seed" for a model without RL), and the summaries of all its RL runs, chain by chain."""

    def __init__(self, label, key, records, summaries):
        self.label, self.key, self.records, self.summaries = label, key, records, summaries

    def matrix(self, measure):
        return np.stack([np.stack([outcomes(r, measure) for r in chain]) for chain in self.records])  # (C, S, P)

    def accuracy(self, measure):
        """(mean, (low, high), problems): Wilson for one run, the two-level bootstrap over seeds
        and problems for several from one checkpoint, Student's t over several checkpoints."""
        m = self.matrix(measure)
        if m.shape[:2] == (1, 1):
            return m.mean(), stats.wilson(int(m.sum()), m.shape[2]), m.shape[2]
        mean, (low, high) = stats.checkpoints_difference(m, np.zeros_like(m))
        return mean, (max(0.0, low), min(1.0, high)), m.shape[2]  # an accuracy lies in [0, 1]


def percent_cell(mean, interval, n):
    return f"{100 * mean:.1f} [{100 * interval[0]:.1f}, {100 * interval[1]:.1f}] (n={n})"


def points(x):
    return f"{100 * x:+.1f}"


def cpu_name():
    """The CPU's marketing name ("AMD EPYC 9654 96-Core Processor"), for every figure's header."""
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def machine_header(cfg, seeds, stage_envs, chain_seeds=()):
    """The line that says where and how the numbers were made. stage_envs: pipeline.py's
    environment for the stages that run alone (corpus, pretraining, SFT) and for the others."""
    cpu = cpu_name()
    alone, env = ({**os.environ, **stage_env} for stage_env in stage_envs)
    kernels = env.get("ATEN_CPU_CAPABILITY") or torch.backends.cpu.get_cpu_capability()
    threads = env.get("OMP_NUM_THREADS") or torch.get_num_threads()
    if alone.get("OMP_NUM_THREADS", threads) != threads:
        threads = (f"{alone['OMP_NUM_THREADS']} (corpus, pretraining, SFT, one at a time) and {threads} "
                   f"(the others, {cfg.pipeline_jobs} at a time)")
    return (f"Machine: {cpu}, {os.cpu_count()} cores; torch {torch.__version__}; the stages ran with CPU kernels "
            f"{kernels.lower()} (this CPU's best: {torch.backends.cpu.get_cpu_capability().lower()}), "
            f"MKL_CBWR={env.get('MKL_CBWR', 'unset')}, threads per stage {threads}. RL seeds: {seeds}."
            + (f" Chains (whole runs of the recipe, each to its own SFT checkpoint): {len(chain_seeds)}, seeds "
               f"{', '.join(map(str, chain_seeds))}." if len(chain_seeds) > 1 else ""))


def main_table(rows, k):
    chains = len(rows[0].records)
    header = ["model", "greedy % [95% CI] (n)", f"maj@{k} % [95% CI] (n)", f"pass@{k} % [95% CI] (n)",
              "greedy % per RL seed" if chains == 1 else "greedy % per chain (mean of its RL seeds)",
              "RL train memory MB", "models held"]
    lines = []
    for row in rows:
        cells = [row.label] + [percent_cell(*row.accuracy(m)) for m in ("greedy", "maj", "pass")]
        greedy = row.matrix("greedy")
        per_run = greedy[0].mean(1) if chains == 1 else greedy.mean((1, 2))
        cells.append(" / ".join(f"{100 * v:.1f}" for v in per_run) if row.summaries or chains > 1 else "-")
        s = row.summaries[0] if row.summaries else None
        cells.append(f"{s['model_state_mb']:.1f}" if s else "-")
        cells.append(", ".join(s["models_held"]) if s else "-")
        lines.append(cells)
    return markdown(header, lines)


def claims_table(by_key):
    """The checklist: each claim, each of its differences with the interval (and with several
    chains, each chain's difference and the interval where one more chain's should land), and
    the verdict."""
    chains = len(next(iter(by_key.values())).records)
    lines = []
    for claim, where, differences, margin in CLAIMS:
        if not all(a in by_key and b in by_key for a, b, _ in differences):
            continue
        measured, per_chain, verdicts = [], [], []
        for a, b, measure in differences:
            a_outcomes, b_outcomes = by_key[a].matrix(measure), by_key[b].matrix(measure)
            mean, interval = stats.checkpoints_difference(a_outcomes, b_outcomes)
            verdicts.append(stats.verdict(interval, margin))
            measured.append(f"{by_key[a].label} - {by_key[b].label} ({measure.replace('_', ' ')}): "
                            f"{points(mean)} [{points(interval[0])}, {points(interval[1])}]")
            if chains > 1:
                chain_differences = a_outcomes.mean((1, 2)) - b_outcomes.mean((1, 2))  # (K,)
                low, high = stats.next_checkpoint_interval(chain_differences)
                per_chain.append(" / ".join(points(x) for x in chain_differences) +
                                 f"; next chain: [{points(low)}, {points(high)}]")
        if "memory" in claim:
            ratio = by_key["grpo_outcome"].summaries[0]["model_state_mb"] / by_key["ppo"].summaries[0]["model_state_mb"]
            measured.append(f"GRPO / PPO model state: {ratio:.2f}x")
            per_chain.append(f"{ratio:.2f}x")
            verdicts.append("holds" if ratio < 1 else "contradicted")
        verdict = "contradicted" if "contradicted" in verdicts else \
            "holds" if all(v == "holds" for v in verdicts) else "not resolved at this scale"
        lines.append([f"{claim} ({where})", "<br>".join(measured), *(["<br>".join(per_chain)] if chains > 1 else []),
                      verdict])
    by_chain = ["per chain; where one more chain's difference should land (95%)"] if chains > 1 else []
    return markdown(["the paper's claim", "measured difference, points [95% CI]", *by_chain, "verdict"], lines)


def reward_model_table(rows):
    """Each learned reward model's held-out accuracy and AUC at each (re)training, mean over runs."""
    lines = []
    for row in rows:
        evaluations = [s.get("reward_model") for s in row.summaries if s.get("reward_model")]
        for i in range(min(map(len, evaluations)) if evaluations else 0):
            aucs = [e[i]["heldout_auc"] for e in evaluations if e[i]["heldout_auc"] is not None]
            accs = [e[i]["heldout_accuracy"] for e in evaluations if e[i]["heldout_accuracy"] is not None]
            lines.append([row.label, evaluations[0][i]["step"], evaluations[0][i]["heldout_positions"],
                          f"{np.mean(accs):.3f}" if accs else "-", f"{np.mean(aucs):.3f}" if aucs else "-",
                          " / ".join(f"{a:.3f}" for a in aucs)])
    if not lines:
        return ""
    runs = "AUC per seed" if len(rows[0].records) == 1 else "AUC per run (chain by chain, seed by seed)"
    return markdown(["run", "trained at step", "held-out positions", "accuracy", "AUC", runs], lines)


def reward_model_start(cfg, out_dirs):
    """Where the learned reward models start (pipeline_rm_sft_steps), against the policy's start,
    chain by chain."""
    paths = [os.path.join(out_dir, "sft_rm", "summary.json") for out_dir in out_dirs]
    if not (cfg.learned_rewards and cfg.pipeline_rm_sft_steps and all(map(os.path.exists, paths))):
        return ""
    rm = [read_json(path) for path in paths]
    policy = [read_json(os.path.join(out_dir, "sft", "summary.json")) for out_dir in out_dirs]
    rm_accuracy, policy_accuracy = (" / ".join(f"{100 * s['accuracy']:.1f}" for s in runs) for runs in (rm, policy))
    return (f"They start from their own SFT run of {rm[0]['steps']} steps (sft_rm: {rm_accuracy}% greedy on "
            f"sft.py's {rm[0]['eval_problems']} held-out problems{', chain by chain' if len(rm) > 1 else ''}), the "
            f"policy from {policy[0]['steps']} steps ({policy_accuracy}%).\n\n")


def iteration_table(rows):
    lines = []
    for row in rows:
        runs = [s["iterations"] for s in row.summaries if s.get("iterations")]
        for i in range(min(map(len, runs)) if runs else 0):
            accuracy = [r[i]["heldout_greedy"] for r in runs]
            aucs = [r[i]["rm_heldout_auc"] for r in runs if r[i]["rm_heldout_auc"] is not None]
            lines.append([row.label, runs[0][i]["iteration"], runs[0][i]["end_step"],
                          f"{100 * np.mean(accuracy):.1f}", f"{np.mean(aucs):.3f}" if aucs else "-"])
    if not lines:
        return ""
    runs = "seeds" if len(rows[0].records) == 1 else "runs"
    return markdown(["run", "iteration", "to step", f"held-out greedy % (RL's check set, mean over {runs})",
                     "reward model held-out AUC"], lines)


def markdown(header, lines):
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return "\n".join(out + ["| " + " | ".join(str(c) for c in line) + " |" for line in lines])


# How the intervals were made, for one SFT checkpoint and for several (chains).
ONE_CHECKPOINT = ("Intervals: 95%, Wilson for one run, a bootstrap over seeds and problems for several. Every RL "
                  "method starts from the same SFT checkpoint with the same budget; ",
                  "Each difference is paired: the same problems, seed against seed; it holds when its whole 95% "
                  "interval is on the claimed side.")
CHECKPOINTS = ("Each chain is a whole run of the recipe (corpus, pretraining, SFT, every RL method from that "
               "chain's SFT checkpoint with the same budget, RL seeds 1..N), and a row is the mean over the chains "
               "of each chain's mean over its RL seeds. Intervals: 95%, Student's t over the chains, widened by the "
               "choice of problems (support/stats.py), so they cover what another SFT checkpoint (another seed, "
               "another machine) does; ",
               "Each difference is paired: the same problems, chain against chain and seed against seed; it holds "
               "when its whole 95% interval (over the chains) is on the claimed side.")


def findings(cfg, rows, task, seeds, stage_envs, out_dirs, chain_seeds):
    """The deterministic part of results.md: the tables and the checklist. out_dirs and
    chain_seeds: one per chain (the rows' records come in the same order)."""
    by_key = {row.key: row for row in rows}
    k, n_greedy = cfg.eval_k, rows[0].matrix("greedy").shape[2]
    intervals, paired = ONE_CHECKPOINT if len(out_dirs) == 1 else CHECKPOINTS
    parts = [
        "# Findings", "", machine_header(cfg, seeds, stage_envs, chain_seeds), "",
        f"Held-out `{task}` problems: greedy accuracy on {n_greedy}; maj@{k} (majority vote) and pass@{k} "
        f"(any correct) over {k} samples at temperature {cfg.eval_temperature} on the first "
        f"{rows[0].matrix('maj').shape[2]}. {intervals}"
        "RL train memory counts the parameters, gradients and AdamW states of every model a method holds.",
        "", main_table(rows, k), "", "## The paper's claims", "", paired, "", claims_table(by_key)]
    reward_models = reward_model_table(rows)
    for title, table in (("## Learned reward models, on held-out samples",
                          reward_models and reward_model_start(cfg, out_dirs) + reward_models),
                         ("## Iterative RL, iteration by iteration", iteration_table(rows))):
        if table:
            parts += ["", title, "", table]
    return "\n".join(parts) + "\n"


def load_row(out_dirs, task, label, key, stages):
    """A table row from its stages' evaluation records (one stage per RL seed) in each chain's out_dir."""
    records = [[list(read_jsonl(os.path.join(out_dir, "eval", os.path.basename(stage), f"{task}.jsonl")))
                for stage in stages] for out_dir in out_dirs]
    summaries = [read_json(os.path.join(out_dir, stage, "summary.json"))
                 for out_dir in out_dirs for stage in stages if stage.startswith("rl/")]
    return Row(label, key, records, summaries)


# ---------------------------------------------------------------- the same claims on other machines


def claims_of(path):
    """(machine, {claim: (measured, verdict, per chain)}) read back from a results file this module
    wrote (with several chains its claims table has a per-chain column before the verdict; with
    one, per chain is "")."""
    text = open(path).read()
    machine = next((line.split(":", 1)[1].split(";")[0].strip() for line in text.splitlines()
                    if line.startswith("Machine:")), "unknown machine")
    section = text.split("## The paper's claims", 1)[-1].split("\n## ", 1)[0]
    rows = [line.strip("|").split(" | ") for line in section.splitlines() if line.startswith("| ")]
    return machine, {cells[0].strip(): (cells[1].strip(), cells[-1].strip(), cells[2].strip() if len(cells) == 4 else "")
                     for cells in rows[1:] if len(cells) in (3, 4)}


def machines_table(paths):
    """One row per claim, one column per results file: does each machine's run reach the same verdict?"""
    runs = [(path, *claims_of(path)) for path in paths]
    claims = list(dict.fromkeys(claim for _, _, by_claim in runs for claim in by_claim))
    header = ["the paper's claim"] + [f"{machine} (`{path}`)" for path, machine, _ in runs]
    lines = [[claim] + [f"{by_claim[claim][1]}: {by_claim[claim][0]}" if claim in by_claim else "-"
                        for _, _, by_claim in runs] for claim in claims]
    return markdown(header, lines)


MEASURED = re.compile(r"(.+): ([+-]\d+\.\d) \[([+-]\d+\.\d), ([+-]\d+\.\d)\]")
NEXT_CHAIN = re.compile(r".*; next chain: \[([+-]\d+\.\d), ([+-]\d+\.\d)\]")


def differences_of(measured, per_chain=""):
    """{difference: (points, low, high, next chain's (low, high) or None)} read back from a claims-table
    row's cells, e.g. "GRPO (process) - GRPO (outcome) (greedy): +3.4 [+1.6, +5.5]" and, with
    several chains, "+6.1 / +2.6 / +0.0; next chain: [-8.1, +13.9]" (several joined by <br>, in
    the same order)."""
    found = {}
    for part, chains in itertools.zip_longest(measured.split("<br>"), per_chain.split("<br>"), fillvalue=""):
        m, n = MEASURED.fullmatch(part), NEXT_CHAIN.fullmatch(chains)
        if m:
            found[m.group(1)] = (*(float(x) for x in m.groups()[1:]), n and tuple(float(x) for x in n.groups()))
    return found


def survival_table(paths):
    """Where the first run (the study) says a claim holds, does each other run (another machine,
    another seed) measure a difference where the study says one more run should land? With
    several chains that is the study's prediction interval for one more chain (stats.
    next_checkpoint_interval): one run scatters around the recipe's mean by a chain's spread,
    which the interval of the mean does not cover. A one-chain study has no chain spread to
    predict from, and its own 95% interval is the yardstick."""
    runs = {path: claims_of(path)[1] for path in paths}
    measured = {path: {claim: differences_of(cell, per_chain) for claim, (cell, _, per_chain) in by_claim.items()}
                for path, by_claim in runs.items()}
    study = paths[0]
    holding = [(claim, what, mean, low, high, next_chain or (low, high))
               for claim, (_, verdict, _) in runs[study].items() if verdict == "holds"
               for what, (mean, low, high, next_chain) in measured[study][claim].items()]
    lines = []
    for claim, what, mean, low, high, (land_low, land_high) in holding:
        for other in paths[1:]:
            theirs = measured[other].get(claim, {}).get(what)
            if theirs:
                lines.append([claim, what, f"{mean:+.1f} [{low:+.1f}, {high:+.1f}]", f"[{land_low:+.1f}, {land_high:+.1f}]",
                              f"`{other}`: {theirs[0]:+.1f}", "yes" if land_low <= theirs[0] <= land_high else "no"])
    return markdown(["the paper's claim", "difference, points", f"holds in `{study}`: mean [95% CI]",
                     "another run should land in (95%)", "another run measured", "inside?"], lines)


def comparison(paths):
    """What `python -m support.report STUDY OTHER ...` prints: the verdicts side by side, then
    whether each claim that holds in the study lands, in the other runs, where the study says
    one more run would."""
    return machines_table(paths) + "\n\n" + survival_table(paths) + "\n"


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit("usage: python -m support.report STUDY.md [OTHER.md ...]: the paper's claims, run by run, "
                 "and whether the other runs land where the study says one more run would")
    try:
        print(comparison(sys.argv[1:]), end="")
    except OSError as e:
        sys.exit(f"support.report: cannot read {e.filename}: {e.strerror}; pass results files that "
                 "pipeline.py wrote (e.g. out/classroom/results.md)")
