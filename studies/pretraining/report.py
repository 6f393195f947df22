"""Tables and plots of the pretraining study from its committed cell JSONs (studies/pretraining/run.py).

Only (task, seed) pairs for which every init (scratch and both pretrained) finished enter a comparison, so an
unfinished study never compares different subsets. A run's score is its mean test return / 10 (preset
``score: return``) or its mean test return / the demonstrator's mean return x 100 (``score: demonstrator``,
Premier-TACO's expert-normalised score; the demonstrator's return is that of all its training demonstrations).
"""

from __future__ import annotations

import glob
import importlib.util
import json
import logging
import os
import sys
from collections import defaultdict

import numpy as np

from control_pretrain.eval import stats as ss

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
log = logging.getLogger("study")
GROUP_SETS = {"unseen_task": ("unseen_task",), "unseen_domain": ("unseen_domain",),
              "unseen (both)": ("unseen_task", "unseen_domain"), "seen": ("seen",)}
COLORS = {"scratch": "#7f7f7f", "pretrained-random": "#1f77b4", "pretrained-sac": "#d62728"}
PALETTE = ("#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf")  # inits beyond the named ones


def color(init: str, inits: tuple[str, ...]) -> str:
    others = [i for i in inits if i not in COLORS]
    return COLORS.get(init) or PALETTE[others.index(init) % len(PALETTE)]
N_BOOT = 5000  # bootstrap resamples of every CI in the committed summary
RETURN_PER_SCORE = 10.0  # normalised score = return / 10: dm_control returns lie in [0, 1000]


def returns_per_score(preset, data: dict, tasks: list[str]) -> dict[str, float]:
    """Per task of ``tasks``, the return worth one score point under the preset's ``score`` rule (a missing
    demonstrator return is an error: the score would be meaningless)."""
    if preset.score == "return":
        return dict.fromkeys(tasks, RETURN_PER_SCORE)
    missing = [t for t in tasks if f"demos_train/{t}" not in data]
    if missing:
        raise ValueError(f"score: demonstrator needs the demonstrations' returns of {', '.join(missing)} "
                         "(run --stage data first, or keep the committed summary.json)")
    return {t: data[f"demos_train/{t}"]["return_mean"] / 100.0 for t in tasks}


def load_cells(results_dir: str) -> list[dict]:
    cells = []
    for path in sorted(glob.glob(os.path.join(results_dir, "cells", "*.json"))):
        with open(path) as f:
            cells.append(json.load(f))
    return cells


def matched_scores(cells: list[dict], method: str, episodes: int, groups: tuple[str, ...], scale: dict[str, float],
                   inits: tuple[str, ...], which: str = "last") -> dict[str, dict[str, list[float]]]:
    """{init: {task: [score per seed]}} over the (task, seed) pairs that every init finished."""
    by_key: dict[tuple[str, int], dict[str, float]] = defaultdict(dict)
    for c in cells:
        cell = c["cell"]
        if cell["method"] != method or cell["episodes"] != episodes or cell["group"] not in groups:
            continue
        entry = c[which] if c.get(which) else c["last"]
        by_key[(cell["task"], cell["seed"])][cell["init"]] = entry["mean"] / scale[cell["task"]]
    out: dict[str, dict[str, list[float]]] = {i: defaultdict(list) for i in inits}
    for (task, _seed), per_init in sorted(by_key.items()):
        if all(i in per_init for i in inits):
            for i in inits:
                out[i][task].append(per_init[i])
    return {i: dict(v) for i, v in out.items()}


def summarize_block(cells: list[dict], method: str, episodes: int, scale: dict[str, float],
                    inits: tuple[str, ...], n_boot: int = N_BOOT) -> list[dict]:
    rows = []
    for label, groups in GROUP_SETS.items():
        for which in ("last", "best"):
            scores = matched_scores(cells, method, episodes, groups, scale, inits, which)
            if not scores["scratch"]:
                continue
            for k, init in enumerate(inits):
                s = scores[init]
                row = {"method": method, "episodes": episodes, "group": label, "checkpoint": which, "init": init,
                       "tasks": len(s), "runs": int(sum(len(v) for v in s.values())),
                       "iqm": ss.aggregate_iqm(s), "iqm_ci": ss.stratified_bootstrap_ci(s, n_boot=n_boot, seed=k),
                       "mean": ss.aggregate_mean(s),
                       "mean_ci": ss.stratified_bootstrap_ci(s, ss.aggregate_mean, n_boot=n_boot, seed=k)}
                if init != "scratch":
                    row["poi"] = ss.probability_of_improvement(s, scores["scratch"])
                    row["poi_ci"] = ss.probability_of_improvement_ci(s, scores["scratch"], n_boot=n_boot, seed=k)
                rows.append(row)
    return rows


