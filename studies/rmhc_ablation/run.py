"""RMHC ablation (issue 13): what lets random masked hindsight control (objectives/smart/masked_hindsight.py) learn.

Every candidate trains RMHC alone (1 masked action per window unless the candidate says otherwise, no masked
observations) on the same data, from the same seed, with the same optimiser as the CLI (tests/synthetic.py
``fit``: AdamW 6e-4, betas (0.9, 0.95), weight decay 0.1 on matrices, warmup 5% + cosine, clipping 1.0). Every
``--eval_every`` steps the validation RMHC loss is measured with 1 masked action and fixed masks, whatever the
candidate trains with, next to the loss of predicting 0 and to inverse dynamics trained alone on the same data.

Data sets:
- ``synthetic``: the task of tests/synthetic.py (o_t ~ N(0, I), a_t = tanh(W (o_{t+1} - o_t) / 2)), the one the
  learning tests use; its observations are already standard, so the normalisation candidates are not run on it.
- ``real``: random-policy walker-walk + cheetah-run, 20k steps each, through the real MultiTaskDataModule (95% /
  5% episode split), collected with
  ``python src/dmc_data.py collect --domain walker --task walk --policy random --num_steps 20000 --replay_id 1
  --data_dir_prefix /tmp/rmhcdata`` (and ``--domain cheetah --task run``).

Candidates (``CANDIDATES``): the position scheme (``--model.position_encoding``: absolute = the reference,
relative_bias, rotary, step_type), forbidding action->action attention across steps (rmind), more masked actions,
and observation standardisation with per-domain training-set statistics (done here, in the script). "relative
bias" is the scaled bias of models/positions.py (x10); "unscaled" is a plain learned bias, "x30" a larger scale.

    PYTHONPATH=src OMP_NUM_THREADS=1 python studies/rmhc_ablation/run.py --data_dir_prefix /tmp/rmhcdata

Writes studies/rmhc_ablation/results.json after every run (a rerun skips the runs already there; ``--fresh``
starts over) and prints the markdown table of docs/training.md ("RMHC ablation").
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass

import torch
from torch import Tensor

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path[:0] = [os.path.join(ROOT, "src"), os.path.join(ROOT, "tests")]  # tests/synthetic.py: the shared task

from synthetic import SyntheticControlTask, fit, validation_loss

from control_pretrain.data.datamodules.pretrain import MultiTaskDataModule
from control_pretrain.models.control_transformer import ControlTransformer, ControlTransformerConfig
from control_pretrain.models.positions import RELATIVE_BIAS_SCALE
from control_pretrain.objectives import (
    InverseDynamicsObjective,
    MaskedHindsightControlConfig,
    MaskedHindsightControlObjective,
    Objective,
)

log = logging.getLogger("rmhc_ablation")
RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results.json")
MODEL = {"n_layer": 2, "n_head": 4, "n_embd": 64, "context_length": 20, "dropout": 0.1}  # the setting
BATCH_SIZE = 64
MORE_MASKED = 10  # "more masked steps": half the window's actions, what the issue tried
REAL_TASKS = {"walker": ["walk"], "cheetah": ["run"]}
SYNTHETIC_VAL_WINDOWS = 2048
WARMUP_FRACTION = 0.05  # the CLI's --model.warmup_ratio
STD_FLOOR = 1e-6  # dims of other domains' slots are constant 0: they keep std 1


@dataclass(frozen=True)
class Candidate:
    objective: str = "rmhc"  # rmhc or inverse (the reference point)
    position_encoding: str = "absolute"
    relative_bias_scale: float = RELATIVE_BIAS_SCALE
    isolate_actions: bool = False
    mask_actions: int = 1
    normalize: bool = False


CANDIDATES: dict[str, Candidate] = {
    "as built (absolute)": Candidate(),
    "relative bias unscaled": Candidate(position_encoding="relative_bias", relative_bias_scale=1.0),
    "relative bias": Candidate(position_encoding="relative_bias"),
    "relative bias x30": Candidate(position_encoding="relative_bias", relative_bias_scale=30.0),
    "rotary": Candidate(position_encoding="rotary"),
    "per-step + token type": Candidate(position_encoding="step_type"),
    "no action->action": Candidate(isolate_actions=True),
    f"{MORE_MASKED} masked actions": Candidate(mask_actions=MORE_MASKED),
    "normalised obs": Candidate(normalize=True),
    "relative + no a->a": Candidate(position_encoding="relative_bias", isolate_actions=True),
    f"relative + {MORE_MASKED} masked": Candidate(position_encoding="relative_bias", mask_actions=MORE_MASKED),
    "rotary + no a->a": Candidate(position_encoding="rotary", isolate_actions=True),
    "step-type + no a->a": Candidate(position_encoding="step_type", isolate_actions=True),
    "relative + normalised": Candidate(position_encoding="relative_bias", normalize=True),
    "relative + no a->a + normalised": Candidate(position_encoding="relative_bias", isolate_actions=True,
                                                 normalize=True),
    f"relative + {MORE_MASKED} masked + normalised": Candidate(position_encoding="relative_bias",
                                                               mask_actions=MORE_MASKED, normalize=True),
    f"relative + {MORE_MASKED} masked + no a->a + normalised": Candidate(
        position_encoding="relative_bias", mask_actions=MORE_MASKED, isolate_actions=True, normalize=True),
    "inverse dynamics as built": Candidate(objective="inverse"),
    "inverse dynamics relative": Candidate(objective="inverse", position_encoding="relative_bias"),
    "inverse dynamics relative + normalised": Candidate(objective="inverse", position_encoding="relative_bias",
                                                         normalize=True),
}


# ---- data --------------------------------------------------------------------------------------------------------
class ObservationStandardizer:
    """Per-domain, per-dimension mean and std of the training windows' observations (the stand-in for the real
    normaliser another part of issue 13 builds); other domains' zero padding stays 0."""

    def __init__(self, mean: Tensor, std: Tensor):
        self.mean, self.std = mean, std  # (num_domains, D) each

    @classmethod
    def fit(cls, batches: list[dict[str, Tensor]]) -> ObservationStandardizer:
        obs = torch.cat([b["observations"].flatten(0, 1) for b in batches])  # (N, D)
        domain = torch.cat([b["domain_id"].repeat_interleave(b["observations"].shape[1]) for b in batches])  # (N,)
        num = int(domain.max()) + 1
        mean = torch.stack([obs[domain == d].mean(0) for d in range(num)])  # (num_domains, D)
        std = torch.stack([obs[domain == d].std(0) for d in range(num)])  # (num_domains, D)
        return cls(mean, torch.where(std > STD_FLOOR, std, torch.ones_like(std)))

    def __call__(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        d = batch["domain_id"]  # (B,)
        obs = (batch["observations"] - self.mean[d][:, None]) / self.std[d][:, None]  # (B, K, D)
        return {**batch, "observations": obs}


@dataclass
class Dataset:
    name: str
    obs_dim: int
    action_dim: int
    train: Iterator[dict[str, Tensor]]  # endless
    val: list[dict[str, Tensor]]
    standardizer: ObservationStandardizer | None  # None: observations are already standard

    def stream(self, normalize: bool) -> Iterator[dict[str, Tensor]]:
        for batch in self.train:
            yield self.standardizer(batch) if normalize else batch

    def validation(self, normalize: bool) -> list[dict[str, Tensor]]:
        return [self.standardizer(b) for b in self.val] if normalize else self.val


def synthetic_dataset(seed: int) -> Dataset:
    task = SyntheticControlTask()
    K = MODEL["context_length"]
    return Dataset("synthetic", task.dim, task.dim, task.batches(BATCH_SIZE, K, seed),
                   task.validation(SYNTHETIC_VAL_WINDOWS, K), None)


def real_dataset(data_dir_prefix: str, seed: int) -> Dataset:
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(REAL_TASKS, f)
    dm = MultiTaskDataModule(multi_config=f.name, source_data_type="rand", train_replay_id=1, num_steps=20000,
                             data_dir_prefix=data_dir_prefix, obs_type="state",
                             context_length=MODEL["context_length"], batch_size=BATCH_SIZE, num_workers=0)
    dm.setup("fit")
    os.unlink(f.name)
    val = list(dm.val_dataloader())
    stats_windows = dm.train_set.__getitems__(range(0, len(dm.train_set), MODEL["context_length"]))

    def endless() -> Iterator[dict[str, Tensor]]:
        loader = dm.train_dataloader()
        epoch = 0
        while True:
            loader.sampler.set_epoch(epoch)  # what Lightning does: a new window order every epoch
            yield from loader
            epoch += 1

    return Dataset("real", dm.obs_dim, dm.action_dim, endless(), val, ObservationStandardizer.fit([stats_windows]))


# ---- one run -----------------------------------------------------------------------------------------------------
def build(candidate: Candidate, data: Dataset) -> tuple[ControlTransformer, Objective, Objective]:
    """The model, the objective it trains with and the one it is validated with (1 masked action)."""
    config = ControlTransformerConfig(obs_type="state", obs_dim=data.obs_dim, action_dim=data.action_dim,
                                      position_encoding=candidate.position_encoding,
                                      relative_bias_scale=candidate.relative_bias_scale, **MODEL)
    model = ControlTransformer(config)
    C, A = MODEL["n_embd"], data.action_dim
    if candidate.objective == "inverse":
        objective = InverseDynamicsObjective(C, A)
        return model, objective, objective
    train = MaskedHindsightControlObjective(C, A, MaskedHindsightControlConfig(
        mask_actions=candidate.mask_actions, isolate_actions=candidate.isolate_actions))
    val = MaskedHindsightControlObjective(C, A, MaskedHindsightControlConfig(
        mask_actions=1, isolate_actions=candidate.isolate_actions))
    val.head = train.head  # the same head, validated at 1 masked action
    return model, train, val


def run(candidate: Candidate, data: Dataset, steps: int, eval_every: int, seed: int) -> dict:
    torch.manual_seed(seed)
    model, train, val_objective = build(candidate, data)
    val = data.validation(candidate.normalize)
    result = fit(model, [train], data.stream(candidate.normalize), steps,
                 evaluate=lambda: validation_loss(model, val_objective, val), eval_every=eval_every,
                 warmup=int(WARMUP_FRACTION * steps))
    return {"candidate": asdict(candidate), "curve": result.curve, "final": result.curve[-1][1],
            "samples_per_sec": result.samples_per_sec}


def zero_losses(data: Dataset) -> dict[str, float]:
    """Predict-zero MSE over the sample's own action dims: of every action (RMHC) and of all but the last
    (inverse dynamics)."""
    def mse(skip_last: bool) -> float:
        num = den = 0.0
        for b in data.val:
            a = b["actions"][:, :-1] if skip_last else b["actions"]  # (B, T, A)
            w = b["action_mask"][:, None, :].expand_as(a)  # (B, T, A)
            num += (a.square() * w).sum().item()
            den += w.sum().item()
        return num / den
    return {"rmhc": mse(False), "inverse": mse(True)}


def throughput(data: Dataset, rounds: int, steps: int) -> dict[str, float]:
    """Training samples/s of the position schemes and the action isolation, interleaved round by round and the
    median taken, so that load from other processes hits every candidate alike (the per-run figures of the curves
    were taken minutes apart)."""
    names = ["as built (absolute)", "relative bias", "rotary", "per-step + token type", "relative + no a->a"]
    measured: dict[str, list[float]] = {n: [] for n in names}
    for _ in range(rounds):
        for name in names:
            torch.manual_seed(0)
            model, train, _ = build(CANDIDATES[name], data)
            measured[name].append(fit(model, [train], data.stream(False), steps).samples_per_sec)
    return {n: sorted(v)[len(v) // 2] for n, v in measured.items()}


# ---- report ------------------------------------------------------------------------------------------------------
def table(results: dict) -> str:
    """Markdown: one row per candidate, the validation loss at every evaluation on each data set."""
    names = [n for n in CANDIDATES if any(n in results["datasets"][d]["runs"] for d in results["datasets"])]
    lines = []
    for dname, d in results["datasets"].items():
        steps = [s for s, _ in next(iter(d["runs"].values()))["curve"]] if d["runs"] else []
        lines += [(f"**{dname}** (predict-zero: RMHC {d['zero']['rmhc']:.3f}, inverse dynamics "
                   f"{d['zero']['inverse']:.3f})"), "",
                  "| candidate | " + " | ".join(f"step {s}" for s in steps) + " | final / zero | samples/s |",
                  "|---|" + "---|" * (len(steps) + 2)]
        for name in names:
            if name not in d["runs"]:
                continue
            r = d["runs"][name]
            zero = d["zero"]["inverse" if r["candidate"]["objective"] == "inverse" else "rmhc"]
            lines.append(f"| {name} | " + " | ".join(f"{v:.3f}" for _, v in r["curve"])
                         + f" | {r['final'] / zero:.0%} | {r['samples_per_sec']:.0f} |")
        lines.append("")
        if "throughput" in d:
            lines += ["Training samples/s, interleaved (median of rounds): " + ", ".join(
                f"{n} {v:.0f}" for n, v in d["throughput"].items()), ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data_dir_prefix", default="/tmp/rmhcdata", help="where the real data was collected")
    parser.add_argument("--datasets", default="synthetic,real", help="comma-separated: synthetic, real")
    parser.add_argument("--candidates", default="", help="comma-separated names of CANDIDATES (default: all)")
    parser.add_argument("--steps", type=int, default=1500, help="optimiser steps per run")
    parser.add_argument("--eval_every", type=int, default=250, help="steps between validations")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=RESULTS, help="results JSON (updated after every run)")
    parser.add_argument("--fresh", action="store_true", help="ignore the runs already in --out")
    parser.add_argument("--throughput_rounds", type=int, default=5, help="interleaved timing rounds (0: none)")
    parser.add_argument("--throughput_steps", type=int, default=40, help="training steps per timing")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    results = {"datasets": {}}
    if os.path.exists(args.out) and not args.fresh:
        with open(args.out) as f:
            results = json.load(f)
    results["settings"] = {"model": MODEL, "batch_size": BATCH_SIZE, "steps": args.steps,
                           "eval_every": args.eval_every, "seed": args.seed, "threads": torch.get_num_threads()}
    wanted = [n.strip() for n in args.candidates.split(",") if n.strip()] or list(CANDIDATES)
    for dname in args.datasets.split(","):
        data = synthetic_dataset(args.seed) if dname == "synthetic" else real_dataset(args.data_dir_prefix, args.seed)
        entry = results["datasets"].setdefault(dname, {"runs": {}})
        entry["zero"] = zero_losses(data)
        for name in wanted:
            candidate = CANDIDATES[name]
            if (candidate.normalize and data.standardizer is None) or name in entry["runs"]:
                continue
            entry["runs"][name] = run(candidate, data, args.steps, args.eval_every, args.seed)
            r = entry["runs"][name]
            log.info("%s / %s: %s (%.0f samples/s)", dname, name,
                         " ".join(f"{v:.3f}" for _, v in r["curve"]), r["samples_per_sec"])
            with open(args.out, "w") as f:
                json.dump(results, f, indent=1)
        if args.throughput_rounds > 0:
            entry["throughput"] = throughput(data, args.throughput_rounds, args.throughput_steps)
            log.info("%s throughput: %s", dname, entry["throughput"])
            with open(args.out, "w") as f:
                json.dump(results, f, indent=1)
    print(table(results))


if __name__ == "__main__":
    main()
