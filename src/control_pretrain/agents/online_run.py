"""One online training run in its own folder (``python src/dmc_online.py``): train, log, snapshot, resume.

The folder holds ``run.json`` (what the run is: agent, task, seed, options), ``metrics.jsonl`` and TensorBoard
events (agents/metric_log.py), ``state.pt`` (the loop's snapshot with its replay rows, every ``checkpoint_every``
episodes and on any interruption; removed when the run finishes) and, at the end, ``agent.pt`` (the same format as
``collect --save_agent``, so ``collect --policy checkpoint --agent_path`` can roll it out). ``--record`` instead
runs ``collect --policy sac``'s recorder (collect/sac.py): the whole replay is written as a dataset file under
``{output_dir}/fullcollect_{domain}_{task}/``, resumable the same way, and the metrics still go to the folder.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

from ..errors import ArgumentError
from ..safe_load import load_checkpoint
from .loop import EVAL_SEED_OFFSET

log = logging.getLogger(__name__)

RUN_FILE, STATE_FILE, AGENT_FILE = "run.json", "state.pt", "agent.pt"
# One snapshot holds the whole replay (up to 1M rows), so it is saved less often than collect's (20 episodes,
# learner only); an interruption always saves the latest one.
CHECKPOINT_EVERY = 100


@dataclass(frozen=True)
class OnlineRun:
    agent: str
    domain: str
    task: str
    num_steps: int
    obs_type: str = "state"
    seed: int = 1
    output_dir: str | None = None  # default: runs/online/{agent}_{domain}_{task}_s{seed}
    resume: bool = False
    record: bool = False
    overrides: dict = field(default_factory=dict)  # --{agent}.NAME options
    eval_every: int = 10000
    eval_episodes: int = 5
    checkpoint_every: int = CHECKPOINT_EVERY
    action_repeat: int | None = None  # default: 4 for state, the paper's per-domain value for pixels
    device: str = "cpu"
    preset: str = "paper"  # pixel agents: agents/pixel_presets.py (sac, sac_mlr) or agents/mwm/presets.py (mwm)
    encoder_from: str | None = None  # pixel agents: start from a pretrained encoder (pretrained_encoder; MWM: an MAE)
    freeze_encoder: bool = False
    trust_checkpoint: bool = False  # --encoder_from may run code stored in the file (safe_load.py); not identity

    @property
    def repeat(self) -> int:
        if self.action_repeat is not None:
            return self.action_repeat
        from .pixel_presets import DEFAULT_ACTION_REPEAT
        from .registry import presets_module

        if self.obs_type != "pixels":
            return DEFAULT_ACTION_REPEAT
        return presets_module(self.agent).paper_action_repeat(self.domain)

    def options(self) -> dict:
        """The agent's options: for pixels the paper's per-domain values, the preset, then ``overrides``."""
        if self.obs_type != "pixels":
            return dict(self.overrides)
        from .registry import presets_module

        options = presets_module(self.agent).preset_options(self.domain, self.preset, self.overrides)
        if self.agent == "mwm":  # the MAE is the encoder: the agent loads it (models/mae.py's loader)
            if self.encoder_from:
                options["mae_from"] = self.encoder_from
            if self.freeze_encoder:
                options["freeze_mae"] = True
            return options
        if self.encoder_from:
            options.update(pretrained_encoder(self.encoder_from, self.trust_checkpoint)[1])
        if self.freeze_encoder:
            options["freeze_encoder"] = True
        return options

    @property
    def folder(self) -> str:
        return self.output_dir or os.path.join("runs", "online", f"{self.agent}_{self.domain}_{self.task}_s{self.seed}")

    def identity(self) -> dict:
        """What must match for ``--resume`` to continue a folder's run (evaluation and device may change)."""
        keep = ("agent", "domain", "task", "num_steps", "obs_type", "seed", "record", "overrides", "encoder_from",
                "freeze_encoder")
        identity = {k: v for k, v in asdict(self).items() if k in keep}
        identity["action_repeat"] = self.repeat
        if self.obs_type == "pixels":
            identity["preset"] = self.preset
        return identity


