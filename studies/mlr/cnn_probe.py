"""How much of the state a pretraining checkpoint's CNN holds (docs/results.md, offline MLR): the CNN's features of
the first 2,000 frames of a pixel dataset file, their spread across frames, the fraction of saturated Tanh units,
and the R² per state dimension of a ridge probe fit on the first half of the frames and scored on the second.

Usage:
  python studies/mlr/cnn_probe.py FILE.h5 init outputs/study/mlr_offline/pretrain_mlr/checkpoints/last.ckpt ...
  (``init``: a randomly initialised CNN, torch seed 0; checkpoints are read without running code)
"""

from __future__ import annotations

import argparse
import os
import sys

import h5py
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "src"))

from control_pretrain.eval.ridge import ridge_r2
from control_pretrain.models.encoders import PixelEncoder
from control_pretrain.safe_load import load_checkpoint

FRAMES, SATURATED = 2000, 0.99


def cnn(source: str, n_embd: int) -> PixelEncoder:
    torch.manual_seed(0)
    encoder = PixelEncoder(n_embd)
    if source != "init":
        state = load_checkpoint(source)["state_dict"]
        prefix = "model.obs_encoder."
        encoder.load_state_dict({k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)})
    return encoder.eval()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("file", help="a dataset file with pixels (dmc_data.py collect --pixels)")
    p.add_argument("sources", nargs="+", help="'init' or pretraining checkpoints")
    p.add_argument("--n_embd", type=int, default=64, help="the CNN's width (the checkpoints' model.n_embd)")
    args = p.parse_args()
    torch.set_num_threads(1)
    with h5py.File(args.file) as f:
        frames, obs = torch.from_numpy(f["pixels"][:FRAMES]), torch.from_numpy(f["observations"][:FRAMES]).double()
    half = len(frames) // 2
    print("| CNN | feature std across frames | units saturated (abs > 0.99) | R² per dimension |\n|---|---|---|---|")
    for source in args.sources:
        with torch.no_grad():
            z = torch.cat([cnn(source, args.n_embd)(frames[i : i + 250]) for i in range(0, len(frames), 250)]).double()
        r2 = ridge_r2(z[:half], obs[:half], z[half:], obs[half:])  # (obs_dim,)
        print(f"| {source} | {z.std(0).mean():.4f} | {(z.abs() > SATURATED).double().mean():.0%} | "
              f"{', '.join(f'{x:.2f}' for x in r2.tolist())} |")


if __name__ == "__main__":
    main()
