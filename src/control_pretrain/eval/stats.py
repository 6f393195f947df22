"""The one statistics module: per-run summaries of evaluation returns, rliable-style aggregates across runs, and
the reference target returns of RTG evaluation.

Per run (``summarize``, the return fields of ``eval_results.json``, DESIGN.md): the reference reported the mean
return (``val/interactive_reward``) and ``test/std`` over 50 episodes (smart.md §3.5); following rliable and CORL we
add the interquartile mean and a bootstrap 95% CI of the mean over episodes.

Across runs (the pretraining study, studies/pretraining/report.py), after Agarwal et al., "Deep RL at the Edge of
the Statistical Precipice" (NeurIPS 2021), written from the definitions. Scores come as one array of runs per task
(``{task: [score of run 1, run 2, ...]}``); tasks may have different run counts when a study is unfinished.

- ``iqm`` / ``aggregate_iqm``: interquartile mean of all runs x tasks pooled (equals
  ``scipy.stats.trim_mean(x, 0.25)``: sort, drop ``floor(n / 4)`` values at each end, average the rest).
- ``stratified_bootstrap_ci``: percentile CI of an aggregate; each resample draws runs with replacement *within*
  each task (the task set is fixed, only runs are random), then recomputes the aggregate on the pooled resample.
  ``bootstrap_ci`` (over episodes) is the same with one stratum.
- ``probability_of_improvement``: P(X > Y) per task over all (x run, y run) pairs, ties counted 1/2 (the
  Mann-Whitney U statistic divided by n·m), averaged over tasks; its CI resamples the runs of X and of Y
  independently within each task.

Why not ``scipy.stats.bootstrap`` or rliable: the resampling loop below (one ``rng.integers`` draw per task per
resample) is the one that produced the committed study summary (studies/pretraining/results/cpu/summary.json);
``scipy.stats.bootstrap`` draws in another order and would move every committed CI in its last digits. rliable
1.2 (no jax or tensorflow) would add arch (and with it statsmodels), pandas, seaborn and absl-py for the three
functions used here (docs/results.md).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np

Scores = Mapping[str, Sequence[float] | np.ndarray]

# get_exp_return_dmc in microsoft/smart:src/models/utils.py (smart.md §1.8), keyed "<domain>_<task>".
TARGET_RETURNS: dict[str, float] = {
    "cheetah_run": 850.0,
    "walker_stand": 980.0,
    "walker_walk": 950.0,
    "walker_run": 700.0,
    "hopper_stand": 900.0,
    "hopper_hop": 200.0,
    "cartpole_swingup": 875.0,
    "cartpole_balance": 1000.0,
    "pendulum_swingup": 1000.0,
    "finger_spin": 800.0,
    "finger_turn_easy": 1000.0,
    "finger_turn_hard": 1000.0,
}


def target_return_for(domain: str, task: str, override: float | None = None) -> float:
    """The first return-to-go of RTG evaluation: ``override`` if given, else the reference table."""
    if override is not None:
        return float(override)
    key = f"{domain}_{task}"
    if key not in TARGET_RETURNS:
        raise ValueError(
            f"no reference target return for {domain}-{task} (the SMART table, smart.md §1.8, covers "
            f"{', '.join(sorted(TARGET_RETURNS))}). Pass one with --target_return <value>."
        )
    return TARGET_RETURNS[key]


# ---- aggregates -----------------------------------------------------------------------------------------------
def iqm(x: Sequence[float] | np.ndarray) -> float:
    """Interquartile mean, ``scipy.stats.trim_mean(x, 0.25)`` as rliable computes it (tests/test_stats.py checks
    the two agree); NaN for no values. Sorted and sliced here rather than calling trim_mean: trim_mean partitions
    instead of sorting, so it sums in another order and differs in the last bit, which would change 5 numbers of
    the committed study summary.json."""
    x = np.sort(np.asarray(x, np.float64).ravel())
    if x.size == 0:
        return float("nan")
    cut = x.size // 4  # floor(n / 4) values dropped at each end
    return float(x[cut : x.size - cut].mean())


def pooled(scores: Scores) -> np.ndarray:
    """All runs of all tasks as one flat array."""
    parts = [np.asarray(v, np.float64).ravel() for v in scores.values()]
    return np.concatenate(parts) if parts else np.zeros(0)


def aggregate_iqm(scores: Scores) -> float:
    """IQM of all runs of all tasks pooled."""
    return iqm(pooled(scores))


def aggregate_mean(scores: Scores) -> float:
    """Mean of all runs of all tasks pooled; NaN for no runs."""
    x = pooled(scores)
    return float(x.mean()) if x.size else float("nan")


# ---- bootstrap ------------------------------------------------------------------------------------------------
def stratified_resample(scores: Scores, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """One stratified resample: within each task, as many runs as it has, drawn with replacement."""
    out = {}
    for task, v in scores.items():
        v = np.asarray(v, np.float64).ravel()
        out[task] = v[rng.integers(0, v.size, v.size)] if v.size else v
    return out


def _percentile_ci(values: np.ndarray, level: float) -> tuple[float, float]:
    alpha = (1.0 - level) / 2.0
    lo, hi = np.quantile(values, [alpha, 1.0 - alpha])
    return float(lo), float(hi)


def stratified_bootstrap_ci(scores: Scores, statistic: Callable[[Scores], float] = aggregate_iqm,
                            n_boot: int = 2000, level: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """Percentile CI of ``statistic`` under stratified (per-task) resampling of runs; NaNs for no runs."""
    scores = {k: v for k, v in scores.items() if len(v)}
    if not scores:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    values = np.array([statistic(stratified_resample(scores, rng)) for _ in range(n_boot)])  # (n_boot,)
    return _percentile_ci(values, level)


def bootstrap_ci(x: Sequence[float] | np.ndarray, seed: int = 0, n_boot: int = 10_000,
                 level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap CI of the mean over episodes, ``n_boot`` seeded resamples: the one-stratum case of
    ``stratified_bootstrap_ci(..., aggregate_mean)``, draw for draw (numpy's ``integers`` gives the same indices in
    one ``(n_boot, n)`` call as in ``n_boot`` calls of ``n``; tests/test_stats.py checks it), vectorised because
    every evaluation report calls it with 10k resamples."""
    x = np.asarray(x, np.float64).ravel()
    if x.size == 0:
        return float("nan"), float("nan")
    idx = np.random.default_rng(seed).integers(0, x.size, size=(n_boot, x.size))  # (n_boot, n)
    return _percentile_ci(x[idx].mean(axis=1), level)  # means: (n_boot,)