def check_run(run: OnlineRun) -> None:
    """Options that cannot work, before anything is written."""
    from .registry import AGENT_NAMES, AGENTS

    if run.agent not in AGENT_NAMES:
        raise ArgumentError(f"--agent {run.agent!r} is unknown; available: {', '.join(AGENT_NAMES)}.")
    if run.obs_type not in ("state", "pixels"):
        raise ArgumentError(f"--obs_type must be state or pixels, got {run.obs_type!r}.")
    if (run.agent, run.obs_type) not in AGENTS:
        kinds = [o for a, o in AGENTS if a == run.agent]
        raise ArgumentError(f"--agent {run.agent} learns from {' or '.join(kinds)}, not --obs_type {run.obs_type}.")
    try:
        AGENTS[run.agent, run.obs_type][0].from_dict(run.options())
    except ValueError as err:
        raise ArgumentError(f"--{run.agent}.* options for --obs_type {run.obs_type}: {err}") from None
    if (run.encoder_from or run.freeze_encoder) and run.obs_type != "pixels":
        raise ArgumentError("--encoder_from and --freeze_encoder are for pixel agents (--obs_type pixels).")
    if run.freeze_encoder and not run.encoder_from:
        raise ArgumentError("--freeze_encoder keeps a pretrained encoder fixed: give it with --encoder_from CKPT.")
    if run.record and run.obs_type == "pixels":
        raise ArgumentError("--record writes state SAC's replay (collect --policy sac); pixel agents cannot record.")
    if run.device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise ArgumentError(f"--device {run.device}: no CUDA device is visible here; use --device cpu.")
    if run.num_steps < 1:
        raise ArgumentError(f"--num_steps must be positive, got {run.num_steps}.")


def check_folder(run: OnlineRun) -> None:
    """A folder holds one run: start it fresh (empty folder) or ``--resume`` the same one."""
    path = os.path.join(run.folder, RUN_FILE)
    if not os.path.exists(path):
        if run.resume:
            raise ArgumentError(f"--resume: nothing to resume in {run.folder} (no {RUN_FILE}); run without "
                                "--resume to start it.")
        return
    with open(path) as f:
        found = json.load(f)
    if found != run.identity():
        diff = {k: (found.get(k), v) for k, v in run.identity().items() if found.get(k) != v}
        raise ArgumentError(f"{run.folder} holds another run ({RUN_FILE}: found vs given {diff}); pick another "
                            "--output_dir, or give the same options to --resume it.")
    if not run.resume:
        raise ArgumentError(f"{run.folder} already holds this run: pass --resume to continue it, or pick another "
                            "--output_dir.")
    if not run.record and not os.path.exists(os.path.join(run.folder, STATE_FILE)):
        done = os.path.exists(os.path.join(run.folder, AGENT_FILE))
        raise ArgumentError(f"--resume: nothing to resume in {run.folder}: "
                            + ("the run finished (agent.pt)." if done else
                               f"it stopped before its first episode ended (no {STATE_FILE}); run it again without "
                               "--resume in an empty folder."))


def _write_run_file(run: OnlineRun) -> None:
    os.makedirs(run.folder, exist_ok=True)
    path = os.path.join(run.folder, RUN_FILE)
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(run.identity(), f, indent=1)
    os.replace(tmp, path)


def train_online(run: OnlineRun, progress: Callable[[int], None] | None = None) -> str:
    """Train (and with ``record`` record) one run; returns the saved agent's path (or the dataset file's).
    ``progress(steps)`` is called after each episode."""
    check_run(run)
    check_folder(run)
    _write_run_file(run)
    if run.record:
        return _record(run, progress)
    from ..collect.job import stop_signals

    with stop_signals():
        return _train(run, progress)


def _record(run: OnlineRun, progress: Callable[[int], None] | None) -> str:
    from ..collect.job import CollectJob
    from ..collect.sac import collect_sac

    job = CollectJob(domain=run.domain, task=run.task, replay_id=run.seed, num_steps=run.num_steps,
                     data_dir_prefix=run.folder, policy="sac", seed=run.seed, action_repeat=run.repeat,
                     resume=run.resume, sac=run.overrides, save_agent=True, eval_every=run.eval_every,
                     eval_episodes=run.eval_episodes, checkpoint_every=run.checkpoint_every)
    return collect_sac(job, progress, metrics_dir=run.folder, device=run.device)


