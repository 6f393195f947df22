"""Statistics of evaluation returns and the reference target returns for RTG evaluation.

The reference reported the mean return (``val/interactive_reward``) and ``test/std`` over 50 episodes
(smart.md §3.5). Following rliable and CORL we also report the interquartile mean and a bootstrap 95% confidence
interval of the mean over episodes; ``summarize`` gives the return fields of ``eval_results.json`` (DESIGN.md).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

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


def iqm(x: Sequence[float] | np.ndarray) -> float:
    """Interquartile mean as rliable computes it (``scipy.stats.trim_mean(x, 0.25)``): sort, drop
    ``floor(n / 4)`` values at each end, average the rest."""
    x = np.sort(np.asarray(x, np.float64))
    cut = int(0.25 * len(x))
    return float(x[cut : len(x) - cut].mean())


def bootstrap_ci(x: Sequence[float] | np.ndarray, seed: int = 0, n_boot: int = 10_000,
                 level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap CI of the mean over episodes: ``n_boot`` resamples with replacement, seeded."""
    x = np.asarray(x, np.float64)
    idx = np.random.default_rng(seed).integers(0, len(x), size=(n_boot, len(x)))  # (n_boot, n)
    means = x[idx].mean(axis=1)  # (n_boot,)
    lo, hi = np.percentile(means, [50 * (1 - level), 50 * (1 + level)])
    return float(lo), float(hi)


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
