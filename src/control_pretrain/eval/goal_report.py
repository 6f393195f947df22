"""The zero-shot modes' report (``dmc_downstream.py --mode goal|multigoal|prompt``, MaskDP §B.6-B.7): pairs,
goal sequences or prompts drawn from every episode of the held-out replay (``--val_replay_id``), run in dm_control
from the recorded states by eval/goal_reaching.py, written to ``{output_dir}/eval_results.json`` (DESIGN.md:
the offline report's fields plus per-pair distances in observation and physics space and the budgets)."""

from __future__ import annotations

import logging
import os
from dataclasses import asdict, dataclass, field

import numpy as np
from lightning.pytorch import LightningDataModule, LightningModule, Trainer

from ..envs.dmc import make_env
from .goal_reaching import multi_goal_task, prompt_task, run_goal_task, single_goal_task, summarize_goal_results
from .report import write_json_atomically

log = logging.getLogger(__name__)

GOAL_MODES = ("goal", "multigoal", "prompt")
LOOPS = ("closed", "open")


@dataclass
class GoalEvalConfig:
    """How goals and prompts are drawn and scored (the same for every method, so their numbers compare)."""

    pairs: int = 300  # goal: start-goal pairs (the paper's 300; its code ran 100)
    horizon: list[int] = field(default_factory=lambda: [15, 20])  # goal: steps ahead, uniform in [lo, hi)
    extra_steps: int = 3  # goal: budget T + extra_steps for every method (the code gave MaskDP T, baselines T + 5)
    sequences: int = 100  # multigoal: goal sequences
    goal_times: list[int] = field(default_factory=lambda: [12, 24, 36, 48, 60])  # multigoal: steps after the start
    multigoal_extra_steps: int = 5  # multigoal: goal g is scored on (t_{g-1}, t_g + this]
    prompts: int = 100  # prompt: prompts
    prompt_len: int = 5  # prompt: recorded (state, action) steps shown before the start
    forecast: int = 40  # prompt: steps acted from the start, closed loop
    loops: list[str] = field(default_factory=lambda: ["closed", "open"])  # goal, multigoal: re-plan every step or
    # execute each plan up to the next goal
    history: int = 1  # goal, multigoal: steps of history shown (1: the current state alone, as MaskDP)
    seed: int = 0  # draws the pairs, sequences and prompts
    batch_size: int = 100  # rollouts side by side

    def __post_init__(self) -> None:
        bad = [loop for loop in self.loops if loop not in LOOPS]
        if bad or not self.loops:
            raise ValueError(f"goal.loops {list(self.loops)}: expected a non-empty list of {LOOPS}")
        if len(self.horizon) != 2 or not 1 <= self.horizon[0] < self.horizon[1]:
            raise ValueError(f"goal.horizon {list(self.horizon)}: expected [lo, hi) with 1 <= lo < hi")


def draw_task(mode: str, cfg: GoalEvalConfig, file, episodes: np.ndarray):
    if mode == "goal":
        return single_goal_task(file, episodes, cfg.pairs, tuple(cfg.horizon), cfg.extra_steps, cfg.seed)
    if mode == "multigoal":
        return multi_goal_task(file, episodes, cfg.sequences, tuple(cfg.goal_times), cfg.multigoal_extra_steps,
                               cfg.seed)
    return prompt_task(file, episodes, cfg.prompts, cfg.prompt_len, cfg.forecast, cfg.seed)


def run_goal_mode(mode: str, cfg: GoalEvalConfig, policy, file, env_kwargs: dict, domain: str, task: str) -> dict:
    """Every loop's summary (eval/goal_reaching.py ``summarize_goal_results``) of one mode for ``policy``, drawn
    from every episode of ``file``; the study runs its baselines through this too."""
    episodes = np.arange(file.index.num_episodes)
    drawn = draw_task(mode, cfg, file, episodes)
    loops = ["closed"] if mode == "prompt" else list(cfg.loops)
    out = {}
    for loop in loops:
        results = run_goal_task(policy, lambda seed: make_env(domain, task, seed=seed, **env_kwargs), drawn,
                                closed_loop=loop == "closed", batch_size=cfg.batch_size)
        out[loop] = summarize_goal_results(results, drawn)
        log.info("%s-%s %s (%s loop): %s", domain, task, mode, loop, headline(out[loop]))
    return {"loops": out, "episodes": sorted({int(e) for e in drawn.episodes}), "num": len(drawn.starts)}


def headline(summary: dict) -> str:
    keys = [k for k in ("obs_distance_mean", "physics_distance_mean", "reward_ratio_mean") if k in summary]
    return ", ".join(f"{k} {summary[k]:.3f}" for k in keys)


def goal_report(trainer: Trainer, module: LightningModule, datamodule: LightningDataModule, output_dir: str) -> dict:
    hp = module.hparams
    cfg = hp.goal if isinstance(hp.goal, GoalEvalConfig) else GoalEvalConfig(**(hp.goal or {}))
    datamodule.setup("validate")
    module.eval()
    history = hp.context_length - 1 if hp.mode == "prompt" else cfg.history
    found = run_goal_mode(hp.mode, cfg, module.make_goal_policy(history), datamodule.val_file,
                          datamodule.env_kwargs(), hp.domain, hp.task)
    report = {"mode": hp.mode, "domain": hp.domain, "task": hp.task, "checkpoint": hp.load_model_from,
              "finetune_steps": trainer.global_step, "replay": datamodule.val_path, "config": asdict(cfg),
              "metrics": {f"{loop}/{k}": v for loop, s in found["loops"].items() for k, v in s.items()
                          if isinstance(v, float)},
              **found, "seeds": [cfg.seed]}
    if trainer.is_global_zero:
        write_json_atomically(report, os.path.join(output_dir, "eval_results.json"))
    return report
