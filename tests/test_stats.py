"""control_pretrain/eval/stats.py (the one statistics module): known answers worked by hand, and brute-force
versions of the same definitions on small random inputs."""

import itertools

import numpy as np
import pytest
from scipy import stats as sps

from control_pretrain.eval import stats as ss


def _random_scores(rng, tasks=4, runs=5, ties=False):
    if ties:
        return {f"t{i}": rng.integers(0, 4, runs).astype(float) for i in range(tasks)}
    return {f"t{i}": rng.normal(i, 1.0, runs) for i in range(tasks)}


@pytest.mark.parametrize("n", [4, 8, 12, 20, 40])
def test_iqm_matches_trim_mean(n):
    rng = np.random.default_rng(n)
    x = rng.normal(size=n)
    assert ss.iqm(x) == pytest.approx(sps.trim_mean(x, 0.25))


@pytest.mark.parametrize("n", [1, 2, 3, 5, 7, 9, 13])
def test_iqm_matches_definition_any_size(n):
    x = np.random.default_rng(n).normal(size=n)
    s = sorted(x)
    k = n // 4
    assert ss.iqm(x) == pytest.approx(np.mean(s[k : n - k]))
    assert ss.iqm(x) == pytest.approx(sps.trim_mean(x, 0.25))


def test_aggregate_iqm_pools_runs_and_tasks():
    rng = np.random.default_rng(0)
    scores = _random_scores(rng, tasks=3, runs=4)
    flat = np.concatenate(list(scores.values()))
    assert ss.aggregate_iqm(scores) == pytest.approx(sps.trim_mean(flat, 0.25))


@pytest.mark.parametrize("ties", [False, True])
def test_probability_of_improvement_matches_double_loop(ties):
    rng = np.random.default_rng(1)
    x = _random_scores(rng, tasks=3, runs=5, ties=ties)
    y = _random_scores(rng, tasks=3, runs=4, ties=ties)
    per_task = []
    for t in x:
        wins = 0.0
        for a, b in itertools.product(x[t], y[t]):
            wins += 1.0 if a > b else 0.5 if a == b else 0.0
        per_task.append(wins / (len(x[t]) * len(y[t])))
    assert ss.probability_of_improvement(x, y) == pytest.approx(np.mean(per_task))


def test_probability_of_improvement_matches_mann_whitney():
    rng = np.random.default_rng(2)
    x, y = rng.integers(0, 5, 7).astype(float), rng.integers(0, 5, 6).astype(float)
    u = sps.mannwhitneyu(x, y, alternative="two-sided").statistic
    assert ss.pairwise_improvement(x, y) == pytest.approx(u / (len(x) * len(y)))


def test_probability_of_improvement_symmetry():
    rng = np.random.default_rng(3)
    x, y = _random_scores(rng, ties=True), _random_scores(rng, ties=True)
    assert ss.probability_of_improvement(x, y) + ss.probability_of_improvement(y, x) == pytest.approx(1.0)


def test_stratified_bootstrap_keeps_tasks_and_sizes():
    rng = np.random.default_rng(4)
    scores = {"a": np.arange(3.0), "b": 100 + np.arange(5.0)}
    for _ in range(50):
        r = ss.stratified_resample(scores, rng)
        assert set(r["a"]) <= set(scores["a"]) and len(r["a"]) == 3
        assert set(r["b"]) <= set(scores["b"]) and len(r["b"]) == 5


def test_stratified_bootstrap_matches_brute_force_distribution():
    """Mean aggregate: the bootstrap CI approaches the exact distribution of all per-task resamples."""
    scores = {"a": np.array([0.0, 1.0]), "b": np.array([10.0, 14.0])}
    exact = []
    for ra in itertools.product(scores["a"], repeat=2):
        for rb in itertools.product(scores["b"], repeat=2):
            exact.append(np.mean(ra + rb))
    lo, hi = ss.stratified_bootstrap_ci(scores, ss.aggregate_mean, n_boot=4000, seed=0)
    assert lo == pytest.approx(np.quantile(exact, 0.025), abs=0.3)
    assert hi == pytest.approx(np.quantile(exact, 0.975), abs=0.3)


def test_ci_contains_estimate_and_narrows_with_more_runs():
    rng = np.random.default_rng(5)
    small = {f"t{i}": rng.normal(i, 1.0, 5) for i in range(4)}
    big = {f"t{i}": rng.normal(i, 1.0, 80) for i in range(4)}
    widths = []
    for scores in (small, big):
        lo, hi = ss.stratified_bootstrap_ci(scores, ss.aggregate_iqm, n_boot=2000, seed=0)
        assert lo <= ss.aggregate_iqm(scores) <= hi
        widths.append(hi - lo)
    assert widths[1] < widths[0] / 2


def test_poi_ci_contains_estimate_and_narrows():
    rng = np.random.default_rng(6)
    widths = []
    for runs in (5, 80):
        x = {f"t{i}": rng.normal(0.3, 1.0, runs) for i in range(3)}
        y = {f"t{i}": rng.normal(0.0, 1.0, runs) for i in range(3)}
        lo, hi = ss.probability_of_improvement_ci(x, y, n_boot=2000, seed=0)
        assert lo <= ss.probability_of_improvement(x, y) <= hi
        widths.append(hi - lo)
    assert widths[1] < widths[0] / 2


