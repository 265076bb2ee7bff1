"""support/stats.py and support/report.py: the Wilson interval against its definition, the paired
bootstrap on cases whose answer is known, the verdicts, and the README's findings and performance
figures against the results files."""

import math
import os
import re

import numpy as np
import pytest

from support import report, stats

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def wilson_by_definition(k, n, z=stats.Z95):
    """The Wilson interval is {p : |k/n - p| <= z sqrt(p (1 - p) / n)}: find its ends by bisection."""
    phat = k / n

    def inside(p):
        return abs(phat - p) <= z * math.sqrt(p * (1 - p) / n)

    def edge(lo, hi):  # lo inside, hi outside (or the other way round)
        for _ in range(100):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if inside(mid) == inside(lo) else (lo, mid)
        return (lo + hi) / 2

    low = 0.0 if inside(0.0) else edge(phat, 0.0)
    high = 1.0 if inside(1.0) else edge(phat, 1.0)
    return min(low, high), max(low, high)


def test_wilson_matches_its_definition():
    for k, n in [(0, 10), (1, 10), (5, 10), (10, 10), (97, 200), (595, 1000), (1, 1000)]:
        low, high = stats.wilson(k, n)
        expected = wilson_by_definition(k, n)
        assert abs(low - expected[0]) < 1e-6 and abs(high - expected[1]) < 1e-6, (k, n)
    assert stats.wilson(0, 0) == (0.0, 1.0)


def test_paired_difference_sees_what_separate_intervals_cannot():
    """Method a solves every problem b solves plus 4% more: separate Wilson intervals of 1,000
    problems overlap, the paired interval excludes 0."""
    rng = np.random.default_rng(0)
    b = (rng.random(1000) < 0.5).astype(float)
    a = b.copy()
    a[np.flatnonzero(b == 0)[:40]] = 1.0
    wa, wb = stats.wilson(int(a.sum()), 1000), stats.wilson(int(b.sum()), 1000)
    assert wa[0] < wb[1]  # the separate intervals overlap
    mean, (low, high) = stats.paired_difference(a, b)
    assert abs(mean - 0.04) < 1e-12 and 0 < low <= 0.04 <= high
    assert stats.verdict((low, high)) == "holds"


def test_identical_methods_give_zero_and_seed_noise_widens_the_interval():
    rng = np.random.default_rng(1)
    a = (rng.random((3, 500)) < 0.6).astype(float)
    mean, interval = stats.paired_difference(a, a)
    assert mean == 0 and interval == (0.0, 0.0)
    # three seeds that disagree by +-5 points on average: the interval must cover that spread
    b = (rng.random((1, 500)) < 0.6).astype(float)
    shifted = np.stack([b[0]] * 3)
    for s, n in ((0, 25), (2, 0)):
        flips = np.flatnonzero(shifted[s] == 0)[:n]
        shifted[s, flips] = 1
    _, narrow = stats.paired_difference(shifted[1:2], b)
    _, wide = stats.paired_difference(shifted, np.stack([b[0]] * 3))
    assert narrow == (0.0, 0.0) and wide[1] - wide[0] > 0.01


def t_density_cdf(t, df):
    """P(T <= t) for Student's t, by integrating its density (an independent check of the table)."""
    x = np.linspace(0, t, 200_001)
    density = math.gamma((df + 1) / 2) / (math.sqrt(df * math.pi) * math.gamma(df / 2)) * (1 + x * x / df) ** (-(df + 1) / 2)
    return 0.5 + np.trapezoid(density, x)


@pytest.mark.parametrize("df", [1, 2, 3, 4, 7, 10, 11, 14, 30, 120])
def test_t_quantile_against_the_integrated_density(df):
    assert abs(t_density_cdf(stats.t_975(df), df) - 0.975) < 2e-5


def test_one_checkpoint_is_the_seed_and_problem_bootstrap():
    rng = np.random.default_rng(2)
    a, b = (rng.random((2, 3, 400)) < 0.5).astype(float)
    assert stats.checkpoints_difference(a[None], b[None]) == stats.paired_difference(a, b)


