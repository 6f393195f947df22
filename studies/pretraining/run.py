"""Does SMART pretraining help? A resumable study of pretrained vs scratch finetuning (docs/results.md).

Reproduces the design of SMART's downstream experiments (smart.md §3, paper Fig. 3-5) at a chosen scale:
pretrain one control transformer on the paper's task set (walker stand/run, cheetah run, cartpole swingup,
hopper hop) with random-policy data and one with SAC exploratory replay, then finetune behaviour cloning (BC) and
return-conditioned (RTG) policies on seen tasks, unseen tasks and unseen domains from few episodes, pretrained
vs from scratch, over several seeds, and aggregate rliable-style (control_pretrain/eval/stats.py). The scales
are YAML presets (studies/pretraining/presets/{cpu,paper}.yaml, typed by preset.py).

Stages (``--stage all`` runs them in order; each one skips what is already done):
  data      collect pretraining data (random + SAC replay), train a SAC agent per downstream task, roll out
            demonstrations with it (``--policy checkpoint``), link the RTG data (SAC replay + demo validation)
  pretrain  one SMART pretraining run per pretraining data kind
  cells     finetuning cells (method, task, episodes, init, seed) in priority order; each finished cell writes
            studies/pretraining/results/{preset}/cells/{cell}.json atomically (temp file + rename); an interrupted cell
            leaves no JSON and reruns from scratch next time
  report    tables (markdown), aggregate JSON and plots (docs/img/study_*.png; skipped without matplotlib) from
            the committed cell JSONs

Deviations from the paper, deliberate: demonstrations come from a briefly trained SAC agent, not a 1M-step
replay; few-shot cells take an exact number of episodes (``--num_episodes``), drawn at random per seed; the
score of a run is the mean return over held-out test seeds of the *last* checkpoint (the best-by-selection
checkpoint is reported beside it; the paper reported max over epochs on the selection episodes).

Usage:
  python studies/pretraining/run.py --preset cpu                       # everything, resumable
  python studies/pretraining/run.py --preset cpu --stage cells --only method=bc,episodes=10 --jobs 2
  python studies/pretraining/run.py --preset cpu --stage report
  python studies/pretraining/run.py --preset paper --dry_run          # the GPU preset's commands
  python studies/pretraining/run.py --preset my_scale.yaml --dry_run  # a preset file of your own
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import glob
import itertools
import json
import logging
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path[:0] = [HERE, os.path.join(ROOT, "src")]  # report.py, preset.py; the package of this checkout

from preset import Preset, load_preset, preset_names

from control_pretrain.errors import UserError

log = logging.getLogger("study")

GROUPS = ("seen", "unseen_task", "unseen_domain")
EPISODE_STEPS = 250  # agent steps of a dm_control episode: 1000 env steps at action repeat 4 (smart.md §2.1)


def priority(p: Preset) -> list[tuple[str, int, tuple[str, ...]]]:
    """Blocks (method, episodes, groups) in run order, so that if time runs out the finished cells still form
    coherent subsets (all tasks x inits x seeds of a block): unseen before seen, fewer episodes first, methods in
    the preset's order."""
    unseen = tuple(g for g in ("unseen_task", "unseen_domain") if g in p.tasks)
    return [(m, e, groups) for groups in (unseen, ("seen",)) if any(g in p.tasks for g in groups)
            for e in sorted(p.episodes) for m in p.methods]


@dataclass(frozen=True)
class Cell:
    method: str
    task: str
    episodes: int
    init: str
    seed: int

    @property
    def name(self) -> str:
        return f"{self.method}_{self.task}_ep{self.episodes}_{self.init}_s{self.seed}"

    def matches(self, only: dict[str, set[str]]) -> bool:
        values = {**dataclasses.asdict(self), "group": None}
        return all(str(values.get(k)) in v for k, v in only.items() if k != "group")


# ---- paths ----------------------------------------------------------------------------------------------------
def data_root(p: Preset) -> str:
    return p.data_dir or ("data/study" if p.name == "cpu" else f"data/study_{p.name}")


def out_root(p: Preset) -> str:
    return f"outputs/study/{p.name}"


def results_root(p: Preset) -> str:
    return f"studies/pretraining/results/{p.name}"


def split(task: str) -> tuple[str, str]:
    domain, name = task.split("-", 1)
    return domain, name


