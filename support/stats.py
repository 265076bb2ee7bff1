"""How sure a finding is: intervals for accuracies and for differences between methods.

pipeline.py turns the classroom run into findings with these, so that the README can say which
differences are real and which are within noise:

    wilson(k, n)                    95% Wilson score interval of an accuracy k/n (one run)
    paired_difference(a, b)         mean(a) - mean(b) for per-(seed, problem) outcomes of two
                                    methods on the same problems, with a 95% bootstrap interval
                                    that resamples problems and seeds
    verdict(interval, margin)       holds / contradicted / not resolved at this scale

Why paired: every method answers the same held-out problems, so most of the problem-to-problem
variation cancels in a per-problem difference; comparing two separate intervals throws that
away and calls real differences noise. Why seeds too: an RL run from the same SFT checkpoint
with another seed lands elsewhere (a few points on the classroom), and a finding must survive
that as well as the choice of problems. The bootstrap draws seeds with replacement and, within
them, problems with replacement (a two-level bootstrap), 2,000 times.

Tests: pytest -q tests/test_stats.py
"""

import math

import numpy as np

Z95 = 1.959964  # the standard normal's 97.5% quantile
BOOTSTRAP_DRAWS = 2000


def wilson(k, n, z=Z95):
    """The Wilson score interval of a proportion k/n (Wilson 1927): unlike p +- z sqrt(p(1-p)/n)
    it stays inside [0, 1] and is right near 0% and 100%."""
    if n == 0:
        return (0.0, 1.0)
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (max(0.0, centre - half), min(1.0, centre + half))


def paired_difference(a, b, seed=0):
    """a, b: (seeds, problems) outcomes (0/1, or any per-problem score) of two methods on the same
    problems; a seed axis of 1 is one run each (a method without seeds, like SFT, is repeated
    to match the other). Returns (mean difference, (low, high) 95% bootstrap interval)."""
    a, b = np.atleast_2d(np.asarray(a, float)), np.atleast_2d(np.asarray(b, float))
    n_seeds = max(len(a), len(b))
    a, b = np.resize(a, (n_seeds, a.shape[1])), np.resize(b, (n_seeds, b.shape[1]))
    diff = a - b  # (S, P): seed s of a against seed s of b, problem by problem
    rng = np.random.default_rng(seed)
    seeds = rng.integers(0, n_seeds, (BOOTSTRAP_DRAWS, n_seeds))
    problems = rng.integers(0, diff.shape[1], (BOOTSTRAP_DRAWS, diff.shape[1]))
    per_seed = np.stack([diff[s][:, problems[i]].mean() for i, s in enumerate(seeds)])
    low, high = np.quantile(per_seed, [0.025, 0.975])
    return float(diff.mean()), (float(low), float(high))


def verdict(interval, margin=0.0):
    """A claim 'x > -margin' (margin 0: 'x > 0') against the interval of x."""
    low, high = interval
    if low > -margin:
        return "holds"
    if high < -margin:
        return "contradicted"
    return "not resolved at this scale"