def test_intervals_over_checkpoints_cover_the_recipes_mean_difference():
    """Simulated studies of K = 3 chains: each chain's SFT checkpoint shifts method a's edge over b
    by a chain effect (sd 5 points) around a true +2 points, then 1,000 shared problems and 2 RL
    seeds add their noise. The interval must cover +2 in about 95% of the studies; the
    one-checkpoint bootstrap of a single chain covers it far less often: it cannot see the
    chain effect."""
    rng = np.random.default_rng(3)
    covered, covered_by_one = 0, 0
    studies = 300
    for _ in range(studies):
        hardness = rng.random(1000)  # problems every chain shares
        edge = 0.02 + 0.05 * rng.standard_normal(3)  # (K,): the recipe's +2 points, moved by each checkpoint
        b = (rng.random((3, 2, 1000)) < hardness).astype(float)
        a = (rng.random((3, 2, 1000)) < np.clip(hardness + edge[:, None, None], 0, 1)).astype(float)
        low, high = stats.checkpoints_difference(a, b)[1]
        covered += low <= 0.02 <= high
        if _ < 60:  # the bootstrap is slower: fewer studies
            low, high = stats.paired_difference(a[0], b[0])[1]
            covered_by_one += low <= 0.02 <= high
    assert 0.90 <= covered / studies <= 0.99
    assert covered_by_one / 60 < 0.75


def test_one_more_chain_lands_in_the_prediction_interval_not_in_the_interval_of_the_mean():
    """The same simulated recipe: from a study of K = 3 (and 5) chains, one more chain's difference
    must land inside next_checkpoint_interval in about 95% of the studies; the interval of the
    mean, which shrinks towards the recipe's mean, misses that one chain far more often."""
    rng = np.random.default_rng(4)

    def chain_differences(k):  # (k,): each chain's a - b over 2 RL seeds and 1,000 shared problems
        hardness = rng.random(1000)
        edge = 0.02 + 0.05 * rng.standard_normal(k)
        b = (rng.random((k, 2, 1000)) < hardness).astype(float)
        a = (rng.random((k, 2, 1000)) < np.clip(hardness + edge[:, None, None], 0, 1)).astype(float)
        return a, b, (a - b).mean((1, 2))

    for k in (3, 5):
        inside, inside_mean_interval, studies = 0, 0, 300
        for _ in range(studies):
            a, b, d = chain_differences(k + 1)  # the study's k chains and one more
            low, high = stats.next_checkpoint_interval(d[:k])
            inside += low <= d[k] <= high
            low, high = stats.checkpoints_difference(a[:k], b[:k])[1]
            inside_mean_interval += low <= d[k] <= high
        assert 0.90 <= inside / studies <= 0.99, k
        assert inside_mean_interval / studies < inside / studies - 0.05, k
    # by hand: d = (1, 2, 3) points: mean 2, s = 1, t(0.975, 2) = 4.3027, sqrt(1 + 1/3)
    low, high = stats.next_checkpoint_interval([0.01, 0.02, 0.03])
    assert high - 0.02 == pytest.approx(4.3027 * 0.01 * math.sqrt(4 / 3)) and low + high == pytest.approx(0.04)


def test_verdicts():
    assert stats.verdict((0.01, 0.05)) == "holds"
    assert stats.verdict((-0.05, -0.01)) == "contradicted"
    assert stats.verdict((-0.01, 0.03)) == "not resolved at this scale"
    assert stats.verdict((-0.02, 0.01), margin=0.03) == "holds"  # within 3 points


def test_maj_minus_pass_outcomes_by_hand():
    records = [{"greedy": {"correct": True}, "majority_correct": True,
                "samples": [{"correct": True}, {"correct": False}]},
               {"greedy": {"correct": False}, "majority_correct": False,
                "samples": [{"correct": False}, {"correct": True}]},
               {"greedy": {"correct": False}}]  # greedy only: not in maj/pass
    assert report.outcomes(records, "greedy").tolist() == [1, 0, 0]
    assert report.outcomes(records, "maj_minus_pass").tolist() == [0, -1]