def test_bootstrap_is_seeded():
    scores = _random_scores(np.random.default_rng(7))
    assert ss.stratified_bootstrap_ci(scores, seed=3) == ss.stratified_bootstrap_ci(scores, seed=3)


def test_unequal_and_missing_tasks():
    x = {"a": [1.0, 2.0], "b": [3.0]}
    y = {"a": [0.0], "c": [5.0]}
    assert ss.probability_of_improvement(x, y) == 1.0  # only task a is shared
    assert np.isnan(ss.iqm([]))


# ---- known answers --------------------------------------------------------------------------------------------
def test_iqm_by_hand():
    # n=8: drop 2 at each end of sorted [1, 2, 3, 4, 5, 6, 7, 100] -> mean of 3, 4, 5, 6
    assert ss.iqm([7.0, 100.0, 1.0, 4.0, 2.0, 6.0, 5.0, 3.0]) == 4.5
    # pooled over tasks: [0, 1, 2, 3] + [10, 11, 12, 13] -> middle half 2, 3, 10, 11
    assert ss.aggregate_iqm({"a": [0.0, 1.0, 2.0, 3.0], "b": [10.0, 11.0, 12.0, 13.0]}) == 6.5


def test_ci_covers_true_mean_on_large_sample():
    rng = np.random.default_rng(8)
    x = rng.normal(3.0, 1.0, 2000)
    lo, hi = ss.bootstrap_ci(x, seed=0, n_boot=2000)
    assert lo < 3.0 < hi and hi - lo < 0.2  # half-width ~ 1.96 / sqrt(2000) = 0.044
    scores = {f"t{i}": rng.normal(3.0, 1.0, 500) for i in range(4)}
    lo, hi = ss.stratified_bootstrap_ci(scores, ss.aggregate_mean, n_boot=500, seed=0)
    assert lo < 3.0 < hi and hi - lo < 0.2


def test_probability_of_improvement_known_cases():
    better = {"a": [5.0, 6.0], "b": [10.0]}
    worse = {"a": [1.0, 2.0, 3.0], "b": [0.0, 9.0]}
    assert ss.probability_of_improvement(better, worse) == 1.0  # every pair of every task is a win
    assert ss.probability_of_improvement(worse, better) == 0.0
    same = {"a": [1.0, 2.0, 3.0]}
    assert ss.probability_of_improvement(same, same) == 0.5  # 3 wins + 3 ties / 2 of 9 pairs
    assert ss.probability_of_improvement({"a": [4.0]}, {"a": [4.0]}) == 0.5  # a tie counts 1/2
    assert ss.probability_of_improvement_ci(better, worse, n_boot=100) == (1.0, 1.0)


def test_stratified_resample_keeps_task_counts_and_membership():
    scores = {"a": np.arange(3.0), "b": 100 + np.arange(5.0), "c": np.array([7.0])}
    rng = np.random.default_rng(9)
    seen_b = set()
    for _ in range(200):
        r = ss.stratified_resample(scores, rng)
        assert {k: len(v) for k, v in r.items()} == {"a": 3, "b": 5, "c": 1}
        assert set(r["a"]) <= set(scores["a"]) and set(r["b"]) <= set(scores["b"]) and list(r["c"]) == [7.0]
        seen_b |= set(r["b"])
    assert seen_b == set(scores["b"])  # with replacement, yet every run gets drawn


def test_bootstrap_ci_is_the_one_stratum_stratified_bootstrap():
    x = np.random.default_rng(10).normal(size=37)
    for seed in (0, 4):
        assert ss.bootstrap_ci(x, seed=seed, n_boot=500) == ss.stratified_bootstrap_ci(
            {"episodes": x}, ss.aggregate_mean, n_boot=500, seed=seed)


def test_summarize_fields():
    s = ss.summarize([1.0, 2.0, 3.0, 10.0], seed=1, n_boot=200)
    assert s["num_episodes"] == 4 and s["returns"] == [1.0, 2.0, 3.0, 10.0]
    assert s["mean"] == 4.0 and s["std"] == pytest.approx(np.std([1.0, 2.0, 3.0, 10.0])) and s["iqm"] == 2.5
    assert s["ci95"][0] <= s["mean"] <= s["ci95"][1]
    with pytest.raises(ValueError, match="non-empty 1-D"):
        ss.summarize([])


def test_target_return_for():
    assert ss.target_return_for("walker", "walk") == ss.TARGET_RETURNS["walker_walk"] == 950.0
    assert ss.target_return_for("reacher", "easy", override=1000) == 1000.0
    with pytest.raises(ValueError, match="--target_return"):
        ss.target_return_for("reacher", "easy")


def test_performance_profile_by_hand_weighs_tasks_equally():
    # task a: 4 runs, 2 above 0.5; task b: 1 run above 0.5 -> (0.5 + 1) / 2, not 3 / 5 of all runs pooled
    scores = {"a": [0.1, 0.2, 0.6, 0.9], "b": [0.7]}
    prof = ss.performance_profile(scores, [0.0, 0.5, 0.8, 1.0])
    np.testing.assert_allclose(prof, [1.0, 0.75, 0.125, 0.0])
    lo, hi = ss.performance_profile_ci(scores, [0.0, 0.5, 0.8, 1.0], n_boot=500)
    assert np.all(lo <= prof + 1e-12) and np.all(prof <= hi + 1e-12)
    assert lo[1] < 0.75 < hi[1]  # task a's 2-of-4 is uncertain; the bounds are not collapsed
