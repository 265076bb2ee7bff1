"""support/stats.py and support/report.py: the Wilson interval against its definition, the paired
bootstrap on cases whose answer is known, the verdicts, and the README's findings against the
results file."""

import math
import os
import re

import numpy as np

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
    """The README's findings are the committed results files (results/*.md), as the seeds study
    wrote them, verbatim."""
    readme = open(os.path.join(ROOT, "README.md")).read()
    blocks = re.findall(r"<!-- (results/[\w.-]+\.md) -->\n(.*?)<!-- end of \1 -->", readme, re.S)
    assert blocks, "README.md shows no results/*.md block"
    for path, shown in blocks:
        assert shown == open(os.path.join(ROOT, path)).read(), f"README.md's {path} block differs from the file"


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
    """A results file as report.findings writes its header and claims, one (claim, measured, verdict) a row."""
    rows = "\n".join(f"| {claim} | {measured} | {verdict} |" for claim, measured, verdict in claims)
    path = folder / name
    path.write_text(f"# Findings\n\nMachine: {machine}, 2 cores; torch 2.13.0+cpu.\n\n## The paper's claims\n\n"
                    f"| the paper's claim | measured difference, points [95% CI] | verdict |\n|---|---|---|\n{rows}\n"
                    "\n## Learned reward models, on held-out samples\n\n| run | AUC |\n|---|---|\n| x | 0.9 |\n")
    return str(path)


def test_a_claim_that_holds_is_checked_against_the_other_machines_difference(tmp_path):
    """survival_table: the other machine's difference is inside the interval of the run where the
    claim holds (yes), outside it (no), and claims that hold nowhere are not rows."""
    process = "process > outcome (Fig. 5)"
    a = results_file(tmp_path, "a.md", "CPU A", [
        (process, "P - O (greedy): +3.4 [+1.6, +5.5]", "holds"),
        ("iterative (Fig. 6)", "I - S (greedy): +1.3 [-0.9, +3.6]", "not resolved at this scale")])
    b = results_file(tmp_path, "b.md", "CPU B", [
        (process, "P - O (greedy): +6.1 [+3.1, +9.5]", "holds"),
        ("iterative (Fig. 6)", "I - S (greedy): +0.6 [-1.1, +2.4]", "not resolved at this scale")])
    assert report.differences_of("P - O (greedy): +3.4 [+1.6, +5.5]<br>X / Y model state: 0.59x") == \
        {"P - O (greedy)": (3.4, 1.6, 5.5)}
    rows = [line.strip("|").split(" | ") for line in report.survival_table([a, b]).splitlines()[2:]]
    assert [(r[2], r[3], r[4].strip()) for r in rows] == [
        (f"`{a}`: [+1.6, +5.5]", f"`{b}`: +6.1", "no"), (f"`{b}`: [+3.1, +9.5]", f"`{a}`: +3.4", "yes")]