def _train(run: OnlineRun, progress: Callable[[int], None] | None) -> str:
    import torch

    from ..collect.job import check_stop
    from .metric_log import MetricLog
    from .registry import make_loop

    state_path, agent_path = os.path.join(run.folder, STATE_FILE), os.path.join(run.folder, AGENT_FILE)
    pixels = run.obs_type == "pixels"
    if run.device == "cpu" and not pixels:
        torch.set_num_threads(1)  # a state-SAC update is too small to split across threads (agents/sac.py)
    options = run.options()
    env, eval_env = (make_run_env(run, options, seed) for seed in (run.seed, run.seed + EVAL_SEED_OFFSET))
    metrics = MetricLog(run.folder)
    try:
        loop = make_loop(run.agent, env, options, run.num_steps, run.seed, eval_env=eval_env,
                         eval_every=run.eval_every, eval_episodes=run.eval_episodes, device=run.device,
                         metrics=metrics, check_stop=check_stop, obs_type=run.obs_type)
        log.info("%s", header(run, loop.agent))
        # a resumed run's snapshot holds the encoder as trained since; MWM loads its MAE itself (mae_from)
        if run.encoder_from and not run.resume and run.agent != "mwm":
            loop.agent.load_encoder(pretrained_encoder(run.encoder_from, run.trust_checkpoint)[0])
        if run.resume:
            loop.load_snapshot(load_checkpoint(state_path, trust=False, refused_hint=(
                f"A run writes its {STATE_FILE} itself and never puts such objects in it, so this file is not the "
                "run's own: start the run again in an empty --output_dir.")))
            log.info("%s: resuming at step %d (%d episodes)", run.folder, loop.step, loop.episodes)

        def after_episode(steps: int) -> None:
            if loop.episodes % run.checkpoint_every == 0:
                loop.save_snapshot(state_path)
            log.info("step %d/%d, episode %d", loop.step, run.num_steps, loop.episodes)
            if progress:
                progress(steps)

        try:
            loop.run(after_episode=after_episode)
        except BaseException:
            loop.save_snapshot(state_path)  # as of the last whole episode: --resume continues from there
            raise
        loop.agent.save(agent_path, extra={"domain": run.domain, "task": run.task, "steps": loop.step})
        if os.path.exists(state_path):
            os.remove(state_path)
    finally:
        metrics.close()
        env.close()
        eval_env.close()
    return agent_path


def make_run_env(run: OnlineRun, options: dict, seed: int):
    """The run's environment: flat state observations, or frame stacks of renders (envs/pixel_env.py)."""
    from ..envs.dmc import make_env

    if run.obs_type != "pixels":
        return make_env(run.domain, run.task, seed=seed, action_repeat=run.repeat)
    from ..envs.pixel_env import PixelEnv
    from .registry import AGENTS

    cfg = AGENTS[run.agent, run.obs_type][0].from_dict(options)
    env = make_env(run.domain, run.task, seed=seed, action_repeat=run.repeat, pixels=True, height=cfg.render_size,
                   width=cfg.render_size)
    return PixelEnv(env, cfg.frame_stack)


def header(run: OnlineRun, agent) -> str:
    """What is trained on what, and for pixel agents every reduction from the paper's configuration."""
    line = (f"{run.agent} on {run.domain}-{run.task} from {run.obs_type}: {run.num_steps} agent steps x action "
            f"repeat {run.repeat} = {run.num_steps * run.repeat} env steps, seed {run.seed}, {run.device}, "
            f"output {run.folder}")
    if run.obs_type != "pixels":
        return line
    from .registry import presets_module

    presets = presets_module(run.agent)
    found = presets.reductions(run.domain, agent.cfg, run.repeat, run.num_steps, run.eval_every, run.eval_episodes)
    line = f"{line}\n  preset {run.preset}: {presets.run_label(found)}"
    if hasattr(agent, "parameter_counts"):  # MWM: the sizes of its three learners
        counts = ", ".join(f"{k} {v / 1e6:.2f}M" for k, v in agent.parameter_counts().items())
        line = f"{line}\n  parameters: {counts}"
    if getattr(agent.cfg, "mae_from", ""):  # the checkpoint's architecture replaces the mae_* sizes above
        mae = agent.mae.config
        line = (f"{line}\n  MAE from {agent.cfg.mae_from}{' (frozen)' if agent.cfg.freeze_mae else ''}: width "
                f"{mae.embed_dim}, {mae.encoder_depth} + {mae.decoder_depth} blocks, {mae.n_head} heads, reward "
                f"wiring {mae.reward_wiring}")
    return line


def pretrained_encoder(path: str, trust: bool = False) -> tuple[dict, dict]:
    """The convolutions to start a pixel agent from, and the options they need: from a pixel pretraining
    checkpoint (``dmc_pretrain.py --obs_type pixels``, any method: the pipeline's CNN, encoder ``smart``) or from
    a pixel agent's ``agent.pt`` (the CURL convolutions). Read without running code unless ``trust``
    (``--trust_checkpoint``, safe_load.py)."""
    from ..errors import CheckpointError
    from ..models.stacked_frame_encoder import pretrained_cnn_state

    if not os.path.exists(path):
        raise CheckpointError(f"--encoder_from {path}: no such file.")
    state = load_checkpoint(path, trust)
    if not isinstance(state, dict):
        raise CheckpointError(f"--encoder_from {path}: expected a checkpoint dict, found {type(state).__name__}.")
    if isinstance(state.get("encoder"), dict) and "config" in state:  # a pixel agent's agent.pt
        convs = {k[len("convs."):]: v for k, v in state["encoder"].items() if k.startswith("convs.")}
        cfg = state["config"]
        return convs, {"encoder": cfg.get("encoder", "curl"), "filters": cfg["filters"],
                       "frame_embd": cfg.get("frame_embd", 256)}
    convs, width = pretrained_cnn_state(state, path)
    return convs, {"encoder": "smart", "frame_embd": width}
