"""Aggregate statistics for the pretraining study (benchmarks/study_pretraining.py), in the spirit of rliable
(Agarwal et al., "Deep RL at the Edge of the Statistical Precipice", NeurIPS 2021), written from the definitions.

Scores come as one array of runs per task (``{task: [score of run 1, run 2, ...]}``); tasks may have different
run counts when a study is unfinished.

- ``iqm``: interquartile mean of all runs × tasks pooled: sort, drop ``floor(n/4)`` values at each end, average the
  rest (equals ``scipy.stats.trim_mean(x, 0.25)``).
- ``stratified_bootstrap_ci``: percentile CI of an aggregate; each resample draws runs with replacement *within*
  each task (the task set is fixed, only runs are random), then recomputes the aggregate on the pooled resample.
- ``probability_of_improvement``: P(X > Y) per task over all (x run, y run) pairs, ties counted 1/2 (the
  Mann-Whitney U statistic divided by n·m), averaged over tasks; its CI resamples the runs of X and of Y
  independently within each task.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np

Scores = Mapping[str, Sequence[float] | np.ndarray]


def iqm(x: Sequence[float] | np.ndarray) -> float:
    """Interquartile mean: the mean of the middle half after dropping floor(n/4) values at each end."""
    x = np.sort(np.asarray(x, np.float64).ravel())
    if x.size == 0:
        return float("nan")
    cut = x.size // 4
    return float(x[cut : x.size - cut].mean())


def pooled(scores: Scores) -> np.ndarray:
    """All runs of all tasks as one flat array."""
    parts = [np.asarray(v, np.float64).ravel() for v in scores.values()]
    return np.concatenate(parts) if parts else np.zeros(0)


def aggregate_iqm(scores: Scores) -> float:
    return iqm(pooled(scores))


def aggregate_mean(scores: Scores) -> float:
    x = pooled(scores)
    return float(x.mean()) if x.size else float("nan")


def _resample(scores: Scores, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """One stratified resample: within each task, as many runs as it has, drawn with replacement."""
    out = {}
    for task, v in scores.items():
        v = np.asarray(v, np.float64).ravel()
        out[task] = v[rng.integers(0, v.size, v.size)] if v.size else v
    return out


def stratified_bootstrap_ci(scores: Scores, statistic: Callable[[Scores], float] = aggregate_iqm,
                            n_boot: int = 2000, level: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """Percentile CI of ``statistic`` under stratified (per-task) resampling of runs."""
    scores = {k: v for k, v in scores.items() if len(v)}
    if not scores:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    values = np.array([statistic(_resample(scores, rng)) for _ in range(n_boot)])
    alpha = (1.0 - level) / 2.0
    lo, hi = np.quantile(values, [alpha, 1.0 - alpha])
    return float(lo), float(hi)


def pairwise_improvement(x: Sequence[float] | np.ndarray, y: Sequence[float] | np.ndarray) -> float:
    """P(X > Y) + P(X = Y)/2 over all pairs of one run of x and one run of y (U / (n m))."""
    x = np.asarray(x, np.float64).ravel()
    y = np.asarray(y, np.float64).ravel()
    if x.size == 0 or y.size == 0:
        return float("nan")
    diff = x[:, None] - y[None, :]  # (n, m)
    return float(((diff > 0).sum() + 0.5 * (diff == 0).sum()) / diff.size)


def probability_of_improvement(x: Scores, y: Scores) -> float:
    """Average over the tasks both have of the per-task P(X > Y), ties 1/2."""
    tasks = [t for t in x if t in y and len(x[t]) and len(y[t])]
    if not tasks:
        return float("nan")
    return float(np.mean([pairwise_improvement(x[t], y[t]) for t in tasks]))


def probability_of_improvement_ci(x: Scores, y: Scores, n_boot: int = 2000, level: float = 0.95,
                                  seed: int = 0) -> tuple[float, float]:
    """Percentile CI of ``probability_of_improvement``: x's and y's runs resampled independently per task."""
    tasks = [t for t in x if t in y and len(x[t]) and len(y[t])]
    if not tasks:
        return float("nan"), float("nan")
    x = {t: x[t] for t in tasks}
    y = {t: y[t] for t in tasks}
    rng = np.random.default_rng(seed)
    values = np.array([probability_of_improvement(_resample(x, rng), _resample(y, rng)) for _ in range(n_boot)])
    alpha = (1.0 - level) / 2.0
    lo, hi = np.quantile(values, [alpha, 1.0 - alpha])
    return float(lo), float(hi)
