"""Benchmark: how often the 95% AUC interval holds the true AUC with few cases or few misranked pairs.

tfmed's AUC interval takes each end from the farther of DeLong's interval (normal on the logit
scale) and Newcombe's score interval; an AUC of 1 gets ``[separation_bound(n_pos, n_neg), 1]``.
For each case count and true AUC this script draws data sets (binormal scores by default, other ROC
shapes with --shape), scores them with ``delong_auc_ci`` and prints how often the interval held
the true AUC. Beside it, the comparison runs: DeLong's logit interval alone with the point 1 where
the sample was perfectly ranked, and DeLong's logit interval alone with the separation bound (what
tfmed reported before Newcombe's interval was added). Goal: at least 93% coverage for tfmed in
every row of the binormal shape; the other shapes are reported.

Exit status: 0 when the goal is met (or the shape has none), 1 when it is not, 2 for a refused argument (one
line).

Usage:
    python benchmarks/auc_intervals.py [--datasets 2000] [--shape binormal|exponential|sd2|sd05]
"""
from __future__ import annotations

import argparse
import sys

import numpy as np
from scipy import stats

from _common import one_line_errors
from tfmed.evaluation import delong_auc_ci, delong_covariance, logit_interval, separation_bound

# (positives, negatives), true AUC. The first rows are often perfectly ranked; then a handful of
# positives among many negatives (a rare finding); then the default run's validation set's shape.
ROWS = [((10, 10), 0.95), ((10, 10), 0.99), ((5, 50), 0.95), ((5, 50), 0.99), ((20, 20), 0.98),
        ((3, 30), 0.95), ((3, 30), 0.99),
        ((4, 296), 0.96), ((6, 294), 0.98), ((9, 291), 0.90), ((9, 291), 0.96),
        ((136, 388), 0.99), ((136, 388), 0.998)]


def draw(rng, shape: str, auc: float, n_pos: int, n_neg: int) -> tuple[np.ndarray, np.ndarray]:
    """Scores of the positives and negatives for a true AUC ``auc`` under one ROC shape."""
    if shape == "exponential":  # negatives Exp(1), positives Exp(rate r): P(pos > neg) = 1 / (1 + r)
        return rng.exponential(auc / (1 - auc), n_pos), rng.exponential(1.0, n_neg)
    sd = {"binormal": 1.0, "sd2": 2.0, "sd05": 0.5}[shape]
    shift = np.sqrt(1 + sd ** 2) * stats.norm.ppf(auc)
    return rng.normal(shift, sd, n_pos), rng.normal(0.0, 1.0, n_neg)


def delong_logit(y: np.ndarray, scores: np.ndarray) -> tuple[float, float, float]:
    """DeLong's 95% interval on the logit scale alone; the point where the AUC is 0 or 1."""
    aucs, covariance = delong_covariance(y, scores)
    auc = float(aucs[0])
    if auc in (0.0, 1.0):
        return auc, auc, auc
    return auc, *logit_interval(auc, float(covariance[0, 0]))


def coverage(shape: str, n_pos: int, n_neg: int, auc: float, datasets: int, seed: int) -> tuple[float, ...]:
    """(share separated, DeLong with the point 1, DeLong with the bound, tfmed, tfmed's mean width)."""
    rng = np.random.default_rng(seed)
    y = np.r_[np.ones(n_pos, int), np.zeros(n_neg, int)]
    bound = separation_bound(n_pos, n_neg)
    separated = point = delong = tfmed = 0
    widths = []
    for _ in range(datasets):
        scores = np.concatenate(draw(rng, shape, auc, n_pos, n_neg))
        estimate, lo, hi = delong_logit(y, scores)
        separated += estimate == 1.0
        point += lo <= auc <= hi
        delong += (bound <= auc) if estimate == 1.0 else (lo <= auc <= hi)
        _, lo, hi = delong_auc_ci(y, scores)
        tfmed += lo <= auc <= hi
        widths.append(hi - lo)
    return separated / datasets, point / datasets, delong / datasets, tfmed / datasets, float(np.mean(widths))


@one_line_errors
def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", type=int, default=2000)
    parser.add_argument("--shape", choices=["binormal", "exponential", "sd2", "sd05"], default="binormal")
    args = parser.parse_args()
    if args.datasets < 1:
        parser.error(f"--datasets is {args.datasets}; simulate at least 1 data set per row")
    print(f"{args.shape} scores, {args.datasets} data sets per row, 95% intervals")
    print("cases (pos + neg)  true AUC  separated  DeLong, point at 1  DeLong, bound  tfmed   tfmed width")
    worst = 1.0
    for i, ((n_pos, n_neg), auc) in enumerate(ROWS):
        separated, point, delong, tfmed, width = coverage(args.shape, n_pos, n_neg, auc, args.datasets, seed=i)
        worst = min(worst, tfmed)
        print(f"{n_pos:>5} + {n_neg:<10}  {auc:>8}  {separated:>9.0%}  {point:>18.1%}  {delong:>13.1%}  "
              f"{tfmed:>5.1%}  {width:>11.3f}")
    verdict = "met" if worst >= 0.93 else "NOT met"
    print(f"tfmed's lowest coverage {worst:.1%}" + (f"; goal >= 93% in every row: {verdict}"
                                                     if args.shape == "binormal" else " (no goal for this shape)"))
    return 1 if args.shape == "binormal" and worst < 0.93 else 0


if __name__ == "__main__":
    sys.exit(main())
