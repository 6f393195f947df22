"""``python src/dmc_data.py {collect,inspect,import-smart,upload,download}``: make, check, convert and copy
dataset files (upload/download: Azure Blob Storage, docs/blob.md); ``export-minari``, ``import-minari``,
``import-d4rl``, ``import-exorl``: interop with other offline-RL formats (docs/data_format.md)."""

from __future__ import annotations

import argparse
import logging
import os
import sys

import numpy as np

from ..data.task_sets import load_task_set
from ..errors import ArgumentError, UserError


def _collect(args: argparse.Namespace) -> None:
    from ..collect.job import CollectJob
    from ..collect.run import collect_many

    if args.multi_config:
        pairs = [(d, t) for d, ts in load_task_set(args.multi_config).items() for t in ts]
    elif args.domain and args.task:
        pairs = [(args.domain, t) for t in args.task]
    else:
        raise ArgumentError("collect needs --domain and --task, or --multi_config TASKSET.json.")
    jobs = [
        CollectJob(domain=d, task=t, replay_id=r, num_steps=args.num_steps, data_dir_prefix=args.data_dir_prefix,
                   policy=args.policy, pixels=args.pixels, seed=args.seed, action_repeat=args.action_repeat,
                   height=args.height, width=args.width, camera_id=args.camera_id, fast_render=args.fast_render,
                   overwrite=args.overwrite, resume=args.resume, sac=_sac_overrides(args), save_agent=args.save_agent,
                   eval_every=args.eval_every, eval_episodes=args.eval_episodes,
                   checkpoint_every=args.checkpoint_every, log_dir=args.log_dir, agent_path=args.agent_path,
                   action_noise=args.action_noise)
        for d, t in pairs for r in args.replay_id
    ]
    if args.resume and args.policy != "sac":
        raise ArgumentError("--resume continues an interrupted --policy sac run only.")
    workers = args.workers or min(len(jobs), os.cpu_count() or 1)
    for path in collect_many(jobs, workers=workers, quiet=args.quiet):
        print(path)


def _sac_overrides(args: argparse.Namespace) -> dict:
    """``--sac.NAME VALUE`` options that were given (the rest keep SACConfig's defaults)."""
    return {k[len("sac."):]: v for k, v in vars(args).items() if k.startswith("sac.") and v is not None}


def _add_sac_options(c: argparse.ArgumentParser) -> None:
    from dataclasses import fields

    from ..agents.sac import SACConfig

    g = c.add_argument_group("SAC (--policy sac; defaults: SAC-AE's state setting with 256x2 MLPs, agents/sac.py)")
    for f in fields(SACConfig):
        g.add_argument(f"--sac.{f.name}", type=type(f.default), default=None, metavar=type(f.default).__name__.upper(),
                       help=f"default {f.default}")
    g.add_argument("--resume", action="store_true",
                   help="continue the interrupted run kept in {file}.tmp-partial (same options as the first run)")
    g.add_argument("--save_agent", action="store_true", help="write the final agent to {file without .h5}.agent.pt")
    g.add_argument("--eval_every", type=int, default=10000, help="agent steps between deterministic evaluations (0: off)")
    g.add_argument("--eval_episodes", type=int, default=5, help="episodes per evaluation")
    g.add_argument("--checkpoint_every", type=int, default=20, help="episodes between saves of the resume state")
    g.add_argument("--log_dir", default=None,
                   help="TensorBoard + metrics.jsonl root (default: {data folder}/tb_s{replay_id})")
    k = c.add_argument_group("checkpoint rollouts (--policy checkpoint)")
    k.add_argument("--agent_path", default=None, help="a saved agent (.agent.pt from --save_agent)")
    k.add_argument("--action_noise", type=float, default=0.0, help="std of Gaussian noise added to its mean action")


def _inspect(args: argparse.Namespace) -> None:
    from ..data.schema import open_h5, validate

    for path in args.files:
        info = validate(path)
        r, lengths = info.episode_returns, info.episode_lengths
        a = info.attrs
        print(f"{path}: valid (schema {a['schema_version']})")
        print(f"  task      {a['domain']}-{a['task']}  policy={a['policy']}  seed={a['seed']}  "
              f"replay_id={a['replay_id']}  action_repeat={a['action_repeat']}")
        print(f"  steps     {info.num_steps}  episodes={info.num_episodes}  "
              f"length min/mean/max={lengths.min()}/{lengths.mean():.1f}/{lengths.max()}")
        print(f"  returns   mean={r.mean():.2f}  std={r.std():.2f}  min={r.min():.2f}  "
              f"median={np.median(r):.2f}  max={r.max():.2f}")
        with open_h5(path) as h5:
            for key in h5:
                d = h5[key]
                print(f"  {key:<13} {d.shape!s:<22} {d.dtype}  chunks={d.chunks}")
        print(f"  obs_keys  {', '.join(a['obs_keys'])}")
        others = {k: v for k, v in a.items() if k not in ("obs_keys",)}
        print("  attrs     " + "  ".join(f"{k}={v}" for k, v in sorted(others.items())))


