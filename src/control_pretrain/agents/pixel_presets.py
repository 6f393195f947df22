"""What a pixel SAC / MLR run is, compared with the paper (mlr_mwm.md §A.2-A.3, §C.2, §C.5): the per-task values
of MLR's configs, the cheaper presets this CPU can run, and the header line that names every reduction, so a
reduced run is never mistaken for (or labelled) DMC-100k."""

from __future__ import annotations

from dataclasses import asdict

from .pixel_sac import PixelSACConfig

# Action repeat per domain in MLR's configs (the PlaNet/CURL settings); other domains get SMART's 4.
PAPER_ACTION_REPEAT = {"finger": 2, "cartpole": 8, "reacher": 4, "cheetah": 4, "walker": 2, "ball_in_cup": 4}
DEFAULT_ACTION_REPEAT = 4
# Per-domain exceptions of the configs: cheetah's learning rates, the shorter temporal block of cartpole and
# reacher, walker's faster momentum.
PAPER_OVERRIDES = {
    "cheetah": {"actor_lr": 2e-4, "critic_lr": 2e-4, "mlr_lr": 1e-4},
    "cartpole": {"mlr_block": 4},
    "reacher": {"mlr_block": 4},
    "walker": {"mlr_tau": 0.1},
}
# Cheaper settings (seconds per update on this CPU: mlr_mwm.md §C.2; docs/benchmarks.md measures ours).
PRESETS = {
    "paper": {},
    "reduced": {"batch_size": 128, "mlr_batch": 32, "filters": 32},
    "smoke": {"batch_size": 64, "mlr_batch": 16, "mlr_clip_len": 8, "filters": 32},
}
# The DMC-100k protocol: 100k environment steps, 10 deterministic episodes every 5k environment steps.
DMC100K_ENV_STEPS, DMC100K_EVAL_EVERY_ENV_STEPS, DMC100K_EVAL_EPISODES = 100_000, 5_000, 10


def paper_action_repeat(domain: str) -> int:
    return PAPER_ACTION_REPEAT.get(domain, DEFAULT_ACTION_REPEAT)


def paper_options(domain: str) -> dict:
    """The paper's configuration for ``domain`` as option values (the dataclass defaults plus its exceptions)."""
    return PAPER_OVERRIDES.get(domain, {})


def preset_options(domain: str, preset: str, overrides: dict | None = None) -> dict:
    """Options of a run: the paper's for ``domain``, then the preset, then the user's ``overrides``."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; known: {', '.join(PRESETS)}")
    return {**paper_options(domain), **PRESETS[preset], **(overrides or {})}


def reductions(domain: str, cfg: PixelSACConfig, action_repeat: int, num_steps: int, eval_every: int,
               eval_episodes: int) -> list[str]:
    """Every way this run differs from the paper's DMC-100k run of ``domain`` ("filters 32 (paper 64)", ...)."""
    paper = asdict(type(cfg).from_dict(paper_options(domain)))
    found = [f"{k} {v} (paper {paper[k]})" for k, v in asdict(cfg).items()
             if v != paper[k] and (cfg.mlr or not k.startswith("mlr_"))]  # MLR's options only matter with MLR
    if action_repeat != paper_action_repeat(domain):
        found.append(f"action_repeat {action_repeat} (paper {paper_action_repeat(domain)})")
    env_steps = num_steps * action_repeat
    if env_steps != DMC100K_ENV_STEPS:
        found.append(f"{env_steps} env steps (DMC-100k: {DMC100K_ENV_STEPS})")
    if (eval_every * action_repeat, eval_episodes) != (DMC100K_EVAL_EVERY_ENV_STEPS, DMC100K_EVAL_EPISODES):
        found.append(f"evaluation {eval_episodes} episodes every {eval_every * action_repeat} env steps (paper "
                     f"{DMC100K_EVAL_EPISODES} every {DMC100K_EVAL_EVERY_ENV_STEPS})")
    return found


def run_label(found: list[str]) -> str:
    return "DMC-100k (paper configuration)" if not found else "reduced run, not DMC-100k: " + "; ".join(found)