def per_task_rows(cells: list[dict], method: str, episodes: int, scale: dict[str, float], inits: tuple[str, ...]
                  ) -> list[dict]:
    rows = []
    groups = tuple(g for gs in GROUP_SETS.values() for g in gs)
    scores = matched_scores(cells, method, episodes, groups, scale, inits)
    best = matched_scores(cells, method, episodes, groups, scale, inits, "best")
    demo = {}
    for c in cells:
        if c["cell"]["method"] == method and c["cell"]["episodes"] == episodes and c.get("data"):
            demo.setdefault(c["cell"]["task"], []).append(c["data"]["train_return_mean"])
    for task in sorted(scores["scratch"]):
        row = {"task": task, "seeds": len(scores["scratch"][task]),
               "data_return": float(np.mean(demo.get(task, [np.nan])))}
        for init in inits:
            v = np.array(scores[init][task]) * scale[task]
            row[init] = (float(v.mean()), float(v.std()))
            row[init + "/best"] = float(np.mean(best[init][task]) * scale[task])
        rows.append(row)
    return rows


def blocks(cells: list[dict]) -> list[tuple[str, int]]:
    """(method, episodes) blocks present, fewer episodes first, BC before RTG."""
    found = {(c["cell"]["method"], c["cell"]["episodes"]) for c in cells}
    return sorted(found, key=lambda b: (b[1], ("bc", "rtg").index(b[0])))


def fmt_ci(x: float, ci) -> str:
    return f"{x:.1f} [{ci[0]:.1f}, {ci[1]:.1f}]"


def markdown(summary: dict, inits: tuple[str, ...]) -> str:
    lines = []
    for block in summary["blocks"]:
        method, episodes = block["method"], block["episodes"]
        lines += [f"#### {method.upper()}, {episodes} episodes", "",
                  ("| group | init | tasks × runs | IQM last [95% CI] | mean last | IQM best-ckpt [95% CI] | "
                   "P(init > scratch) last [95% CI] |"), "|---|---|---|---|---|---|---|"]
        rows = block["rows"]
        for r in (r for r in rows if r["checkpoint"] == "last"):
            b = next(x for x in rows if x["checkpoint"] == "best" and x["group"] == r["group"]
                     and x["init"] == r["init"])
            poi = "-"
            if "poi" in r:
                poi = f"{r['poi']:.2f} [{r['poi_ci'][0]:.2f}, {r['poi_ci'][1]:.2f}]"
            lines.append(f"| {r['group']} | {r['init']} | {r['tasks']} × {r['runs'] // max(r['tasks'], 1)} | "
                         f"{fmt_ci(r['iqm'], r['iqm_ci'])} | {r['mean']:.1f} | {fmt_ci(b['iqm'], b['iqm_ci'])} | "
                         f"{poi} |")
        lines += ["", (f"Per task (raw return, mean ± std over seeds, last checkpoint; best checkpoint in brackets; "
                       f"data = mean return of the {episodes} training episodes):"), "",
                  f"| task | seeds | data | {' | '.join(inits)} |", "|---|---|---|" + "---|" * len(inits)]
        for r in block["per_task"]:
            cols = " | ".join(f"{r[i][0]:.0f} ± {r[i][1]:.0f} ({r[i + '/best']:.0f})" for i in inits)
            lines.append(f"| {r['task']} | {r['seeds']} | {r['data_return']:.0f} | {cols} |")
        lines.append("")
    return "\n".join(lines)


SCORE_LABEL = {"return": "return / 10", "demonstrator": "% of the demonstrator's return"}