def _import_smart(args: argparse.Namespace) -> None:
    from ..data.importers.smart import import_smart

    info = import_smart(args.src, args.out, domain=args.domain, task=args.task, replay_id=args.replay_id,
                        trust_pickle=args.trust_pickle, episode_len=args.episode_len,
                        action_repeat=args.action_repeat)
    print(f"{args.out}: {info.num_steps} steps, {info.num_episodes} episodes")


def _refuse_overwrite(out: str, overwrite: bool) -> None:
    if os.path.exists(out) and not overwrite:
        raise ArgumentError(f"{out} already exists; pass --overwrite to replace it, or choose another --out.")


def _export_minari(args: argparse.Namespace) -> None:
    from ..data.importers.minari import export_minari

    print(export_minari(args.file, args.dataset_id))


def _import_minari(args: argparse.Namespace) -> None:
    from ..data.importers.minari import import_minari

    out = args.out or os.path.join(args.data_dir_prefix, "minari", f"{args.dataset_id}.h5")
    _refuse_overwrite(out, args.overwrite)
    info = import_minari(args.dataset_id, out, domain=args.domain, task=args.task, action_repeat=args.action_repeat,
                         replay_id=args.replay_id)
    print(f"{out}: {info.num_steps} steps, {info.num_episodes} episodes")


def _import_d4rl(args: argparse.Namespace) -> None:
    from ..data.importers.d4rl import import_d4rl

    _refuse_overwrite(args.out, args.overwrite)
    info = import_d4rl(args.file, args.out, domain=args.domain, task=args.task, action_repeat=args.action_repeat,
                       replay_id=1 if args.replay_id is None else args.replay_id)
    print(f"{args.out}: {info.num_steps} steps, {info.num_episodes} episodes")


def _import_exorl(args: argparse.Namespace) -> None:
    from ..data.importers.exorl import import_exorl

    _refuse_overwrite(args.out, args.overwrite)
    info = import_exorl(args.dir, args.out, domain=args.domain, task=args.task,
                        action_repeat=args.action_repeat or 1, relabel=not args.no_relabel,
                        replay_id=1 if args.replay_id is None else args.replay_id)
    print(f"{args.out}: {info.num_steps} steps, {info.num_episodes} episodes")


def _add_import_options(p: argparse.ArgumentParser, default_out: str | None = None) -> None:
    """The options import-minari, import-d4rl and import-exorl share; ``--out`` is required unless
    ``default_out`` describes its default."""
    p.add_argument("--out", required=default_out is None, help=f"output .h5 file{default_out or ''}")
    p.add_argument("--domain", help="dm_control domain of the data (default: from the source where it says)")
    p.add_argument("--task", help="dm_control task of the data (default: from the source where it says)")
    p.add_argument("--action_repeat", type=int, default=None, help="action repeat of the data (default: from the "
                   "source, else 4 for D4RL files, 1 for ExORL and Minari)")
    p.add_argument("--replay_id", type=int, default=None, help="replay_id attribute of the new file (default 1)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output file")


def _upload(args: argparse.Namespace) -> None:
    from ..storage.transfer import upload

    c = upload(args.src, args.dest, workers=args.workers, quiet=args.quiet)
    print(f"uploaded {c['uploaded']} file(s) ({c['bytes'] / 1e6:.1f} MB), skipped {c['skipped']} unchanged")


