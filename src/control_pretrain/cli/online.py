"""``python src/dmc_online.py``: train an online agent (state SAC, pixel SAC, SAC+MLR, MWM) in dm_control, with evaluation curves and
``--resume`` (agents/online_run.py says what its output folder holds)."""

from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import fields

from ..errors import UserError


def build_parser() -> argparse.ArgumentParser:
    from ..agents.mwm.presets import PRESETS as MWM_PRESETS
    from ..agents.online_run import CHECKPOINT_EVERY
    from ..agents.pixel_presets import PRESETS
    from ..agents.registry import AGENT_NAMES, AGENTS

    AGENTS_BY_NAME = {n: [o for a, o in AGENTS if a == n] for n in AGENT_NAMES}
    p = argparse.ArgumentParser(prog="dmc_online.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--agent", default="sac", choices=AGENT_NAMES,
                   help="sac: state or pixel SAC; sac_mlr: pixel SAC with MLR's auxiliary loss; mwm: masked world "
                   "models (MAE + DreamerV2 world model and actor-critic, pixels only)")
    p.add_argument("--domain", required=True)
    p.add_argument("--task", required=True)
    p.add_argument("--obs_type", default="state", choices=["state", "pixels"],
                   help="what the agent sees (pixels: sac/sac_mlr 100 px renders, 3 stacked, cropped to 84; mwm "
                   "single 64 px renders)")
    p.add_argument("--preset", default="paper", choices=list(dict.fromkeys([*PRESETS, *MWM_PRESETS])),
                   help="pixel agents: the paper's configuration or a cheaper one (sac, sac_mlr: "
                   f"{'|'.join(PRESETS)}, agents/pixel_presets.py; mwm: {'|'.join(MWM_PRESETS)}, "
                   "agents/mwm/presets.py); the run header lists every reduction")
    p.add_argument("--num_steps", type=int, required=True, help="agent steps (whole episodes)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--output_dir", default=None, help="default runs/online/{agent}_{domain}_{task}_s{seed}")
    p.add_argument("--resume", action="store_true", help="continue the interrupted run in --output_dir")
    p.add_argument("--record", action="store_true",
                   help="also write the whole replay as a dataset file, exactly like collect --policy sac")
    p.add_argument("--eval_every", type=int, default=10000, help="agent steps between evaluations (0: never)")
    p.add_argument("--eval_episodes", type=int, default=5)
    p.add_argument("--checkpoint_every", type=int, default=CHECKPOINT_EVERY,
                   help="episodes between saves of the resume state")
    p.add_argument("--action_repeat", type=int, default=None,
                   help="default 4 for state, the paper's per-domain value for pixel SAC (cartpole 8, walker 2, ...), "
                   "2 for mwm")
    p.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    p.add_argument("--encoder_from", default=None, metavar="CKPT",
                   help="pixel agents: start from the CNN of a pixel pretraining checkpoint (any --method) or the "
                   "convolutions of a pixel agent's agent.pt; mwm: the MAE of a --method mae checkpoint")
    p.add_argument("--freeze_encoder", action="store_true", help="with --encoder_from: keep those weights fixed")
    p.add_argument("--trust_checkpoint", action="store_true",
                   help="load --encoder_from even if unpickling it can run code stored in the file; only for files "
                   "from a source you trust. Without it such files are refused. (The run's own state.pt snapshot "
                   "is always read without running code.)")
    for name in AGENT_NAMES:
        defaults: dict[str, dict] = {}  # option -> {obs type: default} over the agent's configs
        for (agent, obs_type), (config_cls, _) in AGENTS.items():
            if agent == name:
                for f in fields(config_cls):
                    defaults.setdefault(f.name, {})[obs_type] = f.default
        where = "agents/mwm/config.py" if name == "mwm" else "agents/sac.py, agents/pixel_sac.py"
        g = p.add_argument_group(f"{name} options ({where})")
        for option, by_kind in defaults.items():
            default = next(iter(by_kind.values()))
            if len(set(by_kind.values())) == 1 and len(by_kind) == len(AGENTS_BY_NAME[name]):
                text = f"default {default}"
            else:
                text = "default " + ", ".join(f"{v} ({k})" for k, v in by_kind.items())
            g.add_argument(f"--{name}.{option}", type=_bool if isinstance(default, bool) else type(default),
                           default=None, metavar=type(default).__name__.upper(), help=text)
    return p


def _bool(text: str) -> bool:
    if text.lower() in ("true", "1", "yes"):
        return True
    if text.lower() in ("false", "0", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def main(argv: list[str] | None = None) -> int:
    from ..agents.online_run import OnlineRun, train_online

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    prefix = f"{args.agent}."
    overrides = {k[len(prefix):]: v for k, v in vars(args).items() if k.startswith(prefix) and v is not None}
    run = OnlineRun(agent=args.agent, domain=args.domain, task=args.task, num_steps=args.num_steps,
                    obs_type=args.obs_type, seed=args.seed, output_dir=args.output_dir, resume=args.resume,
                    record=args.record, overrides=overrides, eval_every=args.eval_every,
                    eval_episodes=args.eval_episodes, checkpoint_every=args.checkpoint_every,
                    action_repeat=args.action_repeat, device=args.device, preset=args.preset,
                    encoder_from=args.encoder_from, freeze_encoder=args.freeze_encoder,
                    trust_checkpoint=args.trust_checkpoint)
    try:
        print(train_online(run))
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"interrupted: the run is kept in {run.folder}; continue it with --resume", file=sys.stderr)
        return 130
    return 0