def h5(prefix: str, kind: str, task: str, replay: int) -> str:
    d, t = split(task)
    return f"{prefix}/{kind}_{d}_{t}/{d}_{t}_s{replay}.h5"


def pretrain_task_list(p: Preset) -> list[str]:
    with open(os.path.join(ROOT, p.pretrain_tasks)) as f:
        return [f"{d}-{t}" for d, ts in json.load(f).items() for t in ts]


# ---- running commands -----------------------------------------------------------------------------------------
def env() -> dict:
    e = dict(os.environ)
    e.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", MUJOCO_GL=e.get("MUJOCO_GL", "egl"), PYTHONUNBUFFERED="1")
    return e


def run(cmd: list[str], log_path: str, dry_run: bool) -> float:
    """Run one command to completion (stdout/stderr to log_path); its wall time. Raises on failure."""
    log.info("$ %s", " ".join(cmd))
    if dry_run:
        return 0.0
    os.makedirs(os.path.dirname(log_path), exist_ok=True)
    start = time.time()
    with open(log_path, "a") as f:
        proc = subprocess.run(cmd, check=False, cwd=ROOT, env=env(), stdout=f, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        raise RuntimeError(f"command failed ({proc.returncode}), see {log_path}: {' '.join(cmd)}")
    return time.time() - start


def collect_cmd(task: str, policy: str, steps: int, replay: int, prefix: str, p: Preset, *extra: str) -> list[str]:
    d, t = split(task)
    return [sys.executable, "src/dmc_data.py", "collect", "--domain", d, "--task", t, "--policy", policy,
            "--num_steps", str(steps), "--replay_id", str(replay), "--data_dir_prefix", prefix, "--quiet",
            *p.extra_collect, *extra]


def ensure_file(path: str, cmd: list[str], log_path: str, dry_run: bool, resumable: bool = False) -> None:
    if os.path.exists(os.path.join(ROOT, path)):
        return
    if resumable and os.path.exists(os.path.join(ROOT, path + ".tmp-partial")):
        cmd = [*cmd, "--resume"]
    run(cmd, log_path, dry_run)


# ---- stage: data ----------------------------------------------------------------------------------------------
def sac_agent_prefix(p: Preset, task: str) -> str:
    """Where the SAC agent (and replay) of a task lives: pretraining data for seen tasks, else its own run."""
    return f"{data_root(p)}/pre" if task in pretrain_task_list(p) else f"{data_root(p)}/sac_down"


def sac_eval_every(steps: int) -> int:
    """SAC evaluations every 5k steps on short runs, 20 in all on long ones."""
    return max(5000, steps // 20)


def stage_data(p: Preset, tasks: list[str], dry_run: bool) -> None:
    root, logs = data_root(p), f"{data_root(p)}/logs"
    kinds = {k for kind, *_ in p.inits.values() for k in (("rand", "full") if kind == "mix" else (kind,))}
    for task in pretrain_task_list(p):
        if "rand" in kinds:
            ensure_file(h5(f"{root}/pre", "randcollect", task, 1),
                        collect_cmd(task, "random", p.pretrain_random_steps, 1, f"{root}/pre", p),
                        f"{logs}/data.log", dry_run)
        if "full" in kinds:
            ensure_file(h5(f"{root}/pre", "fullcollect", task, 1),
                        collect_cmd(task, "sac", p.pretrain_sac_steps, 1, f"{root}/pre", p, "--save_agent",
                                    "--eval_every", str(sac_eval_every(p.pretrain_sac_steps)), *p.sac_flags),
                        f"{logs}/data.log", dry_run, resumable=True)
    for task in tasks:
        prefix = sac_agent_prefix(p, task)
        replay = h5(prefix, "fullcollect", task, 1)
        ensure_file(replay, collect_cmd(task, "sac", p.downstream_sac_steps, 1, prefix, p, "--save_agent",
                                        "--eval_every", str(sac_eval_every(p.downstream_sac_steps)), *p.sac_flags), f"{logs}/data.log", dry_run,
                    resumable=True)
        agent = replay[: -len(".h5")] + ".agent.pt"
        for replay_id, steps in ((1, p.demo_train_steps), (2, p.demo_val_steps)):
            ensure_file(h5(f"{root}/demos", "fullcollect", task, replay_id),
                        collect_cmd(task, "checkpoint", steps, replay_id, f"{root}/demos", p, "--agent_path", agent,
                                    "--action_noise", str(p.demo_action_noise)), f"{logs}/data.log", dry_run)
        # RTG data: the SAC agent's whole replay (mixed quality, as the paper's random 10%) + demo validation
        for replay_id, target in ((1, replay), (2, h5(f"{root}/demos", "fullcollect", task, 2))):
            link = os.path.join(ROOT, h5(f"{root}/rtg", "fullcollect", task, replay_id))
            if not dry_run and not os.path.lexists(link):
                os.makedirs(os.path.dirname(link), exist_ok=True)
                os.symlink(os.path.relpath(os.path.join(ROOT, target), os.path.dirname(link)), link)


def data_summary(p: Preset, tasks: list[str]) -> dict:
    """Episodes and returns of every file the study uses (for the report). A file that is not on this machine
    (the data are not committed) keeps its entry of the committed summary.json, so ``--stage report`` on a fresh
    checkout reproduces the committed summary."""
    from control_pretrain.data.trajectory_file import TrajectoryFile

    committed = os.path.join(ROOT, results_root(p), "summary.json")
    previous = {}
    if os.path.exists(committed):
        with open(committed) as f:
            previous = json.load(f).get("data", {})
    root = data_root(p)
    files = {}
    for task in pretrain_task_list(p):
        for kind in ("randcollect", "fullcollect"):
            files[f"pretrain/{kind}/{task}"] = h5(f"{root}/pre", kind, task, 1)
    for task in tasks:
        files[f"sac_replay/{task}"] = h5(sac_agent_prefix(p, task), "fullcollect", task, 1)
        files[f"demos_train/{task}"] = h5(f"{root}/demos", "fullcollect", task, 1)
        files[f"demos_val/{task}"] = h5(f"{root}/demos", "fullcollect", task, 2)
    out = {}
    for key, path in files.items():
        full = os.path.join(ROOT, path)
        if not os.path.exists(full):
            if key in previous:
                out[key] = previous[key]
            continue
        r = TrajectoryFile(full).episode_returns()
        out[key] = {"path": path, "episodes": len(r), "steps": int(len(r) * EPISODE_STEPS),
                    "return_mean": float(r.mean()), "return_max": float(r.max()),
                    "return_last10_mean": float(r[-10:].mean())}
    return out


# ---- stage: pretrain ------------------------------------------------------------------------------------------
MASKED_METHODS = ("mtm", "maskdp")  # encoder-decoder trunks (lit/mtm_module.py): n_enc_layer + n_dec_layer


def flag_value(flags: list[str] | tuple[str, ...], name: str) -> str | None:
    return next((flags[i + 1] for i in range(len(flags) - 1) if flags[i] == name), None)


def masked_trunk(p: Preset, init: str, finetuning: bool) -> bool:
    """Whether the init's pretraining (or finetuning) runs the masked encoder-decoder: a masked --method in its
    pretraining flags, unless its finetune flags pick another (``--method smart``: causal finetuning)."""
    if init == "scratch":
        return False
    method = flag_value(p.inits[init][1:], "--method")
    if finetuning:
        method = flag_value(p.finetune_flags.get(init, ()), "--method") or method
    return method in MASKED_METHODS


def model_flags(p: Preset, masked: bool = False) -> list[str]:
    """The preset's sizes; a masked trunk gets n_layer encoder blocks and one decoder block (MTM's split)."""
    depth = (["--model.n_enc_layer", str(p.model["n_layer"]), "--model.n_dec_layer", "1"] if masked
             else ["--model.n_layer", str(p.model["n_layer"])])
    return ["--obs_type", p.obs_type, *depth, "--model.n_head", str(p.model["n_head"]), "--model.n_embd",
            str(p.model["n_embd"]), "--context_length", str(p.context_length), "--data.batch_size",
            str(p.batch_size), "--data.num_workers", str(p.num_workers)]


def pretrain_dir(p: Preset, run_name: str) -> str:
    return f"{out_root(p)}/pretrain_{run_name}"


def pretrain_ckpt(p: Preset, run_name: str) -> str:
    return f"{pretrain_dir(p, run_name)}/checkpoints/last.ckpt"


def pretrain_cmd(p: Preset, run_name: str) -> list[str]:
    kind, *flags = p.pretrain_runs()[run_name]
    # --num_steps is per task; mix reads half of it from each kind's file
    steps = {"rand": p.pretrain_random_steps, "full": p.pretrain_sac_steps,
             "mix": 2 * min(p.pretrain_random_steps, p.pretrain_sac_steps)}[kind]
    cmd = [sys.executable, "src/dmc_pretrain.py", "--multi_config", p.pretrain_tasks, "--source_data_type", kind,
           "--train_replay_id", "1", "--num_steps", str(steps), "--epochs", str(p.pretrain_epochs),
           "--model_type", "naive", "--data_dir_prefix", f"{data_root(p)}/pre", "--output_dir",
           pretrain_dir(p, run_name), "--seed_everything", "0", "--quiet",
           *model_flags(p, flag_value(flags, "--method") in MASKED_METHODS), *p.extra_train, *flags]
    if p.pretrain_batches_per_epoch:
        cmd += ["--trainer.limit_train_batches", str(p.pretrain_batches_per_epoch)]
    return cmd


def stage_pretrain(p: Preset, run_names: list[str], dry_run: bool) -> None:
    for name in run_names:
        marker = f"{results_root(p)}/pretrain_{name}.json"
        if os.path.exists(os.path.join(ROOT, pretrain_ckpt(p, name))) and os.path.exists(os.path.join(ROOT, marker)):
            continue
        if os.path.exists(os.path.join(ROOT, marker)):
            log.warning("%s exists but its checkpoint does not (new machine?): pretraining again", marker)
        shutil.rmtree(os.path.join(ROOT, pretrain_dir(p, name)), ignore_errors=True)
        cmd = pretrain_cmd(p, name)
        wall = run(cmd, f"{out_root(p)}/logs/pretrain_{name}.log", dry_run)
        if dry_run:
            continue
        record = {"kind": p.pretrain_runs()[name][0], "command": " ".join(cmd), "wall_s": wall,
                  "checkpoint": pretrain_ckpt(p, name), "scalars": read_scalars(pretrain_dir(p, name)),
                  **provenance()}
        write_json(marker, record)


# ---- stage: cells ---------------------------------------------------------------------------------------------
def all_cells(p: Preset) -> list[Cell]:
    cells = []
    for method, episodes, groups in priority(p):
        tasks = [t for g in groups for t in p.tasks.get(g, [])]
        for seed, task, init in itertools.product(p.seeds, tasks, p.init_names):
            cells.append(Cell(method, task, episodes, init, seed))
    return cells


def cell_json(p: Preset, cell: Cell) -> str:
    return f"{results_root(p)}/cells/{cell.name}.json"


def cell_cmd(p: Preset, cell: Cell) -> list[str]:
    d, t = split(cell.task)
    bc = cell.method == "bc"
    cmd = [sys.executable, "src/dmc_downstream.py", "--domain", d, "--task", t,
           "--model_type", "naive" if bc else "reward_conditioned", "--rand_select",
           "--num_episodes", str(cell.episodes), "--data.selection_seed", str(cell.seed),
           "--seed_everything", str(cell.seed), "--source_data_type", "full", "--num_steps", "10000000",
           "--data_dir_prefix", f"{data_root(p)}/{'demos' if bc else 'rtg'}",
           "--eval_episodes", str(p.eval_episodes), "--trainer.max_steps", str(p.finetune_steps),
           "--trainer.max_epochs", "-1", "--trainer.val_check_interval", str(p.val_every),
           "--trainer.check_val_every_n_epoch", "null", "--trainer.limit_val_batches", "4",
           "--trainer.log_every_n_steps", "10", "--output_dir", f"{out_root(p)}/cells/{cell.name}", "--quiet",
           *model_flags(p, masked_trunk(p, cell.init, finetuning=True)), *p.extra_train]
    if not bc and cell.task in p.target_returns:
        cmd += ["--target_return", str(p.target_returns[cell.task])]
    if cell.init != "scratch":
        cmd += ["--load_model_from", pretrain_ckpt(p, p.pretrain_run(cell.init)), "--no_load_action"]
    return cmd + list(p.finetune_flags.get(cell.init, ()))


def read_scalars(run_dir: str) -> dict[str, list[tuple[int, float]]]:
    """Every TensorBoard scalar of a run as {tag: [(step, value), ...]}."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out: dict[str, list] = {}
    for events in sorted(glob.glob(os.path.join(ROOT, run_dir, "tb_logs", "*", "events.out.tfevents.*"))):
        acc = EventAccumulator(events, size_guidance={"scalars": 0})
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            out.setdefault(tag, []).extend((int(e.step), float(e.value)) for e in acc.Scalars(tag))
    return out


def provenance() -> dict:
    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], check=False, cwd=ROOT, capture_output=True, text=True).stdout.strip()
        except OSError:
            return ""

    import torch

    return {"git_commit": git("rev-parse", "HEAD"), "git_dirty": bool(git("status", "--porcelain", "--", "src")),
            "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "machine": {"hostname": socket.gethostname(), "platform": platform.platform(),
                        "processor": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
                        "python": platform.python_version(), "torch": torch.__version__,
                        "torch_threads": 1}}


def write_json(path: str, record: dict) -> None:
    """Atomic: a reader (or a later run) sees the whole file or none."""
    full = os.path.join(ROOT, path)
    os.makedirs(os.path.dirname(full), exist_ok=True)
    tmp = f"{full}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(record, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, full)


def finish_cell(p: Preset, cell: Cell, cmd: list[str], wall: float) -> dict:
    run_dir = f"{out_root(p)}/cells/{cell.name}"
    with open(os.path.join(ROOT, run_dir, "eval_results.json")) as f:
        report = json.load(f)
    scalars = read_scalars(run_dir)
    keep = ("eval/return_mean", "eval/return_iqm", "val/loss", "train/loss_epoch", "eval/steps_per_sec")
    pick = ("mean", "std", "iqm", "ci95", "returns", "seeds", "num_episodes", "checkpoint")
    record = {
        "cell": {**dataclasses.asdict(cell), "group": p.task_group(cell.task)},
        "preset": p.name,
        "command": " ".join(cmd),
        "seed": cell.seed,
        "last": {k: report[k] for k in pick if k in report},
        "best": {k: v for k, v in report.get("best", {}).items() if k in (*pick, "selection_score")},
        "target_return": report.get("target_return"),
        "data": report.get("data"),
        "pretrained_from": report.get("pretrained_from"),
        "train_steps": max((s for s, _ in scalars.get("train/loss", [])), default=None),
        "max_steps": p.finetune_steps,
        "wall_s": wall,
        "curves": {k: v for k, v in scalars.items() if k in keep},
        **provenance(),
    }
    write_json(cell_json(p, cell), record)
    return record


def parse_only(spec: str | None) -> dict[str, set[str]]:
    only: dict[str, set[str]] = {}
    for item in filter(None, (spec or "").split(",")):
        key, _, values = item.partition("=")
        only[key.strip()] = set(values.split("|"))
    return only


def select_cells(p: Preset, only: dict[str, set[str]]) -> list[Cell]:
    cells = [c for c in all_cells(p) if c.matches(only)]
    if "group" in only:
        cells = [c for c in cells if p.task_group(c.task) in only["group"]]
    return cells


def claim(p: Preset, cell: Cell) -> bool:
    """Take the cell's lock file (several runners may share a study); a lock of a dead process is stale."""
    path = os.path.join(ROOT, out_root(p), "locks", f"{cell.name}.lock")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    for _ in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            try:
                with open(path) as f:
                    pid = int(f.read().strip() or 0)
                os.kill(pid, 0)
                return False  # another live runner has it
            except (ProcessLookupError, ValueError):
                os.remove(path)  # stale
                continue
            except PermissionError:
                return False
        with os.fdopen(fd, "w") as f:
            f.write(str(os.getpid()))
        return True
    return False


def release(p: Preset, cell: Cell) -> None:
    try:
        os.remove(os.path.join(ROOT, out_root(p), "locks", f"{cell.name}.lock"))
    except FileNotFoundError:
        pass


def hhmm_passed(hhmm: str | None) -> bool:
    if not hhmm:
        return False
    now = dt.datetime.now(dt.timezone.utc)
    h, m = map(int, hhmm.split(":"))
    return (now.hour, now.minute) >= (h, m)


def stage_cells(p: Preset, cells: list[Cell], jobs: int, stop_at: str | None, kill_at: str | None,
                dry_run: bool) -> None:
    todo = [c for c in cells if not os.path.exists(os.path.join(ROOT, cell_json(p, c)))]
    log.info("%d cells selected, %d done, %d to run (jobs=%d)", len(cells), len(cells) - len(todo), len(todo), jobs)
    if dry_run:
        for c in todo:
            log.info("$ %s", " ".join(cell_cmd(p, c)))
        return
    needed = {p.pretrain_run(c.init) for c in todo if c.init != "scratch"}
    stage_pretrain(p, sorted(needed), dry_run)
    running: dict[subprocess.Popen, tuple[Cell, list[str], float, object]] = {}
    done = failed = 0
    try:
        while todo or running:
            if hhmm_passed(kill_at) and running:
                log.warning("--kill_at %s reached: stopping %d running cell(s); they rerun next time", kill_at,
                            len(running))
                break
            while todo and len(running) < jobs and not hhmm_passed(stop_at):
                cell = todo.pop(0)
                if os.path.exists(os.path.join(ROOT, cell_json(p, cell))) or not claim(p, cell):
                    continue  # finished or running in another runner meanwhile
                run_dir = os.path.join(ROOT, out_root(p), "cells", cell.name)
                shutil.rmtree(run_dir, ignore_errors=True)  # an interrupted cell starts over
                os.makedirs(run_dir)
                cmd = cell_cmd(p, cell)
                f = open(os.path.join(run_dir, "run.log"), "w")  # noqa: SIM115 (closed when the cell ends)
                proc = subprocess.Popen(cmd, cwd=ROOT, env=env(), stdout=f, stderr=subprocess.STDOUT,
                                        start_new_session=True)
                running[proc] = (cell, cmd, time.time(), f)
                log.info("start %s", cell.name)
            if not running:
                if todo:
                    log.info("--stop_at %s reached: %d cells left for the next run", stop_at, len(todo))
                break
            time.sleep(1.0)
            for proc in [q for q in running if q.poll() is not None]:
                cell, cmd, start, f = running.pop(proc)
                f.close()
                release(p, cell)
                wall = time.time() - start
                if proc.returncode != 0:
                    failed += 1
                    log.error("FAILED %s (exit %d), see %s/cells/%s/run.log", cell.name, proc.returncode,
                              out_root(p), cell.name)
                    continue
                rec = finish_cell(p, cell, cmd, wall)
                done += 1
                best = rec["best"].get("mean", float("nan"))
                log.info("done %s: last %.1f, best %.1f, %.0f s (%d done, %d failed, %d queued, %d running)",
                         cell.name, rec["last"]["mean"], best, wall, done, failed, len(todo), len(running))
    finally:
        for proc, (cell, *_rest, f) in running.items():
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait()
            f.close()
            release(p, cell)
            log.warning("interrupted %s (no JSON written; it reruns next time)", cell.name)


# ---- stage: report --------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="cpu",
                    help=f"scale of the study: {', '.join(preset_names())} (presets/*.yaml) or a YAML file path")
    ap.add_argument("--stage", choices=("all", "data", "pretrain", "cells", "report"), default="all")
    ap.add_argument("--only", help="cell filter, e.g. method=bc,episodes=10 or task=walker-walk|finger-spin "
                                   "(keys: method, task, episodes, init, seed, group)")
    ap.add_argument("--jobs", type=int, default=1, help="cells run at the same time (1 torch thread each)")
    ap.add_argument("--stop_at", help="UTC HH:MM: start no new cell after this (running ones finish)")
    ap.add_argument("--kill_at", help="UTC HH:MM: stop running cells at this time (they rerun next time)")
    ap.add_argument("--dry_run", action="store_true", help="print the commands only")
    args = ap.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the cleanup: running cells are stopped
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    os.chdir(ROOT)
    try:
        p = load_preset(args.preset)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    only = parse_only(args.only)
    cells = select_cells(p, only)
    tasks = sorted({c.task for c in cells}) or [t for ts in p.tasks.values() for t in ts]
    if args.stage in ("all", "data"):
        stage_data(p, tasks, args.dry_run)
    if args.stage in ("all", "pretrain"):
        stage_pretrain(p, list(p.pretrain_runs()), args.dry_run)
    if args.stage in ("all", "cells"):
        stage_cells(p, cells, args.jobs, args.stop_at, args.kill_at, args.dry_run)
    if args.stage in ("all", "report") and not args.dry_run:
        from report import write_report

        write_report(p, data_summary(p, [t for ts in p.tasks.values() for t in ts]))


if __name__ == "__main__":
    main()