def _download(args: argparse.Namespace) -> None:
    from ..storage.transfer import download

    c = download(args.src, args.dest, workers=args.workers, quiet=args.quiet)
    print(f"downloaded {c['downloaded']} file(s) ({c['bytes'] / 1e6:.1f} MB), skipped {c['skipped']} unchanged")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dmc_data.py", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    c = sub.add_parser("collect", help="run dm_control with a policy and write dataset files")
    c.add_argument("--domain", help="dm_control domain, e.g. cheetah")
    c.add_argument("--task", nargs="+", help="one or more tasks of --domain, e.g. run")
    c.add_argument("--multi_config", help="a task-set JSON ({domain: [tasks]}) instead of --domain/--task")
    c.add_argument("--policy", default="random", choices=["random", "sac", "checkpoint"],
                   help="random: randcollect files; sac: a learning SAC agent's whole replay (fullcollect); "
                        "checkpoint: rollouts of a saved agent (fullcollect, policy attr 'checkpoint')")
    c.add_argument("--num_steps", type=int, default=20000, help="agent steps per file (rounded up to whole episodes)")
    c.add_argument("--replay_id", type=int, nargs="+", default=[1], help="one file per replay id (s{id})")
    c.add_argument("--data_dir_prefix", default="data", help="root folder of the dataset layout")
    c.add_argument("--pixels", action="store_true", help="also render and store 84x84 RGB frames")
    c.add_argument("--seed", type=int, default=None, help="environment and policy seed (default: the replay id)")
    c.add_argument("--action_repeat", type=int, default=4, help="physics steps per agent step (4: 250-step episodes)")
    c.add_argument("--height", type=int, default=84, help="frame height")
    c.add_argument("--width", type=int, default=84, help="frame width")
    c.add_argument("--camera_id", type=int, default=None, help="camera (default: 0, or 2 for quadruped)")
    c.add_argument("--fast_render", action="store_true",
                   help="no shadows/reflections/MSAA: ~20x faster on CPU, but a different visual domain")
    c.add_argument("--overwrite", action="store_true", help="replace existing files")
    c.add_argument("--workers", type=int, default=0, help="parallel processes (default: min(jobs, cores))")
    c.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_sac_options(c)
    c.set_defaults(func=_collect)

    i = sub.add_parser("inspect", help="validate dataset files and print a summary")
    i.add_argument("files", nargs="+", help="dataset .h5 files")
    i.set_defaults(func=_inspect)

    m = sub.add_parser("import-smart", help="convert an original SMART buffer folder (.pt chunks) to HDF5")
    m.add_argument("--src", required=True, help="folder in the SMART release layout (or its buffer/ folder)")
    m.add_argument("--out", required=True, help="output .h5 file")
    m.add_argument("--domain", help="override the domain parsed from the path")
    m.add_argument("--task", help="override the task parsed from the path")
    m.add_argument("--replay_id", type=int, help="override the replay id parsed from the path")
    m.add_argument("--episode_len", type=int, default=None, help="expected agent steps per episode (default 250)")
    m.add_argument("--action_repeat", type=int, default=4, help="action repeat the data was collected with")
    m.add_argument("--trust-pickle", dest="trust_pickle", action="store_true",
                   help="allow arbitrary pickled objects (executes code from the files: trusted files only)")
    m.set_defaults(func=_import_smart)

    e = sub.add_parser("export-minari", help="write a dataset file as a Minari dataset (needs .[minari])")
    e.add_argument("file", help="dataset .h5 file")
    e.add_argument("--dataset_id", required=True, help="Minari id, e.g. dmc/walker-walk/random-v0; written under "
                   "$MINARI_DATASETS_PATH (default ~/.minari/datasets)")
    e.set_defaults(func=_export_minari)

    mi = sub.add_parser("import-minari", help="convert a local Minari dataset to HDF5 (needs .[minari])")
    mi.add_argument("dataset_id", help="Minari id under $MINARI_DATASETS_PATH, e.g. dmc/walker-walk/random-v0")
    mi.add_argument("--data_dir_prefix", default="data", help="root of the default --out")
    _add_import_options(mi, " (default: {data_dir_prefix}/minari/{dataset_id}.h5)")
    mi.set_defaults(func=_import_minari)

    d = sub.add_parser("import-d4rl", help="convert a D4RL-layout HDF5 file (flat observations/actions/rewards/"
                                           "terminals/timeouts, infos/qpos+qvel) to our format")
    d.add_argument("file", help="D4RL-layout .hdf5/.h5 file")
    _add_import_options(d)
    d.set_defaults(func=_import_d4rl)

    x = sub.add_parser("import-exorl", help="convert a folder of ExORL/URLB .npz episodes to our format")
    x.add_argument("dir", help="ExORL buffer folder (datasets/{domain}/{agent}/buffer) or the folder above it")
    _add_import_options(x)
    x.add_argument("--no_relabel", action="store_true",
                   help="keep the stored rewards (default: relabel them for --task from physics, as ExORL does)")
    x.set_defaults(func=_import_exorl)

    for name, func, src_help, dest_help in (
        ("upload", _upload, "local dataset folder (e.g. data)", "az://<container>/<prefix> or https:// blob URL"),
        ("download", _download, "az://<container>/<prefix> or https:// blob URL", "local folder (e.g. data)"),
    ):
        b = sub.add_parser(name, help=f"{name} a dataset folder to/from Azure Blob Storage (parallel, resumable: "
                                      "files whose MD5 matches are skipped)")
        b.add_argument("--src", required=True, help=src_help)
        b.add_argument("--dest", required=True, help=dest_help)
        b.add_argument("--workers", type=int, default=8, help="files transferred in parallel")
        b.add_argument("--quiet", action="store_true", help="no progress bar")
        b.set_defaults(func=func)
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: no partial file was kept under a final name (a --policy sac run keeps its whole "
              "episodes in {file}.tmp-partial: continue it with --resume)", file=sys.stderr)
        return 130
    return 0
