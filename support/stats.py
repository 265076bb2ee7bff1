"""How sure a finding is: intervals for accuracies and for differences between methods.

pipeline.py turns the classroom run into findings with these, so that the README can say which
differences are real and which are within noise:

    wilson(k, n)                    95% Wilson score interval of an accuracy k/n (one run)
    paired_difference(a, b)         mean(a) - mean(b) for per-(seed, problem) outcomes of two
                                    methods on the same problems, with a 95% bootstrap interval
                                    that resamples problems and seeds
    checkpoints_difference(a, b)    the same for per-(checkpoint, seed, problem) outcomes: several
                                    whole runs of the recipe, each from its own SFT checkpoint,
                                    with a Student's t interval over the checkpoints
    next_checkpoint_interval(d)     where one more checkpoint's difference should land, from the
                                    K checkpoints' differences d (a prediction interval)
    verdict(interval, margin)       holds / contradicted / not resolved at this scale

Why paired: every method answers the same held-out problems, so most of the problem-to-problem
variation cancels in a per-problem difference; comparing two separate intervals throws that
away and calls real differences noise. Why seeds too: an RL run from the same SFT checkpoint
with another seed lands elsewhere (a few points on the classroom), and a finding must survive
that as well as the choice of problems. The bootstrap draws seeds with replacement and, within
them, problems with replacement (a two-level bootstrap), 2,000 times.

Why checkpoints too: from one SFT checkpoint the bootstrap says what another RL seed would do,
not what another SFT checkpoint would. A change of machine or of the seed of the whole chain
(corpus, pretraining, SFT) moves a 1M-parameter model's SFT accuracy by tens of points and the
RL differences with it, beyond those intervals (README "Same command, same numbers"). So a study
of several whole chains treats each chain's difference as one draw from the recipe and asks
where the recipe's mean difference lies. A bootstrap over three or five chains would be far too
narrow (it cannot see more spread than the few chains show), so the interval is Student's t, the
textbook interval for the mean of K noisy measurements, with K - 1 degrees of freedom for the
part of its spread that comes from the chains (Welch-Satterthwaite, below).

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


def checkpoints_difference(a, b):
    """a, b: (checkpoints, seeds, problems) outcomes of two methods; checkpoint c of a against
    checkpoint c of b, on the same problems. Returns (mean difference, (low, high)), where

        d_c   = mean of a - b over chain c's seeds and problems              (K,)
        x_p   = mean of a - b over every chain and seed, problem by problem   (P,)
        v_chains, v_problems = var(d_c) / K, var(x_p) / P
        df    = (v_chains + v_problems)^2 / (v_chains^2 / (K - 1) + v_problems^2 / (P - 1))
        mean +- t(0.975, df) * sqrt(v_chains + v_problems)

    v_chains is how far the mean of K chains strays from the recipe's (another machine is another
    chain); v_problems adds the choice of problems, which every chain shares and so var(d_c)
    cannot see. (var(x_p) also holds some chain noise var(d_c) already counts: the interval errs
    on the wide side.) df is Welch-Satterthwaite's: K - 1 when the chains' spread dominates, more
    when the problems' does. One checkpoint has no spread to measure: paired_difference."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    n_seeds = max(a.shape[1], b.shape[1])
    # a model without RL seeds (SFT) is repeated to match the other's seeds, chain by chain
    a, b = (np.stack([np.resize(chain, (n_seeds, x.shape[2])) for chain in x]) for x in (a, b))
    diff = a - b  # (K, S, P)
    if len(diff) == 1:
        return paired_difference(diff[0], np.zeros_like(diff[0]))
    per_chain, per_problem = diff.mean((1, 2)), diff.mean((0, 1))  # (K,), (P,)
    v_chains = per_chain.var(ddof=1) / len(per_chain)
    v_problems = per_problem.var(ddof=1) / len(per_problem)
    if v_chains + v_problems == 0:  # the same outcomes everywhere
        return float(diff.mean()), (float(diff.mean()),) * 2
    df = (v_chains + v_problems) ** 2 / (v_chains ** 2 / (len(per_chain) - 1) + v_problems ** 2 / (len(per_problem) - 1))
    mean, half = float(diff.mean()), t_975(df) * math.sqrt(v_chains + v_problems)
    return mean, (mean - half, mean + half)


def next_checkpoint_interval(per_chain):
    """per_chain: (K,) one difference per chain. The 95% interval where one more chain's
    difference should land (a prediction interval, not the interval of the mean):

        mean +- t(0.975, K - 1) * s * sqrt(1 + 1/K),   s = the K differences' standard deviation

    The interval of the mean shrinks as 1/sqrt(K) towards the recipe's mean; a single new run
    (another machine, another seed) scatters around that mean by s itself, so it is the yardstick
    for "does another run agree with the study". The new run answers the same held-out problems,
    so the problems add nothing here; a run with fewer RL seeds than the study's scatters more."""
    d = np.asarray(per_chain, float)
    mean, half = float(d.mean()), t_975(len(d) - 1) * float(d.std(ddof=1)) * math.sqrt(1 + 1 / len(d))
    return mean - half, mean + half


# Student's t distribution's 97.5% quantile for 1..10 degrees of freedom (any table; numpy has no
# quantile function and scipy is not a dependency for one number).
T_975 = [12.7062, 4.3027, 3.1824, 2.7764, 2.5706, 2.4469, 2.3646, 2.3060, 2.2622, 2.2281]


def t_975(df):
    """df may be fractional (Welch-Satterthwaite): within the table, the quantile of the whole
    degrees of freedom below it (a little wider). Beyond the table, the Cornish-Fisher expansion
    around the normal's quantile (error < 2e-4 from 11 degrees of freedom on)."""
    if df < len(T_975) + 1:
        return T_975[int(df) - 1]
    z = Z95
    return (z + (z ** 3 + z) / (4 * df) + (5 * z ** 5 + 16 * z ** 3 + 3 * z) / (96 * df ** 2)
            + (3 * z ** 7 + 19 * z ** 5 + 17 * z ** 3 - 15 * z) / (384 * df ** 3))


def verdict(interval, margin=0.0):
    """A claim 'x > -margin' (margin 0: 'x > 0') against the interval of x."""
    low, high = interval
    if low > -margin:
        return "holds"
    if high < -margin:
        return "contradicted"
    return "not resolved at this scale"