def test_readme_findings_are_the_committed_results_files():
    """The README's findings are the committed results files, verbatim: results/*.md as the
    seeds study wrote them, results/*.txt (what a bench printed: bench/gpu.sh's summaries,
    bench/bench_generate.py's run) in a text block."""
    readme = open(os.path.join(ROOT, "README.md")).read()
    blocks = re.findall(r"<!-- (results/[\w.-]+\.(?:md|txt)) -->\n(.*?)<!-- end of \1 -->", readme, re.S)
    assert {path for path, _ in blocks} >= {"results/classroom.md", "results/gpu-h100.txt"}, \
        "README.md lacks a results block"
    for path, shown in blocks:
        text = open(os.path.join(ROOT, path)).read()
        assert shown == (text if path.endswith(".md") else f"```text\n{text}```\n"), \
            f"README.md's {path} block differs from the file"


def prints_whole(text, figure):
    """Whether `text` holds `figure` as a whole number: not the end of 12,255 or 2.875, nor the
    start of 2.87 or 1,311."""
    return re.search(rf"(?<!\d)(?<!\d[.,]){re.escape(figure)}(?![.,]?\d)", text) is not None


def test_readme_performance_figures_are_in_the_files_their_rows_name():
    """Each row of the README's performance table names the committed files its command wrote
    (results/...), and every figure in its last column ("measured") is printed in one of them,
    as a whole number: none is typed by hand, and a rerun that changes a file fails here until
    the row says what the file now says."""
    readme = open(os.path.join(ROOT, "README.md")).read()
    table = readme.split("\n## Performance\n")[1].split("\n\n| ")[1].split("\n\n")[0]
    rows = table.splitlines()[2:]  # the header and the |---| line left out
    assert len(rows) >= 8, "README.md's performance table lost its rows"
    for row in rows:
        cells = row.strip("| ").split(" | ")
        name, measured = cells[0][:60], cells[-1]
        files = list(dict.fromkeys(re.findall(r"results/[\w.-]+\.(?:md|txt)", row)))
        assert files, f"README.md's performance row {name!r} names no results file"
        printed = "\n".join(open(os.path.join(ROOT, path)).read() for path in files)
        for figure in re.findall(r"\d+(?:,\d{3})*(?:\.\d+)?", measured):
            assert prints_whole(printed, figure), \
                f"README.md's performance row {name!r} says {figure}, which none of {files} prints"


# The decimal figures the README's prose quotes that no committed results file prints, each with
# where it comes from. A figure typed from a scratch run has no place here: record the run
# (bench/record.sh, pipeline.py --results_file) and quote its file.
FIGURES_FROM_ELSEWHERE = {
    "2402.03300": "the paper's arXiv number",
    "3.11": "the Python version; and git log -p -- results/generate-xeon.txt (an earlier run of the day)",
    "1.16": "TRL's version (requirements-bench.txt)",
    "5.23": "transformers' version (requirements-test.txt)",
    "5.13": "the Linux version that brought Landlock",
    "0.0001": "a config value as a stage prints it (sft_lr)",
    "31.6": "the paper's learning-rate schedule (section 2.3)",
    "0.9": "AdamW's beta1 (section 2.3)",
    "0.95": "AdamW's beta2 (section 2.3) and PPO's GAE lambda (configs)",
    "0.1": "AdamW's weight decay (section 2.3)",
    "0.04": "the paper's KL coefficient beta (section 4.2)",
    "2.61": "log(pi_ref/pi_theta) where k3 reaches KL_LIMIT (grpo.py; tests/test_grpo.py checks it)",
    "0.85": "the learned ORM's held-out AUC goal (issue 21)",
    "22.6": "git diff 5816d84 -- results/ (the base model's pass@8 before the few-shot cut)",
    "42.1": "the header of git show 71679e1:results/classroom.md",
    "48.8": "git show 3d4445f:results/classroom-amd.md",
    "18.8": "git diff 5816d84 -- results/",
    "11.1": "the header of git show 5816d84:results/classroom-seed2.md",
    "0.517": "git show 8cccae9:results/classroom.md (scalar-head reward models)",
    "0.655": "git show 8cccae9:results/classroom.md (scalar-head reward models)",
    "8.3": "git show ca50cad:results/classroom.md (seven chains' prediction interval)",
    "9.5": "git log -p -- results/classroom-default.md (an earlier run's wall-time line)",
    "9.7": "git log -p -- results/classroom-default.md (an earlier run's wall-time line)",
    "10.6": "git log -p -- results/classroom-default.md (an earlier run's wall-time line)",
    "11.9": "git log -p -- results/classroom-default.md (an earlier run's wall-time line)",
    "2.87": "git log -p -- results/generate-xeon.txt (an earlier run)",
    "12.4": "git log -p -- results/classroom-default.md (the run before the fillers moved last)",
}
T_QUANTILES = {"4.30": 2, "2.78": 4, "2.45": 6, "2.31": 8}  # the study's t at 3, 5, 7, 9 chains (K - 1 df)


