"""Paired differences between two methods run on the same seeds: a t interval over seeds, a bootstrap over
seeds and test volumes, and the smallest difference the design resolves.

Each run gives one score per test volume (its mean Dice over the foreground classes).  The difference of
methods A and B on seed s is mean_v A[s, v] - mean_v B[s, v]; the seeds are the replicates.
"""
import math

import numpy as np
from scipy import stats

LEVEL = 0.95
POWER = 0.8  # for the smallest resolvable difference


def t_interval(differences, level=LEVEL):
    """(mean, low, high) of the mean of per-seed differences, Student t with n - 1 degrees of freedom."""
    d = np.asarray(differences, dtype=np.float64)
    mean = float(d.mean())
    if d.size < 2:
        return mean, float("nan"), float("nan")
    half = stats.t.ppf(0.5 + level / 2, d.size - 1) * d.std(ddof=1) / math.sqrt(d.size)
    return mean, mean - half, mean + half


def bootstrap_interval(a, b, level=LEVEL, reps=4000, seed=0):
    """Percentile interval of mean(a - b) resampling seeds and, within the draw, test volumes (the same
    volumes for both methods: the pairing is kept).  a, b: (seeds, volumes) arrays of per-volume scores."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    rng = np.random.default_rng(seed)
    n_seeds, n_volumes = a.shape
    seeds = rng.integers(0, n_seeds, size=(reps, n_seeds))
    volumes = rng.integers(0, n_volumes, size=(reps, n_volumes))
    diff = a - b
    means = np.array([np.nanmean(diff[s][:, v]) for s, v in zip(seeds, volumes)])
    return float(np.quantile(means, (1 - level) / 2)), float(np.quantile(means, (1 + level) / 2))


def smallest_resolvable(differences, level=LEVEL, power=POWER):
    """The true difference a paired t test at `level` detects with probability `power`, given the spread
    of the per-seed differences measured here: (t_{1-a/2} + t_power) s_d / sqrt(n)."""
    d = np.asarray(differences, dtype=np.float64)
    if d.size < 2:
        return float("nan")
    df = d.size - 1
    return float((stats.t.ppf(0.5 + level / 2, df) + stats.t.ppf(power, df)) * d.std(ddof=1) / math.sqrt(d.size))
