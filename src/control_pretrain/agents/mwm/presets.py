"""What an MWM run is, compared with the paper's DMC setting (mlr_mwm.md §B.2-B.5, §C.3, §C.5): the presets this
CPU (or a GPU) can run, and the header line that names every reduction, so a reduced run is never labelled as the
paper's setting. The paper's setting is ``MWMConfig``'s defaults, action repeat 2 on every domain, and MWM's
``dmc_vision`` budget and evaluation (502k policy steps; 5 episodes every 10k policy steps). Note that MWM's own
README says its DMC results do not reproduce (§B.6): no DMC number of the paper is a target.

Presets (the measured seconds per round on this 2-core CPU are in docs/training.md, "MWM"):
- ``paper``: the paper's sizes and batches (MAE 1,024 frames, world model 16 x 50).
- ``small``: paper sizes, small batches (MAE 128 frames, world model 8 x 32), §C.3.
- ``tiny``: MAE width 128 with 2 + 1 blocks; RSSM deter/hidden 256 with 16 x 16 latents; MLPs 2 x 256; the small
  batches; and the T1 schedule of §C.5 (prefill 1,000, 500 MAE-pretraining updates, warm-up 500).
- ``t0``: smaller still, for CI runs of a few thousand env steps (tests/test_mwm.py).
"""

from __future__ import annotations

from dataclasses import asdict

from .config import MWMConfig

PAPER_ACTION_REPEAT = 2  # every MWM environment (§B.5)
PAPER_STEPS, PAPER_EVAL_EVERY, PAPER_EVAL_EPISODES = 502_000, 10_000, 5  # dmc_vision, in policy steps

SMALL = {"mae_batch": 128, "batch_size": 8, "seq_len": 32}
TINY = {**SMALL, "mae_width": 128, "mae_depth": 2, "mae_decoder_depth": 1, "deter": 256, "hidden": 256, "stoch": 16,
        "discrete": 16, "units": 256, "layers": 2, "init_steps": 1000, "mae_pretrain": 500, "mae_warmup": 500}
T0 = {**TINY, "mae_width": 32, "mae_depth": 1, "mae_heads": 2, "wm_width": 32, "wm_depth": 1, "wm_heads": 2,
      "deter": 64, "hidden": 64, "stoch": 8, "discrete": 8, "units": 64, "mae_batch": 32, "batch_size": 4,
      "seq_len": 16, "init_steps": 500, "mae_pretrain": 20, "mae_warmup": 20}
PRESETS = {"paper": {}, "small": SMALL, "tiny": TINY, "t0": T0}


def paper_action_repeat(domain: str) -> int:
    return PAPER_ACTION_REPEAT


def preset_options(domain: str, preset: str, overrides: dict | None = None) -> dict:
    """Options of a run: the preset, then the user's ``overrides`` (MWM has no per-domain values)."""
    if preset not in PRESETS:
        raise ValueError(f"unknown MWM preset {preset!r}; known: {', '.join(PRESETS)}")
    return {**PRESETS[preset], **(overrides or {})}


def reductions(domain: str, cfg: MWMConfig, action_repeat: int, num_steps: int, eval_every: int,
               eval_episodes: int) -> list[str]:
    """Every way this run differs from the paper's DMC run ("mae_batch 128 (paper 1024)", ...)."""
    paper = asdict(MWMConfig())
    found = [f"{k} {v} (paper {paper[k]})" for k, v in asdict(cfg).items()
             if v != paper[k] and k not in ("mae_from", "freeze_mae")]
    if action_repeat != PAPER_ACTION_REPEAT:
        found.append(f"action_repeat {action_repeat} (paper {PAPER_ACTION_REPEAT})")
    if num_steps != PAPER_STEPS:
        found.append(f"{num_steps} policy steps (paper {PAPER_STEPS})")
    if (eval_every, eval_episodes) != (PAPER_EVAL_EVERY, PAPER_EVAL_EPISODES):
        found.append(f"evaluation {eval_episodes} episodes every {eval_every} policy steps (paper "
                     f"{PAPER_EVAL_EPISODES} every {PAPER_EVAL_EVERY})")
    return found


def run_label(found: list[str]) -> str:
    return ("MWM paper configuration (dmc_vision)" if not found
            else "reduced run, not the paper's MWM setting: " + "; ".join(found))