def references_removed(section):
    """A README section without the paper's section and equation numbers ("section 2.3",
    "sections 4.1 and 4.2", "eq. 3", a table's "paper" column) and model names' versions
    ("Llama 3.2"): they are decimals, not figures."""
    section = re.sub(r"\b(?:sections?|eq\.|Llama)\s+\d+(?:\.\d+)*(?:(?:,\s*|\s+and\s+)\d+(?:\.\d+)*)*", "", section)
    rows, paper_column = [], None
    for line in section.split("\n"):
        cells = line.split("|") if line.startswith("|") else None
        if cells is None:
            paper_column = None
        elif paper_column is None and "paper" in [cell.strip() for cell in cells]:
            paper_column = [cell.strip() for cell in cells].index("paper")
        elif paper_column is not None and len(cells) > paper_column:
            cells[paper_column] = ""
            line = "|".join(cells)
        rows.append(line)
    return "\n".join(rows)


def test_readme_prose_figures_are_in_the_results_files_their_sections_name():
    """Every decimal figure of a README section (a heading to the next), outside its results
    blocks, is printed by a committed results file that the section names (in its text or as a
    block's source), or is one of the t quantiles the study explains (computed here), or is
    listed above with where it comes from. Per section, not the whole README: a figure common
    across files (1.53, 0.6) does not pass because some other run printed it."""
    readme = open(os.path.join(ROOT, "README.md")).read()
    assert {figure: f"{stats.t_975(df):.2f}" for figure, df in T_QUANTILES.items()} == \
        {figure: figure for figure in T_QUANTILES}
    # each results block (whose headings are the file's) reduced to its source's name
    blocks_named = re.sub(r"<!-- ((?:results/|python -m )[^>]*?) -->\n.*?<!-- end of [^>]*-->", r"\1", readme,
                          flags=re.S)
    for section in re.split(r"\n(?=#{1,4} )", blocks_named):
        heading = section.split("\n")[0][:60]
        named = set(re.findall(r"results/[\w.-]+\.(?:md|txt)", section))
        printed = "\n".join(open(os.path.join(ROOT, path)).read() for path in named)  # a missing file fails
        for figure in set(re.findall(r"(?<![\w.,])\d+(?:,\d{3})*\.\d+(?![\w]|\.\d)",
                                     references_removed(section))):
            if figure in FIGURES_FROM_ELSEWHERE or figure in T_QUANTILES:
                continue
            assert prints_whole(printed, figure), \
                f"README.md's section {heading!r} says {figure}, which none of the results files it names " \
                f"prints ({sorted(named)}): record it and name the file there, or say where it comes from"


def test_readme_machines_table_is_the_results_files_side_by_side(monkeypatch):
    """The README's claim-by-claim comparison of machines is what support/report.py prints from
    the committed results files, each read as a machine and claims of report.CLAIMS."""
    readme = open(os.path.join(ROOT, "README.md")).read()
    block = re.search(r"<!-- python -m support.report (.*?) -->\n(.*?)<!-- end of python -m support.report -->",
                      readme, re.S)
    assert block, "README.md lacks the support.report block"
    monkeypatch.chdir(ROOT)  # the command, as the README gives it, runs in the repository
    paths = block.group(1).split()
    assert block.group(2) == report.comparison(paths)
    for path in paths:
        machine, claims = report.claims_of(path)
        assert machine != "unknown machine", path
        assert claims and set(claims) <= {f"{claim} ({where})" for claim, where, _, _ in report.CLAIMS}, path