# ---- performance profiles -------------------------------------------------------------------------------------
def performance_profile(scores: Scores, taus: Sequence[float] | np.ndarray) -> np.ndarray:
    """The run-score distribution of rliable (Agarwal et al. 2021, Fig. 6): for each threshold tau, the fraction
    of runs scoring above tau, averaged over tasks so that every task weighs the same; (len(taus),)."""
    taus = np.asarray(taus, np.float64)
    per_task = [(np.asarray(v, np.float64).ravel()[:, None] > taus[None, :]).mean(0) for v in scores.values() if len(v)]
    return np.mean(per_task, 0) if per_task else np.full(taus.shape, np.nan)


def performance_profile_ci(scores: Scores, taus: Sequence[float] | np.ndarray, n_boot: int = 2000,
                           level: float = 0.95, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Pointwise percentile CI (lo, hi) of ``performance_profile`` under stratified resampling of runs."""
    scores = {k: v for k, v in scores.items() if len(v)}
    rng = np.random.default_rng(seed)
    values = np.stack([performance_profile(stratified_resample(scores, rng), taus) for _ in range(n_boot)])
    alpha = (1.0 - level) / 2.0
    lo, hi = np.quantile(values, [alpha, 1.0 - alpha], axis=0)  # each (len(taus),)
    return lo, hi


# ---- probability of improvement -------------------------------------------------------------------------------
def pairwise_improvement(x: Sequence[float] | np.ndarray, y: Sequence[float] | np.ndarray) -> float:
    """P(X > Y) + P(X = Y)/2 over all pairs of one run of x and one run of y (U / (n m)); NaN if one is empty."""
    x = np.asarray(x, np.float64).ravel()
    y = np.asarray(y, np.float64).ravel()
    if x.size == 0 or y.size == 0:
        return float("nan")
    diff = x[:, None] - y[None, :]  # (n, m)
    return float(((diff > 0).sum() + 0.5 * (diff == 0).sum()) / diff.size)


def _shared_tasks(x: Scores, y: Scores) -> list[str]:
    return [t for t in x if t in y and len(x[t]) and len(y[t])]


def probability_of_improvement(x: Scores, y: Scores) -> float:
    """Average over the tasks both have of the per-task P(X > Y), ties 1/2."""
    tasks = _shared_tasks(x, y)
    if not tasks:
        return float("nan")
    return float(np.mean([pairwise_improvement(x[t], y[t]) for t in tasks]))


def probability_of_improvement_ci(x: Scores, y: Scores, n_boot: int = 2000, level: float = 0.95,
                                  seed: int = 0) -> tuple[float, float]:
    """Percentile CI of ``probability_of_improvement``: x's and y's runs resampled independently per task."""
    tasks = _shared_tasks(x, y)
    if not tasks:
        return float("nan"), float("nan")
    x = {t: x[t] for t in tasks}
    y = {t: y[t] for t in tasks}
    rng = np.random.default_rng(seed)
    values = np.array([probability_of_improvement(stratified_resample(x, rng), stratified_resample(y, rng))
                       for _ in range(n_boot)])  # (n_boot,)
    return _percentile_ci(values, level)


# ---- per-run summary ------------------------------------------------------------------------------------------
def summarize(returns: Sequence[float] | np.ndarray, seed: int = 0, n_boot: int = 10_000) -> dict:
    """The return fields of eval_results.json: num_episodes, returns, mean, std (population, like ``np.std``),
    iqm and ci95 = [lo, hi] (bootstrap 95% CI of the mean)."""
    x = np.asarray(returns, np.float64)
    if x.ndim != 1 or len(x) == 0:
        raise ValueError(f"summarize needs a non-empty 1-D array of returns, got shape {x.shape}")
    return {
        "num_episodes": len(x),
        "returns": [float(r) for r in x],
        "mean": float(x.mean()),
        "std": float(x.std()),
        "iqm": iqm(x),
        "ci95": list(bootstrap_ci(x, seed, n_boot)),
    }