def plot_iqm(summary: dict, inits: tuple[str, ...], path: str, score_label: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    bl = summary["blocks"]
    fig, axes = plt.subplots(1, len(bl), figsize=(4.2 * len(bl), 3.6), squeeze=False, sharey=True)
    for ax, block in zip(axes[0], bl):
        rows = [r for r in block["rows"] if r["checkpoint"] == "last"]
        groups = [g for g in GROUP_SETS if any(r["group"] == g for r in rows)]
        for k, init in enumerate(inits):
            xs, ys, lo, hi = [], [], [], []
            for j, g in enumerate(groups):
                r = next(r for r in rows if r["group"] == g and r["init"] == init)
                xs.append(j + (k - (len(inits) - 1) / 2) * 0.75 / len(inits))
                ys.append(r["iqm"])
                lo.append(r["iqm"] - r["iqm_ci"][0])
                hi.append(r["iqm_ci"][1] - r["iqm"])
            ax.errorbar(xs, ys, yerr=[lo, hi], fmt="o", capsize=4, color=color(init, inits), label=init)
        ax.set_xticks(range(len(groups)))
        ax.set_xticklabels([g.replace(" (both)", "\n(both)") for g in groups], fontsize=8)
        ax.set_title(f"{block['method'].upper()}, {block['episodes']} episodes", fontsize=10)
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].set_ylabel(f"IQM normalised score ({score_label})\n95% stratified bootstrap CI")
    axes[0][-1].legend(fontsize=8, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_curves(cells: list[dict], method: str, episodes: int, inits: tuple[str, ...], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves: dict[str, dict[str, list]] = defaultdict(lambda: defaultdict(list))
    for c in cells:
        cell = c["cell"]
        if cell["method"] == method and cell["episodes"] == episodes and "eval/return_mean" in c["curves"]:
            curves[cell["task"]][cell["init"]].append(c["curves"]["eval/return_mean"])
    tasks = sorted(curves)
    if not tasks:
        return
    cols = min(4, len(tasks))
    rows = (len(tasks) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 2.9 * rows), squeeze=False)
    for ax, task in zip(axes.ravel(), tasks):
        for init in inits:
            runs = curves[task].get(init, [])
            if not runs:
                continue
            steps = sorted({s for r in runs for s, _ in r})
            table = np.full((len(runs), len(steps)), np.nan)
            for i, r in enumerate(runs):
                for s, v in r:
                    table[i, steps.index(s)] = v
            mean = np.nanmean(table, 0)
            ax.plot(steps, mean, "-o", ms=3, color=color(init, inits), label=f"{init} ({len(runs)})")
            if len(runs) > 1:
                ax.fill_between(steps, np.nanmin(table, 0), np.nanmax(table, 0), color=color(init, inits),
                                alpha=0.12)
        ax.set_title(task, fontsize=9)
        ax.set_xlabel("finetuning step", fontsize=8)
        ax.grid(alpha=0.3)
    for ax in axes.ravel()[len(tasks):]:
        ax.axis("off")
    axes[0][0].set_ylabel("eval/return_mean\n(selection seeds)", fontsize=8)
    axes[0][0].legend(fontsize=7)
    fig.suptitle(f"{method.upper()}, {episodes} episodes: return during finetuning (mean over seeds, band = min-max)",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_pretrain(preset, results_dir: str, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs, labels = {}, {}
    for init in preset.inits:
        name = preset.pretrain_run(init)
        f = os.path.join(results_dir, f"pretrain_{name}.json")
        if os.path.exists(f) and name not in runs:
            with open(f) as fh:
                runs[name] = json.load(fh)["scalars"]
            labels[name] = init
    if not runs:
        return
    tags = ["forward_loss", "inverse_loss", "masked_hindsight_loss"]
    fig, axes = plt.subplots(1, 3, figsize=(11, 3.0))
    for ax, tag in zip(axes, tags):
        for name, sc in runs.items():
            c = color(labels[name], preset.init_names)
            if f"train/{tag}" in sc:
                s, v = zip(*sc[f"train/{tag}"])
                ax.plot(s, v, color=c, alpha=0.35, lw=0.8)
            if f"val/{tag}" in sc:
                s, v = zip(*sc[f"val/{tag}"])
                ax.plot(s, v, "-o", color=c, ms=3, label=f"{labels[name]} (val)")
        ax.set_title(tag, fontsize=9)
        ax.set_xlabel("pretraining step", fontsize=8)
        ax.set_yscale("log")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_profiles(cells: list[dict], scale: dict[str, float], inits: tuple[str, ...], path: str,
                  score_label: str, n_boot: int) -> None:
    """Performance profiles (rliable's run-score distributions) of every block, all tasks, last checkpoint: the
    fraction of runs above each normalised score, with pointwise 95% stratified bootstrap bands."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    bl = blocks(cells)
    groups = tuple(g for gs in GROUP_SETS.values() for g in gs)
    fig, axes = plt.subplots(1, len(bl), figsize=(4.2 * len(bl), 3.4), squeeze=False, sharey=True)
    for ax, (method, episodes) in zip(axes[0], bl):
        scores = matched_scores(cells, method, episodes, groups, scale, inits)
        top = max((max(v) for s in scores.values() for v in s.values() if v), default=100.0)
        taus = np.linspace(0.0, max(100.0, top), 101)
        for k, init in enumerate(inits):
            if not scores[init]:
                continue
            prof = ss.performance_profile(scores[init], taus)
            lo, hi = ss.performance_profile_ci(scores[init], taus, n_boot=min(n_boot, 2000), seed=k)
            ax.plot(taus, prof, color=color(init, inits), label=init)
            ax.fill_between(taus, lo, hi, color=color(init, inits), alpha=0.12)
        ax.set_title(f"{method.upper()}, {episodes} episodes (all tasks)", fontsize=10)
        ax.set_xlabel(f"normalised score τ ({score_label})", fontsize=8)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("fraction of runs with score > τ")
    axes[0][-1].legend(fontsize=8, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def pretrain_cost(preset, results_dir: str) -> list[dict]:
    """Per pretraining run: wall time (1 torch thread, so CPU hours = wall hours), samples and samples/s."""
    rows = []
    for name, (kind, *flags) in preset.pretrain_runs().items():
        f = os.path.join(results_dir, f"pretrain_{name}.json")
        if not os.path.exists(f):
            continue
        with open(f) as fh:
            rec = json.load(fh)
        steps = (preset.pretrain_epochs * preset.pretrain_batches_per_epoch  # what ran: limit_train_batches
                 or max((s for s, _ in rec["scalars"].get("train/loss", [])), default=0) + 1)  # else the last log
        rows.append({"run": name, "inits": [i for i in preset.inits if preset.pretrain_run(i) == name],
                     "data": kind, "optimizer_steps": steps, "samples": steps * preset.batch_size,
                     "wall_s": rec["wall_s"], "samples_per_s": steps * preset.batch_size / rec["wall_s"]})
    return rows


def cost_markdown(summary: dict) -> str:
    lines = ["#### Cost", "", "| pretraining run | inits | data | optimiser steps | samples/s | wall (min) |",
             "|---|---|---|---|---|---|"]
    for r in summary["pretrain_cost"]:
        lines.append(f"| {r['run']} | {', '.join(r['inits'])} | {r['data']} | {r['optimizer_steps']} | "
                     f"{r['samples_per_s']:.0f} | {r['wall_s'] / 60:.1f} |")
    lines += ["", "Finetuning, mean wall time per cell (s): " + ", ".join(
        f"{k} {v:.0f}" for k, v in summary["wall_s_per_init"].items()), ""]
    return "\n".join(lines)


def write_text(path: str, text: str) -> None:
    """Atomic: temp file + rename, so an interrupted report never leaves half a summary."""
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def write_report(preset, data: dict, results_dir: str | None = None, img_dir: str | None = None,
                 n_boot: int = N_BOOT) -> dict:
    """summary.json and summary.md of ``preset`` from its cell JSONs (under ``results_dir``, by default
    studies/pretraining/results/{preset}) and, where matplotlib is installed, the plots in ``img_dir`` (docs/img).
    ``n_boot`` other than ``N_BOOT`` gives other CIs than the committed summary (tests use fewer)."""
    results_dir = results_dir or os.path.join(HERE, "results", preset.name)
    cells = load_cells(results_dir)
    scale = returns_per_score(preset, data, sorted({c["cell"]["task"] for c in cells}))
    summary = {"preset": preset.name, "cells_done": len(cells), "data": data, "blocks": []}
    for method, episodes in blocks(cells):
        summary["blocks"].append({"method": method, "episodes": episodes,
                                  "rows": summarize_block(cells, method, episodes, scale, preset.init_names, n_boot),
                                  "per_task": per_task_rows(cells, method, episodes, scale, preset.init_names)})
    # sorted: a set's order changes from run to run (hash seeds), the summary's key order must not
    summary["wall_s_per_cell"] = {m: float(np.mean([c["wall_s"] for c in cells if c["cell"]["method"] == m]))
                                  for m in sorted({c["cell"]["method"] for c in cells})}
    summary["wall_s_per_init"] = {i: float(np.mean([c["wall_s"] for c in cells if c["cell"]["init"] == i]))
                                  for i in preset.init_names if any(c["cell"]["init"] == i for c in cells)}
    summary["pretrain_cost"] = pretrain_cost(preset, results_dir)
    text = markdown(summary, preset.init_names) + "\n" + cost_markdown(summary)
    os.makedirs(results_dir, exist_ok=True)
    write_text(os.path.join(results_dir, "summary.json"), json.dumps(summary, indent=1))
    write_text(os.path.join(results_dir, "summary.md"), text)
    if importlib.util.find_spec("matplotlib") is None:
        log.warning("matplotlib is not installed (pip install -e '.[bench]'): plots skipped, tables written")
    else:
        img = img_dir or os.path.join(ROOT, "docs", "img")
        os.makedirs(img, exist_ok=True)
        prefix = "study" if preset.name == "cpu" else f"study_{preset.name}"
        if summary["blocks"]:
            plot_iqm(summary, preset.init_names, os.path.join(img, f"{prefix}_iqm.png"), SCORE_LABEL[preset.score])
        for method, episodes in blocks(cells):
            plot_curves(cells, method, episodes, preset.init_names,
                        os.path.join(img, f"{prefix}_curves_{method}{episodes}.png"))
        plot_pretrain(preset, results_dir, os.path.join(img, f"{prefix}_pretrain_loss.png"))
        if cells:
            plot_profiles(cells, scale, preset.init_names, os.path.join(img, f"{prefix}_profiles.png"),
                          SCORE_LABEL[preset.score], n_boot)
    sys.stdout.write(text + "\n")  # the tables are the command's output
    return summary