def results_file(folder, name, machine, claims):
    """A results file as report.findings writes its header and claims, one (claim, measured,
    [per chain,] verdict) a row (with a per-chain column when the rows have it)."""
    rows = "\n".join("| " + " | ".join(cells) + " |" for cells in claims)
    chains = " per chain |" if len(claims[0]) == 4 else ""
    path = folder / name
    path.write_text(f"# Findings\n\nMachine: {machine}, 2 cores; torch 2.13.0+cpu.\n\n## The paper's claims\n\n"
                    f"| the paper's claim | measured difference, points [95% CI] |{chains} verdict |\n|---|---|---|\n{rows}\n"
                    "\n## Learned reward models, on held-out samples\n\n| run | AUC |\n|---|---|\n| x | 0.9 |\n")
    return str(path)


def test_a_claim_that_holds_in_the_study_is_checked_against_the_other_runs_differences(tmp_path):
    """survival_table: where the study (the first file) says a claim holds, each other run's
    difference is inside where the study says one more chain should land (yes) or outside it
    (no); a one-chain study's yardstick is its own interval; claims that do not hold in the
    study, and claims that hold only in another run, are not rows."""
    process, iterative = "process > outcome (Fig. 5)", "iterative (Fig. 6)"
    study = results_file(tmp_path, "study.md", "CPU A", [
        (process, "P - O (greedy): +3.4 [+1.6, +5.5]", "+6.1 / +1.1 / +3.0; next chain: [-4.0, +10.8]", "holds"),
        (iterative, "I - S (greedy): +1.3 [-0.9, +3.6]", "+2.0 / +0.6 / +1.3; next chain: [-1.4, +4.0]",
         "not resolved at this scale")])
    b = results_file(tmp_path, "b.md", "CPU B", [
        (process, "P - O (greedy): +6.1 [+3.1, +9.5]", "holds"),
        (iterative, "I - S (greedy): +2.6 [+1.1, +4.4]", "holds")])
    c = results_file(tmp_path, "c.md", "CPU C", [(process, "P - O (greedy): -4.5 [-7.1, -1.4]", "contradicted")])
    assert report.differences_of("P - O (greedy): +3.4 [+1.6, +5.5]<br>X / Y model state: 0.59x") == \
        {"P - O (greedy)": (3.4, 1.6, 5.5, None)}
    assert report.differences_of("P - O (greedy): +3.4 [+1.6, +5.5]<br>X / Y model state: 0.59x",
                                 "+6.1 / +1.1 / +3.0; next chain: [-4.0, +10.8]<br>0.59x") == \
        {"P - O (greedy)": (3.4, 1.6, 5.5, (-4.0, 10.8))}
    assert report.claims_of(study)[1][process] == (
        "P - O (greedy): +3.4 [+1.6, +5.5]", "holds", "+6.1 / +1.1 / +3.0; next chain: [-4.0, +10.8]")  # 4 columns
    rows = [line.strip("|").split(" | ") for line in report.survival_table([study, b, c]).splitlines()[2:]]
    assert [(r[2], r[3], r[4], r[5].strip()) for r in rows] == [
        ("+3.4 [+1.6, +5.5]", "[-4.0, +10.8]", f"`{b}`: +6.1", "yes"),
        ("+3.4 [+1.6, +5.5]", "[-4.0, +10.8]", f"`{c}`: -4.5", "no")]
    # a one-chain study (no per-chain column): the yardstick is its own interval
    rows = [line.strip("|").split(" | ") for line in report.survival_table([b, study, c]).splitlines()[2:]]
    assert [(r[1], r[3], r[5].strip()) for r in rows] == [
        ("P - O (greedy)", "[+3.1, +9.5]", "yes"), ("P - O (greedy)", "[+3.1, +9.5]", "no"),
        ("I - S (greedy)", "[+1.1, +4.4]", "yes")]
