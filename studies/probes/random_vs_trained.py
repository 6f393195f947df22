"""Representation probes (lit/probes.py) of a pretraining checkpoint next to a randomly initialised trunk of the
same config, on the checkpoint's own held-out episodes, with the probes' wall time. Run by hand:

    python studies/probes/random_vs_trained.py outputs/run/checkpoints/last.ckpt [--windows 512] [--seed 0]

Prints a markdown table: one row per probe, R² of the random trunk, of the trained one, and each probe's
wall time (data, trunk passes on the CPU, the ridge fits and the raw-input reference, one thread). The data module is rebuilt
from the checkpoint's own hyperparameters, so the episodes are the run's validation episodes.
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

from control_pretrain.data.datamodules.pretrain import MultiTaskDataModule
from control_pretrain.errors import UserError
from control_pretrain.lit.pretrain_module import PretrainModule
from control_pretrain.lit.probes import PROBES, RepresentationProbes
from control_pretrain.safe_load import TRUST_HELP, load_checkpoint


def own_hparams(hparams: dict) -> dict:
    """Hyperparameters without the CLI's bookkeeping entries (``_instantiator``, ``_class_path``)."""
    return {k: v for k, v in hparams.items() if not k.startswith("_")}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint")
    parser.add_argument("--windows", type=int, default=512, help="validation windows probed (--model.probe_windows)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random initialisation")
    parser.add_argument("--trust_checkpoint", action="store_true", help=TRUST_HELP)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # one thread: timings comparable across runs on a shared machine
    try:
        ckpt = load_checkpoint(args.checkpoint, args.trust_checkpoint)  # refuses a file that would run code
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    data = MultiTaskDataModule(**own_hparams(ckpt["datamodule_hyper_parameters"]))
    data.setup()
    trained = PretrainModule.load_from_checkpoint(args.checkpoint, map_location="cpu",
                                                  weights_only=not args.trust_checkpoint)
    torch.manual_seed(args.seed)
    fresh = PretrainModule(**own_hparams(dict(trained.hparams)))
    rows, seconds = {}, {}
    for name, module in (("random init", fresh), ("trained", trained)):
        probes = RepresentationProbes(args.windows)
        start = time.perf_counter()
        rows[name] = probes.measure(module.model, data.val_set)
        seconds[name] = time.perf_counter() - start
    splits = ", ".join(f"{s.domain} {len(s.fit)}+{len(s.score)}" for s in probes.splits)
    out = [f"{len(probes.windows)} windows of K={data.hparams.context_length} (fit+score windows: {splits})", "",
           "| probe | random init | trained |", "|---|---|---|"]
    out += [f"| `val/probe_{p}_r2` | {rows['random init'].get(p, float('nan')):.3f} | "
            f"{rows['trained'].get(p, float('nan')):.3f} |" for p in PROBES]
    out.append(f"| probe wall time, 1 thread (s) | {seconds['random init']:.2f} | {seconds['trained']:.2f} |")
    sys.stdout.write("\n".join(out) + "\n")


if __name__ == "__main__":
    main()
